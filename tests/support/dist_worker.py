"""A torchrun worker that uses psegzoo.distributed as a command would, and records what it saw.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/support/dist_worker.py MODE OUT

Each rank writes OUT/rank<R>.json. MODE: ``ok``; ``fail-rank-R`` (rank R raises RuntimeError on its
last task); ``fail-follower-load`` (rank 1's offline load fails after rank 0 loaded). Errors go through
the command line's own ``handle_errors`` and ``as_job``, as ``psegzoo predict`` does.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import psegzoo
from psegzoo.cli.common import handle_errors
from psegzoo.cli.jobs import as_job

WEIGHTS = [5, 1, 9, 3, 3, 7, 2]
TASKS = [f"task-{i}" for i in range(len(WEIGHTS))]


@handle_errors
@as_job
def main(mode: str, out: Path, job) -> None:
    d = psegzoo.distributed
    report: dict = {"rank": job.rank, "world": job.world_size, "is_main": d.is_main(), "rank_fn": d.rank(),
                    "world_fn": d.world_size(), "nodes": job.nodes}
    report["sum"] = d.all_reduce_sum([job.rank + 1, 10]).tolist()
    weight = dict(zip(TASKS, WEIGHTS))
    plan = job.plan(TASKS, weigh=weight.__getitem__, skip=lambda t: t == "task-6")
    report["plan"] = {"tasks": list(plan.tasks), "total": plan.total, "skipped": plan.skipped,
                      "shard_pixels": list(plan.shard_pixels)}
    loads = []

    def load(first: bool) -> str:
        loads.append(first)
        if mode == "fail-follower-load" and not first:
            raise psegzoo.OfflineError("model-x is not in the cache")
        return f"model of rank {job.rank}"

    report["model"] = job.main_first(load)
    report["loads"] = loads
    shown = []

    def work(task: str) -> str:
        if mode == f"fail-rank-{job.rank}" and task == plan.tasks[-1]:
            raise RuntimeError("boom")
        if task == "task-3":
            raise psegzoo.ImageError(f"{task}: corrupt")
        return task.upper()

    def show(event) -> None:
        shown.append([event.task, event.value, None if event.ok else str(event.error), event.rank])

    totals = job.run(plan.tasks, work, show=show, failed=(psegzoo.ImageError,))
    report["shown"] = shown
    report["totals"] = [totals.done, totals.failed]
    # Progress reports of every process reach rank 0; sums after a meeting.
    report["job_sum"] = job.sum([job.rank + 1, 5]).tolist()
    job.barrier("reports")
    seen: list = []
    reports = job.reports(lambda event: seen.append([event.rank, event.value]))
    for k in range(3):
        reports.send({"from": job.rank, "k": k})
    reports.close()
    report["reports"] = seen
    report["threads"] = torch.get_num_threads()
    (out / f"rank{job.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
