"""What a file's SHA-256 must be before psegzoo uses it, how far that proves it, and the records.

The hashes that may be known, each a check: the full SHA-256 a manifest publishes
(``weights.sha256``), or the 8-digit prefix mmseg publishes in its file names; a hash the user pins
(``sha256=`` / ``--sha256``); the hash a ``PSEGZOO_HASHES`` list gives; the hash recorded for the
entry (``trusted/<name>.sha256``: when the user first chose to trust a file of an entry that
publishes none, or when a file was first fetched from an origin over verified HTTPS). They must
agree, and a file is never used before its hash passes every one. What a pass proves is its trust
level (:data:`LEVELS`): a full hash pins the exact file; an 8-digit prefix only guards against
accidents, so a third-party file that only a prefix vouches for is accepted with a warning, or
refused in strict mode.
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
from .redact import redact_url
from .settings import ALLOW_UNVERIFIED_ENV, HASHES_ENV, STRICT_ENV

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


PINNED = "pinned"  # matched a full SHA-256 known before the file arrived
ORIGIN_HTTPS = "origin-https"  # only a prefix was known; from an origin URL over verified HTTPS (now pinned)
PREFIX_ONLY = "prefix-only"  # only the published 8-digit prefix matched, from a third party
FIRST_USE = "first-use"  # no hash published; trusted on first use by the user's choice
LEVELS = (PINNED, ORIGIN_HTTPS, PREFIX_ONLY, FIRST_USE)

_FIRST_USE_WHAT = "hash trusted on first use"
_LEARNED_WHAT = "hash recorded from its origin over HTTPS"
_LEARNED_MARK = "# recorded from its origin over verified HTTPS: "


@dataclass(frozen=True)
class Expected:
    """What a file's SHA-256 must satisfy: each (hex prefix or full hash, description) must prefix it.

    ``strict``: a file that only a published 8-digit prefix verifies is refused unless it came
    from an origin over verified HTTPS (:meth:`refusal`).
    """

    checks: tuple[tuple[str, str], ...]
    tofu: bool  # nothing is known yet: the user chose to trust the first file seen
    record_trust: bool  # the entry publishes no hash: record the verified hash as trusted
    strict: bool = False

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

    @property
    def full(self) -> bool:
        """A full SHA-256 is known: a file that passes is exactly the pinned one."""
        return any(len(h) == 64 for h, _ in self.checks)

    @property
    def prefix(self) -> str:
        return next((h for h, _ in self.checks if len(h) < 64), "")

    def level(self, origin_https: bool) -> str:
        """The trust level of a file that passed: see :data:`LEVELS`."""
        if self.full:
            return PINNED
        if self.tofu:
            return FIRST_USE
        return ORIGIN_HTTPS if origin_https else PREFIX_ONLY

    def refusal(self, level: str | None) -> str | None:
        """Why strict mode refuses a file of this trust level (None: it does not)."""
        if not self.strict or self.tofu or self.full or level not in (PREFIX_ONLY, None):
            return None
        return (f"only its published {len(self.prefix)}-digit hash prefix {self.prefix} vouches for it and it did not "
                f"come from its origin over HTTPS, which strict mode ({option('strict=True', '--strict')} or "
                f"{STRICT_ENV}=1) refuses; pin its full SHA-256 with {option('sha256=HEX', '--sha256 HEX')} or "
                f"{HASHES_ENV}, or get it from its origin")


def read_trust(layout: CacheLayout, entry: Entry) -> tuple[str, str] | None:
    """The hash recorded for ``entry`` (on first use, or from its origin over HTTPS) and what it is."""
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
    return token, _LEARNED_WHAT if _LEARNED_MARK in text else _FIRST_USE_WHAT


def trusted_sha256(layout: CacheLayout, entry: Entry) -> str | None:
    """The SHA-256 recorded for ``entry`` (trusted on first use, or learned from its origin), or None."""
    found = read_trust(layout, entry)
    return None if found is None else found[0]


def write_trust(layout: CacheLayout, entry: Entry, sha256: str, learned_from: str | None = None) -> Path:
    """Record ``sha256`` as trusted for ``entry`` (call with the entry's lock held); ``learned_from``:
    the origin URL it came from over verified HTTPS (else the user trusted it on first use)."""
    path = layout.trust(entry.name)
    layout.ensure("trusted")
    note = f"{_LEARNED_MARK}{redact_url(learned_from)}\n" if learned_from else ""
    try:
        files.write_atomic(path, f"{sha256}  {weights_of(entry).file}\n{note}")
    except OSError as exc:
        raise CacheError(f"cannot write the trust record {path}: {exc.strerror or exc}") from None
    return path


def _known(layout: CacheLayout, entry: Entry, pin: str | None, listed: tuple[str, str] | None) -> list[tuple[str, str]]:
    """Every hash known for ``entry``, strongest first; they must agree (a one-line error if not)."""
    w = weights_of(entry)
    known: list[tuple[str, str]] = []
    if w.sha256 or w.sha256_prefix:
        known.append((w.sha256, "published SHA-256") if w.sha256 else (str(w.sha256_prefix), "published hash prefix"))
    recorded = read_trust(layout, entry)
    if recorded:
        known.append(recorded)  # a recorded hash wins over any given later: it is never learned again
    if pin:
        known.append((normalize_sha256(pin), "pinned hash"))
    if listed:
        known.append(listed)
    for i, (later, what) in enumerate(known):
        for earlier, what_earlier in known[:i]:
            if not (later.startswith(earlier) or earlier.startswith(later)):
                raise VerificationError(
                    f"the {_named(what)} {later} contradicts the {what_earlier} {earlier} of {entry.name}; "
                    f"{_fix(what, what_earlier, entry)}"
                )
    return known


def _named(what: str) -> str:
    return "pinned SHA-256" if what == "pinned hash" else what


def _fix(what: str, earlier: str, entry: Entry) -> str:
    fix = (f"check the value given with {option('sha256=', '--sha256')}" if what == "pinned hash"
           else f"check the list {HASHES_ENV} names" if what.startswith(f"SHA-256 listed in {HASHES_ENV}")
           else f"delete the record with 'psegzoo cache rm {entry.name} --forget-trust'")
    if earlier in (_FIRST_USE_WHAT, _LEARNED_WHAT):
        fix += (f" (a recorded hash always wins; only if you are sure it is wrong, forget it with "
                f"'psegzoo cache rm {entry.name} --forget-trust')")
    return fix


def expected(layout: CacheLayout, entry: Entry, pin: str | None, allow_unverified: bool, *,
             listed: tuple[str, str] | None = None, strict: bool = False) -> Expected:
    """The checks a file of ``entry`` must pass; raises when nothing could verify it or the known hashes disagree.

    ``pin``: ``--sha256``; ``listed``: the hash ``PSEGZOO_HASHES`` gives (see :mod:`.hashes`).
    """
    w = weights_of(entry)
    known = _known(layout, entry, pin, listed)
    published = bool(w.sha256 or w.sha256_prefix)
    if known:
        return Expected(tuple(known), tofu=False, record_trust=not published, strict=strict)
    if allow_unverified:
        return Expected((), tofu=True, record_trust=True, strict=strict)
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
