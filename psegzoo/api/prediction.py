"""``Prediction``: one image's result at its original size, and the files it can write."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import outputs, predictor
from ..errors import OutputError, PredictionError, option
from ..manifest import Dataset, Entry


def _shape(a: np.ndarray | None) -> str:
    return "None" if a is None else "x".join(str(d) for d in a.shape) + f" {a.dtype}"


@dataclass(repr=False)
class Prediction:
    """The result for one image, at its original size.

    ``labels`` (H x W; uint8, int32 beyond 256 classes) is the class of each pixel. ``scores``
    (C x H x W float32) holds what the labels are the argmax of: the model's logits for one view,
    or, with test-time augmentation (``is_probs``), the averaged softmax probabilities; None when the
    prediction was made with ``keep_scores=False`` (then ``confidence()`` still works when it was
    asked for). ``source`` is the path the image was read from (None for arrays and PIL images).
    """

    labels: np.ndarray
    scores: np.ndarray | None
    is_probs: bool
    image: np.ndarray
    entry: Entry
    dataset: Dataset
    timings: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # the input as given: its file path, or None for an array or PIL image
    top_probability: np.ndarray | None = None

    def __repr__(self) -> str:
        kind = "not kept" if self.scores is None else "probabilities" if self.is_probs else "logits"
        return (f"Prediction({self.entry.name!r}, labels={_shape(self.labels)}, scores={_shape(self.scores)} "
                f"({kind}), image={_shape(self.image)}, source={self.source!r})")

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.dataset.palette

    def _scores(self) -> np.ndarray:
        if self.scores is None:
            raise PredictionError(
                "this prediction kept only labels; predict with "
                f"{option('keep_scores=True', '--logits')} for the class scores"
            )
        return self.scores

    @property
    def logits(self) -> np.ndarray:
        """The logits (C x H x W float32). Deprecated under test-time augmentation, where there are
        none: it then gives the log of the averaged probabilities; read :attr:`scores`."""
        scores = self._scores()
        if not self.is_probs:
            return scores
        warnings.warn(
            "Prediction.logits under test-time augmentation holds log-probabilities; read Prediction.scores "
            "(the averaged probabilities, is_probs=True) or Prediction.log_scores()",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.log_scores()

    def log_scores(self) -> np.ndarray:
        """Logits for one view; the log of the averaged probabilities under test-time augmentation.
        Either way ``softmax`` of it gives :meth:`probs`."""
        scores = self._scores()
        if not self.is_probs:
            return scores
        return np.log(np.maximum(scores, np.finfo(np.float32).tiny))

    def probs(self) -> np.ndarray:
        """Per-class softmax probabilities, C x H x W float32 (a new array)."""
        scores = self._scores()
        return predictor.probabilities(torch.from_numpy(scores), self.is_probs).numpy()

    def confidence(self) -> np.ndarray:
        """The largest softmax probability of each pixel, H x W float32."""
        if self.top_probability is not None:
            return self.top_probability
        scores = self._scores()
        return outputs.confidence_from_probs(scores) if self.is_probs else outputs.confidence_from_logits(scores)

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
        ``logits`` writes :meth:`log_scores` (the logits, or log-probabilities under test-time
        augmentation).
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
            written.append(outputs.save_logits(self.log_scores(), paths.logits))
        if summary:
            written.append(outputs.save_json(self.summary(), paths.json))
        return written
