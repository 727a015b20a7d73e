"""The environment variables of the lowest layers, read only here: the manifest's extra files, the
image reader's pixel limit and whether psegzoo's own processes keep freed memory. (Getting weights
reads its own in :mod:`psegzoo.hub.settings`, the predictor's in :mod:`psegzoo.predictor.settings`,
the server's in :mod:`psegzoo.serve.settings`.)

=====================  ==============================================  ===========================
Variable               What                                            Default
=====================  ==============================================  ===========================
PSEGZOO_INDEX          extra manifests (``os.pathsep``-separated)      none
PSEGZOO_MAX_PIXELS     largest image read, in pixels                   ``images.DEFAULT_MAX_PIXELS``
PSEGZOO_KEEP_MEMORY    ``0``: the command line leaves malloc as it is  ``1`` (see :mod:`psegzoo.heap`)
=====================  ==============================================  ===========================

Each function reads the variable when called, once for the caller, which passes the value down.
Standard library only, so every layer may use it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ImageError, PsegzooError

INDEX_ENV = "PSEGZOO_INDEX"
MAX_PIXELS_ENV = "PSEGZOO_MAX_PIXELS"
KEEP_MEMORY_ENV = "PSEGZOO_KEEP_MEMORY"
_SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def index_from_env(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The extra manifests ``PSEGZOO_INDEX`` names (empty when unset)."""
    raw = _environ(environ).get(INDEX_ENV, "").strip()
    return tuple(Path(p) for p in raw.split(os.pathsep) if p.strip())


def max_pixels_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The pixel limit ``PSEGZOO_MAX_PIXELS`` sets (None when unset); not a whole number is a one-line
    error. Whether it is positive is checked where it is used, as for the argument."""
    raw = _environ(environ).get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return None
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r} is not an integer pixel count (e.g. 200000000)") from None


def switch(raw: str) -> bool | None:
    """A yes/no value of an environment variable (1/0, true/false, yes/no, on/off; any case, spaces
    around) as a bool; None for anything else, the empty value included (each variable has its default)."""
    return _SWITCH.get(raw.strip().lower())


def keep_memory_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``PSEGZOO_KEEP_MEMORY`` lets psegzoo's processes keep freed memory (default: yes); a value
    other than 1/0 (true/false, yes/no, on/off) is a one-line error."""
    raw = _environ(environ).get(KEEP_MEMORY_ENV, "").strip()
    if not raw:
        return True
    value = switch(raw)
    if value is None:
        raise PsegzooError(f"{KEEP_MEMORY_ENV}={raw.lower()!r} is neither 1 nor 0; unset it, or set 0 to leave malloc as it is")
    return value
