"""The Python API: ``load()`` gives a :class:`Segmenter`, whose ``predict()`` gives a :class:`Prediction`."""
from __future__ import annotations

from .loading import convert_checkpoint, inference_settings, load, unique_output_names
from .prediction import Prediction
from .segmenter import Segmenter

__all__ = ["Prediction", "Segmenter", "convert_checkpoint", "inference_settings", "load", "unique_output_names"]
