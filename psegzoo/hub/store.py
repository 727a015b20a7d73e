"""Getting a verified checkpoint into the cache: the cached copy, a copy on this machine, or a URL.

:func:`fetch` looks, in order, at the cache (its record says the file is the verified one), the
folders where copies may already be (:mod:`.sources`), the mirrors, the original URL and the
manifest's alternatives. Every candidate's SHA-256 is checked (:mod:`.trust`) before it is moved
into place; the record is written before the rename, and a cached copy stays until its
replacement is verified. With every source failing, one error lists each source and why, and
names the ways in.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import files
from ..errors import CacheError, DownloadError, OfflineError, UnknownModelError, VerificationError, option
from ..manifest import Entry, load_manifest
from . import failures, transfer
from .hashes import listed_hash
from .layout import (
    CacheLayout,
    CacheRecord,
    ConvertedRecord,
    now_iso,
    read_record,
    remove_file,
    unlink,
    weights_of,
    write_record,
)
from .locking import entry_lock
from .progress import Bar
from .redact import redact_url
from .settings import (
    HASHES_ENV,
    MIRROR_ENV,
    OFFLINE_ENV,
    SEARCH_ENV,
    STRICT_ENV,
    DownloadOptions,
    cache_root,
    options_or_default,
    redact,
)
from .sources import auth_headers, candidate_urls, find_local_copies, local_path
from .trust import ORIGIN_HTTPS, PINNED, PREFIX_ONLY, Expected, expected, file_sha256, sniff, trusted_sha256, write_trust

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

UNREADABLE = "cannot read it"  # how copy_in's problem starts when the source could not be read (not a mismatch)


@dataclass(frozen=True)
class Fetched:
    """A verified checkpoint in the cache and how it got there.

    ``source``: "cache" (already there), "download", "local" (a copy found in a search folder) or
    "import". ``url``: where the bytes came from (credentials removed; ``file://`` for local files).
    ``newly_trusted``: this call recorded the hash of an entry that publishes none (trust on first
    use): show ``sha256`` to the user. ``skipped``: sources tried before, each with why it was not used.
    ``trust``: how far the hash check proves the file (``hub.trust.LEVELS``; None: not recorded).
    """

    name: str
    path: Path
    sha256: str
    size: int
    source: str
    url: str | None
    verified_by: str
    newly_trusted: bool = False
    skipped: tuple[str, ...] = field(default=())
    trust: str | None = None

    @property
    def downloaded(self) -> bool:
        return self.source == "download"


def resolve_entry(entry: Entry | str, options: DownloadOptions) -> Entry:
    """An entry, or a name resolved in the manifest the options name (``index``)."""
    if isinstance(entry, Entry):
        return entry
    return load_manifest(options.index).get(str(entry))


def layout_of(options: DownloadOptions) -> CacheLayout:
    return CacheLayout(options.home)


def checkpoint_path(entry: Entry, options: DownloadOptions | None = None) -> Path:
    """``<root>/checkpoints/<weights.file>``: where the verified checkpoint of ``entry`` lives (may not exist).

    Without ``options`` only ``PSEGZOO_HOME`` (or its defaults) is read, so listing stays cheap.
    """
    return CacheLayout(options.home if options is not None else cache_root()).checkpoint(weights_of(entry).file)


# --------------------------------------------------------------------------------------------
# The cached copy
# --------------------------------------------------------------------------------------------


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
    return st


def remove_entry_files(layout: CacheLayout, file: str) -> list[Path]:
    """Delete a checkpoint and everything derived from it (call with its lock held)."""
    return [p for p in layout.owned_files(file) if remove_file(p)]


def cached_copy(layout: CacheLayout, entry: Entry, exp: Expected, *, repair: bool) -> tuple[Fetched | None, str | None]:
    """The cached checkpoint when it verifies, and else why not (a note for the final error).

    Without ``repair`` only the record is consulted (no hashing, no lock). With ``repair`` (lock
    held) a file whose record is missing or stale is hashed; a file whose bytes differ from its
    record, or an unrecorded file that does not verify, is deleted. A recorded (once verified) file
    that fails today's checks, e.g. a mistyped ``--sha256``, is kept until a replacement verifies.
    """
    ckpt = layout.checkpoint(weights_of(entry).file)
    st = _stat(ckpt)
    if st is None:
        return None, None
    rec = _cached_record(layout, entry, ckpt, st, exp, repair)
    if rec is None:
        return None, None
    sha = rec.sha256
    problem = None if exp.tofu else exp.problem(sha)
    if problem is not None:
        return None, f"the cached copy was kept: its {problem}"
    level = PINNED if exp.full else rec.trust
    refused = exp.refusal(level)
    if refused is not None:
        return None, f"the cached copy was kept but not used: {refused}"
    newly = False
    if exp.record_trust and trusted_sha256(layout, entry) != sha:
        if not repair:
            return None, None  # the trust record must be written: come back with the lock
        write_trust(layout, entry, sha)
        newly = exp.tofu
    return Fetched(entry.name, ckpt, sha, st.st_size, "cache", rec.url, exp.verified_by, newly, trust=level), None


def _cached_record(layout: CacheLayout, entry: Entry, ckpt: Path, st: os.stat_result, exp: Expected,
                   repair: bool) -> CacheRecord | None:
    """The record that describes the cached file: as read, or (``repair``) made anew after hashing it.

    None when there is none to trust; a file whose bytes differ from its record, or an unrecorded
    file that does not verify, is deleted (``repair`` only).
    """
    file = weights_of(entry).file
    rec = read_record(layout, file)
    if rec is not None and rec.describes(st):
        return rec
    if not repair:
        return None
    sha = file_sha256(ckpt)
    if rec is not None and sha != rec.sha256:
        log.warning("cached %s differs from its record (SHA-256 %s, recorded %s) and is removed", ckpt, sha, rec.sha256)
        remove_entry_files(layout, file)
        return None
    if rec is None and not exp.tofu and exp.problem(sha) is not None:
        log.warning("removed unverified %s from the cache: its %s", ckpt, exp.problem(sha))
        remove_entry_files(layout, file)
        return None
    # the stat taken before hashing: a change while hashing leaves a record that no longer matches
    if rec is None:
        return write_record(layout, record_for(entry, ckpt, sha, None, "cache", st=st))
    return write_record(layout, record_for(entry, ckpt, sha, rec.url, rec.source, rec.converted, rec.trust, st))


def _record_rename(layout: CacheLayout, ckpt: Path, rec: CacheRecord) -> None:
    """A rename sets the file's change time: record the new one, if nothing else about the file changed."""
    st = ckpt.stat()
    if (st.st_size, st.st_mtime_ns, st.st_ino) == (rec.size, rec.mtime_ns, rec.inode) and st.st_ctime_ns != rec.ctime_ns:
        write_record(layout, replace(rec, ctime_ns=st.st_ctime_ns))


def record_for(entry: Entry, path: Path, sha256: str, url: str | None, source: str,
               converted: ConvertedRecord | None = None, trust: str | None = None,
               st: os.stat_result | None = None) -> CacheRecord:
    st = path.stat() if st is None else st
    return CacheRecord(name=entry.name, file=weights_of(entry).file, sha256=sha256, size=st.st_size,
                       url=redact_url(url) if url else None, source=source, at=now_iso(), mtime_ns=st.st_mtime_ns,
                       inode=st.st_ino, converted=converted, trust=trust, ctime_ns=st.st_ctime_ns)


def expected_of(layout: CacheLayout, entry: Entry, opts: DownloadOptions, *, pin: str | None = None,
                allow_unverified: bool | None = None) -> Expected:
    """:func:`.trust.expected` with what ``opts`` adds: the ``PSEGZOO_HASHES`` list and strict mode."""
    return expected(layout, entry, pin, opts.allow_unverified if allow_unverified is None else allow_unverified,
                    listed=listed_hash(opts, weights_of(entry).file), strict=opts.strict)


def prefix_only_warning(entry: Entry, shown: str, sha256: str, exp: Expected) -> str:
    """The one line said when a file only the published prefix vouches for enters the cache."""
    return (f"{entry.name}: only the {len(exp.prefix)}-digit hash prefix {exp.prefix} vouches for {shown} (a prefix "
            f"stops accidents, not forgeries); if you trust it, pin it with --sha256 {sha256} or {HASHES_ENV}, or "
            f"refuse such files with --strict ({STRICT_ENV}=1)")


def install(layout: CacheLayout, entry: Entry, tmp: Path, sha256: str, url: str | None, source: str,
            exp: Expected, level: str | None = None, hashed: tuple[int, ...] | None = None) -> tuple[Path, bool]:
    """Move the verified file ``tmp`` into place (lock held): fsync, record, rename, then trust.

    ``level``: the trust level it comes in with (recorded). A file from an origin over verified
    HTTPS teaches the entry its full hash (recorded, pinned from then on); one that only the prefix
    vouches for is said in a warning, once, here. ``hashed``: the identity (:func:`transfer.identity`)
    a hard-linked file had when it was hashed; if it changed since, the file is refused. The record
    is written before the rename and updated with the change time the rename gave the file.
    Returns (path, newly trusted). Converted weights
    made from another file are removed.
    """
    file = weights_of(entry).file
    ckpt = layout.checkpoint(file)
    previous = read_record(layout, file)
    keep = previous.converted if previous is not None and previous.sha256 == sha256 else None
    if keep is None:
        unlink(layout.converted(file))
    written: list[CacheRecord] = []

    def record() -> None:
        st = tmp.stat()
        if hashed is not None and transfer.identity(st) != hashed:
            raise VerificationError(f"{entry.name}: the linked file changed while it was being verified; try again")
        written.append(write_record(layout, record_for(entry, tmp, sha256, url, source, keep, level, st)))

    try:
        files.commit(tmp, ckpt, before=record)
        _record_rename(layout, ckpt, written[0])
    except OSError as exc:
        raise CacheError(f"cannot move the verified file into {ckpt}: {exc.strerror or exc}") from None
    newly = False
    if exp.record_trust and trusted_sha256(layout, entry) != sha256:
        write_trust(layout, entry, sha256)
        newly = exp.tofu
    elif level == ORIGIN_HTTPS and trusted_sha256(layout, entry) is None:
        write_trust(layout, entry, sha256, learned_from=url)
    if level == PREFIX_ONLY:
        log.warning(prefix_only_warning(entry, redact_url(url) if url else str(tmp), sha256, exp))
    return ckpt, newly


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


def check_candidate(got: transfer.Got, exp: Expected, limits: transfer.Limits) -> tuple[transfer.Got, str | None]:
    """The file to install (``got`` or its decoded form) and what is wrong with it, if anything.

    The bytes as received are what the hash is checked on. Only when they fail and the server
    applied a Content-Encoding although asked for identity is the decoded body tried, decoded
    within the size bounds. With no hash to check, an HTML page is refused.
    """
    kind = sniff(got.path)
    problem = None if exp.tofu else exp.problem(got.sha256)
    if exp.tofu and kind == "html":
        return got, f"it is an HTML page (Content-Type {got.content_type or 'not given'}), not a checkpoint"
    if (problem is not None or (exp.tofu and kind == "gzip")) and got.content_encoding:
        decoded = transfer.decode(got.path, files.temp_sibling(got.path, "decoded"), got.content_encoding, limits)
        if decoded is not None and (exp.tofu or exp.problem(decoded.sha256) is None):
            unlink(got.path)
            decoded.secure = got.secure
            return decoded, None
        if decoded is not None:
            unlink(decoded.path)
        elif exp.tofu:
            return got, f"the server sent a {got.content_encoding} body that cannot be decoded within the size limit"
    if problem is not None and kind == "html":
        problem += f" (the server sent an HTML page, {got.content_type or 'no Content-Type'}, not the checkpoint)"
    return got, problem


def _link_in(src: Path, tmp: Path, exp: Expected, limits: transfer.Limits) -> tuple[transfer.Got | None, str | None] | None:
    """Hard-link ``src`` to ``tmp``, then check the linked inode: its size first, then its hash.

    None when no link can be made (another file system, links not allowed): copy instead. The
    identity the file had while it was hashed goes with it, so that a change during or after the
    hashing is caught (:func:`install`, and the record's change time at every later use).
    """
    try:
        os.link(src, tmp)
    except OSError:
        return None
    try:
        before = os.stat(tmp)
        refused = limits.refuse(before.st_size, local=True)
        if refused is not None:
            unlink(tmp)
            return None, refused.text
        sha = file_sha256(tmp)
        changed = transfer.identity(os.stat(tmp)) != transfer.identity(before)
    except (OSError, CacheError) as exc:
        unlink(tmp)
        return None, f"{UNREADABLE} ({getattr(exc, 'strerror', None) or exc})"
    problem = "it changed while it was being hashed" if changed else None if exp.tofu else exp.problem(sha)
    if problem is not None:
        unlink(tmp)
        return None, problem if changed else f"its {problem}"
    return transfer.Got(path=tmp, sha256=sha, size=before.st_size, resumed=False,
                        hashed=transfer.identity(before)), None


def copy_in(layout: CacheLayout, entry: Entry, src: Path, exp: Expected, limits: transfer.Limits, *, link: bool,
             bar: Bar | None) -> tuple[transfer.Got | None, str | None]:
    """Bring a local file into a temporary file beside the checkpoint, hashed; (got, problem)."""
    tmp = files.temp_sibling(layout.checkpoint(weights_of(entry).file), "copy")
    if link:
        linked = _link_in(src, tmp, exp, limits)
        if linked is not None:
            return linked
    try:
        got = transfer.copy_file(src, tmp, limits=limits, bar=bar)
    except failures.UrlFailed as exc:
        unlink(tmp)
        return None, exc.problem.text
    except OSError as exc:
        unlink(tmp)
        return None, f"{UNREADABLE} ({exc.strerror or exc})"
    except BaseException:
        unlink(tmp)
        raise
    problem = None if exp.tofu else exp.problem(got.sha256)
    problem = None if problem is None else f"its {problem}"
    if problem is None and sniff(tmp) == "html":
        problem = "it is an HTML page (a saved error or login page?), not a checkpoint"
    if problem is not None:
        unlink(tmp)
        return None, problem
    return got, None


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def fetch(entry: Entry | str, options: DownloadOptions | None = None) -> Fetched:
    """The verified cached checkpoint of ``entry`` (an Entry or a name), getting it first if needed.

    Raises NoWeightsError, UnverifiedWeightsError, OfflineError, DownloadError (every source tried
    and why it failed, and the ways in), VerificationError or CacheError.
    """
    opts = options_or_default(options)
    entry = resolve_entry(entry, opts)
    w = weights_of(entry)
    layout = layout_of(opts)
    layout.ensure()
    exp = expected_of(layout, entry, opts, pin=opts.sha256)
    if not opts.force:
        hit, _ = cached_copy(layout, entry, exp, repair=False)
        if hit is not None:
            return _from_cache(layout, w.file, hit)
    layout.ensure("checkpoints", "records", "partial", "locks")
    with entry_lock(layout, w.file, timeout=opts.lock_timeout, what=f"getting {w.file}"):
        note = None
        if not opts.force:
            hit, note = cached_copy(layout, entry, exp, repair=True)
            if hit is not None:
                return _from_cache(layout, w.file, hit)
        return _get(layout, entry, exp, opts, note)


_RECORDED_SOURCE = {"download": "downloaded from", "local": "copied from a file found on this machine,",
                    "import": "imported from", "cache": "found in the cache folder and hashed there"}


def _from_cache(layout: CacheLayout, file: str, hit: Fetched) -> Fetched:
    """``hit``, after saying (at INFO, ``psegzoo -v``) that it was cached and where it came from then."""
    rec = read_record(layout, file)
    if rec is None:
        log.info("%s is already in the cache: %s", hit.name, hit.path)
        return hit
    how = _RECORDED_SOURCE.get(rec.source, rec.source)
    origin = f" {redact(rec.url)}" if rec.url and rec.source != "cache" else ""
    log.info("%s is already in the cache: %s (%s%s on %s; SHA-256 %s)", hit.name, hit.path, how, origin, rec.at, hit.sha256)
    return hit


def download(entry: Entry | str, options: DownloadOptions | None = None) -> Path:
    """The path of the verified cached checkpoint of ``entry`` (see :func:`fetch`)."""
    return fetch(entry, options).path


@dataclass(frozen=True)
class Tried:
    """A source that did not give the file, and why (``unreachable``: the host could not be reached)."""

    source: str
    why: str
    unreachable: bool = False

    def __str__(self) -> str:
        return f"{self.source}: {self.why}"


def _get(layout: CacheLayout, entry: Entry, exp: Expected, opts: DownloadOptions, note: str | None) -> Fetched:
    w = weights_of(entry)
    limits = transfer.Limits.of(w.size, opts)
    clock = transfer.Clock(opts.deadline)
    tried: list[Tried] = [Tried("cache", note)] if note else []
    bar = Bar(_show_progress(opts), entry.name)
    try:
        for src, why in find_local_copies(entry, opts):
            got, problem = copy_in(layout, entry, src, exp, limits, link=opts.link, bar=None)
            level = exp.level(origin_https=False)  # a copy on disk is a third party, wherever it came from
            if got is not None and exp.refusal(level) is not None:
                unlink(got.path)
                got, problem = None, exp.refusal(level)
            if got is None:
                log.warning("not using %s (found in %s): %s", src, why, problem)
                tried.append(Tried(str(src), str(problem)))
                continue
            uri = src.resolve().as_uri()
            path, newly = install(layout, entry, got.path, got.sha256, uri, "local", exp, level, got.hashed)
            log.info("found a verified copy of %s at %s (%s)", entry.name, src, why)
            return Fetched(entry.name, path, got.sha256, got.size, "local", uri, exp.verified_by, newly,
                           tuple(map(str, tried)), level)
        urls = candidate_urls(entry, opts)
        if opts.offline:
            urls = [u for u in urls if u.startswith("file://")]
            if not urls:
                raise _offline_error(entry, layout, tried)
        with contextlib.closing(transfer.new_session()) as session:
            for url in urls:
                fetched = _try_url(session, layout, entry, url, exp, limits, opts, bar, clock, tried)
                if fetched is not None:
                    return replace(fetched, skipped=tuple(map(str, tried)))
    except failures.DeadlineExceeded:
        tried.append(Tried("stopped", f"the deadline of {opts.deadline:g} s ({option('deadline=S', '--deadline S')}) passed"))
    finally:
        bar.close()
    if opts.offline:
        raise _offline_error(entry, layout, tried)
    raise _failure(entry, tried)


def _try_url(session: requests.Session, layout: CacheLayout, entry: Entry, url: str, exp: Expected,
             limits: transfer.Limits, opts: DownloadOptions, bar: Bar, clock: transfer.Clock,
             tried: list[Tried]) -> Fetched | None:
    file = weights_of(entry).file
    part, meta = layout.part(file), layout.part_meta(file)
    shown = redact(url)
    for fresh in (False, True):
        try:
            if url.startswith("file://"):
                src = local_path(url)
                got, problem = copy_in(layout, entry, src, exp, limits, link=False, bar=bar)
                if got is None:
                    tried.append(Tried(shown, str(problem)))
                    return None
                log.info("copying %s from %s", file, src)
            else:
                got = transfer.http_download(session, url, part, meta, resume=not exp.tofu and not fresh, limits=limits,
                                             options=opts, bar=bar, clock=clock, headers=auth_headers(url, opts))
        except failures.UrlFailed as exc:
            tried.append(Tried(shown, exc.problem.text + _hint(url, exc.problem, opts), exc.problem.host_unreachable))
            log.info("%s; trying the next source", tried[-1])
            return None
        except DownloadError as exc:
            tried.append(Tried(shown, str(exc)))
            return None
        except CacheError:
            transfer.discard_part(part, meta)
            raise
        final, problem = check_candidate(got, exp, limits)
        level = exp.level(origin_https=weights_of(entry).is_origin(url) and final.secure)
        refused = exp.refusal(level) if problem is None else None
        problem = problem or refused
        if problem is None:
            path, newly = install(layout, entry, final.path, final.sha256, url, "download", exp, level)
            unlink(meta)
            log.info("got %s from %s (SHA-256 %s, %s)", file, shown, final.sha256, level)
            return Fetched(entry.name, path, final.sha256, final.size, "download", shown, exp.verified_by, newly,
                           trust=level)
        unlink(final.path)
        transfer.discard_part(part, meta)
        if got.resumed and not fresh:  # also when strict mode refused it: bytes from zero may come over verified HTTPS
            log.info("%s: a resumed download failed verification; downloading it again from zero", shown)
            continue
        tried.append(Tried(shown, f"got {final.size} bytes but {problem}"))
        return None
    return None


def _hint(url: str, problem: failures.Problem, opts: DownloadOptions) -> str:
    if problem.status in (401, 403) and urlsplit(url).hostname == urlsplit(opts.hf_endpoint).hostname:
        return " (a private or gated repository needs HF_TOKEN)" if not opts.hf_token else " (check HF_TOKEN's access)"
    return ""


def _show_progress(opts: DownloadOptions) -> bool:
    return opts.progress if opts.progress is not None else sys.stderr.isatty()


def ways_in() -> str:
    """What to do when no source gives the file (also shown by ``psegzoo download`` and ``predict``).

    It comes first in the error, before the sources tried: in an 80-column terminal the advice is on
    the first lines, not below a dozen lines of URLs."""
    return (
        f"What to do: use a mirror, with {option('mirrors=[URL]', '--mirror URL')} or {MIRROR_ENV} (a URL template, "
        f"hf://ORG/REPO, or a colleague's 'psegzoo mirror' folder served over HTTP); or use a copy you have, with "
        f"{option('psegzoo.load(weights=FILE)', '--weights FILE (predict, eval, export)')}, 'psegzoo import FILE|DIR', or a folder "
        f"to search ({option('search=[DIR]', '--search DIR')} or {SEARCH_ENV}); or try again later (a host that "
        f"fails, as download.openmmlab.com has, may come back)"
    )


def _failure(entry: Entry, tried: list[Tried]) -> DownloadError:
    w = weights_of(entry)
    original = redact(w.url)
    head = f"could not get {entry.name} ({w.file}) from any source"
    if any(t.source == original and t.unreachable for t in tried):
        head += f": its original host {urlsplit(w.url).hostname} is unreachable"
    listing = "; ".join(map(str, tried)) or "no source"
    return DownloadError(f"{head}. {ways_in()}. Tried, in order: {listing}")


def _offline_error(entry: Entry, layout: CacheLayout, tried: list[Tried]) -> OfflineError:
    w = weights_of(entry)
    seen = f" Tried: {'; '.join(map(str, tried))}" if tried else ""
    return OfflineError(
        f"offline mode is on ({OFFLINE_ENV} or {option('offline=True', '--offline')}) and {entry.name} is not in the "
        f"cache ({layout.checkpoint(w.file)}). On a machine with network access, get {redact(w.url)} and copy it here, "
        f"then run 'psegzoo import {w.file}'; or turn offline mode off.{seen}"
    )


def entry_for_file(file_name: str, index: Sequence[Path] | None) -> Entry:
    """The entry whose published file is ``file_name`` (or whose name is its stem)."""
    try:
        return load_manifest(index).get(file_name)
    except UnknownModelError:
        raise UnknownModelError(
            f"cannot tell which model {file_name!r} is: its name is neither a published checkpoint file name nor "
            f"'<model name>.pth'; pass the model name with {option('name=', '--name')}"
        ) from None


def not_the_checkpoint(src: Path, entry: Entry, problem: str) -> VerificationError:
    """``problem``: what :func:`copy_in` found wrong, a whole phrase ("its SHA-256 ...", "the file is ...")."""
    w = weights_of(entry)
    return VerificationError(
        f"{src} is not the checkpoint of {entry.name}: {problem}. Check that it is the file {w.file} from {w.url}, "
        f"or name the right model with {option('name=', '--name')}"
    )
