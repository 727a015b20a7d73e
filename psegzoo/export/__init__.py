"""ONNX export of the zoo's models and prediction with onnxruntime (``pip install 'psegzoo[onnx]'``).

:func:`export_onnx` writes a checked graph with its metadata (:mod:`.metadata`); :func:`load_onnx`
opens one for psegzoo's own test pipeline with onnxruntime as the engine (:mod:`.engine`).
"""
from __future__ import annotations

from .engine import OnnxEngine, OnnxSegmenter, load_onnx
from .export import ExportResult, export_onnx
from .metadata import OnnxInfo

__all__ = ["ExportResult", "OnnxEngine", "OnnxInfo", "OnnxSegmenter", "export_onnx", "load_onnx"]
