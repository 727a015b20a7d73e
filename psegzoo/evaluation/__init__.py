"""Evaluating a checkpoint on a dataset folder with mmsegmentation's ``IoUMetric``, exactly.

``psegzoo.evaluate(model, data_root)`` is the one-call form. The parts, for runs spread over several
processes: :func:`plan` (settings and the listed split), :func:`accumulate` (per-class counts over any
subset of the images), :class:`Counts` (int64, added or all-reduced as one ``4 x C`` tensor) and
:func:`summarize` (counts -> :class:`EvalResult`); :func:`open_state` (the run's work folder, saved
counts keyed by image and label contents) and :func:`check_save_predictions` (never over an input).
"""
from __future__ import annotations

from .guard import check_save_predictions
from .layouts import LAYOUT_NAMES, LAYOUTS, Layout, generic_layout
from .metric import Counts, Metrics, count_image, sum_counts
from .result import MS_FLIP_RATIOS, ClassResult, EvalResult, EvalSettings
from .runner import (
    Accumulated,
    EvalPlan,
    EvalProgress,
    accumulate,
    evaluate,
    open_state,
    plan,
    summarize,
    weights_digest,
    weights_identity,
)
from .split import Sample, Split, list_split
from .state import WorkState, default_work_dir

__all__ = [
    "LAYOUTS",
    "LAYOUT_NAMES",
    "MS_FLIP_RATIOS",
    "Accumulated",
    "ClassResult",
    "Counts",
    "EvalPlan",
    "EvalProgress",
    "EvalResult",
    "EvalSettings",
    "Layout",
    "Metrics",
    "Sample",
    "Split",
    "WorkState",
    "accumulate",
    "check_save_predictions",
    "count_image",
    "default_work_dir",
    "evaluate",
    "generic_layout",
    "list_split",
    "open_state",
    "plan",
    "sum_counts",
    "summarize",
    "weights_digest",
    "weights_identity",
]
