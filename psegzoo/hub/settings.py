"""Every setting of getting weights, read once: :class:`DownloadOptions` and the cache root.

This is the only module of the hub that reads environment variables. A field left out when
building :class:`DownloadOptions` comes from its variable (else the default), a field given wins;
the frozen value is then passed down and nothing else looks at the environment again.

==========================  ===================================================  ==================
Variable                    Field                                                Default
==========================  ===================================================  ==================
PSEGZOO_HOME                ``home``: the cache root                             see :func:`cache_root`
PSEGZOO_INDEX               ``index``: extra manifests (read by the manifest)    none
PSEGZOO_MIRROR              ``mirrors``: comma-separated URL templates           none
PSEGZOO_SEARCH_PATH         ``search``: folders searched for copies (pathsep)    none
TORCH_HOME                  ``torch_home``: torch hub's cache                    ``~/.cache/torch``
PSEGZOO_OFFLINE             ``offline``: no network (file:// and copies only)    off
PSEGZOO_ALLOW_UNVERIFIED    ``allow_unverified``: trust on first use             off
PSEGZOO_STRICT              ``strict``: refuse third-party files that match      off
                            only the published 8-digit hash prefix
PSEGZOO_HASHES              ``hashes``: a FILE or URL of full SHA-256 hashes     none
                            in ``sha256sum`` format (pins, by file name)
PSEGZOO_RETRIES             ``retries`` per URL                                  4
PSEGZOO_CONNECT_TIMEOUT     ``connect_timeout`` (s)                              10
PSEGZOO_TIMEOUT             ``read_timeout`` (s): silence before giving up        60
PSEGZOO_BACKOFF             ``backoff``: first retry delay (s), doubled          1
PSEGZOO_BACKOFF_MAX         ``backoff_max`` (s)                                  30
PSEGZOO_SPEED_LIMIT         ``speed_limit`` (bytes/s) ...                        1000
PSEGZOO_SPEED_TIME          ... sustained for ``speed_time`` (s) fails the try   30
PSEGZOO_DEADLINE            ``deadline`` (s) for one whole fetch                  none
PSEGZOO_MAX_SIZE            ``max_size`` (bytes) when the size is not published  2 GB
PSEGZOO_LOCK_TIMEOUT        ``lock_timeout`` (s) without progress                600
HF_ENDPOINT                 ``hf_endpoint`` for ``hf://`` mirrors                https://huggingface.co
HF_TOKEN                    ``hf_token``, sent to ``hf_endpoint`` only           none
==========================  ===================================================  ==================
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import CacheError, DownloadError, option
from ..settings import index_from_env, switch
from .redact import redact_url

HOME_ENV = "PSEGZOO_HOME"
MIRROR_ENV = "PSEGZOO_MIRROR"
SEARCH_ENV = "PSEGZOO_SEARCH_PATH"
OFFLINE_ENV = "PSEGZOO_OFFLINE"
ALLOW_UNVERIFIED_ENV = "PSEGZOO_ALLOW_UNVERIFIED"
STRICT_ENV = "PSEGZOO_STRICT"
HASHES_ENV = "PSEGZOO_HASHES"
RETRIES_ENV = "PSEGZOO_RETRIES"
CONNECT_TIMEOUT_ENV = "PSEGZOO_CONNECT_TIMEOUT"
TIMEOUT_ENV = "PSEGZOO_TIMEOUT"
BACKOFF_ENV = "PSEGZOO_BACKOFF"
BACKOFF_MAX_ENV = "PSEGZOO_BACKOFF_MAX"
SPEED_LIMIT_ENV = "PSEGZOO_SPEED_LIMIT"
SPEED_TIME_ENV = "PSEGZOO_SPEED_TIME"
DEADLINE_ENV = "PSEGZOO_DEADLINE"
MAX_SIZE_ENV = "PSEGZOO_MAX_SIZE"
LOCK_TIMEOUT_ENV = "PSEGZOO_LOCK_TIMEOUT"
HF_ENDPOINT_ENV = "HF_ENDPOINT"
HF_TOKEN_ENV = "HF_TOKEN"

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
_URL_START = re.compile(r"(https?|file|hf)://", re.IGNORECASE)

# (lowest, highest) accepted for each number, so that nan, inf, 0 s timeouts and 1e308 s waits are
# refused at the edge instead of hanging or overflowing later.
_DAY = 86400.0
BOUNDS: Mapping[str, tuple[float, float]] = {
    "retries": (0, 50),
    "connect_timeout": (0.01, _DAY),
    "read_timeout": (0.01, _DAY),
    "backoff": (0.0, 3600.0),
    "backoff_max": (0.0, 3600.0),
    "speed_limit": (0, 10**12),
    "speed_time": (0.1, _DAY),
    "deadline": (0.01, 30 * _DAY),
    "max_size": (1, 2**62),
    "lock_timeout": (0.0, 30 * _DAY),
}
_ENV_OF = {
    "retries": RETRIES_ENV, "connect_timeout": CONNECT_TIMEOUT_ENV, "read_timeout": TIMEOUT_ENV,
    "backoff": BACKOFF_ENV, "backoff_max": BACKOFF_MAX_ENV, "speed_limit": SPEED_LIMIT_ENV,
    "speed_time": SPEED_TIME_ENV, "deadline": DEADLINE_ENV, "max_size": MAX_SIZE_ENV, "lock_timeout": LOCK_TIMEOUT_ENV,
}
_OPTION_OF = {
    "retries": option("retries=N", "--retries N"), "read_timeout": option("read_timeout=S", "--timeout S"),
    "deadline": option("deadline=S", "--deadline S"), "connect_timeout": option("connect_timeout=S", "--connect-timeout S"),
}


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def cache_root() -> Path:
    """The cache root: ``PSEGZOO_HOME``, else ``$XDG_CACHE_HOME/psegzoo``, else ``~/.cache/psegzoo``."""
    home = _env(HOME_ENV)
    if home:
        return Path(home).expanduser()
    xdg = _env("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "psegzoo"
    return Path.home() / ".cache" / "psegzoo"


def torch_home() -> Path:
    """torch's own rule: ``TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``."""
    home = _env("TORCH_HOME")
    if home:
        return Path(home).expanduser()
    xdg = _env("XDG_CACHE_HOME")
    return Path(xdg).expanduser() / "torch" if xdg else Path.home() / ".cache" / "torch"


