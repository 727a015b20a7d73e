"""What went wrong with a URL, and whether to try it again.

Failures are classified by exception type, not message text (:func:`classify`). A host that does
not resolve or refuses the connection is not retried; timeouts, dropped connections, 408, 425, 429
and 5xx are, after the wait :class:`RetryPolicy` gives (``Retry-After`` honoured, as seconds or an
HTTP date, up to the policy's longest wait). requests and urllib3 are imported on first use.
"""
from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timezone
from typing import Any

from .settings import DownloadOptions

MAX_REDIRECTS = 10


def load_http() -> tuple[Any, Any]:
    """requests and urllib3, imported on first use (with them: ssl, http.client)."""
    import requests
    import urllib3

    return requests, urllib3


@dataclass(frozen=True)
class Problem:
    """Why a try failed. ``kind``: dns, refused, unreachable, connect-timeout, read-timeout, slow,
    reset, closed, tls, http, redirects, size, url or other."""

    kind: str
    text: str
    retryable: bool
    retry_after: float | None = None
    status: int | None = None

    @property
    def host_unreachable(self) -> bool:
        return self.kind in ("dns", "refused", "unreachable", "connect-timeout")


class UrlFailed(Exception):
    """This URL cannot give the file now; ``problem`` says why. Try the next source."""

    def __init__(self, problem: Problem):
        super().__init__(problem.text)
        self.problem = problem


class DeadlineExceeded(Exception):
    """The whole fetch ran past its deadline."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, urllib3's ``reason``, requests' ``args``)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())]


def classify(exc: BaseException, options: DownloadOptions) -> Problem:
    """A requests/urllib3/OS exception as a :class:`Problem`, by type."""
    import http.client
    import ssl

    requests, urllib3 = load_http()
    chain = list(_chain(exc))

    def has(*types: type) -> bool:
        return any(isinstance(e, types) for e in chain)

    if has(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return Problem("dns", "host name not found (DNS)", retryable=False)
    if has(ConnectionRefusedError):
        return Problem("refused", "connection refused", retryable=False)
    if has(requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        return Problem("connect-timeout", f"no connection within {options.connect_timeout:g} s (connect timeout)", True)
    if has(requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout):
        return Problem("read-timeout", f"no data for {options.read_timeout:g} s (read timeout)", True)
    if has(ssl.SSLError, requests.exceptions.SSLError):
        return Problem("tls", "TLS error (certificate or protocol)", retryable=False)
    if has(requests.TooManyRedirects):
        return Problem("redirects", f"more than {MAX_REDIRECTS} redirects", retryable=False)
    if has(requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        return Problem("url", "not a valid URL", retryable=False)
    unreachable = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}
    if any(isinstance(e, OSError) and e.errno in unreachable for e in chain):
        return Problem("unreachable", "network or host unreachable", retryable=False)
    if has(ConnectionResetError):
        return Problem("reset", "connection reset", retryable=True)
    if has(http.client.IncompleteRead, urllib3.exceptions.ProtocolError, http.client.RemoteDisconnected,
           ConnectionAbortedError, BrokenPipeError, urllib3.exceptions.IncompleteRead):
        return Problem("closed", "connection closed early", retryable=True)
    return Problem("other", f"{type(exc).__name__}", retryable=True)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now_ts = time.time() if now is None else now
    return max(0.0, when.timestamp() - now_ts)


def http_problem(status: int, reason: str, headers: Any) -> Problem:
    text = f"HTTP {status} {reason or ''}".rstrip()
    retryable = status in (408, 425, 429) or 500 <= status <= 599
    after = retry_after_seconds(headers.get("Retry-After")) if status in (429, 503) else None
    return Problem("http", text, retryable, retry_after=after, status=status)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a URL again: up to ``retries`` more times after consecutive failures that may
    pass, waiting ``backoff * 2**(n-1)`` seconds (at most ``backoff_max``; a server's Retry-After is
    honoured up to that cap)."""

    retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0

    @classmethod
    def of(cls, options: DownloadOptions) -> RetryPolicy:
        return cls(options.retries, options.backoff, options.backoff_max)

    def wait(self, failures: int, problem: Problem) -> float | None:
        """Seconds to wait before the next try after the ``failures``-th failure in a row; None: stop."""
        if not problem.retryable or failures > self.retries:
            return None
        delay = min(self.backoff * 2.0 ** min(failures - 1, 60), self.backoff_max)
        if problem.retry_after is not None:
            delay = min(max(delay, problem.retry_after), self.backoff_max)
        return delay
