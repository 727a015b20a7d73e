"""mmcv's keep-ratio resize of the image (``mmcv.imrescale``) with OpenCV's bilinear, bit for bit."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import PredictionError

# OpenCV's fixed-point bilinear: weights in 11 bits (INTER_RESIZE_COEF_BITS).
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def rescale_size(w: int, h: int, scale: Sequence[int]) -> tuple[int, int]:
    """``mmcv.rescale_size``: the (new_w, new_h) that fits ``scale`` (long, short) keeping the ratio.

    The factor may enlarge: ``min(max(scale) / long side, min(scale) / short side)``. A side that
    would round to zero (a 5000 x 1 image: mmcv gives 0 and OpenCV fails) is kept at one pixel.
    """
    if w <= 0 or h <= 0:
        raise PredictionError(f"cannot resize an empty {w}x{h} image")
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))


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

