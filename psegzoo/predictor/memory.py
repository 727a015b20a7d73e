"""How much memory a prediction needs, estimated before it runs, and how much the machine has.

The estimate adds what the pipeline allocates (exact sizes) to what the model's forward needs (the
model's own estimate, :meth:`psegzoo.models.Segmentor.working_bytes`, when it has one):

* the image resized to each view (uint8) and one forward's normalized float input;
* one forward's activations (whole image, or one batch of sliding windows);
* each view's scores at its own size (C x h x w float32; slide mode sums windows into it);
* at the original size: the C x H x W float32 scores when they are kept, else the labels (and the top
  probability when asked), made band by band (:func:`psegzoo.predictor.scores.banded_labels`).

A prediction whose estimate exceeds the memory available is refused before any work, with the sizes
and the ways out (labels only, a smaller scale, ``max_pixels``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PredictionError, option
from ..units import format_size
from .scores import BAND_BYTES
from .settings import Size2
from .windows import CPU_BATCH_WINDOWS


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one prediction needs on the host (CPU runs) by part; ``total`` is their sum."""

    scores: int
    views: int
    forward: int
    inputs: int
    labels: int

    @property
    def total(self) -> int:
        return self.scores + self.views + self.forward + self.inputs + self.labels


def estimate_memory(
    model: Any,
    image_size: Size2,
    view_sizes: Sequence[Size2],
    num_classes: int,
    *,
    crop_size: Size2 | None = None,
    batch_windows: int | None = None,
    keep_scores: bool = True,
    confidence: bool = False,
    forward_on_host: bool = True,
) -> MemoryEstimate:
    """The memory a prediction of an ``image_size`` (h, w) image through views of ``view_sizes`` needs.

    ``crop_size`` (slide mode) bounds one forward to ``batch_windows`` windows of that size;
    ``forward_on_host=False`` (a GPU runs the model) leaves the forward's part out.
    """
    h, w = image_size
    c = num_classes
    largest = max(vh * vw for vh, vw in view_sizes)
    if crop_size is not None:
        batch = batch_windows or CPU_BATCH_WINDOWS
        fh, fw = min(crop_size[0], max(v[0] for v in view_sizes)), min(crop_size[1], max(v[1] for v in view_sizes))
        n, forward_px = batch, fh * fw
    else:
        n, forward_px = 1, largest
    working = getattr(model, "working_bytes", None)
    if callable(working):
        forward = int(working(n, forward_px))
    else:  # an unknown model: at least its input and its logits at the input size
        forward = 4 * n * forward_px * (3 + c)
    inputs = 3 * largest + 12 * n * forward_px
    multi = len(view_sizes) > 1
    if keep_scores:
        views = 4 * c * largest  # one view at a time; slide mode sums into it
        scores = 4 * c * h * w
        labels = 0
    else:
        views = 4 * c * sum(vh * vw for vh, vw in view_sizes) if multi else 4 * c * largest
        scores = 4 * BAND_BYTES  # a few bands of rows at the original size
        labels = h * w * (1 if c <= 256 else 4) + (4 * h * w if confidence else 0)
    return MemoryEstimate(scores=scores, views=views, forward=forward if forward_on_host else 0, inputs=inputs,
                          labels=labels)


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, if it has one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Memory the system can give this process now (Linux ``MemAvailable``, within a cgroup limit);
    None where it cannot be told."""
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def check_memory(estimate: MemoryEstimate, image_size: Size2, num_classes: int, *, keep_scores: bool,
                 limit: int | None = None) -> None:
    """Refuse a prediction whose estimate exceeds ``limit`` (default: the memory available now)."""
    room = available_memory() if limit is None else limit
    if room is None or estimate.total <= room:
        return
    h, w = image_size
    ways = [f"a smaller {option('scale=(LONG, SHORT)', '--scale LONGxSHORT')}",
            f"{option('max_pixels=N', '--max-pixels N')} to refuse such images before reading them"]
    if keep_scores:
        ways.insert(0, f"labels only ({option('keep_scores=False', 'no --logits')}: they need no C x H x W scores)")
    raise PredictionError(
        f"predicting this {w}x{h} image needs about {format_size(estimate.total)} of memory "
        f"({format_size(estimate.scores)} for its {num_classes} class scores at full size, "
        f"{format_size(estimate.forward)} for the model), but {format_size(room)} is available; use "
        + ", or ".join(ways)
    )
