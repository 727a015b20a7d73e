"""The ``psegzoo`` command line.

Uses only the public API of the ``psegzoo`` package. Torch is imported only by the commands that
run models (``convert``, ``predict``, ``eval``, ``export``, ``bench``, ``tune``), so ``list`` and ``info`` stay instant. One module
per command family; the group below adds each command explicitly. Log records of the library
(retries as they happen, files found, ...) are printed by one ``rich.logging.RichHandler``.
"""
from __future__ import annotations

import logging
from typing import Any

import click

import psegzoo

from . import bench, evaluate, export, listing, predict, serve, tune, weights
from .common import QUIET_KEY, StatusLine, fail


def _log_handler() -> logging.Handler:
    """One RichHandler on stderr: ``warning: message`` on one line, never wrapped (URLs stay whole)."""
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.text import Text

    class OneLine(RichHandler):
        def emit(self, record: logging.LogRecord) -> None:  # below a status line, never in its middle
            StatusLine.around(lambda: super(OneLine, self).emit(record))

        def render(self, *, record: logging.LogRecord, traceback: Any, message_renderable: Any) -> Any:
            style = {"WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}.get(record.levelname, "dim")
            return Text.assemble((f"{record.levelname.lower()}: ", style), message_renderable)

    handler = OneLine(console=Console(stderr=True, soft_wrap=True, highlight=False), show_time=False, show_path=False,
                      markup=False, highlighter=None)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(psegzoo.__version__, prog_name="psegzoo")
@click.option("-v", "--verbose", count=True, help="Say more (-v: what is done, e.g. files found; -vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only (no warnings, no progress bars).")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Published mmsegmentation segmentation checkpoints, with nothing but PyTorch.

    \b
    Examples:
      psegzoo list --dataset ade20k
      psegzoo info pspnet_r101-d8_cityscapes
      psegzoo download upernet_r50_ade20k
      psegzoo predict --model pspnet_r18-d8_512x1024_cityscapes --sample --overlay
    """
    ctx.meta[QUIET_KEY] = quiet
    try:  # this process is psegzoo's own: freed memory is kept for the next forward (psegzoo.heap)
        psegzoo.setup_process()
    except psegzoo.PsegzooError as exc:
        fail(exc.cli_message())
    logger = logging.getLogger("psegzoo")
    before = (logger.level, logger.propagate)
    handler = _log_handler()
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.WARNING if verbose == 0 else
                    logging.INFO if verbose == 1 else logging.DEBUG)
    logger.propagate = False

    def restore() -> None:  # the library's logging is as it was after the command (matters in-process)
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]

    ctx.call_on_close(restore)


for _command in (
    listing.list_command,
    listing.info_command,
    weights.download_command,
    weights.cache_group,
    weights.verify_command,
    weights.import_command,
    weights.mirror_command,
    weights.convert_command,
    predict.predict_command,
    bench.bench_command,
    tune.tune_command,
    evaluate.eval_command,
    export.export_command,
    serve.serve_command,
):
    main.add_command(_command)