def mim_dir() -> Path:
    """Where OpenMMLab's ``mim download`` saves checkpoints (``~/.cache/mim``, not configurable)."""
    return Path.home() / ".cache" / "mim"


def _flag(name: str) -> bool:
    raw = _env(name).lower()
    value = False if not raw else switch(raw)
    if value is None:
        raise DownloadError(f"{name}={raw!r} is not a yes/no value; use 1 or 0 (or unset it)")
    return value


def check_number(name: str, value: Any, *, source: str | None = None) -> float:
    """``value`` as a finite number within :data:`BOUNDS`, or a one-line error naming where it came from."""
    low, high = BOUNDS[name]
    where = source or _OPTION_OF.get(name, option(f"{name}=", f"--{name.replace('_', '-')}"))
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    given = where if source else f"{where} got {value!r}"
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise DownloadError(
            f"{given}: it must be a number from {low:g} to {high:g}" + ("; unset it or fix its value" if source else "")
        )
    if name in ("retries", "max_size", "speed_limit") and number != int(number):
        raise DownloadError(f"{given}: it must be a whole number")
    return number


def _number(name: str, default: float | None) -> Callable[[], Any]:
    def read() -> Any:
        env = _ENV_OF[name]
        raw = _env(env)
        if not raw:
            return default
        value = check_number(name, raw, source=f"{env}={raw!r}")
        return int(value) if name in ("retries", "max_size", "speed_limit") else value

    return read


redact = redact_url  # the one way a URL is shown or stored (see :mod:`.redact`)


