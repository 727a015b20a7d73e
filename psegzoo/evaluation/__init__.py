"""Evaluating a checkpoint on a dataset folder with mmsegmentation's ``IoUMetric``, exactly.

``psegzoo.evaluate(model, data_root)`` is the one-call form. The parts, for runs spread over several
processes: :func:`plan` (settings and the listed split), :func:`accumulate` (per-class counts over any
subset of the images), :class:`Counts` (int64, added or all-reduced as one ``4 x C`` tensor) and
:func:`summarize` (counts -> :class:`EvalResult`).
"""
from __future__ import annotations

from .layouts import LAYOUT_NAMES, LAYOUTS, Layout, generic_layout
from .metric import Counts, Metrics, count_image, sum_counts
from .result import MS_FLIP_RATIOS, ClassResult, EvalResult, EvalSettings
from .runner import Accumulated, EvalPlan, EvalProgress, accumulate, evaluate, plan, summarize, weights_digest
from .split import Sample, Split, list_split
from .state import WorkState

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
    "count_image",
    "evaluate",
    "generic_layout",
    "list_split",
    "plan",
    "sum_counts",
    "summarize",
    "weights_digest",
]
