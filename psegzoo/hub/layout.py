"""Where each cached thing lives, and the record that describes a verified checkpoint.

Each kind of file has its own folder, so no checkpoint name can ever be mistaken for another's
record, lock or partial download::

    <root>/checkpoints/<file>               verified checkpoints, nothing else
    <root>/records/<file>.json              what was verified: SHA-256, size, origin; converted weights
    <root>/converted/<stem>.safetensors     converted weights (stem: the file name without .pth)
    <root>/partial/<file>.part[.json]       an unfinished download and its resume validator
    <root>/locks/<file>.lock, .holder       the entry's lock, and who holds it
    <root>/trusted/<name>.sha256            the hash recorded for an entry: trusted on first use, or
                                            learned from its origin over verified HTTPS

Temporary files (``.<target>.<tag>-<pid>-<hex>.tmp``, see :mod:`psegzoo.files`) sit beside their
target, so they are counted with their entry and removed with it.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import files
from ..errors import CacheError, NoWeightsError
from ..manifest import Entry, Weights
from .redact import redact_url
from .settings import HOME_ENV, check_home

log = logging.getLogger(__name__)

HEX64 = re.compile(r"[0-9a-f]{64}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
KINDS = ("checkpoints", "records", "converted", "partial", "locks", "trusted")


def weights_of(entry: Entry) -> Weights:
    if entry.weights is None:
        raise NoWeightsError(
            f"no weights are published for {entry.name} yet; run 'psegzoo list' to see the models that have weights"
        )
    return entry.weights


def converted_name(file: str) -> str:
    """``x.pth`` -> ``x.safetensors`` (the manifest refuses two files that would share it)."""
    stem = file[: -len(".pth")] if file.endswith(".pth") else file
    return stem + ".safetensors"


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class CacheLayout:
    """The cache under ``root``; every path is checked to stay inside its folder."""

    root: Path

    def folder(self, kind: str) -> Path:
        return self.root / kind

    def _inside(self, kind: str, name: str, what: str) -> Path:
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
            raise CacheError(
                f"refusing {what} {name!r}: not a plain file name (letters, digits, . _ + -), it could "
                f"place a file outside the cache at {self.root}"
            )
        return self.root / kind / name

    def checkpoint(self, file: str) -> Path:
        return self._inside("checkpoints", file, "checkpoint file name")

    def record(self, file: str) -> Path:
        return self._inside("records", file, "checkpoint file name").with_name(file + ".json")

    def converted(self, file: str) -> Path:
        return self._inside("converted", converted_name(file), "converted file name")

    def part(self, file: str) -> Path:
        return self._inside("partial", file, "checkpoint file name").with_name(file + ".part")

    def part_meta(self, file: str) -> Path:
        return self._inside("partial", file, "checkpoint file name").with_name(file + ".part.json")

    def lock(self, file: str) -> Path:
        return self._inside("locks", file, "checkpoint file name").with_name(file + ".lock")

    def holder(self, file: str) -> Path:
        return self._inside("locks", file, "checkpoint file name").with_name(file + ".holder")

    def trust(self, name: str) -> Path:
        return self._inside("trusted", name, "model name").with_name(name + ".sha256")

    def ensure(self, *kinds: str) -> None:
        """Create the folders ``kinds`` (a one-line error when the cache cannot be created there)."""
        check_home(self.root)
        for kind in kinds:
            path = self.root / kind
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(
                    f"cannot create the cache folder {path}: {exc.strerror or exc}; set {HOME_ENV} to a writable folder"
                ) from None
            if not path.is_dir():
                raise CacheError(f"{path} is in the way of the cache folder it should be; remove it or set {HOME_ENV}")

    def owned_files(self, file: str) -> list[Path]:
        """Every file this cache holds for the checkpoint ``file``, temporary ones included."""
        fixed = [self.checkpoint(file), self.record(file), self.converted(file), self.part(file), self.part_meta(file)]
        return [p for p in fixed if p.is_file() or p.is_symlink()] + self.temp_files(file)

    def temp_files(self, file: str) -> list[Path]:
        """Temporary files left for ``file`` (by this or a killed process), each in the folder of the
        file it was to become: another entry whose file is named like one of these sidecars
        (``A.pth.json``) owns nothing here."""
        targets = {"checkpoints": {file}, "records": {file + ".json"}, "converted": {converted_name(file)},
                   "partial": {file + ".part", file + ".part.json"}, "locks": {file + ".holder"}}
        found = []
        for kind, names in targets.items():
            for name in _listdir(self.root / kind):
                owner = files.owner_of_temp(name)
                if owner is not None and owner[0] in names:
                    found.append(self.root / kind / name)
        return found

    def in_progress_size(self, file: str) -> int:
        """Bytes of ``file``'s partial download and temporary files: what grows while someone works on it."""
        total = 0
        for p in [self.part(file), *self.temp_files(file)]:
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def known_files(self) -> list[str]:
        """Checkpoint file names that have anything in the cache (a file, a record, a partial, a temp)."""
        names: set[str] = set()
        for n in _listdir(self.root / "checkpoints"):
            owner = files.owner_of_temp(n)
            names.add(owner[0] if owner else n)
        for n in _listdir(self.root / "records"):
            owner = files.owner_of_temp(n)
            base = owner[0] if owner else n
            if base.endswith(".json"):
                names.add(base[: -len(".json")])
        for n in _listdir(self.root / "partial"):
            owner = files.owner_of_temp(n)
            base = owner[0] if owner else n
            for suffix in (".part.json", ".part"):
                if base.endswith(suffix):
                    names.add(base[: -len(suffix)])
                    break
        return sorted(n for n in names if _SAFE_NAME.fullmatch(n))

    def strays(self) -> list[Path]:
        """Files in the cache folders that belong to no checkpoint file name (e.g. converted weights
        whose checkpoint and record are gone); lock and trust folders are not looked at."""
        owned: set[str] = set()
        for file in self.known_files():
            owned.update(p.name for p in self.owned_files(file))
        out = []
        for kind in ("checkpoints", "records", "converted", "partial"):
            out += [self.root / kind / n for n in _listdir(self.root / kind) if n not in owned]
        return out


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


