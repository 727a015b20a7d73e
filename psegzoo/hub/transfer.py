"""Getting the bytes of one URL into a partial file: streaming, hashing, resuming, retrying, bounds.

* A ``.part`` is resumed only from the URL that wrote it and only with a strong validator (an ETag
  that is not weak, or Last-Modified) sent as ``If-Range``; in trust-on-first-use mode never. So a
  file is never spliced from two sources or two versions of one.
* Failures are classified and retried as :mod:`.failures` says; each retry is logged as it happens.
* Bounds: the published size (``weights.size``) or else ``max_size`` caps what is received and
  what a Content-Encoding may inflate to; a transfer slower than ``speed_limit`` bytes/s over
  ``speed_time`` seconds fails its try; ``deadline`` bounds the whole fetch.

Uses requests (sessions, redirects that drop credentials on another host), imported only when a
URL is fetched so that listing and resolving stay instant; never torch.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import files
from ..errors import CacheError, DownloadError
from ..units import format_size
from .failures import MAX_REDIRECTS, DeadlineExceeded, Problem, RetryPolicy, UrlFailed, classify, http_problem, load_http
from .layout import unlink
from .progress import Bar
from .settings import HOME_ENV, MAX_SIZE_ENV, DownloadOptions, redact

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB reads and writes: large enough to keep up with curl on loopback
MAX_ATTEMPTS = 50  # hard cap per URL even while attempts make progress
PROGRESS_BYTES = 1 << 20  # a try that received this much starts a fresh count of failures
_SPACE_MARGIN = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class Clock:
    """The deadline of one whole fetch (None: no deadline)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def check(self) -> None:
        left = self.left()
        if left is not None and left <= 0:
            raise DeadlineExceeded()

    def cap(self, seconds: float) -> float:
        left = self.left()
        return seconds if left is None else max(0.01, min(seconds, left))


# --------------------------------------------------------------------------------------------
# Receiving
# --------------------------------------------------------------------------------------------


@dataclass
class Got:
    """What arrived: its hash and size, whether a partial file was extended, what the server said."""

    path: Path
    sha256: str
    size: int
    resumed: bool
    content_type: str = ""
    content_encoding: str = ""
    secure: bool = False  # every byte came over HTTPS with the server's certificate checked
    hashed: tuple[int, ...] | None = None  # identity() of a linked file when it was hashed: must not change


def identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's bytes may have: size, modification and change time, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def verified_https(urls: Sequence[str], verify: Any) -> bool:
    """Whether a transfer through ``urls`` (the request, then each redirect) was HTTPS with the
    certificate checked (``verify``: requests' setting, True or a CA bundle; False turns checks off).

    Only such a transfer from an origin may teach psegzoo a full hash: plain HTTP, or a redirect
    to it, is open to anyone on the path or to whoever takes over a lapsed domain.
    """
    return bool(urls) and verify is not False and all(urlsplit(u).scheme.lower() == "https" for u in urls)


class _Restart(Exception):
    """The answer cannot extend the partial file: discard it and start from zero."""


class StreamHasher:
    """SHA-256 of a stream, computed on a helper thread while the caller receives and writes.

    hashlib releases the GIL on large buffers, so hashing overlaps with network reads and disk
    writes instead of adding to them; each chunk is still hashed exactly once, as it streams.
    """

    def __init__(self, start: Any = None) -> None:
        self._hash = start if start is not None else hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=32)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="psegzoo-sha256", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _run(self) -> None:
        try:
            while True:
                chunk = self._queue.get()
                if chunk is None:
                    return
                self._hash.update(chunk)
        except BaseException as exc:  # reported to the caller, whose put() would otherwise wait forever
            self._failure = exc

    def _put(self, item: Any) -> None:
        """Queue ``item`` for the hashing thread; a thread that died is an error, never an endless wait."""
        while True:
            if self._failure is not None or not self._thread.is_alive():
                raise DownloadError(f"hashing the download failed: {self._failure or 'the hashing thread ended'}")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def update(self, chunk: Any) -> None:
        self._put(bytes(chunk) if isinstance(chunk, memoryview) else chunk)

    def hexdigest(self) -> str:
        if self._digest is None:
            self._put(None)
            self._thread.join()
            if self._failure is not None:
                raise DownloadError(f"hashing the download failed: {self._failure}")
            self._digest = self._hash.hexdigest()
        return self._digest


