"""The work folder of a run: per-image counts saved as they are made, so a run can be resumed.

    <work_dir>/<model>-<split>-<key>/run.json           what the counts belong to (model, weights, data, settings)
    <work_dir>/<model>-<split>-<key>/counts/<hash>.npy  4 x C int64 counts of one image and label
    <work_dir>/<model>-<split>-<key>/counts.jsonl       the run record of the counts: each file's SHA-256
    <work_dir>/<model>-<split>-<key>/result.json        the finished run's figures

The work folder is ``<cache root>/eval`` unless one is given. ``key`` hashes everything that decides
an image's counts but the image itself: the model, the SHA-256 of its weights, the dataset root,
split, layout and label rules, and every test-time setting; a run with other settings gets its own
folder. Within it, each image's counts are named by the content of its image and label files
(:func:`~psegzoo.evaluation.reading.sample_key`), so a changed file is counted again.

Before saved counts are used they are read within bounds, checked against the image's label file
(:mod:`.saved`) and against the SHA-256 the run recorded when it wrote them; a file that fails is
reported in one warning line and its image evaluated again. Every file is written to a temporary
name and renamed into place; record lines are appended whole. Counts are integers, so the sum of
saved and new counts is exactly the sum an uninterrupted run makes.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError, PsegzooError, option
from ..files import owner_of_temp, write_atomic
from ..outputs import save_json
from .metric import Counts
from .saved import BadCounts, counts_problem, read_counts

log = logging.getLogger(__name__)

WORK_FOLDER = "eval"  # under the cache root
RECORD_NAME = "counts.jsonl"
_COUNTS_NAME = re.compile(r"[0-9a-f]{64}\.npy")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HINT = re.compile(r"[0-9a-f]{32}")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")
# A record line is about 150 bytes: this bounds a record of a million images.
_RECORD_LIMIT = 256 * 2**20
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def run_key(identity: Mapping[str, Any]) -> str:
    """A short stable hash of a run's identity."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def default_work_dir(cache_root: Path) -> Path:
    """Where runs keep their state when no work folder is given: ``<cache root>/eval``."""
    return Path(cache_root) / WORK_FOLDER


