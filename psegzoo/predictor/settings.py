"""How an image is run: the entry's test settings with the user's overrides, validated up front.

Settings that would make a prediction absurdly large (a 200000 x 200000 test scale, a ratio of 500,
a stride of one pixel) are refused here with one line, before any image is read or model loaded.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PredictionError, param, setting
from ..manifest import RESIZE_LOGITS, TEST_MODES, Entry, TestSettings

Size2 = tuple[int, int]

MAX_SIDE = 1 << 15
"""Longest side (pixels) a test scale, a crop or a multi-scale view may have (32768)."""

MAX_WINDOWS = 4096
"""Most sliding windows one view may need (mmseg's settings need 2 to 40)."""

MAX_RATIOS = 32
"""Most multi-scale ratios (each is a full forward, twice with flip)."""


def _pair(value: Any, what: str, form: str = "(h, w)") -> Size2:
    """A pair of positive integers from one integer (used twice) or a pair."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        items: Sequence[Any] = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        items = value
    else:
        raise PredictionError(f"{param(what)} must be a positive integer or a pair {form}, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in items):
        raise PredictionError(f"{param(what)} must hold positive integers {form}, got {value!r}")
    return int(items[0]), int(items[1])


def _bounded(pair: Size2, what: str, hint: str) -> Size2:
    if max(pair) > MAX_SIDE:
        raise PredictionError(f"{param(what)} {pair[0]}x{pair[1]} is too large: at most {MAX_SIDE} pixels a side; {hint}")
    return pair


def default_stride(crop_size: Size2) -> Size2:
    """Two thirds of the crop, rounded: mmseg's own choice (512x1024 -> 341x683, 769 -> 513)."""
    return max(1, round(crop_size[0] * 2 / 3)), max(1, round(crop_size[1] * 2 / 3))


def _grid(n: int, crop: int, stride: int) -> int:
    return max(n - crop + stride - 1, 0) // stride + 1


def tta_scale(scale: Sequence[int], ratio: float) -> tuple[int, int]:
    """The test scale for one multi-scale ratio: ``(int(long * r), int(short * r))``."""
    long_edge, short_edge = max(scale), min(scale)
    return int(long_edge * ratio), int(short_edge * ratio)


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
            raise PredictionError(f"{param('mode')} must be one of {', '.join(TEST_MODES)}, got {self.mode!r}")
        if self.resize_logits not in RESIZE_LOGITS:
            raise PredictionError(
                f"resize_logits must be one of {', '.join(RESIZE_LOGITS)}, got {self.resize_logits!r}"
            )
        scale = _bounded(_pair(self.scale, "scale", "(long, short)"), "scale",
                         "images are resized to fit it, so the published scale (e.g. 2048x1024) is the usual choice")
        object.__setattr__(self, "scale", scale)
        if self.mode == "slide":
            if self.crop_size is None or self.stride is None:
                raise PredictionError(f"slide mode needs {param('crop_size')} and {param('stride')} (h, w)")
            crop = _bounded(_pair(self.crop_size, "crop_size"), "crop_size", "use the crop the model was trained on")
            stride = _pair(self.stride, "stride")
            if stride[0] > crop[0] or stride[1] > crop[1]:
                raise PredictionError(
                    f"{param('stride')} {stride[0]}x{stride[1]} is larger than {param('crop_size')} {crop[0]}x{crop[1]}: "
                    "windows would leave gaps; use a stride at most the crop size"
                )
            object.__setattr__(self, "crop_size", crop)
            object.__setattr__(self, "stride", stride)
            self._check_windows(scale)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3:
                raise PredictionError(f"{name} must hold 3 numbers (R, G, B), got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if any(s == 0 or not math.isfinite(s) for s in self.std) or not all(math.isfinite(m) for m in self.mean):
            raise PredictionError(f"mean and std must be finite and std non-zero, got {self.mean!r} and {self.std!r}")

    def max_windows(self, scale: Size2) -> int:
        """Sliding windows of one view at ``scale`` (long, short), in its worse orientation (1 in whole mode)."""
        if self.mode != "slide" or self.crop_size is None or self.stride is None:
            return 1
        (ch, cw), (sh, sw) = self.crop_size, self.stride
        long_edge, short_edge = max(scale), min(scale)
        return max(_grid(long_edge, ch, sh) * _grid(short_edge, cw, sw),
                   _grid(short_edge, ch, sh) * _grid(long_edge, cw, sw))

    def _check_windows(self, scale: Size2) -> None:
        n = self.max_windows(scale)
        if n > MAX_WINDOWS:
            crop, stride = self.crop_size or (0, 0), self.stride or (0, 0)
            raise PredictionError(
                f"{param('stride')} {stride[0]}x{stride[1]} gives about {n} windows of {crop[0]}x{crop[1]} per image at scale "
                f"{scale[0]}x{scale[1]} (at most {MAX_WINDOWS}); use a stride closer to the crop size "
                "(the default is 2/3 of it)"
            )

    def views(self, flip: bool = False, scales: Sequence[float] | None = None) -> list[tuple[float, bool]]:
        """The test-time views ``(ratio, flipped)`` asked for, checked: positive finite ratios whose
        scales stay within ``MAX_SIDE`` and give at least one pixel."""
        ratios = [1.0] if scales is None else list(scales)
        if not ratios:
            raise PredictionError(f"{param('scales')} must hold at least one ratio, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)")
        if len(ratios) > MAX_RATIOS:
            raise PredictionError(f"{len(ratios)} scale ratios asked for; at most {MAX_RATIOS}")
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
                raise PredictionError(f"scale ratios must be positive numbers, got {r!r}")
            if r == 1.0:
                continue
            long_edge, short_edge = tta_scale(self.scale, r)
            if short_edge < 1 or long_edge > MAX_SIDE:
                raise PredictionError(
                    f"scale ratio {r:g} makes the test scale {long_edge}x{short_edge} (from {self.scale[0]}x"
                    f"{self.scale[1]}); ratios must keep it between 1 and {MAX_SIDE} pixels a side, e.g. 0.5 to 2"
                )
            self._check_windows((long_edge, short_edge))
        return [(float(r), f) for r in ratios for f in ((False, True) if flip else (False,))]

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
            raise PredictionError(f"{param('mode')} must be one of {', '.join(TEST_MODES)}, got {mode!r}")
        crop: Size2 | None = None
        step: Size2 | None = None
        if mode == "whole":
            if crop_size is not None or stride is not None:
                raise PredictionError(f"{param('crop_size')} and {param('stride')} apply to slide mode only; "
                                      f"also pass {setting('mode', 'slide')}")
        else:
            if crop_size is not None:
                crop = _pair(crop_size, "crop_size")
            elif test.crop_size is not None:
                crop = _pair(tuple(test.crop_size), "crop_size")
            elif train_crop is not None:
                crop = _pair(tuple(train_crop), "crop_size")
            else:
                raise PredictionError(f"slide mode needs a {param('crop_size')} (h, w)")
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
