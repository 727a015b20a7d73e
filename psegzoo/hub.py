"""Verified checkpoint downloads and the local cache.

A checkpoint is only ever used after its SHA-256 has been checked: against the 8-hex-digit prefix
the manifest publishes, against a hash the user pins (``sha256=``/``--sha256``), or, for entries
with no published hash, against the hash recorded when the user first chose to trust the file
(trust on first use). The final path never holds a partial or unverified file.

Cache layout (root: ``PSEGZOO_HOME``, else ``$XDG_CACHE_HOME/psegzoo``, else ``~/.cache/psegzoo``)::

    <root>/checkpoints/<published file name>          the verified checkpoint (mode 0666 & ~umask)
    <root>/checkpoints/<file>.json                    record: sha256, size, name, url, source, time
    <root>/checkpoints/<file>.part, <file>.part.json  an unfinished download and its resume validator
    <root>/checkpoints/<file>.lock                    lock file (fcntl.flock) while one is downloading
    <root>/checkpoints/<file stem>.safetensors        converted weights (written by the converter)
    <root>/trusted/<name>.sha256                      trusted SHA-256 of an entry with no published hash

Environment variables (explicit function arguments win over them):

    PSEGZOO_HOME              cache root (see above)
    PSEGZOO_MIRROR            comma-separated base URLs tried in order before the original URL, as
                              ``<mirror>/<path of the original URL>`` (http(s):// or file://)
    PSEGZOO_OFFLINE=1         never touch the network; use cached files only (file:// mirrors still work)
    PSEGZOO_ALLOW_UNVERIFIED=1  download entries that publish no hash and trust them on first use
    PSEGZOO_RETRIES           retries per URL after the first attempt (default 4) on connection errors,
                              timeouts, HTTP 408/429/5xx; never on 404/403
    PSEGZOO_TIMEOUT           read timeout in seconds: a stalled server fails after this (default 60)
    PSEGZOO_CONNECT_TIMEOUT   connect timeout in seconds (default 15)
    PSEGZOO_BACKOFF           first retry delay in seconds, doubled each retry (default 1)
    PSEGZOO_BACKOFF_MAX       longest retry delay in seconds (default 30)
    PSEGZOO_LOCK_TIMEOUT      seconds to wait for another process downloading the same file when it
                              makes no progress (default 600)

This module uses requests and rich only: it must never import torch.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import os
import queue
import re
import secrets
import shutil
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import requests
import urllib3

from . import manifest as _manifest
from .errors import (
    CacheError,
    DownloadError,
    NoWeightsError,
    OfflineError,
    PsegzooError,
    UnknownModelError,
    UnverifiedWeightsError,
    VerificationError,
)
from .manifest import Entry

log = logging.getLogger(__name__)

HOME_ENV = "PSEGZOO_HOME"
MIRROR_ENV = "PSEGZOO_MIRROR"
OFFLINE_ENV = "PSEGZOO_OFFLINE"
ALLOW_UNVERIFIED_ENV = "PSEGZOO_ALLOW_UNVERIFIED"
RETRIES_ENV = "PSEGZOO_RETRIES"
TIMEOUT_ENV = "PSEGZOO_TIMEOUT"
CONNECT_TIMEOUT_ENV = "PSEGZOO_CONNECT_TIMEOUT"
BACKOFF_ENV = "PSEGZOO_BACKOFF"
BACKOFF_MAX_ENV = "PSEGZOO_BACKOFF_MAX"
LOCK_TIMEOUT_ENV = "PSEGZOO_LOCK_TIMEOUT"

DEFAULT_RETRIES = 4
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_BACKOFF = 1.0
DEFAULT_BACKOFF_MAX = 30.0
DEFAULT_LOCK_TIMEOUT = 600.0
MAX_REDIRECTS = 10

CHUNK = 1 << 20  # 1 MiB reads and writes: large enough to keep up with curl on loopback
_SPACE_MARGIN = 1 << 20  # room kept free beyond the bytes still to download
_MAX_ATTEMPTS = 50  # hard cap per URL even while every attempt makes progress
_RETRY_STATUSES = frozenset({408, 425, 429})
_USER_AGENT = f"psegzoo (python-requests/{requests.__version__})"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_OWN_SUFFIXES = (".json", ".part", ".lock", ".safetensors", ".tmp")

_FALSE = frozenset({"", "0", "false", "no", "off"})
# Files psegzoo creates are never opened through a symlink someone placed in the cache.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


# --------------------------------------------------------------------------------------------
# Records returned to callers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` did: the verified file, its hash, and how it was verified.

    ``newly_trusted`` is True when this call recorded the hash of an entry with no published hash
    (trust on first use); callers should show ``sha256`` to the user then.
    """

    name: str
    path: Path
    sha256: str
    size: int
    downloaded: bool
    url: str | None
    verified_by: str
    newly_trusted: bool = False


