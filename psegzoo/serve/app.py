"""The HTTP application: routes, and how every outcome becomes an answer.

``POST /v1/predict`` checks what it can before reading the body (the model, the parameters), reads
the body under the limit, decodes it in a thread, waits for its batch, and encodes the answer in
a thread; the event loop never runs the model or a codec. Every failure is a JSON
``{"error": "..."}`` in psegzoo's one-line style, with the status that says whose mistake it was.
"""
from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import api, images, outputs
from ..api import Prediction
from ..errors import (
    DownloadError,
    ImageError,
    ImageTooLargeError,
    OfflineError,
    PredictionError,
    PsegzooError,
    UnknownModelError,
)
from .access import Access, BodyTooLarge
from .batching import Batcher, QueueFull
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .models import BatchKey, Models
from .params import BadParameter, PredictQuery, parse_query
from .settings import RETRY_AFTER_S, ServeSettings

log = logging.getLogger(__name__)

STATIC = ("index.html", "page.js", "page.css")
_MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_RAW_TYPES = ("image/", "application/octet-stream")


class Refused(Exception):
    """A request the service answers with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(exc: PsegzooError) -> int:
    """Whose mistake an error is: the client's (4xx) or the server's (5xx)."""
    if isinstance(exc, UnknownModelError):
        return 404
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, ImageError):
        return 400
    if isinstance(exc, (DownloadError, OfflineError)):
        return 502
    return 500


def _message(exc: PsegzooError) -> str:
    return exc.cli_message().splitlines()[0] if str(exc) else type(exc).__name__


async def _read_image(request: Request) -> bytes:
    """The image bytes of a request: its body (``image/*``), or the multipart field ``image``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        field = form.get("image")
        if not isinstance(field, UploadFile):
            raise Refused(400, "the multipart body has no file field 'image'; send the image as -F image=@FILE")
        return await field.read()
    if kind and not kind.startswith(_RAW_TYPES):
        raise Refused(415, f"Content-Type {kind} is not an image; send the image as the body with its image/* "
                           "type, or as the multipart field 'image'")
    return await request.body()


def _settings_doc(prediction: Prediction, query: PredictQuery, amp: str | None, device: str) -> dict[str, Any]:
    settings = api.inference_settings(prediction.entry, mode=query.mode, scale=query.scale, flip=query.flip)
    return {"mode": settings.mode, "scale": list(settings.scale),
            "crop_size": list(settings.crop_size) if settings.crop_size else None,
            "stride": list(settings.stride) if settings.stride else None, "flip": query.flip, "amp": amp,
            "device": device}


def encode(prediction: Prediction, query: PredictQuery, amp: str | None, device: str) -> Response:
    """The answer in the format asked for (run in a thread: PNG encoding takes time)."""
    headers = {"X-Psegzoo-Model": prediction.entry.name}
    if query.format == "png":
        return Response(outputs.label_png_bytes(prediction.labels, prediction.palette), media_type="image/png",
                        headers=headers)
    if query.format == "overlay":
        return Response(outputs.rgb_png_bytes(prediction.overlay(query.opacity)), media_type="image/png",
                        headers=headers)
    doc = {k: v for k, v in prediction.summary().items() if k != "image"}
    for area in doc["classes"]:
        area["color"] = list(prediction.palette[area["index"]])
    doc["settings"] = _settings_doc(prediction, query, amp, device)
    if query.overlay:
        doc["overlay_png"] = base64.b64encode(outputs.rgb_png_bytes(prediction.overlay(query.opacity))).decode()
    return JSONResponse(doc, headers=headers)


class Service:
    """The state the routes share: settings, models, batcher, metrics."""

    def __init__(self, settings: ServeSettings, models: Models):
        self.settings = settings
        self.models = models
        self.metrics = Metrics()
        self.batcher = Batcher(self._run, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000,
                               capacity=settings.queue, on_depth=self.metrics.queue_depth)

    def _run(self, key: BatchKey, images: Sequence[np.ndarray]) -> list[Any]:
        """One group on the device (in the batcher's worker thread), counted for ``/metrics``."""
        self.metrics.batch(key.model, len(images))
        return self.models.run(key, images)

    async def predict(self, request: Request) -> Response:
        try:
            return await self._predict(request)
        except Refused as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except BadParameter as exc:
            return error_response(422, str(exc))
        except BodyTooLarge as exc:
            return error_response(413, str(exc), {"Connection": "close"})
        except QueueFull as exc:
            self.metrics.rejected()
            return error_response(503, f"the server is busy ({exc}); retry in {RETRY_AFTER_S} s",
                                  {"Retry-After": str(RETRY_AFTER_S)})
        except PsegzooError as exc:
            return error_response(_status_of(exc), _message(exc))
        except Exception as exc:  # a failure of the server's own: logged in full, answered in one line
            log.exception("prediction failed")
            return error_response(500, f"prediction failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")

    async def _predict(self, request: Request) -> Response:
        query = parse_query(request.query_params, list(request.query_params.keys()))
        entry = self.models.entry(query.model)
        try:  # the settings are checked before the body is read
            api.inference_settings(entry, mode=query.mode, scale=query.scale, flip=query.flip)
        except PredictionError as exc:
            raise BadParameter(_message(exc)) from None
        data = await _read_image(request)
        limit = self.settings.max_pixels
        rgb = await run_in_threadpool(images.decode_image, data, name="request body", max_pixels=limit)
        segmenter = await self.models.get(entry)
        key = BatchKey(segmenter.entry.name, query.mode, query.scale, query.flip, rgb.shape)
        result = await self.batcher.submit(key, rgb)
        if isinstance(result, PsegzooError):
            raise result
        return await run_in_threadpool(encode, result, query, self.settings.amp, str(segmenter.device))


def _static(name: str) -> Response:
    data = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
    suffix = name[name.rfind("."):]
    return Response(data, media_type=_MEDIA[suffix], headers={"Cache-Control": "no-cache"})


def create_app(settings: ServeSettings, models: Models) -> Any:
    """The ASGI application: routes behind the metrics and the access checks."""
    service = Service(settings, models)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.batcher.close()

    app = FastAPI(title="psegzoo", lifespan=lifespan, docs_url=None, redoc_url=None)  # their pages load CDN files

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        message = {404: "no such endpoint; see / for the page, GET /v1/models and POST /v1/predict",
                   405: "method not allowed on this endpoint"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(str(e.get("msg", e)) for e in exc.errors()) or "invalid request")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            return error_response(404, f"no such file {name!r}")
        return _static(name)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": models.served, "queue": service.batcher.depth}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(models.describe))

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        return await service.predict(request)

    return MetricsMiddleware(Access(app, token=settings.token, max_bytes=settings.max_bytes), service.metrics)
