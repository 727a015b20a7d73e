"""mmsegmentation's test pipeline on plain tensors.

keep-ratio resize (``mmcv.imrescale`` + OpenCV's fixed-point bilinear, reproduced bit for bit)
-> normalization -> whole-image or sliding-window inference (windows batched) -> logits at the
original image size (bilinear, the checkpoint's ``align_corners``) -> labels by argmax.

Test-time augmentation follows how the published "ms+flip" numbers were made (mmseg 0.x
``MultiScaleFlipAug``): each ratio ``r`` resizes to the test scale ``(int(long * r), int(short * r))``
(ratios of the test scale, not of the image), each view may also be flipped horizontally, and the
softmax probabilities of all views, each resized to the original size, are averaged.

Memory: results at the original size are produced in bands of rows straight into one C x H x W
float32 buffer, so a large image needs little more than that buffer (plus the logits at the
resized size); labels and probabilities are computed in bands too.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from .errors import PredictionError
from .manifest import RESIZE_LOGITS, TEST_MODES, Entry, TestSettings

log = logging.getLogger(__name__)

# OpenCV's fixed-point bilinear: weights in 11 bits (INTER_RESIZE_COEF_BITS).
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS

# Working-set target of one band of rows when producing results at the original size.
BAND_BYTES = 32 * 2**20
# Windows per forward on devices whose free memory cannot be measured.
CPU_BATCH_WINDOWS = 2
MAX_BATCH_WINDOWS = 32

Size2 = tuple[int, int]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def _pair(value: Any, what: str, form: str = "(h, w)") -> Size2:
    """A pair of positive integers from one integer (used twice) or a pair."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        items: Sequence[Any] = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        items = value
    else:
        raise PredictionError(f"{what} must be a positive integer or a pair {form}, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in items):
        raise PredictionError(f"{what} must hold positive integers {form}, got {value!r}")
    return int(items[0]), int(items[1])


def default_stride(crop_size: Size2) -> Size2:
    """Two thirds of the crop, rounded: mmseg's own choice (512x1024 -> 341x683, 769 -> 513)."""
    return max(1, round(crop_size[0] * 2 / 3)), max(1, round(crop_size[1] * 2 / 3))


@dataclass(frozen=True)
class InferenceSettings:
    """How one image is run: the entry's test settings with the user's overrides applied.

    ``scale`` is ``(long, short)`` for the keep-ratio resize; ``crop_size`` and ``stride`` are
    ``(h, w)`` and only used in ``slide`` mode. ``resize_logits="direct"`` (SSSegmentation) sends the
    model's low-resolution logits straight to the original size in whole mode; slide windows always
    use the model's full-size output.
    """

    scale: Size2
    mode: str
    crop_size: Size2 | None
    stride: Size2 | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    align_corners: bool
    resize_logits: str = "via_input"

    def __post_init__(self) -> None:
        if self.mode not in TEST_MODES:
            raise PredictionError(f"mode must be one of {', '.join(TEST_MODES)}, got {self.mode!r}")
        if self.resize_logits not in RESIZE_LOGITS:
            raise PredictionError(
                f"resize_logits must be one of {', '.join(RESIZE_LOGITS)}, got {self.resize_logits!r}"
            )
        object.__setattr__(self, "scale", _pair(self.scale, "scale", "(long, short)"))
        if self.mode == "slide":
            if self.crop_size is None or self.stride is None:
                raise PredictionError("slide mode needs crop_size and stride (h, w)")
            crop = _pair(self.crop_size, "crop_size")
            stride = _pair(self.stride, "stride")
            if stride[0] > crop[0] or stride[1] > crop[1]:
                raise PredictionError(
                    f"stride {stride[0]}x{stride[1]} is larger than crop_size {crop[0]}x{crop[1]}: "
                    "windows would leave gaps; use a stride at most the crop size"
                )
            object.__setattr__(self, "crop_size", crop)
            object.__setattr__(self, "stride", stride)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3:
                raise PredictionError(f"{name} must hold 3 numbers (R, G, B), got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if any(s == 0 for s in self.std):
            raise PredictionError(f"std must not contain zero, got {self.std!r}")

    @classmethod
    def from_test(
        cls,
        test: TestSettings,
        align_corners: bool,
        *,
        train_crop: Size2 | None = None,
        mode: str | None = None,
        crop_size: int | Size2 | None = None,
        stride: int | Size2 | None = None,
        scale: int | Size2 | None = None,
    ) -> InferenceSettings:
        """Settings from test settings and overrides (None keeps the default).

        Slide mode on an entry tested whole uses ``crop_size`` if given, else ``train_crop`` (the
        crop the model was trained on); a crop without a stride gets :func:`default_stride`.
        """
        mode = test.mode if mode is None else mode
        if mode not in TEST_MODES:
            raise PredictionError(f"mode must be one of {', '.join(TEST_MODES)}, got {mode!r}")
        crop: Size2 | None = None
        step: Size2 | None = None
        if mode == "whole":
            if crop_size is not None or stride is not None:
                raise PredictionError("crop_size and stride apply to slide mode only; also pass mode='slide'")
        else:
            if crop_size is not None:
                crop = _pair(crop_size, "crop_size")
            elif test.crop_size is not None:
                crop = _pair(tuple(test.crop_size), "crop_size")
            elif train_crop is not None:
                crop = _pair(tuple(train_crop), "crop_size")
            else:
                raise PredictionError("slide mode needs a crop_size (h, w)")
            if stride is not None:
                step = _pair(stride, "stride")
            elif crop_size is None and test.stride is not None:
                step = _pair(tuple(test.stride), "stride")
            else:
                step = default_stride(crop)
        return cls(
            scale=_pair(scale if scale is not None else tuple(test.scale), "scale", "(long, short)"),
            mode=mode,
            crop_size=crop,
            stride=step,
            mean=(float(test.mean[0]), float(test.mean[1]), float(test.mean[2])),
            std=(float(test.std[0]), float(test.std[1]), float(test.std[2])),
            align_corners=bool(align_corners),
            resize_logits=test.resize_logits,
        )

    @classmethod
    def from_entry(
        cls,
        entry: Entry,
        *,
        mode: str | None = None,
        crop_size: int | Size2 | None = None,
        stride: int | Size2 | None = None,
        scale: int | Size2 | None = None,
    ) -> InferenceSettings:
        """The entry's published test settings, with overrides (see :meth:`from_test`)."""
        return cls.from_test(
            entry.test,
            entry.architecture.align_corners,
            train_crop=_pair(tuple(entry.crop_size), "crop_size"),
            mode=mode,
            crop_size=crop_size,
            stride=stride,
            scale=scale,
        )


# --------------------------------------------------------------------------------------------
# Resizing the image (mmcv.imrescale + cv2.resize INTER_LINEAR on uint8)
# --------------------------------------------------------------------------------------------


def rescale_size(w: int, h: int, scale: Sequence[int]) -> tuple[int, int]:
    """``mmcv.rescale_size``: the (new_w, new_h) that fits ``scale`` (long, short) keeping the ratio.

    The factor may enlarge: ``min(max(scale) / long side, min(scale) / short side)``.
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)
    if new_w <= 0 or new_h <= 0:
        raise PredictionError(
            f"a {w}x{h} image resized to scale {tuple(scale)} becomes {new_w}x{new_h}; "
            "the image is too elongated for this scale: pass a larger scale"
        )
    return new_w, new_h


def _cv_source_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's source index (floor) and fraction per destination pixel, in its float types."""
    scale = 1.0 / (dst / src)  # OpenCV inverts the inverse scale, in double
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos)
    frac = pos - first  # exact in float32
    return first.astype(np.int64), frac


def _cv_weights(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    one, coef = np.float32(1.0), np.float32(_COEF_SCALE)
    w0 = np.rint((one - frac) * coef).astype(np.int32)  # cvRound: half to even
    w1 = np.rint(frac * coef).astype(np.int32)
    return w0, w1


def resize_bilinear_uint8(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """``cv2.resize(img, (new_w, new_h), interpolation=INTER_LINEAR)`` for HxWxC uint8, bit-exact.

    OpenCV's fixed-point path: half-pixel centres; 11-bit integer weights (rounded half to even);
    a horizontal pass in int32 (edges clamped); a vertical pass with 16-bit products as its SIMD code
    does, ``((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2``. Shrinking is the same
    2-tap formula (no antialiasing). Processed in bands of rows to bound memory.
    """
    if img.ndim == 2:
        return resize_bilinear_uint8(img[:, :, None], new_w, new_h)[:, :, 0]
    if img.ndim != 3 or img.dtype != np.uint8:
        raise PredictionError(f"expected an HxWxC uint8 image, got {img.dtype} of shape {img.shape}")
    h, w, c = img.shape
    if new_w <= 0 or new_h <= 0:
        raise PredictionError(f"cannot resize to {new_w}x{new_h}")
    if (new_w, new_h) == (w, h):
        return img.copy()

    sx, fx = _cv_source_taps(w, new_w)
    edge = (sx < 0) | (sx >= w - 1)
    fx[edge] = 0
    sx = np.clip(sx, 0, w - 1)
    sx1 = np.minimum(sx + 1, w - 1)
    a0, a1 = _cv_weights(fx)
    a0, a1 = a0[None, :, None], a1[None, :, None]

    sy, fy = _cv_source_taps(h, new_h)  # rows are clamped but their weights are not
    b0, b1 = _cv_weights(fy)
    y0 = np.clip(sy, 0, h - 1)
    y1 = np.clip(sy + 1, 0, h - 1)

    out = np.empty((new_h, new_w, c), dtype=np.uint8)
    band = max(1, (8 * 2**20) // max(1, new_w * c * 4))
    for r0 in range(0, new_h, band):
        r1 = min(new_h, r0 + band)
        lo, hi = int(y0[r0]), int(y1[r1 - 1]) + 1
        src = img[lo:hi]
        rows = src[:, sx, :].astype(np.int32) * a0
        rows += src[:, sx1, :].astype(np.int32) * a1
        rows >>= 4
        top = rows[y0[r0:r1] - lo]
        bottom = rows[y1[r0:r1] - lo]
        top *= b0[r0:r1, None, None]
        top >>= 16
        bottom *= b1[r0:r1, None, None]
        bottom >>= 16
        top += bottom
        top += 2
        top >>= 2
        np.clip(top, 0, 255, out=top)
        out[r0:r1] = top
    return out


def resize_image(img: np.ndarray, scale: Sequence[int]) -> np.ndarray:
    """``mmcv.imrescale(img, scale)`` with bilinear interpolation (an identity size is not copied)."""
    h, w = img.shape[:2]
    new_w, new_h = rescale_size(w, h, scale)
    if (new_w, new_h) == (w, h):
        return img
    return resize_bilinear_uint8(img, new_w, new_h)


def tta_scale(scale: Sequence[int], ratio: float) -> tuple[int, int]:
    """The test scale for one multi-scale ratio: ``(int(long * r), int(short * r))``."""
    long_edge, short_edge = max(scale), min(scale)
    return int(long_edge * ratio), int(short_edge * ratio)


def _image_tensor(img: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW uint8 on ``device`` (a view with channels-last strides: no copy)."""
    arr = img if img.flags.writeable else img.copy()
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(2, 0, 1).unsqueeze(0)


@dataclass(frozen=True)
class _Normalize:
    """uint8 NCHW -> ``(x - mean) / std`` in float32 (mmseg's order), then the model's dtype and layout."""

    mean: torch.Tensor
    std: torch.Tensor
    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    @classmethod
    def build(cls, mean: Sequence[float], std: Sequence[float], device: torch.device | str, **kw: Any) -> _Normalize:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
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
    u8 = _image_tensor(img, device)
    return _Normalize.build(mean, std, u8.device, channels_last=channels_last)(u8)


# --------------------------------------------------------------------------------------------
# Bilinear resize of score maps in bands of rows
# --------------------------------------------------------------------------------------------


def _axis_taps(
    in_size: int, out_size: int, align_corners: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights per output index, as PyTorch's bilinear kernel computes them.

    The scale is a float32 quotient; with half-pixel centres PyTorch's compiled kernel evaluates
    ``scale * (dst + 0.5) - 0.5`` as one fused multiply-add, reproduced here in float64 then
    rounded once to float32.
    """
    dst = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
        src = (dst * float(scale)).float()
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = (float(scale) * (dst + 0.5) - 0.5).float().clamp_(min=0)
    i0 = src.floor().long().clamp_(max=in_size - 1)
    lam = (src - i0.float()).clamp_(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0.to(device), i1.to(device), (1 - lam).to(device), lam.to(device)


def resize_bands(
    x: torch.Tensor,
    size: Size2,
    *,
    align_corners: bool,
    band_bytes: int = BAND_BYTES,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(r0, r1, rows)``: rows r0..r1 of ``x`` (C x h x w) resized bilinearly to ``size``.

    Same weights and arithmetic as ``F.interpolate(..., mode="bilinear", align_corners=...)`` (equal
    to it, or within a float rounding); only one band of the result exists at a time. An identity
    size yields slices of ``x``.
    """
    c, h, w = x.shape
    out_h, out_w = size
    rows_per_band = max(1, band_bytes // max(1, c * out_w * x.element_size() * 2))
    if (h, w) == (out_h, out_w):
        for r0 in range(0, out_h, rows_per_band):
            r1 = min(out_h, r0 + rows_per_band)
            yield r0, r1, x[:, r0:r1]
        return
    taps = _axis_taps(h, out_h, align_corners, torch.device("cpu"))
    first, last = taps[0].tolist(), taps[1].tolist()  # band limits read on the host, no device syncs
    y0, y1, wy0, wy1 = (t.to(x.device) for t in taps)
    for r0 in range(0, out_h, rows_per_band):
        r1 = min(out_h, r0 + rows_per_band)
        lo, hi = (r0, r1) if h == out_h else (first[r0], last[r1 - 1] + 1)
        src = x[:, lo:hi]
        if w == out_w:
            horiz = src
        else:
            # PyTorch's own kernel along the width (an identity in height: weights exactly 1 and 0)
            horiz = F.interpolate(src[None], size=(hi - lo, out_w), mode="bilinear", align_corners=align_corners)[0]
        if h == out_h:
            yield r0, r1, horiz
            continue
        # top * w0 + bottom * w1 in the order (and fused multiply-add) of PyTorch's kernel
        band = horiz.index_select(1, y1[r0:r1] - lo)
        band *= wy1[r0:r1, None]
        band.addcmul_(horiz.index_select(1, y0[r0:r1] - lo), wy0[r0:r1, None])
        yield r0, r1, band


def resize_scores(
    x: torch.Tensor,
    size: Size2,
    *,
    align_corners: bool,
    out_device: torch.device | str | None = None,
) -> torch.Tensor:
    """``x`` (C x h x w) bilinearly resized to ``size`` on ``out_device``, built band by band."""
    out_device = x.device if out_device is None else torch.device(out_device)
    if tuple(x.shape[1:]) == tuple(size):
        return x.to(out_device)
    out = torch.empty((x.shape[0], size[0], size[1]), dtype=x.dtype, device=out_device)
    for r0, r1, band in resize_bands(x, size, align_corners=align_corners):
        out[:, r0:r1].copy_(band)
    return out


# --------------------------------------------------------------------------------------------
# Windows and model calls
# --------------------------------------------------------------------------------------------


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


def _window_counts(n: int, crop: int, stride: int) -> torch.Tensor:
    """How many windows cover each index along one axis (the count map is an outer product)."""
    counts = torch.zeros(n, dtype=torch.float32)
    grids = max(n - crop + stride - 1, 0) // stride + 1
    for i in range(grids):
        end = min(i * stride + crop, n)
        counts[max(end - crop, 0) : end] += 1
    return counts


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass
class _Runner:
    """Calls the model with the requested autocast, checking what comes back."""

    model: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    normalize: _Normalize
    forward_seconds: float = 0.0

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, x: torch.Tensor, lowres: bool = False) -> torch.Tensor:
        start = time.perf_counter()
        with self._ctx():
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
        y = y.float()
        self._sync()
        self.forward_seconds += time.perf_counter() - start
        return y


def _gpu_batch(device: torch.device, per_window_bytes: int, n_left: int) -> int:
    """Windows per forward that fit in 70% of the free GPU memory, measured for one window."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    n = int(0.7 * (free + cached) // max(per_window_bytes, 1))
    return max(1, min(n, MAX_BATCH_WINDOWS, n_left))


def slide_logits(
    runner: _Runner,
    image: torch.Tensor,
    crop: Size2,
    stride: Size2,
    batch_windows: int | None,
) -> torch.Tensor:
    """mmseg's ``slide_inference`` on a 1x3xhxw uint8 image, several windows per forward: C x h x w.

    Window logits are added in mmseg's (row-major) order and divided by the window count, so the
    sums are the same; batching changes only how many crops go through the model at once. Crops
    are normalized as they are cut (normalization is per pixel), so no full-size float copy of the
    image exists. With ``batch_windows=None`` on CUDA the first window runs alone to measure its
    memory and the rest go in batches that fit the free memory; elsewhere ``CPU_BATCH_WINDOWS``.
    Out of memory on a batch halves it and retries.
    """
    _, _, h, w = image.shape
    windows = slide_windows(h, w, crop, stride)
    measure = batch_windows is None and runner.device.type == "cuda"
    batch = 1 if measure else (batch_windows or CPU_BATCH_WINDOWS)
    preds = torch.empty(0)
    i = 0
    while i < len(windows):
        y1, y2, x1, x2 = windows[i]
        size = (y2 - y1, x2 - x1)
        group = [windows[i]]
        for win in windows[i + 1 : i + batch]:
            if (win[1] - win[0], win[3] - win[2]) != size:
                break
            group.append(win)
        if measure:
            torch.cuda.reset_peak_memory_stats(runner.device)
            base = torch.cuda.memory_allocated(runner.device)
        crops = runner.normalize(torch.cat([image[:, :, a:b, c:d] for a, b, c, d in group]))
        try:
            logits = runner(crops)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            del crops
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(group) == 1:
                raise PredictionError(
                    f"out of memory running one {size[0]}x{size[1]} window on {runner.device}; use a smaller "
                    "crop_size, half precision, or the CPU"
                ) from None
            batch = max(1, len(group) // 2)
            log.info("out of memory with %d windows per forward; retrying with %d", len(group), batch)
            continue
        del crops
        if measure:
            per_window = torch.cuda.max_memory_allocated(runner.device) - base
            batch = _gpu_batch(runner.device, per_window, len(windows) - 1)
            measure = False
            log.debug("slide: about %d bytes per window -> %d windows per forward", per_window, batch)
        if i == 0:
            preds = torch.zeros((logits.shape[1], h, w), dtype=torch.float32, device=image.device)
        for k, (a, b, c, d) in enumerate(group):
            preds[:, a:b, c:d] += logits[k]
        del logits
        i += len(group)
    counts = _window_counts(h, crop[0], stride[0])[:, None] * _window_counts(w, crop[1], stride[1])[None, :]
    preds /= counts.to(preds.device)
    return preds


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """One test-time view: its scale ratio, flip, and the size the image was resized to (h, w)."""

    ratio: float
    flip: bool
    size: Size2


@dataclass(frozen=True, eq=False)
class Inference:
    """What :func:`infer` produced.

    ``scores`` is C x H x W float32 at the original image size, on ``output_device``: the logits
    when one view was run, the averaged softmax probabilities when several were (``is_probs``).
    It is made under ``torch.inference_mode``: read it freely, ``clone()`` it before changing it in
    place outside inference mode. ``views`` lists what was run; ``seconds`` times the stages.
    """

    scores: torch.Tensor
    is_probs: bool
    views: tuple[View, ...]
    seconds: Mapping[str, float] = field(default_factory=dict)


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA if present, else Apple MPS, else CPU; a named device is checked."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PredictionError(f"unknown device {device!r} ({exc}); use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PredictionError(f"device {device!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PredictionError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise PredictionError(f"device {device!r} asked for, but MPS is not available; use --device cpu")
    elif dev.type != "cpu":
        raise PredictionError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def prepare_model(
    model: torch.nn.Module,
    device: str | torch.device | None = "auto",
    *,
    channels_last: bool | None = None,
) -> torch.nn.Module:
    """Put ``model`` in eval mode on ``device``, channels-last by default on CUDA and CPU (faster convs)."""
    dev = select_device(device)
    if channels_last is None:
        channels_last = dev.type in ("cuda", "cpu")
    model.eval()
    model.to(device=dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model


def _check_amp(amp_dtype: torch.dtype | None, device: torch.device) -> None:
    if amp_dtype is None:
        return
    if amp_dtype not in (torch.float16, torch.bfloat16):
        raise PredictionError(f"amp_dtype must be torch.float16 or torch.bfloat16, got {amp_dtype!r}")
    if device.type not in ("cuda", "mps"):
        raise PredictionError(
            "half precision (fp16/bf16 autocast) is for GPUs; on the CPU run in float32 (drop --half/--bf16)"
        )


def _views(flip: bool, scales: Sequence[float] | None) -> list[tuple[float, bool]]:
    ratios = [1.0] if scales is None else list(scales)
    if not ratios:
        raise PredictionError("scales must hold at least one ratio, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise PredictionError(f"scale ratios must be positive numbers, got {r!r}")
    return [(float(r), f) for r in ratios for f in ((False, True) if flip else (False,))]


def infer(
    model: torch.nn.Module,
    image: np.ndarray,
    settings: InferenceSettings,
    *,
    flip: bool = False,
    scales: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    batch_windows: int | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    output_device: str | torch.device = "cpu",
) -> Inference:
    """Run the test pipeline on one HxWx3 uint8 RGB image; scores come back at its size.

    ``model`` is a Segmentor-like module in eval mode, already on ``device`` (default: the
    device of its parameters): ``model(x)`` gives logits at x's size, and ``model.forward_lowres``
    the decode head's own output (used for ``resize_logits="direct"`` in whole mode).
    ``flip``/``scales`` ask for test-time augmentation (ratios of the test scale); several views
    give averaged probabilities, one view gives logits. ``batch_windows``: windows per forward
    in slide mode (None: measured from free GPU memory, ``CPU_BATCH_WINDOWS`` elsewhere).
    ``amp_dtype``: torch.float16/bfloat16 autocast, GPU only. ``channels_last``: input memory
    format (None: match the model's first convolution weight).
    """
    t_start = time.perf_counter()
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise PredictionError(f"infer() takes an HxWx3 uint8 RGB array (see psegzoo.images.load_image), got {got}")
    if model.training:
        raise PredictionError("the model is in training mode; call model.eval() first (psegzoo.load does)")
    dev = _resolve_device(model, device)
    _check_amp(amp_dtype, dev)
    if channels_last is None:
        channels_last = _model_is_channels_last(model)
    if batch_windows is not None and (
        isinstance(batch_windows, bool) or not isinstance(batch_windows, int) or batch_windows <= 0
    ):
        raise PredictionError(f"batch_windows must be a positive integer, got {batch_windows!r}")
    if settings.resize_logits == "direct" and settings.mode == "whole" and not hasattr(model, "forward_lowres"):
        raise PredictionError(
            "this checkpoint resizes low-resolution logits directly, but the model has no forward_lowres()"
        )
    views = _views(flip, scales)
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    normalize = _Normalize.build(settings.mean, settings.std, dev, dtype=model_dtype, channels_last=channels_last)
    runner = _Runner(model, dev, amp_dtype, normalize)
    out_dev = torch.device(output_device)
    h, w = image.shape[:2]
    done: list[View] = []
    acc: torch.Tensor | None = None
    scores = torch.empty(0)
    prep = post = 0.0
    with torch.inference_mode():
        for ratio, flipped in views:
            t0 = time.perf_counter()
            scale = settings.scale if ratio == 1.0 else tta_scale(settings.scale, ratio)
            resized = resize_image(image, scale)
            if flipped:
                resized = np.ascontiguousarray(resized[:, ::-1])
            u8 = _image_tensor(resized, dev)
            del resized
            done.append(View(ratio=ratio, flip=flipped, size=(int(u8.shape[2]), int(u8.shape[3]))))
            prep += time.perf_counter() - t0
            if settings.mode == "slide":
                crop, stride = cast(Size2, settings.crop_size), cast(Size2, settings.stride)
                low = slide_logits(runner, u8, crop, stride, batch_windows)
            else:
                low = _whole(runner, normalize(u8), direct=settings.resize_logits == "direct")
            del u8
            t1 = time.perf_counter()
            if flipped:
                low = low.flip(-1)
            if len(views) == 1:
                scores = resize_scores(low, (h, w), align_corners=settings.align_corners, out_device=out_dev)
            else:
                if acc is None:
                    acc = torch.zeros((low.shape[0], h, w), dtype=torch.float32, device=out_dev)
                for r0, r1, band in resize_bands(low, (h, w), align_corners=settings.align_corners):
                    acc[:, r0:r1] += torch.softmax(band, dim=0).to(out_dev)
            del low
            post += time.perf_counter() - t1
        if acc is not None:
            acc /= len(views)
            scores = acc
        scores = scores.contiguous()
    seconds = {"preprocess": prep, "forward": runner.forward_seconds, "postprocess": post}
    seconds["total"] = time.perf_counter() - t_start
    return Inference(scores=scores, is_probs=len(views) > 1, views=tuple(done), seconds=seconds)


def _resolve_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    mdev = model_device(model)
    if device is None:
        return mdev
    dev = select_device(device)
    has_tensors = any(True for _ in model.parameters()) or any(True for _ in model.buffers())
    if not has_tensors:
        return dev
    same = dev.type == mdev.type and (dev.index is None or mdev.index is None or dev.index == mdev.index)
    if not same:
        raise PredictionError(f"the model is on {mdev} but device {dev} was asked for; move it there with model.to()")
    return mdev


def _model_is_channels_last(model: torch.nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def _whole(runner: _Runner, x: torch.Tensor, *, direct: bool) -> torch.Tensor:
    try:
        return runner(x, lowres=direct)[0]
    except Exception as exc:
        if _is_oom(exc):
            raise PredictionError(
                f"out of memory running the whole {x.shape[2]}x{x.shape[3]} image on {runner.device}; "
                "use slide mode (mode='slide'), a smaller scale, half precision, or the CPU"
            ) from None
        raise


# --------------------------------------------------------------------------------------------
# From scores to labels, confidences and probabilities (all in bands of rows)
# --------------------------------------------------------------------------------------------


def _row_bands(scores: torch.Tensor) -> Iterator[tuple[int, int]]:
    c, h, w = scores.shape
    step = max(1, BAND_BYTES // max(1, c * w * 4))
    for r0 in range(0, h, step):
        yield r0, min(h, r0 + step)


def argmax_labels(scores: torch.Tensor) -> np.ndarray:
    """Argmax over classes of C x H x W scores: H x W uint8 (int32 when C > 256)."""
    c, h, w = scores.shape
    dtype = np.uint8 if c <= 256 else np.int32
    out = np.empty((h, w), dtype=dtype)
    with torch.inference_mode():
        for r0, r1 in _row_bands(scores):
            out[r0:r1] = scores[:, r0:r1].argmax(dim=0).cpu().numpy().astype(dtype, copy=False)
    return out


def probabilities(scores: torch.Tensor, is_probs: bool, *, inplace: bool = False) -> torch.Tensor:
    """Softmax over classes (a copy unless ``inplace``); probabilities are returned as they are."""
    if is_probs:
        return scores if inplace else scores.clone()
    out = scores if inplace else torch.empty_like(scores)
    with torch.inference_mode():
        for r0, r1 in _row_bands(scores):
            out[:, r0:r1] = torch.softmax(scores[:, r0:r1], dim=0)
    return out
