"""The frozen outcome of an evaluation: figures, per-class table, counts, settings, timings."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .metric import Counts, Metrics, percent

MS_FLIP_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class EvalSettings:
    """How the figures were made: the dataset folders and the test pipeline.

    ``nonstandard`` lists how the test pipeline differs from the published one (overridden scale, mode,
    crop, stride or an unpublished test-time augmentation); ``not_comparable`` every reason the
    figures cannot be set beside the published ones (those, plus a subset of the split, another split,
    another dataset).
    """

    layout: str
    data_root: str | None
    image_dir: str
    label_dir: str
    split: str | None
    scale: tuple[int, int]
    mode: str
    crop_size: tuple[int, int] | None
    stride: tuple[int, int] | None
    flip: bool
    scales: tuple[float, ...] | None
    tta: str  # "none", "ms+flip" or "custom"
    reduce_zero_label: bool
    ignore_index: int
    limit: int | None
    amp_dtype: str | None
    labels_converted: int = 0  # labels read through a fallback table (Cityscapes labelIds)
    nonstandard: tuple[str, ...] = ()
    not_comparable: tuple[str, ...] = ()

    @property
    def standard(self) -> bool:
        return not self.nonstandard

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": list(self.scale),
            "mode": self.mode,
            "crop_size": list(self.crop_size) if self.crop_size else None,
            "stride": list(self.stride) if self.stride else None,
            "tta": {"name": self.tta, "flip": self.flip, "scales": list(self.scales) if self.scales else None},
            "standard": self.standard,
            "nonstandard": list(self.nonstandard),
            "layout": self.layout,
            "data_root": self.data_root,
            "images": self.image_dir,
            "labels": self.label_dir,
            "reduce_zero_label": self.reduce_zero_label,
            "ignore_index": self.ignore_index,
            "limit": self.limit,
            "amp_dtype": self.amp_dtype,
            "labels_converted": self.labels_converted,
        }


@dataclass(frozen=True)
class ClassResult:
    """One row of the per-class table: IoU and Acc in percent (None where the class has no value)."""

    index: int
    name: str
    iou: float | None
    acc: float | None
    label_pixels: int
    predicted_pixels: int


@dataclass(frozen=True)
class EvalResult:
    """What :func:`psegzoo.evaluate` measured.

    Figures are percentages rounded to 2 decimals, as mmseg prints them and the zoo tables list them;
    ``counts`` holds the exact per-class pixel counts they come from (``counts.metrics()`` gives the
    unrounded fractions). ``published`` is the manifest's figure for the same test-time augmentation,
    ``difference`` the measured mIoU minus it, only when the run is comparable.
    """

    model: str
    dataset: str
    split: str | None
    images: int
    classes: tuple[str, ...]
    counts: Counts
    settings: EvalSettings
    published_miou: float | None
    published_miou_ms_flip: float | None
    seconds: float
    resumed: int = 0
    work_dir: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> Metrics:
        return self.counts.metrics()

    @property
    def aacc(self) -> float | None:
        return percent(self.metrics.aacc)

    @property
    def miou(self) -> float | None:
        return percent(self.metrics.miou)

    @property
    def macc(self) -> float | None:
        return percent(self.metrics.macc)

    @property
    def per_class(self) -> tuple[ClassResult, ...]:
        m = self.metrics
        return tuple(
            ClassResult(i, name, percent(m.iou[i]), percent(m.acc[i]), int(self.counts.label[i]), int(self.counts.pred[i]))
            for i, name in enumerate(self.classes)
        )

    @property
    def comparable(self) -> bool:
        return not self.settings.not_comparable

    @property
    def published(self) -> float | None:
        """The published mIoU for this run's test-time augmentation (ms+flip or single scale)."""
        return self.published_miou_ms_flip if self.settings.tta == "ms+flip" else self.published_miou

    @property
    def difference(self) -> float | None:
        """Measured minus published mIoU (percentage points), when the two can be compared."""
        measured, published = self.miou, self.published
        if not self.comparable or measured is None or published is None:
            return None
        return float(round(measured - published, 2))

    @property
    def images_per_second(self) -> float | None:
        ran, seconds = self.images - self.resumed, self.timings.get("evaluate", self.seconds)
        return ran / seconds if ran > 0 and seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: plain JSON types, nan written as null."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "images": self.images,
            "metrics": {"aAcc": self.aacc, "mIoU": self.miou, "mAcc": self.macc},
            "per_class": [{"class": c.name, "IoU": c.iou, "Acc": c.acc} for c in self.per_class],
            "published": {"miou": self.published_miou, "miou_ms_flip": self.published_miou_ms_flip},
            "difference": self.difference,
            "comparable": self.comparable,
            "not_comparable": list(self.settings.not_comparable),
            "settings": self.settings.to_json(),
            "seconds": _finite(round(self.seconds, 3)),
            "images_per_second": _finite(round(self.images_per_second, 4)) if self.images_per_second else None,
            "resumed": self.resumed,
            "counts": {name: row.tolist() for name, row in zip(("intersect", "union", "pred", "label"),
                                                                self.counts.to_array())},
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
