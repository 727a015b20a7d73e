"""Score maps at the original size, made in bands of rows; labels, confidences and probabilities.

Only one band of rows of a full-size C x H x W map exists at a time unless the caller keeps the
whole map (``resize_scores``). Labels (and the top probability) can be made straight from the
low-resolution scores of each view, band by band (:func:`banded_labels`), so an image of any size
needs its labels, not its C x H x W scores. On a GPU the bands stay there and only labels come back.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Size2 = tuple[int, int]

BAND_BYTES = 32 * 2**20
"""Working-set target of one band of rows when producing results at the original size."""


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
    y0, y1, wy0, wy1 = (t.to(x.device, non_blocking=True) for t in taps)  # from pageable memory: staged, no wait
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


def _row_bands(scores: torch.Tensor) -> Iterator[tuple[int, int]]:
    c, h, w = scores.shape
    step = max(1, BAND_BYTES // max(1, c * w * 4))
    for r0 in range(0, h, step):
        yield r0, min(h, r0 + step)


def class_argmax(scores: torch.Tensor, out: torch.Tensor) -> None:
    """``out[...] = scores.argmax(dim=0)`` for C x h x w scores, into an h x w label tensor.

    On the CPU as C passes of compare-and-keep over the h x w map, which read each score once in
    memory order: torch's reduction over the outer dimension is 4x slower (19 x 1024 x 2048: 380 ms
    against 97 ms on 2 threads). Equal maxima give the first class, as argmax does; rows with a NaN
    score (which argmax takes as the maximum) are handed to argmax.
    """
    if scores.device.type != "cpu" or scores.shape[0] > 256:
        out.copy_(scores.argmax(dim=0))
        return
    best = scores[0].clone()
    out.zero_()
    for k in range(1, scores.shape[0]):
        out.masked_fill_(scores[k] > best, k)
        torch.maximum(best, scores[k], out=best)  # NaN spreads: it marks every pixel that has one
    nan_rows = torch.isnan(best).any(dim=1).nonzero().flatten().tolist()
    for r in nan_rows:
        out[r].copy_(scores[:, r].argmax(dim=0))


def argmax_labels(scores: torch.Tensor) -> np.ndarray:
    """Argmax over classes of C x H x W scores: H x W uint8 (int32 when C > 256), on the host."""
    c, h, w = scores.shape
    out = torch.empty((h, w), dtype=label_dtype(c), device=scores.device)
    with torch.inference_mode():
        for r0, r1 in _row_bands(scores):
            class_argmax(scores[:, r0:r1], out[r0:r1])
    return to_host(out)


def probabilities(scores: torch.Tensor, is_probs: bool, *, inplace: bool = False) -> torch.Tensor:
    """Softmax over classes (a copy unless ``inplace``); probabilities are returned as they are."""
    if is_probs:
        return scores if inplace else scores.clone()
    out = scores if inplace else torch.empty_like(scores)
    with torch.inference_mode():
        for r0, r1 in _row_bands(scores):
            out[:, r0:r1] = torch.softmax(scores[:, r0:r1], dim=0)
    return out


def label_dtype(num_classes: int) -> torch.dtype:
    """uint8 labels up to 256 classes, int32 beyond."""
    return torch.uint8 if num_classes <= 256 else torch.int32


def to_host(t: torch.Tensor, *, wait: bool = True) -> np.ndarray:
    """A tensor as a NumPy array on the host; from a GPU through pinned memory, one copy.

    ``wait=False`` queues the copy from a CUDA device and returns at once: the array is filled when
    the device's current stream reaches the copy, so the caller synchronizes (once, for all the
    copies it queued) before reading it. Elsewhere the array is ready either way.
    """
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        if wait:
            torch.cuda.current_stream(t.device).synchronize()
        return host.numpy()
    return t.cpu().numpy()


def banded_labels(
    views: Sequence[torch.Tensor],
    size: Size2,
    *,
    align_corners: bool,
    average_probs: bool,
    confidence: bool = False,
    wait: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (H x W) and optionally the top probability (H x W float32) at ``size``, band by band.

    ``views`` are C x h x w score maps (each view's own size, on one device). With one view and not
    ``average_probs`` the labels are the argmax of its resized logits; else of the mean of the
    views' softmax probabilities, each resized to ``size`` (how test-time augmentation averages).
    The same values as :func:`resize_scores` then :func:`argmax_labels`, without the C x H x W map.
    ``wait=False``: the arrays come back as :func:`to_host` gives them without waiting.
    """
    c = views[0].shape[0]
    device = views[0].device
    h, w = size
    labels = torch.empty((h, w), dtype=label_dtype(c), device=device)
    top = torch.empty((h, w), dtype=torch.float32, device=device) if confidence else None
    streams = [resize_bands(v, size, align_corners=align_corners) for v in views]
    with torch.inference_mode():
        for bands in zip(*streams):
            r0, r1 = bands[0][0], bands[0][1]
            if len(views) == 1 and not average_probs:
                band = bands[0][2]
                class_argmax(band, labels[r0:r1])
                if top is not None:
                    top[r0:r1] = torch.softmax(band, dim=0).amax(dim=0)
                continue
            acc = torch.softmax(bands[0][2], dim=0)
            for _, _, band in bands[1:]:
                acc += torch.softmax(band, dim=0)
            class_argmax(acc, labels[r0:r1])
            if top is not None:
                top[r0:r1] = acc.amax(dim=0) / len(views)
    return to_host(labels, wait=wait), None if top is None else to_host(top, wait=wait)