def split_mirrors(value: str | Iterable[str]) -> tuple[str, ...]:
    """Mirror URL templates from a comma-separated string or a list; each must name its scheme."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    mirrors = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        if not _URL_START.match(text):
            raise DownloadError(
                f"mirror {redact(text)!r} is not an http(s)://, file:// or hf:// URL (check "
                f"{option('mirrors=', '--mirror')} or {MIRROR_ENV})"
            )
        mirrors.append(text)
    return tuple(mirrors)


def _mirrors_from_env() -> tuple[str, ...]:
    return split_mirrors(_env(MIRROR_ENV))


def _search_from_env() -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in _env(SEARCH_ENV).split(os.pathsep) if p.strip())


def _index_from_env() -> tuple[Path, ...] | None:
    return index_from_env() or None


def _hf_endpoint() -> str:
    return (_env(HF_ENDPOINT_ENV) or DEFAULT_HF_ENDPOINT).rstrip("/")


def _hf_token() -> str | None:
    return _env(HF_TOKEN_ENV) or None


@dataclass(frozen=True)
class DownloadOptions:
    """How psegzoo gets and keeps checkpoints; build it once and pass it to every hub call.

    Fields not given are read from the environment (module table), else their default:
    ``DownloadOptions(offline=True)`` keeps ``PSEGZOO_HOME`` and the other variables. Numbers are
    checked (finite, within sane bounds) when the value is built. ``mirrors`` are URL templates
    tried before the original URL (``{path}``, ``{file}``, ``{name}``; ``hf://ORG/REPO[@REV][/DIR]``);
    ``search`` folders (and their subfolders) are searched for a copy before any download, after
    torch hub's and mim's download folders; ``sha256`` pins the hash a file must have; ``force``
    downloads again (the verified copy stays until its replacement is verified); ``link`` hard-links
    local copies into the cache where possible. ``strict`` refuses a file from a third party that
    only its published 8-digit hash prefix verifies; ``hashes`` names a ``sha256sum`` file (path or
    URL) whose full hashes pin the files it lists. ``progress=None`` shows a bar when stderr is a
    terminal.
    """

    home: Path = field(default_factory=cache_root)
    index: tuple[Path, ...] | None = field(default_factory=_index_from_env)
    mirrors: tuple[str, ...] = field(default_factory=_mirrors_from_env)
    search: tuple[Path, ...] = field(default_factory=_search_from_env)
    torch_home: Path = field(default_factory=torch_home)
    mim_dir: Path = field(default_factory=mim_dir)
    offline: bool = field(default_factory=lambda: _flag(OFFLINE_ENV))
    allow_unverified: bool = field(default_factory=lambda: _flag(ALLOW_UNVERIFIED_ENV))
    strict: bool = field(default_factory=lambda: _flag(STRICT_ENV))
    hashes: str | None = field(default_factory=lambda: _env(HASHES_ENV) or None)
    sha256: str | None = None
    force: bool = False
    link: bool = False
    progress: bool | None = None
    retries: int = field(default_factory=_number("retries", 4))
    connect_timeout: float = field(default_factory=_number("connect_timeout", 10.0))
    read_timeout: float = field(default_factory=_number("read_timeout", 60.0))
    backoff: float = field(default_factory=_number("backoff", 1.0))
    backoff_max: float = field(default_factory=_number("backoff_max", 30.0))
    speed_limit: int = field(default_factory=_number("speed_limit", 1000))
    speed_time: float = field(default_factory=_number("speed_time", 30.0))
    deadline: float | None = field(default_factory=_number("deadline", None))
    max_size: int = field(default_factory=_number("max_size", 2_000_000_000))
    lock_timeout: float = field(default_factory=_number("lock_timeout", 600.0))
    hf_endpoint: str = field(default_factory=_hf_endpoint)
    hf_token: str | None = field(default_factory=_hf_token, repr=False)

    def __post_init__(self) -> None:
        # Values given in Python are checked like those from the environment; lists become tuples.
        set_ = object.__setattr__
        set_(self, "home", Path(self.home).expanduser())
        set_(self, "torch_home", Path(self.torch_home).expanduser())
        set_(self, "mim_dir", Path(self.mim_dir).expanduser())
        if self.index is not None:
            index = (self.index,) if isinstance(self.index, (str, os.PathLike)) else self.index
            set_(self, "index", tuple(Path(p) for p in index))
        set_(self, "mirrors", split_mirrors(self.mirrors))
        search = (self.search,) if isinstance(self.search, (str, os.PathLike)) else self.search
        set_(self, "search", tuple(Path(p).expanduser() for p in search))
        for name in BOUNDS:
            value = getattr(self, name)
            if value is None and name == "deadline":
                continue
            number = check_number(name, value)
            set_(self, name, int(number) if name in ("retries", "max_size", "speed_limit") else number)
        if not re.match(r"https?://", self.hf_endpoint):
            raise DownloadError(f"{HF_ENDPOINT_ENV}={redact_url(self.hf_endpoint)!r} is not an http(s):// URL")
        set_(self, "hf_endpoint", self.hf_endpoint.rstrip("/"))

    def with_(self, **changes: Any) -> DownloadOptions:
        """A copy with ``changes``; fields given as None keep their value (handy for optional arguments)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def options_or_default(options: DownloadOptions | None) -> DownloadOptions:
    """``options``, or the environment's (what a call without options uses)."""
    return options if options is not None else DownloadOptions()


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(DownloadOptions))


def check_home(home: Path) -> None:
    """Refuse a cache root that is a file (a typo in ``PSEGZOO_HOME``) with a one-line error."""
    if home.exists() and not home.is_dir():
        raise CacheError(
            f"the cache folder {home} is a file, not a folder; point {HOME_ENV} at a folder (it is created if missing)"
        )
