"""Model calls: the image to normalized input, sliding windows batched through the model, autocast.

Windows are cut from the uint8 image and normalized as they are cut (normalization is per pixel),
so no full-size float copy of the image exists. Their logits are summed in mmseg's order; batching
only changes how many crops go through the model at once. On CUDA the batch is sized from the free
memory measured on the first window, and halved on out-of-memory.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import PredictionError, option
from .cuda import PeakMeter, cudnn_benchmark, item_bytes, remember_batch, remembered_batch
from .settings import Size2

log = logging.getLogger(__name__)

CPU_BATCH_WINDOWS = 2
"""Windows per forward on devices whose free memory cannot be measured."""
MAX_BATCH_WINDOWS = 32


def host_tensor(img: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """HxWx3 uint8 -> an HxWx3 uint8 CPU tensor ready to go to ``device``: in pinned memory for CUDA.

    Meant for the threads that prepare images while the model runs: pinning copies the bytes, and
    from pinned memory the upload to the GPU (:func:`upload`) does not block the host.
    """
    arr = img if img.flags.writeable else img.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.pin_memory() if torch.device(device).type == "cuda" else t


def upload(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """An HxWx3 uint8 tensor from :func:`host_tensor` -> 1x3xHxW on ``device`` (channels-last strides, no copy
    on the CPU; asynchronous from pinned memory to a CUDA device)."""
    dev = torch.device(device)
    if dev.type != "cpu":
        t = t.to(dev, non_blocking=t.is_pinned())
    return t.permute(2, 0, 1).unsqueeze(0)


def image_tensor(img: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW uint8 on ``device`` (a view with channels-last strides: no copy).

    To a CUDA device the bytes go through pinned memory, asynchronously.
    """
    return upload(host_tensor(img, device), device)


@dataclass(frozen=True)
class Normalize:
    """uint8 NCHW -> ``(x - mean) / std`` in float32 (mmseg's order), then the model's dtype and layout."""

    mean: torch.Tensor
    std: torch.Tensor
    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    @classmethod
    def build(cls, mean: Sequence[float], std: Sequence[float], device: torch.device | str, **kw: Any) -> Normalize:
        # from pageable host memory without waiting: the bytes are staged at once, no device sync
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device, non_blocking=True)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device, non_blocking=True)
        return cls(m, s, **kw)

    def __call__(self, u8: torch.Tensor) -> torch.Tensor:
        x = (u8.float() - self.mean) / self.std
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