def _owner(path: Path) -> str:
    """`` (owned by NAME)`` for a file of another user, else ``""`` (the owner is what the user needs to know)."""
    try:
        uid = path.lstat().st_uid
        if not hasattr(os, "getuid") or uid == os.getuid():
            return ""
        import pwd

        return f" (owned by {pwd.getpwuid(uid).pw_name})"
    except (OSError, KeyError, ImportError):
        return ""


def remove_file(path: Path) -> bool:
    """Delete a cache file (False when it was not there); a CacheError in one line when it cannot be
    deleted: another user's file in a shared cache, a read-only file system, an immutable file."""
    try:
        return unlink(path)
    except OSError as exc:
        raise CacheError(
            f"cannot delete {path}{_owner(path)}: {exc.strerror or exc}; remove it as its owner (or fix the "
            f"file system), or use a cache of your own with {HOME_ENV}"
        ) from None


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertedRecord:
    """The converted weights made from a verified checkpoint: their own hash, and the source's."""

    sha256: str
    size: int
    source_sha256: str
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class CacheRecord:
    """``records/<file>.json``: what was verified about a cached checkpoint.

    ``size``, ``mtime_ns``, ``ctime_ns`` and ``inode`` identify the very file that was hashed:
    while they match, the file is the verified one without hashing it again. A file changed in
    place fails this even when its modification time was set back (no one can set the change time
    back), as does a record left from an older file or one written before change times were
    recorded: such a file is hashed again before use.
    """

    name: str
    file: str
    sha256: str
    size: int
    url: str | None
    source: str  # "download" | "local" (found in a search folder) | "import" | "cache" (hashed in place)
    at: str  # ISO 8601, UTC
    mtime_ns: int = 0
    inode: int = 0
    converted: ConvertedRecord | None = None
    trust: str | None = None  # how far the hash check proved it when it came in (hub.trust.LEVELS); None: unknown
    ctime_ns: int = 0

    def describes(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (self.size, self.mtime_ns, self.ctime_ns,
                                                                            self.inode)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _parse_converted(data: Any) -> ConvertedRecord | None:
    if not isinstance(data, dict):
        return None
    try:
        rec = ConvertedRecord(sha256=str(data["sha256"]), size=int(data["size"]), source_sha256=str(data["source_sha256"]),
                              mtime_ns=int(data.get("mtime_ns", 0)), inode=int(data.get("inode", 0)))
    except (KeyError, TypeError, ValueError):
        return None
    return rec if HEX64.fullmatch(rec.sha256) and HEX64.fullmatch(rec.source_sha256) else None


def _shown_url(value: Any) -> str | None:
    """A recorded URL as it may be shown (records written by older versions kept query strings)."""
    return redact_url(value) if isinstance(value, str) else None


def read_record(layout: CacheLayout, file: str) -> CacheRecord | None:
    """The record of ``file``, or None (missing, unreadable or describing another file: logged)."""
    path = layout.record(file)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        rec = CacheRecord(
            name=str(data["name"]), file=str(data["file"]), sha256=str(data["sha256"]), size=int(data["size"]),
            url=_shown_url(data.get("url")), source=str(data.get("source", "download")), at=str(data.get("at", "")),
            mtime_ns=int(data.get("mtime_ns", 0)), inode=int(data.get("inode", 0)),
            converted=_parse_converted(data.get("converted")), ctime_ns=int(data.get("ctime_ns", 0)),
            trust=data["trust"] if isinstance(data.get("trust"), str) else None,
        )
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable cache record %s", path)
        return None
    if rec.file != file or not HEX64.fullmatch(rec.sha256) or rec.size < 0:
        log.warning("ignoring cache record %s: it does not describe %s", path, file)
        return None
    return rec


def write_record(layout: CacheLayout, rec: CacheRecord) -> CacheRecord:
    """Write ``rec`` atomically (call with the entry's lock held)."""
    path = layout.record(rec.file)
    try:
        layout.ensure("records")
        files.write_atomic(path, json.dumps(rec.to_json(), indent=2) + "\n")
    except OSError as exc:
        raise CacheError(f"cannot write the cache record {path}: {exc.strerror or exc}") from None
    return rec
