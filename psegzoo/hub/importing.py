"""Putting checkpoints the user already has into the cache: one file, or every one under a folder.

A file is recognised by its name (the published file name, or ``<model name>.pth``) or, for a
renamed ``.pth``, by its SHA-256 matching exactly one published hash. It is verified like a download
(published hash, pinned hash, or trust record); importing a file for an entry that publishes no
hash is the user vouching for it (its hash is recorded as trusted). Files are copied (or
hard-linked with ``link``), never moved.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CacheError, PsegzooError, VerificationError
from ..manifest import Entry, Manifest, load_manifest
from . import transfer
from .layout import weights_of
from .locking import entry_lock
from .settings import DownloadOptions, options_or_default
from .store import UNREADABLE, cached_copy, copy_in, entry_for_file, expected_of, install, layout_of, not_the_checkpoint
from .trust import file_sha256

log = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


@dataclass(frozen=True)
class ImportResult:
    """What happened to one file. ``status``: imported, already cached, hash mismatch, refused
    (strict mode: only the hash prefix vouches for it), not a zoo file, or unreadable; ``error``
    says why a checkpoint was refused."""

    source: Path
    status: str
    name: str | None = None
    path: Path | None = None
    sha256: str | None = None
    newly_trusted: bool = False
    error: PsegzooError | None = None
    trust: str | None = None  # the trust level it has in the cache (``hub.trust.LEVELS``)

    @property
    def ok(self) -> bool:
        return self.status in ("imported", "already cached")

    @property
    def detail(self) -> str | None:
        return None if self.error is None else str(self.error)


class StrictRefusal(VerificationError):
    """The file matches, but only on the published hash prefix, and strict mode is on."""


def _identify(src: Path, manifest: Manifest) -> Entry | None:
    """The entry ``src`` is by its file name (the published one, or ``<model name>.pth``)."""
    for e in manifest.models:
        if e.weights is not None and e.weights.file == src.name:
            return e
    if src.name.endswith(".pth") and src.name[: -len(".pth")] in manifest.by_name():
        return manifest.by_name()[src.name[: -len(".pth")]]
    return None


def _identify_by_hash(src: Path, manifest: Manifest, options: DownloadOptions) -> Entry | None:
    """The entry whose published hash ``src``'s matches, if exactly one does (checkpoint suffixes only).

    Only entries the file could be are considered: those that publish its size, or publish none
    while the file is within ``max_size``. A file no entry could be is not read at all, so a huge
    (or sparse) file in the folder costs one ``stat``.
    """
    if src.suffix not in _CHECKPOINT_SUFFIXES:
        return None
    try:
        size = src.stat().st_size
    except OSError as exc:
        raise CacheError(f"cannot read {src}: {exc.strerror or exc}") from None
    candidates = [e for e in manifest.models
                  if e.weights is not None and (e.weights.sha256 or e.weights.sha256_prefix)
                  and (e.weights.size == size if e.weights.size is not None else size <= options.max_size)]
    if not candidates:
        return None
    sha = file_sha256(src)
    hits = [e for e in candidates if sha.startswith(e.weights.sha256 or e.weights.sha256_prefix or "")]  # type: ignore[union-attr]
    return hits[0] if len(hits) == 1 else None


def _import_entry(src: Path, entry: Entry, options: DownloadOptions) -> ImportResult:
    layout = layout_of(options)
    w = weights_of(entry)
    exp = expected_of(layout, entry, options, pin=options.sha256, allow_unverified=True)
    level = exp.level(origin_https=False)  # a file the user has is a third party, wherever it came from
    layout.ensure("checkpoints", "records", "locks")
    with entry_lock(layout, w.file, timeout=options.lock_timeout, what=f"importing {w.file}"):
        hit, _ = cached_copy(layout, entry, exp, repair=True)
        got, problem = copy_in(layout, entry, src, exp, transfer.Limits.of(w.size, options), link=options.link, bar=None)
        if got is None:
            if str(problem).startswith(UNREADABLE):
                raise CacheError(f"cannot import {src}: {str(problem).removeprefix(UNREADABLE).strip(' ()')}")
            raise not_the_checkpoint(src, entry, str(problem))
        if hit is not None and hit.sha256 == got.sha256:
            got.path.unlink()
            return ImportResult(src, "already cached", entry.name, hit.path, hit.sha256, trust=hit.trust)
        refused = exp.refusal(level)
        if refused is not None:
            got.path.unlink()
            raise StrictRefusal(f"not importing {src} as {entry.name}: {refused}")
        path, newly = install(layout, entry, got.path, got.sha256, src.resolve().as_uri(), "import", exp, level,
                              got.hashed)
    log.info("imported %s as %s (SHA-256 %s, %s)", src, path, got.sha256, level)
    return ImportResult(src, "imported", entry.name, path, got.sha256, newly_trusted=newly, trust=level)


def import_checkpoint(path: str | os.PathLike, *, name: str | None = None,
                      options: DownloadOptions | None = None) -> ImportResult:
    """Copy a checkpoint file the user already has into the cache, after verifying it.

    ``psegzoo import FILE [--name NAME] [--sha256 HEX]`` calls this: the air-gapped and host-down
    way in. The model is ``name`` (any name the manifest resolves) or else found from the file
    (name, or hash). Raises VerificationError when the file is not the checkpoint, UnknownModelError
    when nothing says which model it is, CacheError when it cannot be read or the cache written.
    """
    opts = options_or_default(options)
    src = Path(path).expanduser()
    if not src.is_file():
        what = "not a regular file (a FIFO, socket or device)" if src.exists() else "no such file"
        raise CacheError(f"cannot import {str(src)!r}: {what}")
    manifest = load_manifest(opts.index)
    entry: Entry | None
    if name:
        entry = manifest.get(name)
    else:
        entry = _identify(src, manifest) or _identify_by_hash(src, manifest, opts)
        if entry is None:
            entry = entry_for_file(src.name, opts.index)  # raises, saying how to name the model
    return _import_entry(src, entry, opts)


def _files_under(folder: Path) -> list[Path]:
    out = []
    for root, dirs, names in os.walk(folder, followlinks=False, onerror=lambda _e: None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    return out


def import_folder(folder: str | os.PathLike, options: DownloadOptions | None = None) -> list[ImportResult]:
    """Import every recognised checkpoint under ``folder`` (subfolders included, links to folders
    not followed); one result per file, in path order. A bad or unknown file is a result, never an
    error."""
    opts = options_or_default(options)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CacheError(f"cannot import from {str(root)!r}: no such folder")
    manifest = load_manifest(opts.index)
    results = []
    for src in _files_under(root):
        if src.is_symlink() or not src.is_file():
            continue
        entry = None
        try:
            entry = _identify(src, manifest) or _identify_by_hash(src, manifest, opts)
            if entry is None or entry.weights is None:
                results.append(ImportResult(src, "not a zoo file"))
                continue
            results.append(_import_entry(src, entry, opts))
        except StrictRefusal as exc:
            results.append(ImportResult(src, "refused", entry.name if entry else None, error=exc))
        except VerificationError as exc:
            results.append(ImportResult(src, "hash mismatch", entry.name if entry else None, error=exc))
        except PsegzooError as exc:
            results.append(ImportResult(src, "unreadable", entry.name if entry else None, error=exc))
    return results
