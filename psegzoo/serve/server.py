"""Listening: the socket, uvicorn, and the warning for an exposed server without a token.

The socket is bound here, before uvicorn starts, so that a taken port is one clear error and
port 0 (any free port) gives the real URL. uvicorn's graceful shutdown answers the requests in
flight on SIGTERM or SIGINT (for at most ``GRACEFUL_SHUTDOWN_S``) before the process exits.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn

from ..api import Segmenter
from ..errors import ServeError
from ..hub import DownloadOptions
from .app import create_app
from .models import Models
from .settings import TOKEN_ENV, ServeSettings

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 60


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or one line saying why there cannot be one."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}: unknown host ({exc.strerror}); use an address such as "
                         "127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, telling ``ready`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[], None] | None):
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._ready is not None:
            self._ready()


def make_server(settings: ServeSettings, models: Mapping[str, Segmenter], *, download: DownloadOptions | None = None,
                ready: Callable[[], None] | None = None, log_level: str = "warning") -> Any:
    """A uvicorn server for ``models`` (already loaded); run it with ``server.run(sockets=[bind(...)])``."""
    if settings.exposed and settings.token is None:
        log.warning("listening on %s without a token: anyone who can reach this address can use the server; "
                    "set --token or %s", settings.host, TOKEN_ENV)
    app = create_app(settings, Models(settings, models, download))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    return _Server(config, ready)