@dataclass(frozen=True)
class CacheRecord:
    """The ``<file>.json`` written beside a verified checkpoint."""

    name: str
    file: str
    sha256: str
    size: int
    url: str | None
    source: str  # "download" | "import" | "cache" (hashed in place, record was missing)
    at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class CachedCheckpoint:
    """One checkpoint file in the cache, as ``psegzoo cache`` lists it."""

    name: str
    file: str
    path: Path
    size: int
    sha256: str | None  # from the record; None when the record is missing
    converted: bool
    converted_path: Path | None
    converted_size: int
    url: str | None
    source: str | None
    at: str | None
    trusted: bool  # a trust-on-first-use record exists for this name


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking one cached checkpoint (``status``: ok, corrupt or missing)."""

    name: str
    file: str
    path: Path
    status: str
    problem: str | None
    sha256: str | None
    removed: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """The cache root: ``PSEGZOO_HOME``, else ``$XDG_CACHE_HOME/psegzoo``, else ``~/.cache/psegzoo``."""
    home = os.environ.get(HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "psegzoo"
    return Path.home() / ".cache" / "psegzoo"


def checkpoints_dir() -> Path:
    """Where checkpoint files, their records and converted weights live."""
    return cache_root() / "checkpoints"


def trusted_dir() -> Path:
    """Where trust-on-first-use hashes live, one ``<name>.sha256`` per entry."""
    return cache_root() / "trusted"


def _inside(directory: Path, file_name: str, what: str) -> Path:
    """``directory/file_name``, refusing any name that could land outside ``directory``.

    Only plain names pass (no separators, no leading dot), and the resolved parent must be the
    resolved directory. A symlink the user placed at the leaf may point anywhere: writes replace
    the link itself (``os.replace``), never its target.
    """
    if not isinstance(file_name, str) or not _SAFE_NAME.fullmatch(file_name):
        raise CacheError(
            f"refusing {what} {file_name!r}: not a plain file name (letters, digits, . _ + -), it could "
            f"place a file outside the cache at {directory}"
        )
    path = directory / file_name
    if path.parent.resolve() != directory.resolve():
        raise CacheError(f"refusing {what} {file_name!r}: it resolves outside the cache at {directory}")
    return path


def _weights(entry: Entry):
    if entry.weights is None:
        raise NoWeightsError(
            f"no weights are published for {entry.name} yet; run 'psegzoo list' to see the models "
            f"that have weights"
        )
    return entry.weights


def checkpoint_path(entry: Entry) -> Path:
    """``<root>/checkpoints/<weights.file>``: where the verified checkpoint of ``entry`` lives.

    The path may not exist yet; use :func:`download` to get a verified file there.
    """
    return _inside(checkpoints_dir(), _weights(entry).file, "checkpoint file name")


def converted_path(entry: Entry) -> Path:
    """``<root>/checkpoints/<file stem>.safetensors``: where converted weights of ``entry`` belong.

    psegzoo's converter writes it; this module only lists and removes it.
    """
    file = _weights(entry).file
    stem = file[: -len(".pth")] if file.endswith(".pth") else Path(file).stem
    return _inside(checkpoints_dir(), stem + ".safetensors", "converted file name")


def _converted_for(ckpt: Path) -> Path:
    stem = ckpt.name[: -len(".pth")] if ckpt.name.endswith(".pth") else ckpt.stem
    return ckpt.with_name(stem + ".safetensors")


def _record_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".json")


def _part_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".part")


def _part_meta_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".part.json")


def _lock_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".lock")


def _trust_path(name: str) -> Path:
    return _inside(trusted_dir(), name + ".sha256", "model name")


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"cannot create the cache directory {path}: {exc.strerror}; set {HOME_ENV} to a writable directory"
        ) from None


# --------------------------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------------------------


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        return False


def _open_new(path: Path) -> int:
    """A new file honoring the umask (0666 & ~umask), unlike mkstemp's 0600."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)


