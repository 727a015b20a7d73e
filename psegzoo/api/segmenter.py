"""``Segmenter``: a loaded checkpoint that runs the test pipeline on images."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .. import images, predictor
from ..errors import ImageError
from ..manifest import Dataset, Entry
from ..models import Segmentor
from .prediction import Prediction

ImageInput = Any  # path, PIL image or HxWx3 uint8 array


class Segmenter:
    """A loaded checkpoint ready to predict; ``model(x)`` gives logits for normalized NCHW input."""

    def __init__(self, model: Segmentor, entry: Entry, device: torch.device, dtype: torch.dtype,
                 dataset: Dataset, timings: Mapping[str, float] | None = None):
        self.model = model
        self.entry = entry
        self.device = device
        self.dtype = dtype
        self.dataset = dataset
        self.load_timings = dict(timings or {})

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.dataset.palette

    def __repr__(self) -> str:
        return f"Segmenter({self.entry.name!r}, device={self.device}, dtype={self.dtype})"

    def compile(self, **kwargs: Any) -> Segmenter:
        """Compile the model with ``torch.compile`` (first prediction is slow, later ones faster)."""
        self.model = torch.compile(self.model, **kwargs)  # type: ignore[assignment]
        return self

    def settings(self, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                 scale: Any = None) -> predictor.InferenceSettings:
        """The entry's test settings with overrides, validated."""
        return predictor.InferenceSettings.from_entry(self.entry, mode=mode, crop_size=crop_size, stride=stride, scale=scale)

    def predict(self, image: ImageInput, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                scale: Any = None, flip: bool = False, scales: Sequence[float] | None = None,
                batch_windows: int | None = None, amp_dtype: torch.dtype | None = None,
                max_pixels: int | None = None) -> Prediction:
        """Run the checkpoint's test pipeline (or the overridden one) on one image.

        ``image`` is a path, a PIL image or an H x W x 3 uint8 RGB array. ``mode``, ``crop_size``
        ``(h, w)``, ``stride`` and ``scale`` ``(long, short)`` override the published test settings;
        ``flip`` and ``scales`` (ratios of the test scale) add test-time augmentation.
        """
        settings = self.settings(mode=mode, crop_size=crop_size, stride=stride, scale=scale)
        t0 = time.perf_counter()
        rgb = images.load_image(image, max_pixels=max_pixels)
        t1 = time.perf_counter()
        result = predictor.infer(self.model, rgb, settings, flip=flip, scales=scales, device=self.device,
                                 batch_windows=batch_windows, amp_dtype=amp_dtype)
        scores = result.scores
        labels = predictor.argmax_labels(scores)
        if result.is_probs:
            with torch.inference_mode():
                scores.clamp_(min=torch.finfo(torch.float32).tiny).log_()
        timings = {"load_image": t1 - t0, **{k: float(v) for k, v in result.seconds.items()}}
        return Prediction(
            labels=labels,
            logits=scores.numpy(),
            image=rgb,
            entry=self.entry,
            dataset=self.dataset,
            timings=timings,
            source=str(image) if isinstance(image, (str, os.PathLike)) else None,
        )

    def predict_many(self, inputs: Iterable[ImageInput] | str | os.PathLike, **kwargs: Any) -> Iterator[Prediction | ImageError]:
        """Predict images one by one (the model stays loaded); paths may be files, folders or globs.

        A bad image yields its :class:`ImageError` instead of stopping the batch.
        """
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        for item in inputs:
            if isinstance(item, (str, os.PathLike)):
                found = images.find_images([item])
                yield from found.errors
                for image in found.images:
                    try:
                        yield self.predict(image.path, **kwargs)
                    except ImageError as exc:
                        yield exc
                continue
            try:
                yield self.predict(item, **kwargs)
            except ImageError as exc:
                yield exc
