"""``psegzoo serve``: the zoo as an HTTP service, with a page to try it (see docs/serve.md).

* :mod:`.settings`: what is served and the limits, read once (arguments, then ``PSEGZOO_SERVE_TOKEN``);
* :mod:`.models`: the loaded models, one copy each, and their predictions;
* :mod:`.batching`: concurrent requests of one model and image shape share a forward;
* :mod:`.access`: the bearer token and the body limit; :mod:`.params`: query parameters;
* :mod:`.app`: the routes; :mod:`.metrics`: Prometheus text; :mod:`.server`: the socket and uvicorn;
* ``static/``: the page (plain HTML, CSS and JavaScript; no external URL).

FastAPI, uvicorn and python-multipart come with ``pip install 'psegzoo[serve]'``; this package
imports them (and torch) only when a server is made, so ``import psegzoo.serve`` (which the
command line does for its defaults) is quick and works without them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import deps
from .settings import TOKEN_ENV, ServeSettings

if TYPE_CHECKING:
    from ..api import Segmenter
    from ..hub import DownloadOptions

__all__ = ["TOKEN_ENV", "ServeSettings", "make_server", "serve"]


def make_server(settings: ServeSettings, models: Mapping[str, Segmenter], **kwargs: Any) -> Any:
    """A uvicorn server answering with ``models`` (loaded :class:`Segmenter` by name); see :mod:`.server`."""
    deps.require()
    from .server import make_server as make

    return make(settings, models, **kwargs)


def serve(settings: ServeSettings, *, download: DownloadOptions | None = None,
          ready: Callable[[str], None] | None = None, loaded: Callable[[str], None] | None = None) -> None:
    """Load the models, listen, and answer until SIGTERM or SIGINT (requests in flight are finished).

    ``loaded(name)`` is told of each model as it is loaded; ``ready(url)`` once the server accepts
    connections. The socket is bound before the models load, so a taken port fails at once.
    """
    deps.require()
    from ..hub import DownloadOptions
    from .models import load_models
    from .server import bind

    opts = download if download is not None else DownloadOptions()
    sock = bind(settings.host, settings.port)
    try:
        models = load_models(settings, opts, loaded)
        url = settings.url if settings.port else settings.url.replace(":0/", f":{sock.getsockname()[1]}/")
        server = make_server(settings, models, download=opts, ready=(lambda: ready(url)) if ready else None)
        server.run(sockets=[sock])
    finally:
        sock.close()