def to_input(
    img: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 1x3xHxW float32 ``(x - mean) / std`` on ``device`` (uint8 is sent)."""
    u8 = image_tensor(img, device)
    return Normalize.build(mean, std, u8.device, channels_last=channels_last)(u8)


def slide_windows(h: int, w: int, crop: Size2, stride: Size2) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window grid over an h x w input: ``(y1, y2, x1, x2)`` in row-major order.

    Windows never leave the image: the last row/column is shifted back to end at the border, and
    an image smaller than the crop gives one window of the image's own size (no padding).
    """
    h_crop, w_crop = crop
    h_stride, w_stride = stride
    if min(h_crop, w_crop, h_stride, w_stride) <= 0:
        raise PredictionError(f"crop {crop} and stride {stride} must be positive")
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2 = min(hi * h_stride + h_crop, h)
            x2 = min(wi * w_stride + w_crop, w)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def _window_counts(n: int, crop: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """How many windows cover each index along one axis (the count map is an outer product); made on
    ``device``, so that no copy from the host waits for the device's queued work."""
    counts = torch.zeros(n, dtype=torch.float32, device=device)
    grids = max(n - crop + stride - 1, 0) // stride + 1
    for i in range(grids):
        end = min(i * stride + crop, n)
        counts[max(end - crop, 0) : end] += 1
    return counts


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass
class Runner:
    """Calls the model with the requested autocast (and on CUDA with cuDNN's per-shape algorithm
    search, :func:`~psegzoo.predictor.cuda.cudnn_benchmark`), checking what comes back.

    A model whose ``outputs_reused`` is True (compiled to replay CUDA graphs) returns logits that its
    next forward overwrites; they are copied here, so flipped and rescaled views can be kept.

    ``forward_seconds`` is host time: on CUDA the work is queued, not waited for (no sync per call).
    """

    model: Any
    device: torch.device
    amp_dtype: torch.dtype | None
    normalize: Normalize
    forward_seconds: float = 0.0

    def measure(self, x: torch.Tensor, lowres: bool = False) -> tuple[torch.Tensor, int]:
        """``self(x)`` and the bytes per item (per batch entry) it allocated on the GPU, the smallest this
        model has shown for such an input (see :class:`~psegzoo.predictor.cuda.PeakMeter`)."""
        with PeakMeter(self.device) as meter:
            y = self(x, lowres)
        inputs = x.nelement() * x.element_size()  # made before the meter started; each item has its own
        return y, item_bytes(self.model, self.item_key(x.shape[1:], lowres), meter, int(x.shape[0]), extra=inputs)

    def item_key(self, shape: Sequence[int], lowres: bool = False) -> tuple[Any, ...]:
        """What an item's (3 x h x w input's) measured memory, and the batch sized from it, are kept by."""
        return (tuple(int(d) for d in shape), self.normalize.dtype, self.amp_dtype, lowres)

    def known_batch(self, shape: Sequence[int], lowres: bool = False) -> int | None:
        """Items of this shape per forward, as sized on this model before (None: not yet)."""
        return remembered_batch(self.model, self.item_key(shape, lowres))

    def keep_batch(self, shape: Sequence[int], batch: int, lowres: bool = False) -> None:
        remember_batch(self.model, self.item_key(shape, lowres), batch)

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def __call__(self, x: torch.Tensor, lowres: bool = False) -> torch.Tensor:
        start = time.perf_counter()
        with self._ctx(), cudnn_benchmark(self.device.type == "cuda"):
            y = self.model.forward_lowres(x) if lowres else self.model(x)
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[0] != x.shape[0]:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise PredictionError(
                f"the model returned {got} for an input of shape {tuple(x.shape)}; expected N x C x H x W logits"
            )
        if not lowres and y.shape[2:] != x.shape[2:]:
            raise PredictionError(
                f"the model returned logits of size {tuple(y.shape[2:])} for an input of size {tuple(x.shape[2:])}; "
                "its forward must resize them to the input size"
            )
        out = y.float()
        if out is y and getattr(self.model, "outputs_reused", False):
            out = y.clone()  # the next forward writes over y (a replayed CUDA graph): keep a copy
        self.forward_seconds += time.perf_counter() - start
        return out


def fit_in_free_memory(device: torch.device, per_item_bytes: int, most: int) -> int:
    """Items (windows, whole images) per forward that fit in 70% of the free GPU memory, given the
    peak measured for one item; at least 1, at most ``most``."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    n = int(0.7 * (free + cached) // max(per_item_bytes, 1))
    return max(1, min(n, most))


def slide_logits(
    runner: Runner,
    image: torch.Tensor,
    crop: Size2,
    stride: Size2,
    batch_windows: int | None,
    done: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """mmseg's ``slide_inference`` on a 1x3xhxw uint8 image, several windows per forward: C x h x w.

    See :func:`slide_logits_batch`, which this runs on a batch of one image.
    """
    return slide_logits_batch(runner, image, crop, stride, batch_windows, done)[0]


def _window_groups(windows: Sequence[tuple[int, int, int, int, int]], start: int,
                   batch: int) -> list[tuple[int, int, int, int, int]]:
    """The windows from ``start`` that go through one forward: up to ``batch``, all of one size."""
    _, y1, y2, x1, x2 = windows[start]
    group = [windows[start]]
    for win in windows[start + 1 : start + batch]:
        if (win[2] - win[1], win[4] - win[3]) != (y2 - y1, x2 - x1):
            break
        group.append(win)
    return group


def _window_oom(runner: Runner, size: Size2) -> PredictionError:
    return PredictionError(
        f"out of memory running one {size[0]}x{size[1]} window on {runner.device}; use a smaller "
        f"{option('crop_size=(H, W)', '--crop-size HxW')}, "
        f"{option('amp_dtype=torch.bfloat16', '--bf16')}, or {option('device=' + repr('cpu'), '--device cpu')}"
    )


def _run_windows(runner: Runner, crops: torch.Tensor, measure: bool) -> tuple[torch.Tensor, int] | None:
    """The crops' logits, and with ``measure`` their GPU bytes per window (else 0); None when out of memory."""
    try:
        return runner.measure(crops) if measure else (runner(crops), 0)
    except Exception as exc:
        if not is_oom(exc):
            raise
        return None


def slide_logits_batch(
    runner: Runner,
    images: torch.Tensor,
    crop: Size2,
    stride: Size2,
    batch_windows: int | None,
    done: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """mmseg's ``slide_inference`` on N x 3 x h x w uint8 images of one size: N x C x h x w.

    The windows of all N images go through the model together, ``batch_windows`` per forward, so a
    batch is full even where one image has few windows. Each image's window logits are added in
    mmseg's (row-major) order and divided by its window count, so its sums are those of the image
    alone; batching changes only how many crops go through the model at once. Crops are normalized
    as they are cut (normalization is per pixel), so no full-size float copy of an image exists,
    and nothing here waits for the device: the bookkeeping is by the window grid, on the host.
    With ``batch_windows=None`` on CUDA the first window runs alone to measure its memory and the
    rest go in batches that fit the free memory, a size the model keeps for later images of this
    window size; elsewhere ``CPU_BATCH_WINDOWS``. Out of memory on a batch halves it (and what is
    kept) and retries. ``done(n)`` is told of every n windows run.
    """
    n_images, _, h, w = images.shape
    windows = [(n, *win) for n in range(n_images) for win in slide_windows(h, w, crop, stride)]
    shape = (3, windows[0][2] - windows[0][1], windows[0][4] - windows[0][3])  # the crop, or the image's side where smaller
    measure = batch_windows is None and runner.device.type == "cuda"
    batch = 1 if measure else (batch_windows or CPU_BATCH_WINDOWS)
    if measure and (known := runner.known_batch(shape)) is not None:
        batch, measure = known, False  # sized on an earlier image of this model: no measuring, no memory query
    preds = torch.empty(0)
    i = 0
    while i < len(windows):
        group = _window_groups(windows, i, batch)
        crops = runner.normalize(torch.cat([images[n : n + 1, :, a:b, c:d] for n, a, b, c, d in group]))
        ran = _run_windows(runner, crops, measure)
        del crops
        if ran is None:  # out of memory: half as many windows per forward, down to one
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(group) == 1:
                raise _window_oom(runner, (group[0][2] - group[0][1], group[0][4] - group[0][3]))
            batch = max(1, len(group) // 2)
            log.info("out of memory with %d windows per forward; retrying with %d", len(group), batch)
            if batch_windows is None:
                runner.keep_batch(shape, batch)
            continue
        logits, per_window = ran
        if measure:
            batch = fit_in_free_memory(runner.device, per_window, MAX_BATCH_WINDOWS)
            runner.keep_batch(shape, batch)
            measure = False
            log.debug("slide: about %d bytes per window -> %d windows per forward", per_window, batch)
        if i == 0:
            preds = torch.zeros((n_images, logits.shape[1], h, w), dtype=torch.float32, device=images.device)
        for k, (n, a, b, c, d) in enumerate(group):
            preds[n, :, a:b, c:d] += logits[k]
        del logits
        i += len(group)
        if done is not None:
            done(len(group))
    dev = preds.device
    preds /= _window_counts(h, crop[0], stride[0], dev)[:, None] * _window_counts(w, crop[1], stride[1], dev)[None, :]
    return preds
