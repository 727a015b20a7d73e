"""Exception types raised by psegzoo.

Every error a user can cause derives from :class:`PsegzooError`; the CLI prints its message
on one line and exits non-zero. Messages say which name/file/value is wrong and what to do next.
"""
from __future__ import annotations

import numbers
import re
from typing import Literal, overload

# An option named in a message, written once for both audiences: ``option("sha256='HEX'", "--sha256 HEX")``.
_OPTION = re.compile("\x00([^\x00\x01]*)\x01([^\x00\x01]*)\x00")


def option(python: str, cli: str) -> str:
    """Name a setting inside an error message: Python callers read ``python`` (``max_pixels=N``),
    the command line reads ``cli`` (``--max-pixels N``). Use it wherever a message says what to pass."""
    return f"\x00{python}\x01{cli}\x00"


FLAGS = {"amp_dtype": "--half/--bf16", "data_root": "--data", "name": "--model", "images": "--images",
         "labels": "--labels", "weights": "--weights"}
"""Keywords whose command-line flag is not ``--`` and the keyword with dashes."""


def flag(name: str) -> str:
    """The command-line flag of the keyword ``name``: ``crop_size`` -> ``--crop-size``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def param(name: str) -> str:
    """A keyword named in a message: ``crop_size`` for Python callers, ``--crop-size`` on the command line."""
    return option(name, flag(name))


def setting(name: str, value: object) -> str:
    """A keyword and its value in a message: ``mode='slide'`` for Python, ``--mode slide`` on the
    command line (``ms_flip=True`` is the flag ``--ms-flip`` alone)."""
    cli = flag(name) if value is True else f"{flag(name)} {value}"
    return option(f"{name}={value!r}", cli)


def for_python(text: str) -> str:
    """``text`` with every :func:`option` written the Python way."""
    return _OPTION.sub(lambda m: m.group(1), text)


def for_cli(text: str) -> str:
    """``text`` with every :func:`option` written the command-line way."""
    return _OPTION.sub(lambda m: m.group(2), text)


class PsegzooError(Exception):
    """Base class of every error psegzoo raises on purpose.

    ``str(exc)`` names options as a Python caller passes them; :meth:`cli_message` as the command
    line does, so neither audience is told about flags it cannot use.
    """

    def __str__(self) -> str:
        return for_python(super().__str__())

    def cli_message(self) -> str:
        """The message with options written as command-line flags (what ``psegzoo`` prints)."""
        return for_cli(super().__str__())


class ManifestError(PsegzooError):
    """A manifest file (built-in or extra) is malformed or breaks the schema."""


class UnknownModelError(PsegzooError, LookupError):
    """A model name or alias matches no entry (the message lists the closest names)."""


class NoWeightsError(PsegzooError):
    """The entry exists but publishes no weights file."""


class DownloadError(PsegzooError):
    """Fetching a checkpoint failed on every URL tried (the message lists each URL and why)."""


class VerificationError(PsegzooError):
    """A file's hash or size does not match what the manifest or cache record expects."""


class UnverifiedWeightsError(PsegzooError):
    """The entry has no published hash and the user has not allowed an unverified download."""


class OfflineError(PsegzooError):
    """Offline mode is on and the checkpoint is not in the cache."""


class CacheError(PsegzooError):
    """The local cache cannot be used (lock, permissions, disk space, unsafe path)."""


class CheckpointError(PsegzooError):
    """A checkpoint file cannot be read safely or does not fit the architecture."""


class ImageError(PsegzooError):
    """An input image is missing, unreadable, truncated, too large or empty."""


class ImageTooLargeError(ImageError):
    """An image's header declares more pixels than the limit allows (a possible decompression bomb)."""


class VideoError(ImageError):
    """A video input cannot be read (PyAV missing, unknown container, damaged stream)."""


class PredictionError(PsegzooError):
    """Prediction settings are invalid (e.g. stride larger than crop)."""


class OutputError(PsegzooError):
    """A result cannot be written (unwritable folder, full disk, or a format that cannot hold it)."""


class DistributedError(PsegzooError):
    """A multi-process (torchrun) job cannot start, or stopped because one of its processes failed."""


class DatasetError(PsegzooError):
    """An evaluation dataset cannot be used: a missing folder, split list or label, a label of
    another size than its image, a label value that is no class, or an empty split."""


class ExportError(PsegzooError):
    """A model cannot be exported to ONNX, or an exported file cannot be read or run (or its packages are missing)."""


class ServeError(PsegzooError):
    """The HTTP service cannot start: its packages are missing, a setting is invalid, or the address is taken."""


@overload
def check_count(value: object, name: str, error: type[PsegzooError] = ..., *, unit: str = ..., minimum: int = ...,
                none: Literal[False] = ...) -> int: ...


@overload
def check_count(value: object, name: str, error: type[PsegzooError] = ..., *, unit: str = ..., minimum: int = ...,
                none: bool) -> int | None: ...


def check_count(value: object, name: str, error: type[PsegzooError] | None = None, *, unit: str = "integer",
                minimum: int = 1, none: bool = False) -> int | None:
    """``value`` when it is a whole number of at least ``minimum`` (1 or 0; a bool is not a number);
    None when ``none`` allows it; else ``error``, one line naming ``name`` and what it must be:
    ``"batch_size must be a positive integer or None, got 0"``. The one check of counts psegzoo takes."""
    if value is None and none:
        return None
    if not isinstance(value, bool) and isinstance(value, numbers.Integral) and int(value) >= minimum:
        return int(value)
    kind = f"a positive {unit}" if minimum == 1 else f"a {unit} ({minimum} or more)"
    raise (error or PsegzooError)(f"{name} must be {kind}{' or None' if none else ''}, got {value!r}")