def _temp_sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _write_atomic(path: Path, text: str) -> None:
    tmp = _temp_sibling(path, "w")
    try:
        fd = _open_new(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise CacheError(f"cannot write {path}: {exc.strerror}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a whole file on disk.

    For a cached checkpoint the verified hash is already known without reading 200 MB again:
    ``fetch(entry).sha256`` or ``read_record(entry).sha256``.
    """
    try:
        return _hash_file(Path(path), None, hashlib.sha256()).hexdigest()
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror}") from None


def _hash_file(path: Path, limit: int | None, h: Any) -> Any:
    """Feed ``path`` (its first ``limit`` bytes) into the hash object ``h``; returns ``h``."""
    n = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while limit is None or n < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - n)
            got = f.readinto(view[:want])
            if not got:
                break
            h.update(view[:got])
            n += got
    return h


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _space_error(directory: Path, need: int, free: int, what: str) -> CacheError:
    return CacheError(
        f"not enough disk space for {what}: {_fmt_size(need)} needed, {_fmt_size(free)} free in "
        f"{directory}; free some space or set {HOME_ENV} to a larger disk"
    )


def _check_space(directory: Path, need: int | None, what: str) -> None:
    if not need or need <= 0:
        return
    free = shutil.disk_usage(directory).free
    if free < need + _SPACE_MARGIN:
        raise _space_error(directory, need, free, what)


def _fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Records and trust
# --------------------------------------------------------------------------------------------


def _read_record(ckpt: Path) -> CacheRecord | None:
    path = _record_path(ckpt)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        rec = CacheRecord(
            name=str(data["name"]),
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            url=data.get("url"),
            source=str(data.get("source", "download")),
            at=str(data.get("at", "")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring unreadable cache record %s", path)
        return None
    if rec.file != ckpt.name or not _HEX64.fullmatch(rec.sha256) or rec.size < 0:
        log.warning("ignoring cache record %s: it does not describe %s", path, ckpt.name)
        return None
    return rec


def _write_record(ckpt: Path, name: str, sha256: str, size: int, url: str | None, source: str) -> CacheRecord:
    rec = CacheRecord(name=name, file=ckpt.name, sha256=sha256, size=size, url=url, source=source, at=_now())
    _write_atomic(_record_path(ckpt), json.dumps(rec.__dict__, indent=2) + "\n")
    return rec


def read_record(entry: Entry) -> CacheRecord | None:
    """The cache record of ``entry``'s checkpoint (full SHA-256, size, origin), or None."""
    return _read_record(checkpoint_path(entry))


def trusted_sha256(entry: Entry) -> str | None:
    """The SHA-256 trusted for ``entry`` on first use (``<root>/trusted/<name>.sha256``), or None.

    Only entries with no published hash have one; every later use verifies against it.
    """
    path = _trust_path(entry.name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"cannot read the trust record {path}: {exc.strerror}") from None
    token = text.split()[0].lower() if text.split() else ""
    if not _HEX64.fullmatch(token):
        raise CacheError(
            f"the trust record {path} does not hold a SHA-256; delete that file and download "
            f"{entry.name} again to trust its hash anew"
        )
    return token


def _write_trust(entry: Entry, sha256: str) -> Path:
    path = _trust_path(entry.name)
    _ensure_dir(path.parent)
    _write_atomic(path, f"{sha256}  {_weights(entry).file}\n")
    return path


def normalize_sha256(value: str) -> str:
    """A user-given hash in canonical form: lower-case hex, 8 to 64 digits (``sha256:`` allowed).

    A full 64-digit hash is the strong choice; 8 digits (what mmseg file names carry) is accepted.
    """
    text = value.strip().lower() if isinstance(value, str) else ""
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    if not _HEX.fullmatch(text) or not 8 <= len(text) <= 64:
        raise VerificationError(
            f"--sha256 {value!r} is not a SHA-256: give its hex digits (64 for the full hash, at least 8)"
        )
    return text


@dataclass(frozen=True)
class _Expected:
    """What a file's SHA-256 must satisfy: each (hex prefix, description) must prefix it."""

    checks: tuple[tuple[str, str], ...]
    tofu: bool  # nothing known yet: the user chose to trust the first file seen
    record_trust: bool  # the entry has no published hash: record the verified hash as trusted

    def problem(self, sha256: str) -> str | None:
        for prefix, what in self.checks:
            if not sha256.startswith(prefix):
                return f"SHA-256 {sha256} does not match the {what} {prefix}"
        return None

    @property
    def verified_by(self) -> str:
        if self.tofu:
            return "trust on first use (recorded now)"
        return " and ".join(what for _, what in self.checks)


def _expected(entry: Entry, pin: str | None, allow_unverified: bool) -> _Expected:
    published = _weights(entry).sha256_prefix
    checks: list[tuple[str, str]] = []
    if published:
        checks.append((published, "published hash prefix"))
    if pin:
        if published and not (pin.startswith(published) or published.startswith(pin)):
            raise VerificationError(
                f"the pinned SHA-256 {pin} contradicts the published hash prefix {published} of "
                f"{entry.name}; check the value given with --sha256"
            )
        checks.append((pin, "pinned hash"))
        if not published:
            trusted = trusted_sha256(entry)
            if trusted and not trusted.startswith(pin):
                log.warning(
                    "%s: the pinned SHA-256 %s replaces the hash trusted on first use (%s)", entry.name, pin, trusted
                )
        return _Expected(tuple(checks), tofu=False, record_trust=not published)
    if published:
        return _Expected(tuple(checks), tofu=False, record_trust=False)
    trusted = trusted_sha256(entry)
    if trusted:
        return _Expected(((trusted, "hash trusted on first use"),), tofu=False, record_trust=False)
    if allow_unverified:
        return _Expected((), tofu=True, record_trust=True)
    raise UnverifiedWeightsError(
        f"{entry.name} has no published SHA-256, so psegzoo cannot verify its download. To download it "
        f"anyway and trust its hash from then on (trust on first use), pass --allow-unverified "
        f"(Python: allow_unverified=True) or set {ALLOW_UNVERIFIED_ENV}=1; if you know its SHA-256, pass "
        f"--sha256 HEX (Python: sha256='HEX'); or put a copy you trust in the cache with "
        f"'psegzoo import FILE --name {entry.name}'"
    )


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    mirrors: tuple[str, ...]
    offline: bool
    allow_unverified: bool
    retries: int
    connect_timeout: float
    read_timeout: float
    backoff: float
    backoff_max: float
    lock_timeout: float
    progress: bool


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in _FALSE


def _env_number(name: str, default: float, cast: Callable[[str], float]) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise DownloadError(f"{name}={raw!r} is not a valid non-negative number; unset it or fix its value")
    return value


def _parse_mirrors(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        value = os.environ.get(MIRROR_ENV, "")
    items = value.split(",") if isinstance(value, str) else list(value)
    mirrors = []
    for item in items:
        m = str(item).strip()
        if not m:
            continue
        if not re.match(r"(https?|file)://", m):
            raise DownloadError(
                f"mirror {m!r} is not an http(s):// or file:// base URL (check --mirror or {MIRROR_ENV})"
            )
        mirrors.append(m.rstrip("/"))
    return tuple(mirrors)


def _options(
    mirrors, offline, allow_unverified, retries, timeout, progress, backoff=None, lock_timeout=None
) -> _Options:
    connect_timeout = _env_number(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT, float)
    read_timeout = _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT, float)
    if timeout is not None:
        if isinstance(timeout, (tuple, list)):
            connect_timeout, read_timeout = float(timeout[0]), float(timeout[1])
        else:
            read_timeout = float(timeout)
            connect_timeout = min(connect_timeout, read_timeout)
    if retries is None:
        retries = int(_env_number(RETRIES_ENV, DEFAULT_RETRIES, int))
    if retries < 0:
        raise DownloadError(f"retries must be >= 0, got {retries}")
    if progress is None:
        progress = sys.stderr.isatty()
    return _Options(
        mirrors=_parse_mirrors(mirrors),
        offline=_env_flag(OFFLINE_ENV) if offline is None else bool(offline),
        allow_unverified=_env_flag(ALLOW_UNVERIFIED_ENV) if allow_unverified is None else bool(allow_unverified),
        retries=int(retries),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        backoff=_env_number(BACKOFF_ENV, DEFAULT_BACKOFF, float) if backoff is None else float(backoff),
        backoff_max=_env_number(BACKOFF_MAX_ENV, DEFAULT_BACKOFF_MAX, float),
        lock_timeout=(
            _env_number(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT, float) if lock_timeout is None else float(lock_timeout)
        ),
        progress=bool(progress),
    )


def candidate_urls(entry: Entry, mirrors: str | Iterable[str] | None = None) -> list[str]:
    """The URLs :func:`download` tries, in order: each mirror, then the original URL."""
    url = _weights(entry).url
    path = urlparse(url).path or "/" + _weights(entry).file
    urls = [m + path for m in _parse_mirrors(mirrors)]
    urls.append(url)
    return list(dict.fromkeys(urls))


# --------------------------------------------------------------------------------------------
# Locking
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(ckpt: Path, timeout: float, what: str) -> Iterator[None]:
    """Hold ``<file>.lock`` (fcntl.flock): one process at a time downloads or changes ``ckpt``.

    flock is released by the kernel when its holder dies, so a killed download never blocks the
    next one. Waiting gives up after ``timeout`` seconds in which the holder made no progress.
    The lock file is removed on release; a waiter that locked a removed file tries again.
    """
    lock = _lock_path(ckpt)
    part = _part_path(ckpt)
    deadline = time.monotonic() + timeout
    last_seen: int | None = None
    waited = False
    delay = 0.02
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
        except OSError as exc:
            raise CacheError(f"cannot create the lock file {lock}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                size = part.stat().st_size
            except OSError:
                size = -1
            if size != last_seen:
                last_seen = size
                deadline = time.monotonic() + timeout
            if time.monotonic() > deadline:
                raise CacheError(
                    f"gave up after {timeout:.0f} s waiting for another psegzoo process that holds {lock} "
                    f"({what}) and made no progress; stop that process, or wait longer with "
                    f"{LOCK_TIMEOUT_ENV}=SECONDS"
                ) from None
            if not waited:
                log.info("waiting for another process working on %s", ckpt.name)
                waited = True
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed that lock file while we waited on it: lock the new one
    try:
        yield
    finally:
        _unlink(lock)
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Progress display
# --------------------------------------------------------------------------------------------


class _Bar:
    """A rich progress bar (bytes, speed, ETA) on stderr, or nothing."""

    def __init__(self, enabled: bool, label: str):
        self._progress = None
        self._task = None
        self._label = label
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def start(self, total: int | None, completed: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=total, completed=completed)
        else:
            self._progress.reset(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.stop()


# --------------------------------------------------------------------------------------------
# Transfers
# --------------------------------------------------------------------------------------------


class _UrlFailed(Exception):
    """This URL cannot give the file (the message says why); try the next one."""


@dataclass
class _Got:
    sha256: str
    size: int
    resumed: bool
    content_type: str
    content_encoding: str


def _describe(exc: BaseException, opts: _Options) -> str:
    if isinstance(exc, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
        return f"no connection within {opts.connect_timeout:g} s (connect timeout)"
    if isinstance(exc, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return f"no data for {opts.read_timeout:g} s (read timeout)"
    text = str(exc)
    for key, words in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "host name not found"),
        ("Temporary failure in name resolution", "host name not found"),
        ("Connection reset", "connection reset"),
        ("IncompleteRead", "connection closed early"),
        ("RemoteDisconnected", "connection closed without a response"),
        ("Connection aborted", "connection aborted"),
    ):
        if key in text:
            return words
    return f"{type(exc).__name__}: {text[:200]}"


def _validator(resp: requests.Response) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _read_part_meta(ckpt: Path) -> dict:
    try:
        with open(_part_meta_path(ckpt), encoding="utf-8") as f:
            meta = json.load(f)
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _open_part(part: Path, offset: int) -> IO[bytes]:
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o666)
    f = os.fdopen(fd, "wb", buffering=0)
    f.truncate(offset)
    f.seek(offset)
    return f


def _write(f: IO[bytes], data, part: Path) -> None:
    try:
        f.write(data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise CacheError(
                f"the disk holding {part.parent} is full; free some space or set {HOME_ENV} to a larger disk"
            ) from None
        raise CacheError(f"cannot write {part}: {exc.strerror}") from None


def _download_http(session: requests.Session, url: str, ckpt: Path, opts: _Options, bar: _Bar) -> _Got:
    """Fetch ``url`` into ``<file>.part``, resuming, retrying and hashing as it streams."""
    part = _part_path(ckpt)
    meta_path = _part_meta_path(ckpt)
    meta = _read_part_meta(ckpt)
    failures = 0
    attempts = 0
    high_water = part.stat().st_size if part.exists() else 0
    while True:
        attempts += 1
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("url") == url and meta.get("validator"):
                headers["If-Range"] = meta["validator"]
        problem: str | None = None
        retry_after: float | None = None
        restart = False
        try:
            resp = session.get(
                url, headers=headers, stream=True, timeout=(opts.connect_timeout, opts.read_timeout)
            )
        except requests.TooManyRedirects:
            raise _UrlFailed(f"more than {MAX_REDIRECTS} redirects") from None
        except requests.exceptions.InvalidURL as exc:
            raise _UrlFailed(f"invalid URL: {exc}") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            problem = _describe(exc, opts)
            resp = None
        if resp is not None:
            with contextlib.closing(resp):
                status = resp.status_code
                if status in (200, 206):
                    try:
                        return _stream(resp, url, part, meta_path, offset, opts, bar)
                    except _Restart as exc:
                        problem, restart = str(exc), True
                    except _Interrupted as exc:
                        problem = str(exc)
                elif status == 416 and offset > 0:
                    problem, restart = f"HTTP 416 for Range bytes={offset}- (the partial file is too long)", True
                elif status in _RETRY_STATUSES or 500 <= status <= 599:
                    problem = f"HTTP {status} {resp.reason or ''}".rstrip()
                    if status in (429, 503):
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
                else:
                    raise _UrlFailed(f"HTTP {status} {resp.reason or ''}".rstrip())
        if restart:
            log.info("%s: %s; starting again from zero", url, problem)
            _unlink(part)
            _unlink(meta_path)
            meta = {}
        else:
            meta = _read_part_meta(ckpt)
        size_now = part.stat().st_size if part.exists() else 0
        if size_now > high_water:
            high_water = size_now
            failures = 0  # progress was made: this failure starts a fresh count
        failures += 1
        if failures > opts.retries or attempts >= _MAX_ATTEMPTS:
            n = attempts
            raise _UrlFailed(f"{problem} (gave up after {n} attempt{'s' if n > 1 else ''})")
        delay = min(opts.backoff * 2 ** (failures - 1), opts.backoff_max)
        if retry_after is not None:
            delay = min(max(delay, retry_after), opts.backoff_max)
        log.info("%s: %s; retrying in %.2g s", url, problem, delay)
        time.sleep(delay)


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class _Restart(Exception):
    """The answer cannot extend the partial file: discard it and start from zero."""


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in ``.part`` for a resume."""


def _stream(
    resp: requests.Response, url: str, part: Path, meta_path: Path, offset: int, opts: _Options, bar: _Bar
) -> _Got:
    total: int | None
    if resp.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if not match:
            raise _Restart(f"206 answer without a valid Content-Range ({resp.headers.get('Content-Range')!r})")
        start = int(match.group(1))
        if start != offset:
            raise _Restart(f"asked for bytes from {offset}, the server's 206 answer starts at {start}")
        total = int(match.group(3)) if match.group(3) != "*" else None
    else:
        if offset > 0:
            log.info("%s: the server sent the whole file instead of a range; starting again from zero", url)
        offset = 0
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.strip().isdigit() else None
    remaining = None if total is None else total - offset
    try:
        _check_space(part.parent, remaining, part.name[: -len(".part")])
    except CacheError:
        _unlink(part)
        _unlink(meta_path)
        raise
    validator = _validator(resp)
    _write_atomic(meta_path, json.dumps({"url": url, "validator": validator, "total": total}))
    raw = resp.raw
    # read1 hands over what has arrived (up to CHUNK) instead of waiting for a full CHUNK, so the
    # bytes received before a stall or a dropped connection are kept for the resume.
    read = raw.read1 if hasattr(raw, "read1") else raw.read
    received = offset
    hasher = _StreamHasher()
    try:
        if offset:
            _hash_file(part, offset, hasher)
        bar.start(total, offset)
        with _open_part(part, offset) as f:
            while True:
                chunk = read(CHUNK, decode_content=False)
                if not chunk:
                    break
                _write(f, chunk, part)
                hasher.update(chunk)
                received += len(chunk)
                bar.advance(len(chunk))
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        raise _Interrupted(f"{_describe(exc, opts)} after {received} of {total or '?'} bytes") from None
    finally:
        digest = hasher.hexdigest()
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")
    if total is not None and received > total:
        raise _Restart(f"received {received} bytes, more than the announced {total}")
    return _Got(
        sha256=digest,
        size=received,
        resumed=offset > 0,
        content_type=resp.headers.get("Content-Type", ""),
        content_encoding=resp.headers.get("Content-Encoding", "").strip().lower(),
    )


class _StreamHasher:
    """SHA-256 of a stream, computed on a helper thread while the caller receives and writes.

    hashlib releases the GIL on large buffers, so hashing overlaps with network reads and disk
    writes instead of adding to them; each chunk is still hashed exactly once, as it streams.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=32)
        self._thread = threading.Thread(target=self._run, name="psegzoo-sha256", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            self._hash.update(chunk)

    def update(self, chunk) -> None:
        self._queue.put(bytes(chunk) if isinstance(chunk, memoryview) else chunk)

    def hexdigest(self) -> str:
        if self._digest is None:
            self._queue.put(None)
            self._thread.join()
            self._digest = self._hash.hexdigest()
        return self._digest


def _local_source(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise _UrlFailed(f"file:// URL with host {parsed.netloc!r} is not supported")
    return Path(url2pathname(unquote(parsed.path)))


def _copy_local(url: str, ckpt: Path, bar: _Bar) -> _Got:
    """A file:// source: copy into ``.part`` while hashing (no resume needed)."""
    src = _local_source(url)
    part = _part_path(ckpt)
    try:
        fsrc = open(src, "rb", buffering=0)  # noqa: SIM115  (closed by the with below)
    except OSError as exc:
        raise _UrlFailed(f"cannot read {src}: {exc.strerror}") from None
    with fsrc:
        size = os.fstat(fsrc.fileno()).st_size
        _check_space(part.parent, size, ckpt.name)
        hasher = hashlib.sha256()
        bar.start(size, 0)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        n = 0
        with _open_part(part, 0) as f:
            while True:
                got = fsrc.readinto(view)
                if not got:
                    break
                _write(f, view[:got], part)
                hasher.update(view[:got])
                n += got
                bar.advance(got)
    return _Got(sha256=hasher.hexdigest(), size=n, resumed=False, content_type="", content_encoding="")


def _decode_part(ckpt: Path, encoding: str) -> tuple[Path, str, int] | None:
    """Undo a Content-Encoding the server applied despite ``Accept-Encoding: identity``."""
    part = _part_path(ckpt)
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        return None
    out = _temp_sibling(ckpt, "decoded")
    hasher = hashlib.sha256()
    n = 0
    try:
        d = zlib.decompressobj(wbits)
        with open(part, "rb") as fi, os.fdopen(_open_new(out), "wb") as fo:
            while True:
                data = fi.read(CHUNK)
                if not data:
                    break
                plain = d.decompress(data)
                fo.write(plain)
                hasher.update(plain)
                n += len(plain)
            plain = d.flush()
            fo.write(plain)
            hasher.update(plain)
            n += len(plain)
        if not d.eof:
            raise zlib.error("truncated stream")
    except (zlib.error, OSError):
        _unlink(out)
        return None
    return out, hasher.hexdigest(), n


# --------------------------------------------------------------------------------------------
# The cached file
# --------------------------------------------------------------------------------------------


def _cached_hit(entry: Entry, ckpt: Path, expected: _Expected, *, repair: bool) -> Fetched | None:
    """The cached checkpoint if it is good. With ``repair`` (lock held): hash a file without a
    record, and delete a bad one (with its record and converted weights)."""
    try:
        size = ckpt.stat().st_size
    except FileNotFoundError:
        return None
    rec = _read_record(ckpt)
    problem = None
    if rec is not None and size != rec.size:
        problem = f"its size is {size} bytes, the record says {rec.size} (truncated or changed)"
    elif rec is not None and not expected.tofu:
        problem = expected.problem(rec.sha256)
        if problem is None:
            return Fetched(entry.name, ckpt, rec.sha256, size, False, rec.url, expected.verified_by)
    if not repair:
        return None
    sha = None
    if problem is None:
        sha = file_sha256(ckpt)
        if rec is not None and sha != rec.sha256:
            problem = f"its SHA-256 {sha} differs from the recorded {rec.sha256}"
        elif not expected.tofu:
            problem = expected.problem(sha)
    if problem is not None:
        log.warning("cached %s is not valid and is removed: %s", ckpt, problem)
        _remove_checkpoint_files(ckpt)
        return None
    if rec is None:
        rec = _write_record(ckpt, entry.name, sha, size, None, "cache")
    newly = False
    if expected.record_trust and trusted_sha256(entry) != sha:
        _write_trust(entry, sha)
        newly = True
    verified_by = expected.verified_by
    return Fetched(entry.name, ckpt, sha, size, False, rec.url, verified_by, newly_trusted=newly and expected.tofu)


def _remove_checkpoint_files(ckpt: Path) -> list[Path]:
    """Delete a checkpoint and everything derived from it (call with its lock held; the lock
    file itself goes when the lock is released)."""
    removed = []
    for p in (ckpt, _record_path(ckpt), _converted_for(ckpt), _part_path(ckpt), _part_meta_path(ckpt)):
        if _unlink(p):
            removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------
# Public operations
# --------------------------------------------------------------------------------------------


def fetch(
    entry: Entry,
    *,
    mirrors: str | Iterable[str] | None = None,
    offline: bool | None = None,
    progress: bool | None = None,
    allow_unverified: bool | None = None,
    sha256: str | None = None,
    retries: int | None = None,
    timeout: float | tuple[float, float] | None = None,
    backoff: float | None = None,
    lock_timeout: float | None = None,
    force: bool = False,
) -> Fetched:
    """Like :func:`download`, returning a :class:`Fetched` that also says how the file was verified.

    Use it where the hash must be shown, e.g. ``psegzoo download`` printing the SHA-256 that was
    just trusted on first use (``Fetched.newly_trusted``).
    """
    w = _weights(entry)
    opts = _options(mirrors, offline, allow_unverified, retries, timeout, progress, backoff, lock_timeout)
    pin = normalize_sha256(sha256) if sha256 else None
    expected = _expected(entry, pin, opts.allow_unverified)
    ckpt = checkpoint_path(entry)
    if not force:
        hit = _cached_hit(entry, ckpt, expected, repair=False)
        if hit is not None:
            return hit
    urls = candidate_urls(entry, opts.mirrors)
    if opts.offline:
        urls = [u for u in urls if u.startswith("file://")]
        if not urls and (force or not ckpt.exists()):
            raise _offline_error(entry, ckpt)
    _ensure_dir(ckpt.parent)
    with _locked(ckpt, opts.lock_timeout, f"downloading {w.file}"):
        if force:
            _remove_checkpoint_files(ckpt)
        else:
            hit = _cached_hit(entry, ckpt, expected, repair=True)
            if hit is not None:
                return hit
        if not urls:
            raise _offline_error(entry, ckpt)
        return _download_locked(entry, ckpt, urls, expected, opts)


def download(
    entry: Entry,
    *,
    mirrors: str | Iterable[str] | None = None,
    offline: bool | None = None,
    progress: bool | None = None,
    allow_unverified: bool | None = None,
    sha256: str | None = None,
    retries: int | None = None,
    timeout: float | tuple[float, float] | None = None,
    backoff: float | None = None,
    lock_timeout: float | None = None,
    force: bool = False,
) -> Path:
    """The verified cached checkpoint of ``entry``, downloading it first if needed.

    ``psegzoo download NAME`` and ``psegzoo.load()`` call this. Arguments left as None come from
    the environment (module docstring): ``mirrors`` (list or comma-separated base URLs, tried before
    the original URL), ``offline`` (cache only), ``allow_unverified`` (trust an entry with no
    published hash on first use), ``retries``, ``timeout`` (read timeout, or (connect, read)),
    ``backoff`` (first retry delay). ``sha256`` pins a hash (8 to 64 hex digits). ``progress``
    shows a bar on stderr (default: when stderr is a terminal). ``force`` downloads again.

    Raises NoWeightsError, UnverifiedWeightsError, OfflineError, DownloadError (every URL tried and
    why it failed), VerificationError or CacheError.
    """
    return fetch(
        entry,
        mirrors=mirrors,
        offline=offline,
        progress=progress,
        allow_unverified=allow_unverified,
        sha256=sha256,
        retries=retries,
        timeout=timeout,
        backoff=backoff,
        lock_timeout=lock_timeout,
        force=force,
    ).path


def _offline_error(entry: Entry, ckpt: Path) -> OfflineError:
    w = _weights(entry)
    return OfflineError(
        f"offline mode is on ({OFFLINE_ENV} or --offline) and {entry.name} is not in the cache "
        f"({ckpt}). On a machine with network access, download {w.url} and copy it here, then run "
        f"'psegzoo import {w.file}'; or turn offline mode off"
    )


def _download_locked(entry: Entry, ckpt: Path, urls: Sequence[str], expected: _Expected, opts: _Options) -> Fetched:
    part = _part_path(ckpt)
    failures: list[str] = []
    bar = _Bar(opts.progress, ckpt.name)
    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    session.headers.update({"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    try:
        for url in urls:
            for fresh in (False, True):
                try:
                    if url.startswith("file://"):
                        got = _copy_local(url, ckpt, bar)
                    else:
                        got = _download_http(session, url, ckpt, opts, bar)
                except _UrlFailed as exc:
                    failures.append(f"{url}: {exc}")
                    break
                except CacheError:
                    _unlink(part)
                    _unlink(_part_meta_path(ckpt))
                    raise
                final_file, problem = _check_download(ckpt, got, expected, url)
                if problem is None:
                    return _install(entry, ckpt, final_file, got, url, expected)
                _unlink(part)
                _unlink(_part_meta_path(ckpt))
                if got.resumed and not fresh:
                    log.info("%s: a resumed download failed verification; downloading it again from zero", url)
                    continue
                failures.append(f"{url}: downloaded {got.size} bytes but {problem}")
                break
    finally:
        bar.close()
        session.close()
    raise DownloadError(
        f"could not download {entry.name} ({ckpt.name}); tried: " + "; ".join(failures) + ". "
        f"Check the network or add a mirror ({MIRROR_ENV} or --mirror); or download the file "
        f"elsewhere and run 'psegzoo import FILE'"
    )


def _sniff(path: Path) -> str | None:
    """``"html"`` or ``"gzip"`` when the file starts like one; a checkpoint never does."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.lstrip().startswith(b"<"):
        return "html"
    return None


def _check_download(ckpt: Path, got: _Got, expected: _Expected, url: str) -> tuple[Path, str | None]:
    """The file to install (``.part`` or its decoded form) and what is wrong with it, if anything.

    The raw bytes are what the hash is checked on. Only when they fail and the server applied a
    Content-Encoding although asked for identity is the decoded body tried. With no hash to check
    (trust on first use), an HTML page is refused and a gzip body the server encoded is decoded.
    """
    part = _part_path(ckpt)
    kind = _sniff(part)
    if expected.tofu:
        problem = None
        if kind == "html":
            problem = f"it is an HTML page (Content-Type {got.content_type or 'not given'}), not a checkpoint"
        elif kind == "gzip" and got.content_encoding:
            decoded = _decode_part(ckpt, got.content_encoding)
            if decoded is None:
                return part, f"the server sent a {got.content_encoding} body that cannot be decoded"
            _unlink(part)
            got.sha256, got.size = decoded[1], decoded[2]
            return decoded[0], None
        return part, problem
    problem = expected.problem(got.sha256)
    if problem and got.content_encoding:
        decoded = _decode_part(ckpt, got.content_encoding)
        if decoded is not None and expected.problem(decoded[1]) is None:
            log.info("%s: the server applied %s encoding; the decoded file matches", url, got.content_encoding)
            _unlink(part)
            got.sha256, got.size = decoded[1], decoded[2]
            return decoded[0], None
        if decoded is not None:
            _unlink(decoded[0])
    if problem and kind == "html":
        sent = got.content_type or "no Content-Type"
        problem += f" (the server sent an HTML page, {sent}, not the checkpoint)"
    return part, problem


def _install(entry: Entry, ckpt: Path, src: Path, got: _Got, url: str, expected: _Expected) -> Fetched:
    """Move a verified file into place, then record it (and its trust, for hash-less entries)."""
    try:
        os.replace(src, ckpt)
    except OSError as exc:
        raise CacheError(f"cannot move the verified download into {ckpt}: {exc.strerror}") from None
    _unlink(_part_meta_path(ckpt))
    _write_record(ckpt, entry.name, got.sha256, got.size, url, "download")
    newly = False
    if expected.record_trust and trusted_sha256(entry) != got.sha256:
        path = _write_trust(entry, got.sha256)
        newly = expected.tofu
        if newly:
            log.warning(
                "%s has no published hash; trusting the downloaded file on first use: SHA-256 %s (recorded in %s)",
                entry.name,
                got.sha256,
                path,
            )
    log.info("downloaded %s from %s (SHA-256 %s)", ckpt.name, url, got.sha256)
    return Fetched(entry.name, ckpt, got.sha256, got.size, True, url, expected.verified_by, newly_trusted=newly)


def _entry_for_file(file_name: str, index) -> Entry:
    m = _manifest.load_manifest(index)
    try:
        return m.get(file_name)
    except UnknownModelError:
        raise UnknownModelError(
            f"cannot tell which model {file_name!r} is: its name is neither a published checkpoint file "
            f"name nor '<model name>.pth'; pass the model name with --name"
        ) from None


def import_checkpoint(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    sha256: str | None = None,
    index=None,
    lock_timeout: float | None = None,
) -> tuple[Entry, Path]:
    """Copy a checkpoint file the user already has into the cache, after verifying it.

    ``psegzoo import FILE [--name NAME] [--sha256 HEX]`` calls this: the air-gapped and host-down
    path. The model is ``name`` (any name the manifest resolves) or else found from the file name
    (the published file name or ``<name>.pth``). The file's SHA-256 must start with the published
    prefix; for an entry with no published hash it must match ``sha256`` (when given) and any hash
    trusted before. Importing a file for an entry with neither is the user vouching for it: its
    hash is recorded as trusted (and logged), as a first download with ``allow_unverified`` would.
    The source is copied, never moved, and appears in the cache atomically.
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise CacheError(f"cannot import {str(src)!r}: no such file")
    entry = _manifest.load_manifest(index).get(name) if name else _entry_for_file(src.name, index)
    w = _weights(entry)
    pin = normalize_sha256(sha256) if sha256 else None
    expected = _expected(entry, pin, allow_unverified=True)
    ckpt = checkpoint_path(entry)
    _ensure_dir(ckpt.parent)
    timeout = _env_number(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT, float) if lock_timeout is None else lock_timeout
    tmp = _temp_sibling(ckpt, "import")
    try:
        with open(src, "rb", buffering=0) as fi:
            size = os.fstat(fi.fileno()).st_size
            _check_space(ckpt.parent, size, w.file)
            hasher = hashlib.sha256()
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            n = 0
            with os.fdopen(_open_new(tmp), "wb", buffering=0) as fo:
                while True:
                    got = fi.readinto(view)
                    if not got:
                        break
                    _write(fo, view[:got], tmp)
                    hasher.update(view[:got])
                    n += got
        sha = hasher.hexdigest()
        problem = expected.problem(sha)
        if _sniff(tmp) == "html":
            problem = "content is an HTML page (a saved error or login page?), not a checkpoint"
        if problem:
            raise VerificationError(
                f"{src} is not the checkpoint of {entry.name}: its {problem}. Check that it is the file "
                f"{w.file} from {w.url}, or name the right model with --name"
            )
        with _locked(ckpt, timeout, f"importing {w.file}"):
            previous = _read_record(ckpt)
            if previous is None or previous.sha256 != sha:
                _unlink(_converted_for(ckpt))  # made from another file
            os.replace(tmp, ckpt)
            _unlink(_part_path(ckpt))
            _unlink(_part_meta_path(ckpt))
            _write_record(ckpt, entry.name, sha, n, src.resolve().as_uri(), "import")
            if expected.record_trust and trusted_sha256(entry) != sha:
                trust = _write_trust(entry, sha)
                log.warning(
                    "%s has no published hash; trusting the imported file: SHA-256 %s (recorded in %s)",
                    entry.name,
                    sha,
                    trust,
                )
    except OSError as exc:
        raise CacheError(f"cannot import {src} into {ckpt.parent}: {exc.strerror}") from None
    finally:
        _unlink(tmp)
    log.info("imported %s as %s (SHA-256 %s)", src, ckpt, sha)
    return entry, ckpt


def _checkpoint_files() -> list[Path]:
    d = checkpoints_dir()
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.startswith(".") or n.endswith(_OWN_SUFFIXES):
            continue
        p = d / n
        if p.is_file():
            out.append(p)
    return out


def _entries_by_file() -> dict[str, Entry]:
    try:
        m = _manifest.load_manifest()
    except PsegzooError as exc:
        log.warning("cannot read the manifest (%s); names in the cache listing come from records", exc)
        return {}
    return {e.weights.file: e for e in m.models if e.weights is not None}


def cached() -> list[CachedCheckpoint]:
    """Every checkpoint file in the cache (what ``psegzoo cache`` lists), sorted by name.

    Sizes are read from disk; ``sha256`` comes from the record (run :func:`verify` to check it).
    """
    by_file = _entries_by_file()
    out = []
    for p in _checkpoint_files():
        rec = _read_record(p)
        entry = by_file.get(p.name)
        name = rec.name if rec else entry.name if entry else p.stem
        conv = _converted_for(p)
        try:
            size = p.stat().st_size
            conv_size = conv.stat().st_size if conv.is_file() else 0
        except FileNotFoundError:  # removed while listing
            continue
        try:
            trusted = _trust_path(name).is_file()
        except CacheError:
            trusted = False
        out.append(
            CachedCheckpoint(
                name=name,
                file=p.name,
                path=p,
                size=size,
                sha256=rec.sha256 if rec else None,
                converted=conv.is_file(),
                converted_path=conv if conv.is_file() else None,
                converted_size=conv_size,
                url=rec.url if rec else None,
                source=rec.source if rec else None,
                at=rec.at if rec else None,
                trusted=trusted,
            )
        )
    out.sort(key=lambda c: c.name)
    return out


def _cache_targets(entry_or_name: Entry | str) -> tuple[str, list[Path]]:
    """The name and checkpoint paths that an entry or a user-typed name designates."""
    if isinstance(entry_or_name, Entry):
        return entry_or_name.name, [checkpoint_path(entry_or_name)]
    name = str(entry_or_name).strip()
    hits = [c for c in cached() if name in (c.name, c.file)]
    if hits:
        return hits[0].name, [c.path for c in hits]
    entry = _manifest.get_entry(name)
    if entry.weights is None:
        return entry.name, []
    return entry.name, [checkpoint_path(entry)]


def remove(
    entry_or_name: Entry | str | None = None,
    *,
    all: bool = False,
    forget_trust: bool = False,
    lock_timeout: float = 30.0,
) -> list[Path]:
    """Delete cached files; returns the paths removed (empty when nothing was cached).

    ``psegzoo cache rm NAME`` removes one model's checkpoint, record, converted weights and any
    partial download; ``--all`` empties the checkpoint directory. Trust-on-first-use records are
    kept (so a later download must match the same hash) unless ``forget_trust`` is set.
    """
    if entry_or_name is None and not all:
        raise CacheError("say which model to remove from the cache, or remove everything with --all")
    removed: list[Path] = []
    if all:
        d = checkpoints_dir()
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            names = []
        bases: dict[str, None] = {}
        for n in names:
            for suffix in (".part.json", ".json", ".part", ".lock"):
                if n.endswith(suffix):
                    n = n[: -len(suffix)]
                    break
            if not n.startswith(".") and not n.endswith((".safetensors", ".tmp")):
                bases[n] = None
        for n in bases:
            ckpt = d / n
            with _locked(ckpt, lock_timeout, f"removing {n}"):
                removed += _remove_checkpoint_files(ckpt)
        for n in sorted(os.listdir(d)) if d.is_dir() else []:
            p = d / n
            if (p.is_file() or p.is_symlink()) and not n.endswith(".lock") and _unlink(p):
                removed.append(p)
        if forget_trust and trusted_dir().is_dir():
            for p in sorted(trusted_dir().iterdir()):
                if p.suffix == ".sha256" and _unlink(p):
                    removed.append(p)
        return removed
    name, paths = _cache_targets(entry_or_name)
    for ckpt in paths:
        if ckpt.parent.is_dir():
            with _locked(ckpt, lock_timeout, f"removing {ckpt.name}"):
                removed += _remove_checkpoint_files(ckpt)
    if forget_trust:
        trust = _trust_path(name)
        if _unlink(trust):
            removed.append(trust)
    return removed


def verify(
    entry: Entry | str | None = None, *, full: bool = True, lock_timeout: float | None = None
) -> list[VerifyResult]:
    """Check cached checkpoints (one entry's, or all) against their records; delete bad ones.

    ``psegzoo verify [NAME]`` calls this. The size is always compared; with ``full`` the SHA-256 is
    recomputed and compared with the record and with the published (or trusted) hash. A file with
    no record is always hashed. A bad file is deleted with its record and converted weights, so the
    next use downloads it again.
    """
    timeout = _env_number(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT, float) if lock_timeout is None else lock_timeout
    by_file = _entries_by_file()
    if entry is None:
        targets = [(by_file.get(p.name), p) for p in _checkpoint_files()]
    else:
        name, paths = _cache_targets(entry)
        if isinstance(entry, Entry):
            e = entry
        else:
            e = next((x for x in by_file.values() if x.name == name), None)
        targets = [(e, p) for p in paths]
        if not paths:
            return [VerifyResult(name, "", Path(), "missing", "no weights are published for it", None)]
    results = []
    for e, ckpt in targets:
        with _locked(ckpt, timeout, f"verifying {ckpt.name}"):
            results.append(_verify_one(e, ckpt, full))
    return results


def _verify_one(entry: Entry | None, ckpt: Path, full: bool) -> VerifyResult:
    rec = _read_record(ckpt)
    name = rec.name if rec else entry.name if entry else ckpt.stem
    if not ckpt.is_file():
        return VerifyResult(name, ckpt.name, ckpt, "missing", "not in the cache", None)
    size = ckpt.stat().st_size
    problem = None
    sha = rec.sha256 if rec else None
    if rec is not None and size != rec.size:
        problem = f"size is {size} bytes, the record says {rec.size}"
    elif full or rec is None:
        sha = file_sha256(ckpt)
        if rec is not None and sha != rec.sha256:
            problem = f"SHA-256 {sha} differs from the recorded {rec.sha256}"
    if problem is None and entry is not None and entry.weights is not None and sha is not None:
        expected = _expected(entry, None, allow_unverified=True)
        if not expected.tofu:
            problem = expected.problem(sha)
    if problem is not None:
        removed = tuple(_remove_checkpoint_files(ckpt))
        log.warning("removed %s from the cache: %s", ckpt.name, problem)
        return VerifyResult(name, ckpt.name, ckpt, "corrupt", problem, sha, removed)
    if rec is None:
        _write_record(ckpt, name, sha, size, None, "cache")
    return VerifyResult(name, ckpt.name, ckpt, "ok", None, sha)
