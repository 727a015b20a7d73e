"""``psegzoo mirror DIR``: verified cached checkpoints laid out as their original URLs, for a team.

``DIR/<path of the original URL>`` (``DIR/mmsegmentation/v0.5/pspnet/<name>/<file>``, SSSegmentation's
files under their GitHub release path) plus ``DIR/SHA256SUMS`` in ``sha256sum`` format. Any static
HTTP server over DIR (or an upload of it) is then a mirror without a template: ``--mirror URL``.
Each file is re-hashed on the way out (copied while hashing; with ``link``, hard-linked and then
hashed). Every target is checked to stay inside DIR (decoded, normalised, symlinks resolved).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..errors import CacheError
from ..manifest import Entry, load_manifest
from .layout import read_record, unlink, weights_of
from .maintenance import cached
from .settings import DownloadOptions, options_or_default
from .sources import url_path
from .store import expected_of, layout_of
from .trust import CHUNK, file_sha256

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS"
_MAX_SUMS = 64 << 20  # bytes of an existing SHA256SUMS read: far more than any zoo needs


@dataclass(frozen=True)
class MirrorResult:
    """One checkpoint written into a mirror folder. ``status``: copied, linked, already there,
    not cached, corrupt (the cached file no longer matches its record: not written), or refused
    (its place would be outside the folder: not written)."""

    name: str
    status: str
    path: Path | None = None
    sha256: str | None = None
    detail: str | None = None


def _copy_hashing(src: Path, dst: Path) -> str:
    h = hashlib.sha256()
    with open(src, "rb", buffering=0) as fi, os.fdopen(files.create_new(dst), "wb", buffering=0) as fo:
        while chunk := fi.read(CHUNK):
            fo.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def _read_sums(path: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    try:
        with files.open_regular(path) as f:  # a FIFO put there must not hang the command
            text = f.read(_MAX_SUMS).decode("utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return sums
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def target_inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it stays inside ``root``, else None.

    ``relative`` is already percent-decoded (``%2e%2e`` is ``..`` here). It must be a relative
    path without ``..``, and the folders that exist along it (symlinks resolved) must lead inside
    ``root``, so no manifest URL and no link placed in ``root`` can make a write land elsewhere.
    """
    parts = relative.replace("\\", "/").split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") or ":" in p[:2] for p in parts):
        return None
    target = root.joinpath(*parts)
    real_root = root.resolve()
    try:
        real = target.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
        return None
    return target if real.is_relative_to(real_root) and real != real_root else None


def _mirror_one(entry: Entry, root: Path, options: DownloadOptions, link: bool) -> MirrorResult:
    layout = layout_of(options)
    file = weights_of(entry).file
    ckpt = layout.checkpoint(file)
    rec = read_record(layout, file)
    if rec is None or not ckpt.is_file():
        return MirrorResult(entry.name, "not cached", detail="download or import it first")
    exp = expected_of(layout, entry, options, allow_unverified=True)
    target = target_inside(root, url_path(entry))
    if target is None:
        return MirrorResult(entry.name, "refused", detail=f"its URL path {url_path(entry)!r} leads outside {root}; "
                            "fix the manifest that lists it")
    if target.is_file() and target.stat().st_size == rec.size and file_sha256(target) == rec.sha256:
        return MirrorResult(entry.name, "already there", target, rec.sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target_inside(root, url_path(entry)) is None:  # a link put in place while the folders were made
        return MirrorResult(entry.name, "refused", detail=f"{target.parent} leads outside {root}")
    tmp = files.temp_sibling(target, "mirror")
    status = "copied"
    try:
        if link:
            try:
                os.link(ckpt, tmp)  # link first, then hash what was linked: no window between check and use
                status = "linked"
                sha = file_sha256(tmp)
            except OSError:
                unlink(tmp)
        if status != "linked":
            sha = _copy_hashing(ckpt, tmp)
        problem = f"SHA-256 {sha} differs from the recorded {rec.sha256}" if sha != rec.sha256 else (
            None if exp.tofu else exp.problem(sha))
        if problem is not None:
            unlink(tmp)
            return MirrorResult(entry.name, "corrupt", None, sha, f"{problem}; run 'psegzoo verify {entry.name}'")
        files.commit(tmp, target)
    except BaseException:
        unlink(tmp)
        raise
    return MirrorResult(entry.name, status, target, sha)


def mirror(directory: str | os.PathLike, names: Iterable[str] | None = None, *, options: DownloadOptions | None = None,
           link: bool = False) -> list[MirrorResult]:
    """Write verified cached checkpoints (``names``, or every cached one) into ``directory`` in the
    original URL layout, and update ``directory/SHA256SUMS``; one result per checkpoint.

    Files are copied. ``link`` hard-links them instead where the file system allows: then the
    mirror's files *are* the cache's, and whoever can write the mirror folder can change the cache
    (the cache notices, by its records, and hashes such a file again before use).
    """
    opts = options_or_default(options)
    root = Path(directory).expanduser()
    manifest = load_manifest(opts.index)
    if names is None:
        by_file = {e.weights.file: e for e in manifest.models if e.weights is not None}
        entries = [by_file[c.file] for c in cached(opts) if c.complete and c.file in by_file]
    else:
        entries = [manifest.get(n) for n in names]
    try:
        root.mkdir(parents=True, exist_ok=True)
        results = [_mirror_one(e, root, opts, link) for e in entries]
        sums = _read_sums(root / SUMS)
        for r in results:
            if r.path is not None and r.sha256 is not None:
                sums[r.path.relative_to(root).as_posix()] = r.sha256
        if sums:
            files.write_atomic(root / SUMS, "".join(f"{sha}  {rel}\n" for rel, sha in sorted(sums.items())))
    except OSError as exc:
        raise CacheError(f"cannot write the mirror folder {root}: {exc.strerror or exc}") from None
    return results
