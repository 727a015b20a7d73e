"""The optional packages ONNX support needs (``pip install 'psegzoo[onnx]'``), imported on demand."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ExportError

INSTALL = "pip install 'psegzoo[onnx]'"


def first_line(exc: BaseException) -> str:
    """The first line of an exception from torch's exporter or onnxruntime, for a one-line message."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _missing(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require_exporter() -> None:
    """onnx, onnxscript (torch's ONNX exporter uses both) and onnxruntime (to check the result)."""
    missing = _missing(("onnx", "onnxscript", "onnxruntime"))
    if missing:
        raise ExportError(f"exporting to ONNX needs onnx, onnxscript and onnxruntime ({', '.join(missing)} missing); "
                          f"install them with: {INSTALL}")


def onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a one-line error saying how to install it."""
    if _missing(("onnxruntime",)):
        raise ExportError(f"running an ONNX file needs onnxruntime, which is not installed; install it with: {INSTALL} "
                          "(or pip install onnxruntime-gpu for CUDA)")
    return importlib.import_module("onnxruntime")