class WorkState:
    """Saved per-image counts of one run (one folder under the work folder)."""

    def __init__(self, folder: Path, identity: Mapping[str, Any], num_classes: int):
        self.folder = folder
        self.identity = dict(identity)
        self.num_classes = num_classes
        self._sums: dict[str, str] = {}
        self._hints: set[str] = set()
        self._lock = threading.Lock()

    @property
    def counts_dir(self) -> Path:
        return self.folder / "counts"

    @property
    def record(self) -> Path:
        return self.folder / RECORD_NAME

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
        elif not resume:
            state._clear()
        try:
            state.counts_dir.mkdir(parents=True, exist_ok=True)
            if not run_file.is_file():
                save_json({**state.identity, "num_classes": num_classes}, run_file)
        except OSError as exc:
            raise OutputError(
                f"cannot create the work folder {folder}: {exc.strerror or exc}; choose another with "
                + option("work_dir=DIR", "--work-dir DIR")
            ) from None
        if resume:
            state._read_record()
        return state

    def _check_identity(self, run_file: Path) -> None:
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PsegzooError(f"{run_file}: unreadable ({exc}); delete {self.folder} to start over") from None
        if not isinstance(saved, dict):
            raise PsegzooError(f"{run_file}: not a run record; delete {self.folder} to start over")
        saved.pop("num_classes", None)
        if json.loads(json.dumps(self.identity, default=str)) != saved:
            differ = sorted(k for k in set(saved) | set(self.identity) if saved.get(k) != self.identity.get(k))
            raise PsegzooError(
                f"{self.folder} holds a run made differently ({', '.join(differ)}); delete it or run without "
                + option("resume=True", "--resume")
            )

    def _clear(self) -> None:
        """Start over: remove the counts, record and result this folder holds (files psegzoo names
        its own; anything else is left alone)."""
        if self.folder.is_dir():
            log.info("starting over in %s (resume=True continues a run)", self.folder)
        try:
            names = os.listdir(self.counts_dir)
        except OSError:
            names = []
        for entry in names:
            owner = owner_of_temp(entry)
            if _COUNTS_NAME.fullmatch(owner[0] if owner else entry):
                (self.counts_dir / entry).unlink(missing_ok=True)
        for own in (self.record, self.folder / "result.json", self.folder / "run.json"):
            try:
                own.unlink(missing_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot remove {own}: {exc.strerror or exc}") from None

    def _read_record(self) -> None:
        """The SHA-256 of each counts file the run wrote, and the hints of the images counted."""
        try:
            with open(self.record, "rb") as f:
                data = f.read(_RECORD_LIMIT + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s (%s); every image is evaluated again", self.record, exc.strerror or exc)
            return
        if len(data) > _RECORD_LIMIT:
            log.warning("%s is larger than %d bytes; every image is evaluated again", self.record, _RECORD_LIMIT)
            return
        for line in data.splitlines():
            entry = _parse_line(line)
            if entry is not None:
                file, sha, hint = entry
                self._sums[file] = sha
                if hint is not None:
                    self._hints.add(hint)

    def probably_saved(self, hint: str | None) -> bool:
        """Whether files with this hint (:func:`~psegzoo.evaluation.reading.stat_hint`) were counted
        before: a guess to share out work, never a reason to use counts."""
        return hint is not None and hint in self._hints

    def lookup(self, key: str, label_areas: np.ndarray | None) -> Counts | None:
        """The saved counts of the image and label whose key is ``key``, if a file holds them that
        passes every check against ``label_areas`` (the label file's pixels of each class) and the
        run record; None otherwise (a failing file is named in a warning)."""
        path = self.counts_dir / f"{key}.npy"
        if not os.path.lexists(path):
            return None
        try:
            arr, data = read_counts(path, self.num_classes)
        except BadCounts as exc:
            return _refused(path, str(exc))
        if label_areas is None:
            return _refused(path, "its label file holds values that are no class")
        problem = counts_problem(arr, label_areas)
        if problem is None:
            with self._lock:
                recorded = self._sums.get(path.name)
            if recorded is None:
                problem = f"it is not in the run record {RECORD_NAME}"
            elif hashlib.sha256(data).hexdigest() != recorded:
                problem = f"it does not match the checksum in the run record {RECORD_NAME}"
        if problem is not None:
            return _refused(path, problem)
        return Counts.from_array(arr)

    def save(self, key: str, counts: Counts, hint: str | None = None) -> None:
        """Save one image's counts atomically (temporary file, then rename; mode 0666 & ~umask),
        then append the file's SHA-256 to the run record.

        Not fsynced: counts lost in a power cut are unreadable, missing or unrecorded, and are made again."""
        if not _SHA256.fullmatch(key):
            raise ValueError(f"a counts key is 64 hex digits, got {key!r}")
        buffer = io.BytesIO()
        np.save(buffer, counts.to_array().astype("<i8"), allow_pickle=False)
        data = buffer.getvalue()
        target = self.counts_dir / f"{key}.npy"
        line = json.dumps({"file": target.name, "sha256": hashlib.sha256(data).hexdigest(), "hint": hint},
                          separators=(",", ":")) + "\n"
        try:
            write_atomic(target, data, sync=False)
            fd = os.open(self.record, _APPEND_FLAGS, 0o666)
            try:
                os.write(fd, line.encode("ascii"))  # one write: lines of several processes never interleave
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
        with self._lock:
            self._sums[target.name] = hashlib.sha256(data).hexdigest()
            if hint is not None:
                self._hints.add(hint)

    def save_result(self, document: Mapping[str, Any]) -> Path:
        return save_json(document, self.folder / "result.json")


def _refused(path: Path, problem: str) -> Counts | None:
    """No counts: the warning line that says why."""
    log.warning("saved counts %s: %s; the image is evaluated again", path, problem)
    return None


def _parse_line(line: bytes) -> tuple[str, str, str | None] | None:
    """``(file, sha256, hint)`` of a record line; None for a line that is not one (a torn write)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    file, sha, hint = entry.get("file"), entry.get("sha256"), entry.get("hint")
    if not (isinstance(file, str) and _COUNTS_NAME.fullmatch(file) and isinstance(sha, str) and _SHA256.fullmatch(sha)):
        return None
    return file, sha, hint if isinstance(hint, str) and _HINT.fullmatch(hint) else None
