"""Device names, parsed without torch: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

A misspelt ``--device`` is refused here in microseconds, before torch is imported; whether
``cuda:3`` exists, or MPS is available, is the one question only torch can answer
(:func:`psegzoo.predictor.select_device`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import PredictionError

KINDS = ("auto", "cpu", "cuda", "mps")

DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32",
          "float16": "float16", "fp16": "float16", "half": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}
"""Every precision name psegzoo takes (a model's ``dtype``, autocast's ``amp_dtype``, the server's ``amp``),
to its canonical name, which is torch's: the one table of them."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def dtype_name(name: object) -> str | None:
    """The canonical name of a precision name (any case, spaces around), None when it is not one."""
    return DTYPES.get(name.strip().lower()) if isinstance(name, str) else None
_NAME = re.compile(r"(?P<kind>[a-z]+)(?::(?P<index>\d+))?")
USE = "use auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class DeviceName:
    """A parsed device name: its kind and, for ``cuda:N``, the index."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(device: str | None) -> DeviceName:
    """Parse a device name (None means ``auto``); an unknown or malformed one is a one-line error."""
    text = "auto" if device is None else str(device).strip().lower()
    match = _NAME.fullmatch(text)
    if match is None or match["kind"] not in KINDS:
        raise PredictionError(f"unknown device {device!r}; {USE}")
    index = int(match["index"]) if match["index"] is not None else None
    if index is not None and match["kind"] != "cuda":
        raise PredictionError(f"device {device!r} takes no index (only cuda:N does); {USE}")
    return DeviceName(match["kind"], index)
