"""Converted weights in the cache: written under the entry's lock, recorded, verified before use.

The converter (which needs torch) lives elsewhere; it hands this module a function that writes
the safetensors file to a path. This module does the rest: the lock, the name, the atomic rename,
the SHA-256 in the checkpoint's record (written before the rename), and the checks on the way out.
Whether a converted file is stale is decided from its header alone (safetensors: 8 bytes of length,
then JSON; readable without torch): it must have been made from the verified checkpoint's SHA-256.
Its bytes must then match the recorded hash; a damaged file is deleted and converted again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import files
from ..errors import CacheError, CheckpointError
from ..manifest import Entry
from .layout import CacheLayout, ConvertedRecord, read_record, unlink, weights_of, write_record
from .locking import entry_lock
from .settings import HOME_ENV, DownloadOptions, options_or_default
from .store import layout_of, resolve_entry
from .trust import CHUNK

log = logging.getLogger(__name__)

_MAX_HEADER = 100_000_000  # a safetensors header larger than this is not one of ours


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets, ``__metadata__``)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise CheckpointError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(p)!r} is not a safetensors file ({exc}); delete it to convert again") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{str(p)!r} is not a safetensors file (its header is not an object)")
    return header


def header_metadata(path: str | Path) -> dict[str, str]:
    """Only the ``__metadata__`` of a safetensors file (what psegzoo stamps: source hash, name, format)."""
    meta = read_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _fresh_record(layout: CacheLayout, entry: Entry, source_sha256: str) -> ConvertedRecord | None:
    """The converted record when the file there was made from ``source_sha256`` for ``entry`` (header check)."""
    file = weights_of(entry).file
    path = layout.converted(file)
    rec = read_record(layout, file)
    if rec is None or rec.sha256 != source_sha256 or rec.converted is None or not path.is_file():
        return None
    if rec.converted.source_sha256 != source_sha256:
        return None
    try:
        meta = header_metadata(path)
    except CheckpointError as exc:
        log.warning("%s", exc)
        return None
    if meta.get("source_sha256") != source_sha256 or meta.get("name") != entry.name:
        log.info("converted weights %s are stale (made from another checkpoint); converting again", path)
        return None
    return rec.converted


def _damaged(layout: CacheLayout, entry: Entry, options: DownloadOptions, problem: str) -> None:
    file = weights_of(entry).file
    path = layout.converted(file)
    log.warning("converted weights %s are damaged (%s); they are removed and converted again", path, problem)
    with entry_lock(layout, file, timeout=options.lock_timeout, what=f"removing damaged {path.name}"):
        unlink(path)
        rec = read_record(layout, file)
        if rec is not None and rec.converted is not None:
            write_record(layout, dataclasses.replace(rec, converted=None))


def read_converted(entry: Entry | str, source_sha256: str, options: DownloadOptions | None = None) -> bytes | None:
    """The bytes of ``entry``'s converted weights when they were made from the checkpoint with
    SHA-256 ``source_sha256`` and match their recorded hash; None when absent, stale or damaged (a
    damaged file is deleted). One read: the caller deserializes the verified bytes."""
    opts = options_or_default(options)
    entry = resolve_entry(entry, opts)
    layout = layout_of(opts)
    rec = _fresh_record(layout, entry, source_sha256)
    if rec is None:
        return None
    path = layout.converted(weights_of(entry).file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("cannot read %s: %s; converting again", path, exc.strerror or exc)
        return None
    sha = hashlib.sha256(data).hexdigest()
    if sha != rec.sha256:
        _damaged(layout, entry, opts, f"SHA-256 {sha}, recorded {rec.sha256}")
        return None
    return data


def converted_file(entry: Entry | str, options: DownloadOptions | None = None) -> Path | None:
    """The converted weights of a cached, verified checkpoint when fresh and intact (no torch)."""
    opts = options_or_default(options)
    entry = resolve_entry(entry, opts)
    layout = layout_of(opts)
    file = weights_of(entry).file
    rec = read_record(layout, file)
    try:
        st = layout.checkpoint(file).stat()
    except OSError:
        return None
    if rec is None or not rec.describes(st):
        return None
    conv = _fresh_record(layout, entry, rec.sha256)
    if conv is None:
        return None
    path = layout.converted(file)
    sha = _hash(path)
    if sha != conv.sha256:
        _damaged(layout, entry, opts, f"SHA-256 {sha}, recorded {conv.sha256}")
        return None
    return path


def _hash(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def discard_converted(entry: Entry | str, options: DownloadOptions | None = None) -> None:
    """Delete ``entry``'s converted weights (e.g. found unfit when loaded) so they are made again."""
    opts = options_or_default(options)
    entry = resolve_entry(entry, opts)
    _damaged(layout_of(opts), entry, opts, "refused when loaded")


def store_converted(entry: Entry | str, source_sha256: str, write: Callable[[Path], None],
                    options: DownloadOptions | None = None) -> Path:
    """Put converted weights made from the cached checkpoint ``source_sha256`` into the cache.

    ``write(tmp)`` writes the safetensors file at ``tmp`` (an empty file with the right mode). Under
    the entry's lock the file is hashed, checked to be a safetensors file, recorded (before the
    rename) and renamed into place. Any OS error (full disk, read-only cache, a folder in the way)
    is a CacheError.
    """
    opts = options_or_default(options)
    entry = resolve_entry(entry, opts)
    layout = layout_of(opts)
    file = weights_of(entry).file
    target = layout.converted(file)

    def record(tmp: Path) -> None:
        sha = _hash(tmp)
        header_metadata(tmp)  # a file that cannot be read back is not recorded
        rec = read_record(layout, file)
        if rec is None or rec.sha256 != source_sha256 or sha is None:
            raise CacheError(f"the cached checkpoint {file} changed while it was converted; run the command again")
        st = tmp.stat()
        conv = ConvertedRecord(sha256=sha, size=st.st_size, source_sha256=source_sha256, mtime_ns=st.st_mtime_ns,
                               inode=st.st_ino)
        write_record(layout, dataclasses.replace(rec, converted=conv))

    try:
        layout.ensure("converted", "locks")
        with entry_lock(layout, file, timeout=opts.lock_timeout, what=f"writing {target.name}"), \
                files.atomic_path(target, tag="convert", before=record) as tmp:
            write(tmp)
    except OSError as exc:
        raise CacheError(
            f"cannot write the converted weights {target}: {exc.strerror or exc}; free some space, make the cache "
            f"writable, or set {HOME_ENV} to another folder"
        ) from None
    return target
