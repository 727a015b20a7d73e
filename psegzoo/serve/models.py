"""The models a server answers with: loaded once, one copy per model shared by every request.

The ``--model`` names are loaded before the server listens. With ``any_model`` a request may name
any manifest entry, loaded (through the hub: verified, cached) on first use, once even when
several requests ask for it together; without it a request never makes the server download.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import api, manifest
from ..api import Prediction, Segmenter
from ..errors import PsegzooError, UnknownModelError, option
from ..hub import DownloadOptions
from .settings import ServeSettings


@dataclass(frozen=True)
class BatchKey:
    """Requests with equal keys may share a forward: same model, settings and image shape."""

    model: str
    mode: str | None
    scale: tuple[int, int] | None
    flip: bool
    shape: tuple[int, ...]


def load_models(settings: ServeSettings, download: DownloadOptions,
                report: Callable[[str], None] | None = None) -> dict[str, Segmenter]:
    """Load every ``--model`` (each once, under its canonical name) before the server starts."""
    loaded: dict[str, Segmenter] = {}
    for name in settings.models:
        entry = manifest.get_entry(name, index=download.index)
        if entry.name not in loaded:
            loaded[entry.name] = api.load(entry.name, device=settings.device, download=download)
            if report is not None:
                report(entry.name)
    return loaded


class Models:
    """Name -> loaded :class:`Segmenter`, and the predictions the batcher asks for."""

    def __init__(self, settings: ServeSettings, loaded: Mapping[str, Segmenter], download: DownloadOptions | None = None):
        self.settings = settings
        self.download = download if download is not None else DownloadOptions(progress=False)
        self._loaded = dict(loaded)
        self._loading: dict[str, asyncio.Future] = {}
        self._lock = threading.Lock()

    @property
    def served(self) -> list[str]:
        return list(self._loaded)

    def entry(self, name: str | None) -> manifest.Entry:
        """The entry a request names (or the one model served, when it names none): 404 otherwise."""
        if name is None or not name.strip():
            if len(self._loaded) == 1 and not self.settings.any_model:
                return next(iter(self._loaded.values())).entry
            raise UnknownModelError(f"name the model with ?model=NAME (served: {', '.join(self._loaded) or 'none'})")
        entry = manifest.get_entry(name, index=self.download.index)
        if entry.name not in self._loaded and not self.settings.any_model:
            raise UnknownModelError(f"model {entry.name!r} is not served here (served: {', '.join(self._loaded)}); "
                                    f"start the server with {option('models=[NAME]', '--model NAME')} or "
                                    f"{option('any_model=True', '--any-model')}")
        return entry

    async def get(self, entry: manifest.Entry) -> Segmenter:
        """The loaded model of ``entry``; with ``any_model``, loaded now in a thread (once for all askers)."""
        with self._lock:
            segmenter = self._loaded.get(entry.name)
        if segmenter is not None:
            return segmenter
        pending = self._loading.get(entry.name)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._loading[entry.name] = loop.run_in_executor(None, self._load, entry.name)
            pending.add_done_callback(lambda _: self._loading.pop(entry.name, None))
        return await asyncio.shield(pending)

    def _load(self, name: str) -> Segmenter:
        segmenter = api.load(name, device=self.settings.device, download=self.download)
        with self._lock:
            self._loaded[name] = segmenter
        return segmenter

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` answers: the models served (with classes and palette) and those available."""
        with self._lock:
            served = list(self._loaded.values())
        available = ([e.name for e in manifest.load_manifest(self.download.index).models if e.weights is not None]
                     if self.settings.any_model else [s.entry.name for s in served])
        return {
            "served": [{"name": s.entry.name, "dataset": s.entry.dataset, "method": s.entry.method,
                        "backbone": s.entry.backbone, "device": str(s.device), "classes": list(s.classes),
                        "palette": [list(c) for c in s.palette]} for s in served],
            "available": available,
            "any_model": self.settings.any_model,
        }

    def run(self, key: BatchKey, images: Sequence[np.ndarray]) -> list[Prediction | PsegzooError]:
        """Predict a group of same-shaped images in one call (the batcher's worker thread calls this).

        One image takes the path ``psegzoo predict`` takes on the CPU, so its labels are the same; more
        go through the model together where the settings allow (whole mode, one view) and one by
        one otherwise. A model error fails the image it happened on, never the others.
        """
        with self._lock:
            segmenter = self._loaded[key.model]
        return list(segmenter.predict_many(list(images), batch_size=len(images), workers=0, mode=key.mode,
                                           scale=key.scale, flip=key.flip, amp_dtype=self.settings.amp,
                                           keep_scores=False))
