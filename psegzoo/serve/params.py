"""The query parameters of ``POST /v1/predict``, checked into one frozen value (or a 422 message)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FORMATS = ("png", "json", "overlay")
KNOWN = ("model", "format", "mode", "scale", "flip", "opacity", "overlay")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class BadParameter(ValueError):
    """A query parameter the service cannot use (answered with 422)."""


@dataclass(frozen=True)
class PredictQuery:
    """What one prediction request asks for."""

    model: str | None = None
    format: str = "png"
    mode: str | None = None
    scale: tuple[int, int] | None = None
    flip: bool = False
    opacity: float = 0.5
    overlay: bool = False  # format=json: also the overlay PNG, base64 (what the page shows)


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise BadParameter(f"{name}={value!r} is not a yes/no value; use {name}=true or {name}=false")


def _scale(value: str) -> tuple[int, int]:
    parts = value.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) != 2 or min(nums) <= 0:
        raise BadParameter(f"scale={value!r} is not LONGxSHORT in pixels, e.g. scale=2048x1024")
    return nums[0], nums[1]


def _opacity(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise BadParameter(f"opacity={value!r} must be a number from 0 to 1")
    return number


def parse_query(params: Mapping[str, str], names: list[str]) -> PredictQuery:
    """``params`` (the last value of each name) as a :class:`PredictQuery`; ``names`` are all names given."""
    unknown = sorted(set(names) - set(KNOWN))
    if unknown:
        raise BadParameter(f"unknown parameter(s) {', '.join(unknown)}; this endpoint takes {', '.join(KNOWN)}")
    fmt = params.get("format", "png").lower() or "png"
    if fmt not in FORMATS:
        raise BadParameter(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    mode = params.get("mode") or None
    if mode is not None and mode not in ("whole", "slide"):
        raise BadParameter(f"mode={mode!r} is not whole or slide")
    return PredictQuery(
        model=params.get("model") or None,
        format=fmt,
        mode=mode,
        scale=_scale(params["scale"]) if params.get("scale") else None,
        flip=_flag("flip", params.get("flip", "")),
        opacity=_opacity(params["opacity"]) if "opacity" in params else 0.5,
        overlay=_flag("overlay", params.get("overlay", "")),
    )
