"""Full SHA-256 hashes the user supplies in ``sha256sum`` format: ``PSEGZOO_HASHES=FILE|URL``.

Each line is ``<64 hex digits>  <path>`` (``*<path>`` for binary mode), as ``sha256sum`` and
``psegzoo mirror`` (``SHA256SUMS``) write it; blank lines and lines starting with ``#`` (what
``psegzoo verify --hashes`` adds) are skipped. A hash applies to the checkpoint whose published file
name is the path's last part, and pins it: a file with another hash is refused, whatever its prefix.
The list is read when a checkpoint is looked up, once per state of the file (a URL once per process).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

from ..errors import VerificationError
from .redact import redact_url
from .settings import HASHES_ENV, DownloadOptions

MAX_BYTES = 16 * 10**6  # far more than a list of every checkpoint of the zoo
_LINE = re.compile(r"(?P<sha>[0-9a-fA-F]{64}) [ *](?P<path>.+)")
_URL = re.compile(r"(https?)://", re.IGNORECASE)


@dataclass(frozen=True)
class HashList:
    """The hashes of one list, by file name; ``where``: the list as shown (credentials removed)."""

    where: str
    by_file: Mapping[str, str] = field(default_factory=dict)

    def lookup(self, file: str) -> tuple[str, str] | None:
        """``(sha256, what)`` for the published file name ``file``, or None when the list has none."""
        sha = self.by_file.get(file)
        return None if sha is None else (sha, f"SHA-256 listed in {HASHES_ENV} ({self.where})")


def parse_hashes(text: str, where: str) -> HashList:
    """The hashes in ``text`` (``sha256sum`` format); a one-line error for a line that is not one."""
    by_file: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.fullmatch(line.rstrip("\r\n"))
        if m is None:
            raise VerificationError(
                f"{HASHES_ENV} {where} line {number} is not '<64 hex digits>  <file>' (sha256sum format); fix or remove it"
            )
        file = PurePosixPath(m.group("path").replace("\\", "/")).name
        sha = m.group("sha").lower()
        if by_file.setdefault(file, sha) != sha:
            raise VerificationError(
                f"{HASHES_ENV} {where} lists two different SHA-256 for {file} (line {number}); keep the right one"
            )
    return HashList(where, by_file)


def _read_local(path: Path, where: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise VerificationError(f"cannot read {HASHES_ENV} {where}: {exc.strerror or exc}") from None
    return _text(data, where)


def _text(data: bytes, where: str) -> str:
    if len(data) > MAX_BYTES:
        raise VerificationError(f"{HASHES_ENV} {where} is larger than {MAX_BYTES // 10**6} MB; a hash list is far smaller")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError(f"{HASHES_ENV} {where} is not UTF-8 text (a sha256sum list is)") from None


@lru_cache(maxsize=8)
def _local(path: str, _stamp: tuple[int, int]) -> HashList:
    return parse_hashes(_read_local(Path(path), path), path)


@lru_cache(maxsize=8)
def _remote(url: str, connect_timeout: float, read_timeout: float) -> HashList:
    from .failures import load_http

    requests, urllib3 = load_http()
    where = redact_url(url)
    try:
        with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout)) as resp:
            if resp.status_code != 200:
                raise VerificationError(f"cannot read {HASHES_ENV} {where}: HTTP {resp.status_code} {resp.reason}")
            data = resp.raw.read(MAX_BYTES + 1, decode_content=True)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise VerificationError(f"cannot read {HASHES_ENV} {where}: {type(exc).__name__}") from None
    return parse_hashes(_text(data, where), where)


def load_hashes(spec: str, options: DownloadOptions) -> HashList:
    """The list ``spec`` names: a file, a ``file://`` URL, or an http(s) URL (not in offline mode)."""
    if _URL.match(spec):
        if options.offline:
            raise VerificationError(
                f"{HASHES_ENV} is the URL {redact_url(spec)} but offline mode is on; point it at a file instead"
            )
        return _remote(spec, options.connect_timeout, options.read_timeout)
    if spec.lower().startswith("file://"):
        from .sources import local_path

        spec = str(local_path(spec))
    path = Path(spec).expanduser()
    stamp = (-1, -1)
    with contextlib.suppress(OSError):
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    return _local(str(path), stamp)


def listed_hash(options: DownloadOptions, file: str) -> tuple[str, str] | None:
    """The full hash ``options.hashes`` lists for the published file name ``file``: ``(sha256, what)``."""
    if not options.hashes:
        return None
    return load_hashes(options.hashes, options).lookup(file)
