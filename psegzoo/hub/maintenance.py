"""Looking after the cache: list what is there, remove it, and check it again."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..errors import CacheError, PsegzooError
from ..manifest import Entry, load_manifest
from .layout import CacheLayout, CacheRecord, read_record, remove_file, weights_of, write_record
from .locking import entry_lock
from .settings import DownloadOptions, options_or_default
from .store import layout_of, record_for, remove_entry_files
from .trust import expected, file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedCheckpoint:
    """One checkpoint file name in the cache, as ``psegzoo cache`` lists it.

    ``complete``: the verified checkpoint is there (else only a partial download or temporary
    files are). ``partial_size``: bytes of unfinished downloads and temporary files of this entry.
    """

    name: str
    file: str
    path: Path
    size: int
    sha256: str | None  # from the record; None when the record is missing
    converted: bool
    converted_path: Path | None
    converted_size: int
    converted_sha256: str | None
    partial_size: int
    complete: bool
    url: str | None
    source: str | None
    at: str | None
    trusted: bool  # a hash is recorded for this name (trusted on first use, or learned from its origin)
    trust: str | None = None  # the trust level recorded when it came in (``hub.trust.LEVELS``)

    @property
    def total_size(self) -> int:
        return self.size + self.converted_size + self.partial_size


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking one cached checkpoint (``status``: ok, corrupt or missing) and its
    converted weights (``converted_status``: ok, corrupt, or None when there are none)."""

    name: str
    file: str
    path: Path
    status: str
    problem: str | None
    sha256: str | None
    removed: tuple[Path, ...] = ()
    converted_status: str | None = None
    converted_problem: str | None = None
    trust: str | None = None  # the recorded trust level (``hub.trust.LEVELS``), or None
    url: str | None = None  # where the file came from (credentials removed), as recorded

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.converted_status in (None, "ok")


def _entries_by_file(options: DownloadOptions) -> dict[str, Entry]:
    try:
        m = load_manifest(options.index)
    except PsegzooError as exc:
        log.warning("cannot read the manifest (%s); names in the cache listing come from records", exc)
        return {}
    return {e.weights.file: e for e in m.models if e.weights is not None}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def cached(options: DownloadOptions | None = None) -> list[CachedCheckpoint]:
    """Every checkpoint in the cache (what ``psegzoo cache`` lists), with unfinished downloads, by name.

    Sizes are read from disk; ``sha256`` comes from the record (run :func:`verify` to check it).
    """
    opts = options_or_default(options)
    layout = layout_of(opts)
    layout.ensure()
    by_file = _entries_by_file(opts)
    out = []
    for file in layout.known_files():
        rec = read_record(layout, file)
        entry = by_file.get(file)
        name = rec.name if rec else entry.name if entry else file
        ckpt, conv = layout.checkpoint(file), layout.converted(file)
        partial = sum(_size(p) for p in [layout.part(file), *layout.temp_files(file)])
        try:
            trusted = layout.trust(name).is_file()
        except CacheError:
            trusted = False
        converted = conv.is_file()
        out.append(CachedCheckpoint(
            name=name, file=file, path=ckpt, size=_size(ckpt), sha256=rec.sha256 if rec else None,
            converted=converted, converted_path=conv if converted else None, converted_size=_size(conv),
            converted_sha256=rec.converted.sha256 if rec and rec.converted and converted else None,
            partial_size=partial, complete=ckpt.is_file(), url=rec.url if rec else None,
            source=rec.source if rec else None, at=rec.at if rec else None, trusted=trusted,
            trust=rec.trust if rec else None,
        ))
    out.sort(key=lambda c: (c.name, c.file))
    return out


def _files_for(entry_or_name: Entry | str, opts: DownloadOptions) -> tuple[str, list[str]]:
    """The model name and checkpoint file names an entry or a user-typed name designates."""
    if isinstance(entry_or_name, Entry):
        return entry_or_name.name, [weights_of(entry_or_name).file]
    name = str(entry_or_name).strip()
    hits = [c for c in cached(opts) if name in (c.name, c.file)]
    if hits:
        return hits[0].name, [c.file for c in hits]
    entry = load_manifest(opts.index).get(name)
    return entry.name, [entry.weights.file] if entry.weights is not None else []


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers (this process is not writing them now)
    if os.name == "nt":  # os.kill would terminate it there: assume it is alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):
        return True  # cannot tell: assume it is alive and leave its file alone
    return True


def remove(entry_or_name: Entry | str | None = None, *, options: DownloadOptions | None = None, all: bool = False,
           forget_trust: bool = False) -> list[Path]:
    """Delete cached files; returns the paths removed (empty when nothing was cached).

    ``psegzoo cache rm NAME`` removes one model's checkpoint, record, converted weights, partial
    download and temporary files (under its lock, so never while another process works on it);
    ``--all`` does so for every entry, then removes stray files, leaving temporary files of live
    processes alone. Trust-on-first-use records are kept (a later download must match the same
    hash) unless ``forget_trust``. Lock files stay (removing a lock file others may wait on would
    break the lock).
    """
    opts = options_or_default(options)
    if entry_or_name is None and not all:
        raise CacheError("say which model to remove from the cache, or remove everything with --all")
    layout = layout_of(opts)
    layout.ensure()
    removed: list[Path] = []
    if all:
        for file in layout.known_files():
            removed += _remove_locked(layout, file, opts)
        for path in layout.strays():
            owner = files.owner_of_temp(path.name)
            if owner is not None and _pid_alive(owner[1]):
                continue
            if remove_file(path):
                removed.append(path)
        if forget_trust:
            removed += [p for p in sorted(layout.folder("trusted").glob("*.sha256")) if remove_file(p)]
        return removed
    assert entry_or_name is not None
    name, file_names = _files_for(entry_or_name, opts)
    for file in file_names:
        removed += _remove_locked(layout, file, opts)
    if forget_trust:
        trust = layout.trust(name)
        if remove_file(trust):
            removed.append(trust)
    return removed