def write_chunk(f: IO[bytes], data: Any, path: Path) -> None:
    try:
        f.write(data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise CacheError(f"the disk holding {path.parent} is full; free some space or set {HOME_ENV} to a larger disk") from None
        raise CacheError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_space(directory: Path, need: int | None, what: str) -> None:
    if not need or need <= 0:
        return
    free = shutil.disk_usage(directory).free
    if free < need + _SPACE_MARGIN:
        raise CacheError(
            f"not enough disk space for {what}: {format_size(need)} needed, {format_size(free)} free in {directory}; "
            f"free some space or set {HOME_ENV} to a larger disk"
        )


@dataclass(frozen=True)
class Limits:
    """``exact``: the published size (None: unknown); ``cap``: the most bytes accepted."""

    exact: int | None
    cap: int

    @classmethod
    def of(cls, size: int | None, options: DownloadOptions) -> Limits:
        return cls(size, size if size is not None else options.max_size)

    def refuse(self, total: int, *, local: bool = False) -> Problem | None:
        """Why a file of ``total`` bytes (as a server announces it, or a ``local`` file's size) is refused."""
        says = "the file is" if local else "the server announces"
        if self.exact is not None and total != self.exact:
            return Problem("size", f"{says} {total} bytes but the manifest says {self.exact}", False)
        if total > self.cap:
            return Problem("size", f"{says} {format_size(total)}, more than the {self._cap_text()}", False)
        return None

    def _cap_text(self) -> str:
        if self.exact is not None:
            return f"published size {format_size(self.exact)}"
        return f"size limit {format_size(self.cap)} ({MAX_SIZE_ENV})"

    def exceeded(self, received: int) -> Problem | None:
        if received > self.cap:
            return Problem("size", f"received more than the {self._cap_text()}", False)
        return None


def _validator(resp: requests.Response) -> str | None:
    """A strong validator for If-Range: an ETag that is not weak, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified") or None


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _open_part(part: Path, offset: int) -> IO[bytes]:
    if offset == 0:
        unlink(part)
        fd = files.create_new(part)
    else:
        fd = os.open(part, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    f = os.fdopen(fd, "wb", buffering=0)
    f.truncate(offset)
    f.seek(offset)
    return f


def url_key(url: str) -> str:
    """What a partial file's note keeps of its URL: a hash (the URL itself may hold a signature or token)."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def discard_part(part: Path, meta: Path) -> None:
    unlink(part)
    unlink(meta)


def http_download(session: requests.Session, url: str, part: Path, meta_path: Path, *, resume: bool, limits: Limits,
                  options: DownloadOptions, bar: Bar, clock: Clock, headers: dict[str, str]) -> Got:
    """Fetch ``url`` into ``part``, resuming (same URL, strong validator) and retrying per the policy.

    Raises UrlFailed when this URL cannot give the file, DeadlineExceeded, or CacheError (disk).
    """
    meta = _read_meta(meta_path)
    if not (resume and meta.get("url_sha256") == url_key(url) and meta.get("validator")):
        discard_part(part, meta_path)  # never splice bytes from another source, version or trust mode
        meta = {}
    policy = RetryPolicy.of(options)
    shown = redact(url)
    failures = attempts = 0
    while True:
        attempts += 1
        clock.check()
        offset = _size(part)
        got, problem, restart = _one_try(session, url, _request_headers(headers, offset, meta), part, meta_path, meta,
                                         offset, limits, options, bar, clock)
        if got is not None:
            return got
        assert problem is not None
        meta = _read_meta(meta_path)
        if restart or not meta.get("validator"):
            discard_part(part, meta_path)  # nothing that could be resumed safely
            meta = {}
        gained = _size(part) - offset
        if gained >= PROGRESS_BYTES and problem.kind != "slow":
            failures = 0  # real progress: this failure starts a fresh count
        failures += 1
        delay = _delay(policy, failures, attempts, problem, clock)
        log.warning("%s from %s; retry %d of %d in %.1f s", problem.text, shown, failures, policy.retries, delay,
                    extra={"psegzoo_retry": {"url": shown, "attempt": attempts + 1, "wait": delay, "reason": problem.text}})
        time.sleep(delay)


def _request_headers(headers: dict[str, str], offset: int, meta: dict[str, Any]) -> dict[str, str]:
    out = {"Accept-Encoding": "identity", **headers}
    if offset > 0:
        out["Range"] = f"bytes={offset}-"
        out["If-Range"] = meta["validator"]
    return out


def _secure(resp: requests.Response, verify: Any, offset: int, meta: dict[str, Any]) -> bool:
    """Whether this answer, and for a resumed file every earlier part, came over verified HTTPS."""
    chain = [*(r.url for r in resp.history), resp.url]
    return verified_https(chain, verify) and (offset == 0 or meta.get("secure") is True)


def _delay(policy: RetryPolicy, failures: int, attempts: int, problem: Problem, clock: Clock) -> float:
    """How long to wait before the next try; raises UrlFailed (give up) or DeadlineExceeded."""
    delay = policy.wait(failures, problem) if attempts < MAX_ATTEMPTS else None
    if delay is None:
        tries = f" (gave up after {attempts} attempt{'s' if attempts > 1 else ''})" if attempts > 1 else ""
        raise UrlFailed(Problem(problem.kind, problem.text + tries, False, status=problem.status))
    left = clock.left()
    if left is not None and delay >= left:
        raise DeadlineExceeded()
    return delay


def _one_try(session: requests.Session, url: str, request_headers: dict[str, str], part: Path, meta_path: Path,
             meta: dict[str, Any], offset: int, limits: Limits, options: DownloadOptions, bar: Bar,
             clock: Clock) -> tuple[Got | None, Problem | None, bool]:
    """One GET: (the file, None, False), or (None, why it failed, whether the partial file must go)."""
    requests, urllib3 = load_http()
    try:
        resp = session.get(url, headers=request_headers, stream=True,
                           timeout=(clock.cap(options.connect_timeout), clock.cap(options.read_timeout)))
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        return None, classify(exc, options), False
    with contextlib.closing(resp):
        status = resp.status_code
        if status in (200, 206):
            secure = _secure(resp, session.verify, offset, meta)
            try:
                return _stream(resp, url, part, meta_path, offset, limits, options, bar, clock, secure), None, False
            except _Restart as exc:
                return None, Problem("restart", str(exc), True), True
            except UrlFailed as exc:
                return None, exc.problem, False
        if status == 416 and offset > 0:
            return None, Problem("http", f"HTTP 416 for Range bytes={offset}-", True), True
        return None, http_problem(status, resp.reason, resp.headers), False


def _announced(resp: requests.Response, url: str, offset: int, limits: Limits) -> tuple[int | None, int]:
    """(the file's whole size as the answer gives it, or as published; the offset the body starts at)."""
    total: int | None
    if resp.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if not match:
            raise _Restart(f"206 answer without a valid Content-Range ({resp.headers.get('Content-Range')!r})")
        if int(match.group(1)) != offset:
            raise _Restart(f"asked for bytes from {offset}, the server's 206 answer starts at {match.group(1)}")
        total = int(match.group(3)) if match.group(3) != "*" else None
    else:
        if offset > 0:
            log.info("%s: the server sent the whole file instead of a range; starting again from zero", redact(url))
        offset = 0
        length = resp.headers.get("Content-Length", "").strip()
        total = int(length) if length.isdigit() else None
    if total is not None:
        refused = limits.refuse(total)
        if refused is not None:
            raise UrlFailed(refused)
    elif limits.exact is not None:
        total = limits.exact  # no length announced: the published size says when the file is whole
    return total, offset


def _stream(resp: requests.Response, url: str, part: Path, meta_path: Path, offset: int, limits: Limits,
            options: DownloadOptions, bar: Bar, clock: Clock, secure: bool) -> Got:
    import http.client

    requests, urllib3 = load_http()
    total, offset = _announced(resp, url, offset, limits)
    try:
        check_space(part.parent, None if total is None else total - offset, part.name[: -len(".part")])
    except CacheError:
        discard_part(part, meta_path)
        raise
    try:
        note = {"url": redact(url), "url_sha256": url_key(url), "validator": _validator(resp), "total": total,
                "secure": secure}
        files.write_atomic(meta_path, json.dumps(note), sync=False)
    except OSError as exc:
        raise CacheError(f"cannot write {meta_path}: {exc.strerror or exc}") from None
    raw = resp.raw
    # read1 hands over what has arrived (up to CHUNK) instead of waiting for a full CHUNK, so the
    # bytes received before a stall or a dropped connection are kept for the resume.
    read: Callable[..., bytes] = raw.read1 if hasattr(raw, "read1") else raw.read
    received = offset
    hasher = StreamHasher()
    window_t, window_bytes = time.monotonic(), received
    try:
        if offset:
            hash_into(part, offset, hasher)
        bar.start(total, offset)
        with _open_part(part, offset) as f:
            while True:
                chunk = read(CHUNK, decode_content=False)
                if not chunk:
                    break
                received += len(chunk)
                over = limits.exceeded(received)
                if over is not None:
                    raise UrlFailed(over)
                write_chunk(f, chunk, part)
                hasher.update(chunk)
                bar.advance(len(chunk))
                now = time.monotonic()
                if now - window_t >= options.speed_time:
                    rate = (received - window_bytes) / (now - window_t)
                    if rate < options.speed_limit:
                        raise UrlFailed(Problem(
                            "slow", f"slower than {format_size(options.speed_limit)}/s for {options.speed_time:g} s "
                            f"({_of(received, total)})", True))
                    window_t, window_bytes = now, received
                clock.check()
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        p = classify(exc, options)
        raise UrlFailed(Problem(p.kind, f"{p.text} after {_of(received, total)}", True)) from None
    finally:
        digest = hasher.hexdigest()
    if total is not None and received < total:
        raise UrlFailed(Problem("closed", f"connection closed after {_of(received, total)}", True))
    if total is not None and received > total:
        raise _Restart(f"received {received} bytes, more than the announced {total}")
    return Got(path=part, sha256=digest, size=received, resumed=offset > 0,
               content_type=resp.headers.get("Content-Type", ""),
               content_encoding=resp.headers.get("Content-Encoding", "").strip().lower(), secure=secure)


def _of(received: int, total: int | None) -> str:
    """``1.2 MB of 2.0 MB`` (sizes as everywhere in psegzoo)."""
    return f"{format_size(received)} of {format_size(total) if total is not None else 'an unknown size'}"


def hash_into(path: Path, limit: int, h: Any) -> None:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while n < limit:
            data = f.read(min(CHUNK, limit - n))
            if not data:
                break
            h.update(data)
            n += len(data)


def copy_file(src: Path, dst: Path, *, limits: Limits, bar: Bar | None = None) -> Got:
    """Copy a local file into the new file ``dst`` while hashing it; ``dst`` keeps at most the
    source's permission bits (a copy never makes a private file world-readable)."""
    with files.open_regular(src, buffering=0) as fi:  # never a FIFO or device: it could block for ever
        st = os.fstat(fi.fileno())
        refused = limits.refuse(st.st_size, local=True)
        if refused is not None:
            raise UrlFailed(refused)
        check_space(dst.parent, st.st_size, dst.name)
        hasher = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        n = 0
        if bar is not None:
            bar.start(st.st_size, 0)
        try:
            fd = files.create_new(dst, mode_limit=st.st_mode & 0o777)
        except OSError as exc:
            raise CacheError(f"cannot write {dst}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb", buffering=0) as fo:
            while True:
                got = fi.readinto(view)
                if not got:
                    break
                n += got
                if limits.exceeded(n):
                    raise UrlFailed(limits.exceeded(n))  # type: ignore[arg-type]
                write_chunk(fo, view[:got], dst)
                hasher.update(view[:got])
                if bar is not None:
                    bar.advance(got)
    return Got(path=dst, sha256=hasher.hexdigest(), size=n, resumed=False)


def decode(src: Path, dst: Path, encoding: str, limits: Limits) -> Got | None:
    """Undo a Content-Encoding the server applied despite ``Accept-Encoding: identity``, writing
    at most ``limits.cap`` bytes (a small gzip body must not fill the disk); None if it cannot."""
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        return None
    hasher = hashlib.sha256()
    n = 0
    try:
        d = zlib.decompressobj(wbits)
        with open(src, "rb") as fi, os.fdopen(files.create_new(dst), "wb") as fo:

            def emit(plain: bytes) -> None:
                nonlocal n
                n += len(plain)
                if n > limits.cap:  # never inflate more than the cap allows
                    raise ValueError("inflates beyond the size limit")
                fo.write(plain)
                hasher.update(plain)

            while not d.eof:
                data = fi.read(CHUNK)
                pending = data
                while True:  # at most CHUNK bytes of output per call: memory and disk stay bounded
                    plain = d.decompress(pending, CHUNK)
                    emit(plain)
                    pending = d.unconsumed_tail
                    if d.eof or (not pending and len(plain) < CHUNK):
                        break
                if not data:
                    break
            emit(d.flush())
        if not d.eof:
            raise zlib.error("truncated stream")
    except (zlib.error, OSError, ValueError):
        unlink(dst)
        return None
    return Got(path=dst, sha256=hasher.hexdigest(), size=n, resumed=False)


def new_session() -> requests.Session:
    """A session that follows redirects but never carries an ``Authorization`` header past one.

    requests alone keeps it on a redirect to the same host and port; a token given for one URL
    (``HF_TOKEN`` for the endpoint) must reach that URL only, not wherever it redirects.
    """
    requests, _ = load_http()

    class Session(requests.Session):  # type: ignore[name-defined]
        def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
            prepared_request.headers.pop("Authorization", None)
            super().rebuild_auth(prepared_request, response)

    session = Session()
    session.max_redirects = MAX_REDIRECTS
    session.headers.update({"User-Agent": f"psegzoo (python-requests/{requests.__version__})",
                            "Accept-Encoding": "identity"})
    return session
