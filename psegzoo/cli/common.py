"""Helpers shared by the command modules: console output, one-line errors, shared options."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

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


_INDEX_KEY = "psegzoo.index"
_DOWNLOAD_KEY = "psegzoo.download"
QUIET_KEY = "psegzoo.quiet"


def index_option(func: Callable) -> Callable:
    """``--index FILE`` (repeatable) on every command: extra manifests merged over the built-in one
    (after those of ``PSEGZOO_INDEX``). The value is kept in the click context and passed explicitly
    (:func:`manifest_index`); nothing is written to the environment."""

    def remember(ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> None:
        if value:
            ctx.meta.setdefault(_INDEX_KEY, []).extend(str(Path(v).resolve()) for v in value)

    return click.option(
        "--index",
        multiple=True,
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=remember,
        is_eager=True,
        help="Extra manifest JSON merged over the built-in one (same schema). Repeatable.",
    )(func)


def manifest_index() -> tuple[Path, ...] | None:
    """The extra manifests of this command: ``PSEGZOO_INDEX``'s, then ``--index``'s; None without ``--index``
    (then the manifest reads ``PSEGZOO_INDEX`` itself)."""
    ctx = click.get_current_context(silent=True)
    extra = ctx.meta.get(_INDEX_KEY) if ctx is not None else None
    if not extra:
        return None
    return (*psegzoo.manifest.extra_index_paths(), *(Path(p) for p in extra))


def quiet() -> bool:
    """``psegzoo -q``: only errors are printed."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(QUIET_KEY))


def fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_size(num_bytes: int | None) -> str:
    """Byte sizes as everywhere in psegzoo: decimal units (``psegzoo.units.format_size``)."""
    return psegzoo.format_size(num_bytes)


def is_cached(entry: psegzoo.Entry) -> bool:
    if entry.weights is None:
        return False
    return psegzoo.checkpoint_path(entry).is_file()


def _remember_download(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None or value == ():
        return
    assert param.name is not None
    ctx.meta.setdefault(_DOWNLOAD_KEY, {})[param.name] = tuple(value) if isinstance(value, (list, tuple)) else value


def download_options(func: Callable) -> Callable:
    """Options shared by every command that may fetch weights. Their values are collected in the
    click context; :func:`download_settings` turns them into one ``psegzoo.DownloadOptions``."""

    def opt(*decls: str, **attrs: Any) -> Callable:
        return click.option(*decls, expose_value=False, callback=_remember_download, **attrs)

    options = [
        opt("--mirror", "mirrors", multiple=True, metavar="URL",
            help="Mirror tried before the original host: a base URL, a template with {path}, {file} or "
                 "{name}, or hf://ORG/REPO[@REV][/DIR] (repeatable; also PSEGZOO_MIRROR)."),
        opt("--search", "search", multiple=True, metavar="DIR", type=click.Path(file_okay=False),
            help="Folder (with subfolders) searched for a copy before any download (repeatable; also "
                 "PSEGZOO_SEARCH_PATH). torch hub's and mim's download folders are always searched."),
        opt("--offline", is_flag=True, default=None,
            help="No network access; use the cache, local copies and file:// mirrors (also PSEGZOO_OFFLINE=1)."),
        opt("--allow-unverified", is_flag=True, default=None,
            help="Allow a checkpoint that has no published hash; its SHA-256 is recorded and trusted from then on."),
        opt("--sha256", "sha256", metavar="HEX",
            help="Pin the full SHA-256 the file must have (64 hex digits; also PSEGZOO_HASHES=FILE|URL in "
                 "sha256sum format)."),
        opt("--strict", is_flag=True, default=None,
            help="Refuse a file from a third party (mirror, copy on disk, extra manifest) that only the published "
                 "8-digit hash prefix vouches for (also PSEGZOO_STRICT=1)."),
        opt("--retries", type=click.IntRange(0, 50), default=None,
            help="Retries per URL on timeouts, dropped connections, 429 and 5xx (default 4; PSEGZOO_RETRIES)."),
        opt("--timeout", "read_timeout", type=float, default=None, metavar="S",
            help="Read timeout in seconds: a silent server fails after this (default 60; PSEGZOO_TIMEOUT)."),
        opt("--deadline", type=float, default=None, metavar="S",
            help="Give up on a checkpoint after this many seconds in all (default: none; PSEGZOO_DEADLINE)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def download_flags_given() -> list[str]:
    """The download flags given on this command line (``--mirror``, ``--offline``, ...), in order."""
    ctx = click.get_current_context()
    given = ctx.meta.get(_DOWNLOAD_KEY, {})
    flags = []
    for param in ctx.command.params:
        if param.name in given and isinstance(param, click.Option):
            flags.append(max(param.opts, key=len))
    return flags


def download_settings(**fields: Any) -> psegzoo.DownloadOptions:
    """The command's download options, built once: its flags, then the environment, then defaults.

    ``fields`` add or override fields (``progress=False``, ``force=True``, ``link=True``); None is ignored.
    """
    ctx = click.get_current_context()
    given = dict(ctx.meta.get(_DOWNLOAD_KEY, {}))
    given.update({k: v for k, v in fields.items() if v is not None})
    index = manifest_index()
    if index is not None:
        given["index"] = index
    if quiet():
        given.setdefault("progress", False)
    search = given.pop("search", ())
    options = psegzoo.DownloadOptions(**given)
    if search:  # --search adds to PSEGZOO_SEARCH_PATH
        options = options.with_(search=(*options.search, *search))
    return options


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


class StatusLine:
    """One transient line on a terminal's stderr saying what a silent step is doing ("importing
    PyTorch ...", "converting ..."), replaced by the next step and erased at the end. Nothing is
    written when stderr is not a terminal or with -q: a log or a pipe gets no control characters.
    A log record printed meanwhile (``-v``, a warning) erases the line and draws it again below."""

    _shown: ClassVar[StatusLine | None] = None  # the line on the terminal now, if any

    def __init__(self, quiet_: bool = False):
        self.enabled = not quiet_ and not quiet() and sys.stderr.isatty()
        self._text: str | None = None

    def __call__(self, text: str | None) -> None:
        """Show ``text`` (None: erase the line, e.g. before a progress bar draws)."""
        if not self.enabled:
            return
        self._text = None if text is None else printable(text)
        self._draw()

    def _draw(self) -> None:
        import shutil

        sys.stderr.write("\r\x1b[2K")
        StatusLine._shown = None
        if self._text is not None:
            width = shutil.get_terminal_size().columns - 5  # one row: a wrapped line could not be erased
            line = self._text if len(self._text) <= width else self._text[: max(width - 1, 1)] + "…"
            sys.stderr.write(f"{line} ...")
            StatusLine._shown = self
        sys.stderr.flush()

    @classmethod
    def around(cls, write: Callable[[], None]) -> None:
        """Run ``write`` (it prints whole lines on stderr) with the status line out of its way."""
        shown = cls._shown
        if shown is None:
            write()
            return
        sys.stderr.write("\r\x1b[2K")
        sys.stderr.flush()
        try:
            write()
        finally:
            shown._draw()

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self(None)