def _remove_locked(layout: CacheLayout, file: str, opts: DownloadOptions) -> list[Path]:
    if not layout.owned_files(file):
        return []
    with entry_lock(layout, file, timeout=opts.lock_timeout, what=f"removing {file}"):
        return remove_entry_files(layout, file)


def verify(entry: Entry | str | None = None, *, options: DownloadOptions | None = None,
           full: bool = True) -> list[VerifyResult]:
    """Check cached checkpoints (one entry's, or all) and their converted weights; delete bad ones.

    ``psegzoo verify [NAME]`` calls this. The size is always compared; with ``full`` the SHA-256 of
    the checkpoint is recomputed and compared with the record and with the published (or trusted)
    hash, and converted weights are re-hashed against theirs. A bad checkpoint is deleted with
    everything made from it (the next use gets it again); bad converted weights alone are deleted
    (converted again on next use).
    """
    opts = options_or_default(options)
    layout = layout_of(opts)
    layout.ensure()
    by_file = _entries_by_file(opts)
    if entry is None:
        targets = [(by_file.get(f), f) for f in layout.known_files() if layout.checkpoint(f).is_file()]
    else:
        name, file_names = _files_for(entry, opts)
        if not file_names:
            return [VerifyResult(name, "", Path(), "missing", "no weights are published for it", None)]
        e = entry if isinstance(entry, Entry) else next((x for x in by_file.values() if x.name == name), None)
        targets = [(e, f) for f in file_names]
    results = []
    for e, file in targets:
        layout.ensure("locks")
        with entry_lock(layout, file, timeout=opts.lock_timeout, what=f"verifying {file}"):
            results.append(_verify_one(layout, e, file, full))
    return results


def _checkpoint_problem(layout: CacheLayout, entry: Entry | None, ckpt: Path, rec: CacheRecord | None,
                        full: bool) -> tuple[str | None, str | None]:
    """(what is wrong with the cached checkpoint or None, its SHA-256 as hashed or recorded)."""
    size = ckpt.stat().st_size
    sha = rec.sha256 if rec else None
    if rec is not None and size != rec.size:
        return f"size is {size} bytes, the record says {rec.size}", sha
    if full or rec is None:
        sha = file_sha256(ckpt)
        if rec is not None and sha != rec.sha256:
            return f"SHA-256 {sha} differs from the recorded {rec.sha256}", sha
    if entry is not None and entry.weights is not None and sha is not None:
        # the published and recorded hashes only: a file that fails a hash the user gives (--sha256,
        # PSEGZOO_HASHES, perhaps mistyped) is not used, but not deleted either
        exp = expected(layout, entry, None, allow_unverified=True)
        if not exp.tofu:
            return exp.problem(sha), sha
    return None, sha


def _verify_one(layout: CacheLayout, entry: Entry | None, file: str, full: bool) -> VerifyResult:
    ckpt = layout.checkpoint(file)
    rec = read_record(layout, file)
    name = rec.name if rec else entry.name if entry else file
    if not ckpt.is_file():
        return VerifyResult(name, file, ckpt, "missing", "not in the cache", None)
    before = ckpt.stat()  # recorded below: a change while hashing leaves a record that no longer matches
    problem, sha = _checkpoint_problem(layout, entry, ckpt, rec, full)
    if problem is not None:
        try:
            removed = tuple(remove_entry_files(layout, file))
        except CacheError as exc:
            return VerifyResult(name, file, ckpt, "corrupt", f"{problem}; not deleted: {exc}", sha)
        log.info("removed %s from the cache: %s", file, problem)
        return VerifyResult(name, file, ckpt, "corrupt", problem, sha, removed)
    assert sha is not None
    hashed = full or rec is None  # only a file hashed now may get a new record (never re-stamp unread bytes)
    if hashed and (rec is None or not rec.describes(before)) and entry is not None:
        rec = write_record(layout, record_for(entry, ckpt, sha, rec.url if rec else None,
                                              rec.source if rec else "cache", rec.converted if rec else None,
                                              rec.trust if rec else None, before))
    conv_status, conv_problem, removed_conv = _verify_converted(layout, file, full)
    return VerifyResult(name, file, ckpt, "ok", None, sha, removed_conv, conv_status, conv_problem,
                        rec.trust if rec else None, rec.url if rec else None)


def _verify_converted(layout: CacheLayout, file: str, full: bool) -> tuple[str | None, str | None, tuple[Path, ...]]:
    conv = layout.converted(file)
    if not conv.is_file():
        return None, None, ()
    rec = read_record(layout, file)
    problem = None
    if rec is None or rec.converted is None:
        problem = "no record of how they were made"
    elif rec.converted.source_sha256 != rec.sha256:
        problem = "made from another checkpoint"
    elif conv.stat().st_size != rec.converted.size:
        problem = f"size is {conv.stat().st_size} bytes, the record says {rec.converted.size}"
    elif full:
        sha = file_sha256(conv)
        if sha != rec.converted.sha256:
            problem = f"SHA-256 {sha} differs from the recorded {rec.converted.sha256}"
    if problem is None:
        return "ok", None, ()
    try:
        remove_file(conv)
    except CacheError as exc:
        return "corrupt", f"{problem}; not deleted: {exc}", ()
    if rec is not None and rec.converted is not None:
        write_record(layout, dataclasses.replace(rec, converted=None))
    log.info("removed converted weights %s: %s", conv, problem)
    return "corrupt", problem, (conv,)
