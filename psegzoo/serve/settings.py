"""Every setting of the HTTP service, read once: arguments first, then the environment, then defaults.

This is the only module of :mod:`psegzoo.serve` that reads environment variables
(``PSEGZOO_SERVE_TOKEN``); the frozen :class:`ServeSettings` is then passed down.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..devices import DTYPES, dtype_name
from ..errors import ServeError

TOKEN_ENV = "PSEGZOO_SERVE_TOKEN"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BYTES = 32 * 2**20
"""A request body larger than this (32 MiB) is refused with 413 while it streams in."""
DEFAULT_MAX_PIXELS = 2**24
"""An image declaring more pixels (about 4096 x 4096) is refused with 413 before it is decoded."""
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_QUEUE = 64
RETRY_AFTER_S = 1
"""What a 503 (queue full) tells the client to wait before trying again."""



def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ServeError(f"{name} must be a number of at least {low}, got {value!r}")


@dataclass(frozen=True)
class ServeSettings:
    """What the service serves and its limits (see docs/serve.md for each)."""

    models: tuple[str, ...] = ()
    any_model: bool = False
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    device: str = "auto"
    amp: str | None = None  # "float16" or "bfloat16" autocast, None for float32
    token: str | None = field(default=None, repr=False)
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    queue: int = DEFAULT_QUEUE

    def __post_init__(self) -> None:
        if not self.models and not self.any_model:
            raise ServeError("nothing to serve: name the models with --model NAME (repeatable), or allow any "
                             "manifest entry with --any-model")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"port must be within 0..65535, got {self.port}")
        for name in ("max_bytes", "max_pixels", "max_batch", "queue"):
            _positive(name.replace("_", "-"), getattr(self, name))
        _positive("max-wait-ms", self.max_wait_ms, allow_zero=True)
        if self.amp is not None and (self.amp not in DTYPES.values() or self.amp == "float32"):
            raise ServeError(f"amp must be float16 or bfloat16, got {self.amp!r}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ServeError(f"the token must be non-empty and hold no spaces (from --token or {TOKEN_ENV})")

    @classmethod
    def from_args(cls, *, token: str | None = None, amp: str | None = None,
                  environ: Mapping[str, str] | None = None, **fields: Any) -> ServeSettings:
        """The settings of these arguments; a token not given comes from ``PSEGZOO_SERVE_TOKEN``."""
        env = os.environ if environ is None else environ
        if token is None:
            token = env.get(TOKEN_ENV, "").strip() or None
        if amp is not None:
            amp = dtype_name(amp) or str(amp)
        if "models" in fields:
            fields["models"] = tuple(dict.fromkeys(fields["models"]))
        return cls(token=token, amp=amp, **fields)

    @property
    def exposed(self) -> bool:
        """Whether the service listens beyond this machine."""
        return not is_loopback(self.host)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"
