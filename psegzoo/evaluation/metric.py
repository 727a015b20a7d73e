"""mmsegmentation's ``IoUMetric``: per-class areas counted per image, summed over the split.

For each image, at the size of its label map: pixels whose label is the ignore index are dropped;
of the rest, per class, the intersection (prediction == label == c), the predicted area, the label
area and the union (predicted + label - intersection) are counted. The counts of every image are
added (one sum over the split, never a mean of per-image figures), then

    IoU[c] = intersect[c] / union[c]        Acc[c] = intersect[c] / label[c]
    mIoU, mAcc = mean over the classes whose value is defined (nan-mean: a class absent from both
                 the predictions and the labels has no IoU and does not count)
    aAcc = sum(intersect) / sum(label)       (pixel accuracy over every labelled pixel)

Counts are exact int64 (mmseg sums float32 histograms, exact up to 2**24 pixels a class), so they
can be added in any order, over any subsets of the images, and still give the same figures:
``Counts`` of disjoint shards added together (or all-reduced as one ``4 x C`` int64 tensor) equal the
counts of the whole split.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DatasetError

FIELDS = ("intersect", "union", "pred", "label")


@dataclass(frozen=True, eq=False)
class Counts:
    """Per-class pixel counts of some images: intersection, union, predicted and label areas (int64, C each)."""

    intersect: np.ndarray
    union: np.ndarray
    pred: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        shapes = {getattr(self, f).shape for f in FIELDS}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"counts must be four arrays of one length, got shapes {sorted(shapes)}")
        for f in FIELDS:
            arr = np.array(getattr(self, f), dtype=np.int64)  # a copy: freezing it leaves the caller's alone
            arr.setflags(write=False)
            object.__setattr__(self, f, arr)

    @classmethod
    def zeros(cls, num_classes: int) -> Counts:
        return cls.from_array(np.zeros((4, num_classes), dtype=np.int64))

    @classmethod
    def from_array(cls, stacked: np.ndarray) -> Counts:
        """From the ``4 x C`` int64 array of :meth:`to_array` (rows: intersect, union, pred, label)."""
        arr = np.asarray(stacked)
        if arr.ndim != 2 or arr.shape[0] != 4 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"expected a 4 x C integer array, got {arr.dtype} {arr.shape}")
        return cls(*(arr[i].astype(np.int64) for i in range(4)))

    def to_array(self) -> np.ndarray:
        """One ``4 x C`` int64 array (a copy): the form saved per image and summed across processes."""
        return np.stack([getattr(self, f) for f in FIELDS])

    @classmethod
    def from_tensor(cls, stacked: torch.Tensor) -> Counts:
        """From a ``4 x C`` int64 tensor on any device (e.g. after ``torch.distributed.all_reduce``)."""
        return cls.from_array(stacked.detach().to("cpu", torch.int64).numpy())

    def to_tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The ``4 x C`` int64 tensor to all-reduce (SUM) across processes."""
        return torch.from_numpy(self.to_array()).to(device)

    @property
    def num_classes(self) -> int:
        return int(self.intersect.shape[0])

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add counts of {self.num_classes} and {other.num_classes} classes")
        return Counts.from_array(self.to_array() + other.to_array())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        return bool(np.array_equal(self.to_array(), other.to_array()))

    def __hash__(self) -> int:
        return hash(self.to_array().tobytes())

    def metrics(self) -> Metrics:
        return Metrics.from_counts(self)


def sum_counts(parts: Iterable[Counts], num_classes: int) -> Counts:
    """The sum of ``parts`` (zeros for none)."""
    total = np.zeros((4, num_classes), dtype=np.int64)
    for part in parts:
        if part.num_classes != num_classes:
            raise ValueError(f"cannot add counts of {part.num_classes} classes to counts of {num_classes}")
        total += part.to_array()
    return Counts.from_array(total)


def count_image(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255, *,
                source: str | os.PathLike | None = None) -> Counts:
    """The counts of one image: ``pred`` and ``label`` are H x W integer maps of the same size.

    ``label`` is already mapped (reduce_zero_label, id tables). A label value that is neither a
    class (0 .. C-1) nor ``ignore_index`` raises :class:`DatasetError` naming ``source`` and the value.
    """
    if pred.shape != label.shape or pred.ndim != 2:
        raise DatasetError(
            f"{source or 'label'}: prediction {_size(pred)} and label {_size(label)} differ in size"
        )
    keep = label != ignore_index
    lab = label[keep]
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
        values = np.unique(lab[bad])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise DatasetError(
            f"{source or 'label'}: label value {shown} is neither a class (0..{num_classes - 1}) nor the "
            f"ignore index {ignore_index}; check the label files (or the reduce_zero_label and ignore index settings)"
        )
    prd = pred[keep]
    if prd.size and (int(prd.min()) < 0 or int(prd.max()) >= num_classes):
        raise ValueError(f"predicted classes must lie in 0..{num_classes - 1}")
    prd = prd.astype(np.int64, copy=False)
    lab = lab.astype(np.int64, copy=False)
    area_label = np.bincount(lab, minlength=num_classes)
    area_pred = np.bincount(prd, minlength=num_classes)
    area_intersect = np.bincount(lab[lab == prd], minlength=num_classes)
    return Counts(area_intersect, area_pred + area_label - area_intersect, area_pred, area_label)


def label_areas(label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray | None:
    """The pixels of each class in a (mapped) label map, the ignore index left out: the label row of
    its counts. None when a value is neither a class nor the ignore index."""
    lab = label[label != ignore_index]
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        return None
    return np.bincount(lab.astype(np.int64, copy=False), minlength=num_classes)


def _size(arr: np.ndarray) -> str:
    return f"{arr.shape[1]}x{arr.shape[0]}" if arr.ndim >= 2 else str(arr.shape)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class Metrics:
    """Figures from counts, as fractions (``percent()`` gives mmseg's rounded percentages).

    ``iou``/``acc`` hold nan for classes without a value (no union / no labelled pixel);
    ``miou``/``macc`` are nan-means, ``aacc`` is nan when no pixel is labelled.
    """

    aacc: float
    miou: float
    macc: float
    iou: tuple[float, ...]
    acc: tuple[float, ...]

    @classmethod
    def from_counts(cls, counts: Counts) -> Metrics:
        iou = _ratio(counts.intersect, counts.union)
        acc = _ratio(counts.intersect, counts.label)
        labelled = int(counts.label.sum())
        aacc = int(counts.intersect.sum()) / labelled if labelled else math.nan
        return cls(aacc=aacc, miou=_nanmean(iou), macc=_nanmean(acc),
                   iou=tuple(float(v) for v in iou), acc=tuple(float(v) for v in acc))


def percent(value: float) -> float | None:
    """A fraction as mmseg reports it: percent, rounded to 2 decimals; None for nan."""
    if math.isnan(value):
        return None
    return float(np.round(value * 100, 2))
