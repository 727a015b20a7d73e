"""What a file's SHA-256 must be before psegzoo uses it, and the trust-on-first-use records.

In order of strength: the full SHA-256 a manifest publishes (``weights.sha256``), or the 8-digit
prefix mmseg publishes in its file names; a hash the user pins (``sha256=`` / ``--sha256``); for an
entry that publishes none, the hash recorded when the user first chose to trust a file
(``allow_unverified``). A file is never used before its hash passes every check that applies.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import files
from ..errors import CacheError, UnverifiedWeightsError, VerificationError, option
from ..manifest import Entry
from .layout import HEX64, CacheLayout, weights_of
from .settings import ALLOW_UNVERIFIED_ENV

CHUNK = 1 << 20  # 1 MiB reads: large enough to keep up with curl on loopback
_HEX = re.compile(r"[0-9a-f]+")


def normalize_sha256(value: str) -> str:
    """A user-given hash in canonical form: lower-case hex, 8 to 64 digits (``sha256:`` allowed).

    A full 64-digit hash is the strong choice; 8 digits (what mmseg file names carry) is accepted.
    """
    text = value.strip().lower() if isinstance(value, str) else ""
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if not _HEX.fullmatch(text) or not 8 <= len(text) <= 64:
        raise VerificationError(
            f"{option('sha256=', '--sha256')} {value!r} is not a SHA-256: give its hex digits (64 for the full hash, at least 8)"
        )
    return text


def hash_file(path: Path, h: Any = None, limit: int | None = None) -> Any:
    """Feed ``path`` (its first ``limit`` bytes) into the hash object ``h`` (a new SHA-256 by default)."""
    h = hashlib.sha256() if h is None else h
    n = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with files.open_regular(path, buffering=0) as f:
        while limit is None or n < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - n)
            got = f.readinto(view[:want])
            if not got:
                break
            h.update(view[:got])
            n += got
    return h


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a whole file on disk (a CacheError when it cannot be read)."""
    try:
        return str(hash_file(Path(path)).hexdigest())
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Expected:
    """What a file's SHA-256 must satisfy: each (hex prefix or full hash, description) must prefix it."""

    checks: tuple[tuple[str, str], ...]
    tofu: bool  # nothing is known yet: the user chose to trust the first file seen
    record_trust: bool  # the entry publishes no hash: record the verified hash as trusted

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

    @property
    def pinned(self) -> bool:
        return any(what == "pinned hash" for _, what in self.checks)


def trusted_sha256(layout: CacheLayout, entry: Entry) -> str | None:
    """The SHA-256 trusted for ``entry`` on first use, or None."""
    path = layout.trust(entry.name)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheError(f"cannot read the trust record {path}: {getattr(exc, 'strerror', None) or exc}") from None
    token = text.split()[0].lower() if text.split() else ""
    if not HEX64.fullmatch(token):
        raise CacheError(
            f"the trust record {path} does not hold a SHA-256; delete that file and get {entry.name} again to trust its hash anew"
        )
    return token


def write_trust(layout: CacheLayout, entry: Entry, sha256: str) -> Path:
    """Record ``sha256`` as trusted for ``entry`` (call with the entry's lock held)."""
    path = layout.trust(entry.name)
    layout.ensure("trusted")
    try:
        files.write_atomic(path, f"{sha256}  {weights_of(entry).file}\n")
    except OSError as exc:
        raise CacheError(f"cannot write the trust record {path}: {exc.strerror or exc}") from None
    return path


def expected(layout: CacheLayout, entry: Entry, pin: str | None, allow_unverified: bool) -> Expected:
    """The checks a file of ``entry`` must pass; raises when nothing could verify it."""
    w = weights_of(entry)
    published = w.sha256 or w.sha256_prefix
    what = "published SHA-256" if w.sha256 else "published hash prefix"
    checks: list[tuple[str, str]] = []
    if published:
        checks.append((published, what))
    if pin:
        pin = normalize_sha256(pin)
        if published and not (pin.startswith(published) or published.startswith(pin)):
            raise VerificationError(
                f"the pinned SHA-256 {pin} contradicts the {what} {published} of {entry.name}; check the value given "
                f"with {option('sha256=', '--sha256')}"
            )
        checks.append((pin, "pinned hash"))
        return Expected(tuple(checks), tofu=False, record_trust=not published)
    if published:
        return Expected(tuple(checks), tofu=False, record_trust=False)
    trusted = trusted_sha256(layout, entry)
    if trusted:
        return Expected(((trusted, "hash trusted on first use"),), tofu=False, record_trust=False)
    if allow_unverified:
        return Expected((), tofu=True, record_trust=True)
    raise UnverifiedWeightsError(
        f"{entry.name} has no published SHA-256, so psegzoo cannot verify its file. To get it anyway and trust its "
        f"hash from then on (trust on first use), pass {option('allow_unverified=True', '--allow-unverified')} or set "
        f"{ALLOW_UNVERIFIED_ENV}=1; if you know its SHA-256, pass {option('sha256=HEX', '--sha256 HEX')}; or put a copy "
        f"you trust in the cache with 'psegzoo import FILE --name {entry.name}'"
    )


def sniff(path: Path) -> str | None:
    """``"html"`` or ``"gzip"`` when a file starts like one; a checkpoint never does."""
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
