"""``Prediction``: one image's result at its original size, and the files it can write."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import outputs, predictor
from ..errors import OutputError
from ..manifest import Dataset, Entry


@dataclass
class Prediction:
    """The result for one image, at its original size.

    ``logits`` (C x H x W float32) are the model's logits; with test-time augmentation they are the
    log of the averaged softmax probabilities, so :meth:`probs` is right in both cases.
    """

    labels: np.ndarray
    logits: np.ndarray
    image: np.ndarray
    entry: Entry
    dataset: Dataset
    timings: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # the input as given: its file path, or None for an array or PIL image

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.dataset.palette

    def probs(self) -> np.ndarray:
        """Per-class softmax probabilities, C x H x W float32."""
        return predictor.probabilities(torch.from_numpy(self.logits), False).numpy()

    def confidence(self) -> np.ndarray:
        """The largest softmax probability of each pixel, H x W float32."""
        return outputs.confidence_from_logits(self.logits)

    def colorize(self) -> np.ndarray:
        """The label map in the dataset's palette, H x W x 3 uint8."""
        return outputs.colorize(self.labels, self.palette)

    def overlay(self, opacity: float = 0.5) -> np.ndarray:
        """The palette colours blended over the image, H x W x 3 uint8."""
        return outputs.overlay(self.image, self.labels, self.palette, opacity)

    def class_areas(self) -> list[dict[str, Any]]:
        """Pixels and percentage of each class present, largest first."""
        return outputs.class_areas(self.labels, self.classes)

    def summary(self) -> dict[str, Any]:
        """The per-image JSON document (class areas, model, timings)."""
        return outputs.summary(self.labels, self.classes, model=self.entry.name, image=self.source, timings=self.timings)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the label map as a palette PNG (pixel value = class index)."""
        return outputs.save_label_png(self.labels, self.palette, path)

    def write(self, out_dir: str | os.PathLike, name: str, *, overlay: bool = False, opacity: float = 0.5,
              color: bool = False, probs: str | None = None, logits: bool = False, summary: bool = False) -> list[Path]:
        """Write the label PNG and the requested extras as ``out_dir/<name>*``; returns the paths.

        ``probs`` is ``"png"`` (16-bit confidence) or ``"npy"`` (float32), or None for none.
        """
        paths = outputs.output_paths(out_dir, name)
        written = [self.save(paths.labels)]
        if color:
            written.append(outputs.save_rgb_png(self.colorize(), paths.color))
        if overlay:
            written.append(outputs.save_rgb_png(self.overlay(opacity), paths.overlay))
        if probs is not None:
            if probs not in ("png", "npy"):
                raise OutputError(f"probs must be 'png' or 'npy', got {probs!r}")
            target = paths.probs_png if probs == "png" else paths.probs_npy
            written.append(outputs.save_confidence(self.confidence(), target))
        if logits:
            written.append(outputs.save_logits(self.logits, paths.logits))
        if summary:
            written.append(outputs.save_json(self.summary(), paths.json))
        return written
