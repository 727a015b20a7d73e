"""Helpers shared by the command modules: console output, one-line errors, shared options."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

import psegzoo


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (kept by Python as surrogates) shown as U+FFFD:
    a file may be named in any bytes, a terminal takes text."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def error_line(exc: BaseException) -> str:
    """How an error reads on the command line: options named as flags, rich markup escaped."""
    text = exc.cli_message() if isinstance(exc, psegzoo.PsegzooError) else str(exc)
    return f"[bold red]error:[/] {escape(printable(text))}"


def fail(message: str, code: int = 1) -> None:
    # One unwrapped line: URLs and paths in the message stay whole (copyable, greppable).
    console(stderr=True).print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)
    sys.exit(code)


def escape(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def handle_errors(func: Callable) -> Callable:
    """Render our own errors as one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except psegzoo.PsegzooError as exc:
            fail(exc.cli_message())
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def index_option(func: Callable) -> Callable:
    """``--index FILE`` (repeatable) on every command: extra manifests merged over the built-in one."""

    def remember(ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> None:
        if value:
            # The library reads extra manifests from PSEGZOO_INDEX; set it for this command only and
            # put it back when the command ends, so nothing leaks into the next command in-process.
            before = os.environ.get("PSEGZOO_INDEX")
            current = [p for p in (before or "").split(os.pathsep) if p]
            os.environ["PSEGZOO_INDEX"] = os.pathsep.join(current + [str(Path(v).resolve()) for v in value])
            ctx.call_on_close(lambda: _restore("PSEGZOO_INDEX", before))

    return click.option(
        "--index",
        multiple=True,
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=remember,
        is_eager=True,
        help="Extra manifest JSON merged over the built-in one (same schema). Repeatable.",
    )(func)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_size(num_bytes: int | None) -> str:
    """Bytes in psegzoo's one convention (decimal kB, MB, GB: ``psegzoo.format_size``)."""
    return psegzoo.format_size(num_bytes)


def download_options(func: Callable) -> Callable:
    """Options shared by every command that may fetch weights."""
    options = [
        click.option("--mirror", "mirrors", multiple=True, metavar="URL",
                     help="Base URL tried before the original host (repeatable; also PSEGZOO_MIRROR)."),
        click.option("--offline", is_flag=True, default=None,
                     help="No network access; use cached files only (also PSEGZOO_OFFLINE=1)."),
        click.option("--allow-unverified", is_flag=True, default=None,
                     help="Allow a checkpoint that has no published hash; its SHA-256 is recorded and trusted from then on."),
        click.option("--sha256", "sha256", metavar="HEX",
                     help="Pin the SHA-256 the file must have (for checkpoints without a published hash)."),
        click.option("--retries", type=click.IntRange(0, 50), default=None, help="Retries per URL (default 4; PSEGZOO_RETRIES)."),
        click.option("--timeout", type=click.FloatRange(0.1, None), default=None,
                     help="Read timeout in seconds: a stalled server fails after this (default 60; PSEGZOO_TIMEOUT)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func

def download_kwargs(mirrors: Sequence[str], offline: bool | None, allow_unverified: bool | None,
                     sha256: str | None, retries: int | None, timeout: float | None) -> dict[str, Any]:
    return {
        "mirrors": list(mirrors) or None,
        "offline": offline,
        "allow_unverified": allow_unverified,
        "sha256": sha256,
        "retries": retries,
        "timeout": timeout,
    }


def pair_option(value: str | None, what: str) -> tuple[int, int] | None:
    """Parse ``512``, ``512x1024`` or ``512,1024`` into a pair of positive ints."""
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise click.BadParameter(f"{value!r} is not a size; use N or AxB with positive integers, e.g. 512x1024", param_hint=what)
    return nums[0], nums[1]


def ratios_option(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        ratios = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        ratios = []
    if not ratios or min(ratios) <= 0:
        raise click.BadParameter(f"{value!r} is not a list of positive ratios, e.g. 0.5,0.75,1.0,1.25,1.5,1.75",
                                 param_hint="--scales")
    return ratios
