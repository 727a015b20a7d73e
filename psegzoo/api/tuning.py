"""``psegzoo.tune()``: measure which CPU fast paths pay here and record the choice for every later load."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CacheError
from ..hub import DownloadOptions
from .loading import tuning_record

if TYPE_CHECKING:  # the measuring code is imported when used: loading a model (or an ONNX file) never needs it
    from ..models.fast import tuning


def tune(*, force: bool = False, repeats: int | None = None, download: DownloadOptions | None = None,
         record: str | os.PathLike | None = None) -> tuning.Tuning:
    """Time each CPU fast path against what it replaces (a few seconds) and record the choice.

    The record is ``fast_paths.json`` in the cache root (``download.home``; ``record`` names another
    file), keyed by CPU model, vector features, torch version and thread count; ``load()`` reads it
    and never measures. When the load average says the machine is busy the result is returned but
    not recorded, unless ``force``. ``repeats``: timed runs of each path (default ``tuning.REPEATS``).
    """
    from ..models.fast import tuning

    path = tuning_record(download) if record is None else Path(record)
    try:
        return tuning.tune(path, force=force, repeats=tuning.REPEATS if repeats is None else repeats)
    except OSError as exc:
        raise CacheError(f"cannot record the fast paths in {path}: {exc.strerror or exc}; "
                         "check that the cache folder is writable (PSEGZOO_HOME)") from None


def cpu_fast_paths(*, download: DownloadOptions | None = None) -> tuning.Choice:
    """The fast paths ``load()`` installs on this CPU and where they come from (the record or the
    rule); reads the record, measures nothing."""
    from ..models.fast import tuning

    return tuning.cpu_fast_paths(tuning_record(download))
