"""The environment variables of the lowest layers, read only here: the manifest's extra files and the
image reader's pixel limit. (Getting weights reads its own in :mod:`psegzoo.hub.settings`, the
predictor's in :mod:`psegzoo.predictor.settings`, the server's in :mod:`psegzoo.serve.settings`.)

=====================  ==============================================  ===========================
Variable               What                                            Default
=====================  ==============================================  ===========================
PSEGZOO_INDEX          extra manifests (``os.pathsep``-separated)      none
PSEGZOO_MAX_PIXELS     largest image read, in pixels                   ``images.DEFAULT_MAX_PIXELS``
=====================  ==============================================  ===========================

Each function reads the variable when called, once for the caller, which passes the value down.
Standard library only, so every layer may use it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ImageError

INDEX_ENV = "PSEGZOO_INDEX"
MAX_PIXELS_ENV = "PSEGZOO_MAX_PIXELS"


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
