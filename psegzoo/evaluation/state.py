"""The work folder of a run: per-image counts saved as they are made, so a run can be resumed.

    <work_dir>/<model>-<split>-<key>/run.json          what the counts belong to (model, data, settings)
    <work_dir>/<model>-<split>-<key>/counts/000123.npy  4 x C int64 counts of image 123 of the split
    <work_dir>/<model>-<split>-<key>/result.json       the finished run's figures

``key`` hashes everything that decides an image's counts (the weights, the listing of the split, the
label rules and the test pipeline), so a run with other settings gets its own folder and a resumed
run only ever adds counts made the same way. Every file is written to a temporary name and renamed
into place: an interrupted run leaves whole files only. Counts are integers, so the sum of saved and
new counts is exactly the sum an uninterrupted run makes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError, PsegzooError, option
from ..files import write_atomic
from ..outputs import save_json
from .metric import Counts

log = logging.getLogger(__name__)

_COUNTS_NAME = re.compile(r"(\d+)\.npy")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def run_key(identity: Mapping[str, Any]) -> str:
    """A short stable hash of a run's identity."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class WorkState:
    """Saved per-image counts of one run (one folder under the work folder)."""

    def __init__(self, folder: Path, identity: Mapping[str, Any], num_classes: int):
        self.folder = folder
        self.identity = dict(identity)
        self.num_classes = num_classes

    @property
    def counts_dir(self) -> Path:
        return self.folder / "counts"

    @classmethod
    def open(cls, work_dir: str | os.PathLike, name: str, split: str | None, identity: Mapping[str, Any],
             num_classes: int, *, resume: bool) -> WorkState:
        """The run's folder under ``work_dir``; without ``resume`` its saved counts are cleared."""
        slug = _SAFE.sub("_", f"{name}-{split or 'folder'}")
        folder = Path(work_dir) / f"{slug}-{run_key(identity)}"
        state = cls(folder, identity, num_classes)
        run_file = folder / "run.json"
        if resume and run_file.is_file():
            state._check_identity(run_file)
        elif not resume and state.counts_dir.is_dir():
            log.info("starting over in %s (resume=True continues a run)", folder)
            shutil.rmtree(state.counts_dir, ignore_errors=True)
            for stale in ("result.json",):
                (folder / stale).unlink(missing_ok=True)
        try:
            state.counts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create the work folder {folder}: {exc.strerror or exc}; choose another with "
                + option("work_dir=DIR", "--work-dir DIR")
            ) from None
        if not run_file.is_file():
            save_json({**state.identity, "num_classes": num_classes}, run_file)
        return state

    def _check_identity(self, run_file: Path) -> None:
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PsegzooError(f"{run_file}: unreadable ({exc}); delete {self.folder} to start over") from None
        saved.pop("num_classes", None)
        if json.loads(json.dumps(self.identity, default=str)) != saved:
            differ = sorted(k for k in set(saved) | set(self.identity) if saved.get(k) != self.identity.get(k))
            raise PsegzooError(
                f"{self.folder} holds a run made differently ({', '.join(differ)}); delete it or run without "
                + option("resume=True", "--resume")
            )

    def saved(self) -> set[int]:
        """The indices of the images whose counts are saved (by name only: nothing is read)."""
        try:
            names = [p.name for p in self.counts_dir.iterdir()]
        except OSError:
            return set()
        return {int(m.group(1)) for m in map(_COUNTS_NAME.fullmatch, names) if m is not None}

    def load(self) -> dict[int, Counts]:
        """Saved counts by image index (files that cannot be read are left out and made again)."""
        done: dict[int, Counts] = {}
        if not self.counts_dir.is_dir():
            return done
        for path in self.counts_dir.iterdir():
            match = _COUNTS_NAME.fullmatch(path.name)
            if match is None:
                continue
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable saved counts %s (%s); the image is evaluated again", path, exc)
                continue
            if arr.shape != (4, self.num_classes) or arr.dtype != np.int64 or (arr < 0).any():
                log.warning("ignoring saved counts %s of shape %s; the image is evaluated again", path, arr.shape)
                continue
            done[int(match.group(1))] = Counts.from_array(arr)
        return done

    def save(self, index: int, counts: Counts) -> None:
        """Save one image's counts atomically (temporary file, then rename; mode 0666 & ~umask).

        Not fsynced: counts lost in a power cut are unreadable or missing, and are made again."""
        target = self.counts_dir / f"{index:06d}.npy"
        try:
            write_atomic(target, lambda f: np.save(f, counts.to_array(), allow_pickle=False), sync=False)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None

    def save_result(self, document: Mapping[str, Any]) -> Path:
        return save_json(document, self.folder / "result.json")
