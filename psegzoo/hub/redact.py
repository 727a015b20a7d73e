"""URLs as psegzoo shows and stores them: without anything that could be a credential.

A URL can carry a secret in two places: ``user:password@`` before the host, and the query string
(pre-signed object-storage links carry ``X-Amz-Signature``, ``sig``, ``token`` ...). Every URL that
reaches an error, a warning, a log line, a cache record or ``psegzoo cache --json`` goes through
:func:`redact_url`, which keeps what a reader needs (scheme, host, path, parameter names) and
replaces the rest with ``***``. Every query value is hidden, not only those whose names look
secret: a credential's name cannot be guessed reliably.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "redact_url"]

MASK = "***"


def _query(query: str) -> str:
    """``a=1&b=2&c`` -> ``a=***&b=***&c`` (names kept, values hidden; a bare name may itself be a token)."""
    out = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        out.append(f"{name}={MASK}" if eq else (MASK if part else ""))
    return "&".join(out)


def _no_scheme(text: str) -> str:
    """``user:pw@host/x?t=1`` (a URL written without its scheme) redacted the same way."""
    head, slash, tail = text.partition("/")
    if "@" in head:
        head = MASK + "@" + head.rsplit("@", 1)[1]
    rest, qmark, query = (slash + tail).partition("?")
    return head + rest + (qmark + _query(query) if qmark else "")


def redact_url(url: str) -> str:
    """``url`` with user:password and every query value replaced by ``***``; the rest unchanged.

    ``https://u:p@h/x?token=abc&X-Amz-Signature=f00`` -> ``https://***@h/x?token=***&X-Amz-Signature=***``.
    Text that is not a URL is returned unchanged; a fragment is hidden like a query.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return MASK if "@" in text or "?" in text else text
    if not parts.netloc:  # no host part: file:///x, or user:pw@host/x written without a scheme
        return _no_scheme(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = _query(parts.query) if parts.query else ""
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
