"""Who may ask, and how much they may send: the bearer token and the body limit, as ASGI middleware.

Both act before any route reads a byte of the body. The token is compared in constant time
(:func:`hmac.compare_digest`); ``/healthz`` and the page's own files need none (the page asks for
the token and sends it with its requests). A body is refused with 413 when its ``Content-Length``
is over the limit, and while it streams in (chunked, or a length that lies) as soon as the bytes
read pass it: the rest is never read.
"""
from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/", "/healthz", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


class BodyTooLarge(Exception):
    """The request body passed the limit while it was read."""


def too_large_message(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes; send a smaller image or start the server with a larger --max-bytes"


async def send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """A JSON ``{"error": message}`` answer, written straight to the ASGI ``send``."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def bearer_matches(header: bytes | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time comparison)."""
    scheme, _, given = (header or b"").decode("latin-1").partition(" ")
    ok = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))
    return scheme.lower() == "bearer" and ok


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class Access:
    """The token check and the body limit in front of the application."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_bytes: int):
        self.app = app
        self.token = token
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        is_open = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if self.token is not None and not is_open and not bearer_matches(_header(scope, b"authorization"), self.token):
            await send_error(send, 401, "this server needs a token: send the header 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": "Bearer"})
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await send_error(send, 413, too_large_message(self.max_bytes), {"Connection": "close"})
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(too_large_message(self.max_bytes))
            return message

        return limited
