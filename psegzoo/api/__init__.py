"""The Python API: ``load()`` gives a :class:`Segmenter`, whose ``predict()`` gives a :class:`Prediction`."""
from __future__ import annotations

from ..outputs import unique_output_names
from .loading import convert_checkpoint, inference_settings, load
from .prediction import Prediction
from .segmenter import Segmenter
from .tuning import cpu_fast_paths, tune

__all__ = ["Prediction", "Segmenter", "convert_checkpoint", "cpu_fast_paths", "inference_settings", "load", "tune",
           "unique_output_names"]
