"""Large jobs on torch.distributed: ``torchrun --nproc-per-node N -m psegzoo predict ...``.

* :class:`Launch` — who this process is (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, read once).
* :class:`Job` — plan disjoint shards balanced by pixels, load a checkpoint once per node, run,
  show one progress view on rank 0 (:class:`Reports`), sum counts (:meth:`Job.sum`), stop
  cleanly when a process fails.
* :func:`is_main`, :func:`rank`, :func:`world_size`, :func:`barrier`, :func:`all_reduce_sum` —
  helpers on the default process group that are no-ops in a single process, e.g. for summing
  per-class counts: ``areas = psegzoo.distributed.all_reduce_sum(areas)``.
* :class:`PredictTask`, :func:`predict_tasks`, :class:`Wanted` — the inputs of a predict job,
  their work (pixels, from headers: :func:`image_size`) and whether their outputs already exist
  (``--skip-existing``).
* :func:`run_predict` with :class:`PredictJob` (its settings) and :class:`PredictView` (what it
  reports) — a whole predict job, as ``psegzoo predict`` runs it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .environ import Launch
    from .job import Event, Job, Plan, Reports, Terminated, Totals
    from .launch import all_reduce_max, all_reduce_sum, barrier, is_main, rank, world_size
    from .predict import PredictJob, PredictTotals, PredictView, run_predict
    from .sharding import split
    from .tasks import PredictTask, Wanted, image_size, predict_tasks

# name -> submodule that defines it, imported on first use: a command learns its rank (``Launch``) and
# plans its tasks without importing torch, so its arguments are checked before that import.
_LAZY = {
    **dict.fromkeys(("Event", "Job", "Plan", "Reports", "Terminated", "Totals"), "job"),
    "Launch": "environ",
    **dict.fromkeys(("all_reduce_max", "all_reduce_sum", "barrier", "is_main", "rank", "world_size"), "launch"),
    "split": "sharding",
    **dict.fromkeys(("PredictJob", "PredictTotals", "PredictView", "run_predict"), "predict"),
    **dict.fromkeys(("PredictTask", "Wanted", "image_size", "predict_tasks"), "tasks"),
}

__all__ = [
    "Event",
    "Job",
    "Launch",
    "Plan",
    "PredictJob",
    "PredictTask",
    "PredictTotals",
    "PredictView",
    "Reports",
    "Terminated",
    "Totals",
    "Wanted",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "image_size",
    "is_main",
    "predict_tasks",
    "rank",
    "run_predict",
    "split",
    "world_size",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
