"""Commands that run as a job: alone, or as one of the processes torchrun starts.

``@as_job`` (placed under ``@handle_errors``) starts a :class:`psegzoo.distributed.Job` around the
command and passes it as ``job=``. Under torchrun only rank 0 speaks: the other processes run
with stdout and stderr sent to the null device and leave quietly with exit code 1 on any error;
rank 0 reports the job's errors (its own, or another process's, which the job forwards).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psegzoo

from .common import StatusLine

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def use_cpu_share(job: Any) -> None:
    """Run torch on this process's share of the node's cores in a torchrun job (thread counts are the
    program's to set, so the command line sets them, not the library)."""
    threads = job.cpu_threads
    if threads is not None:
        torch = sys.modules["torch"]  # loaded by the job already; the command line itself imports no torch
        torch.set_num_threads(threads)


def as_job(command: Callable[..., Any] | None = None, *, prepare: Callable[..., Any] | None = None,
           check: Callable[..., None] | None = None) -> Callable[..., Any]:
    """Run ``command(..., job=Job)``; torchrun's other ranks print nothing and exit 1 on failure.

    Before the job starts (and torch is imported), ``check(**arguments)`` may refuse the arguments,
    or ``prepare(**arguments)`` check them and return what the command is then called with:
    ``command(prepared, job=Job)``. Neither may import torch, so a mistake costs no torch import.
    Use as ``@as_job``, ``@as_job(check=...)`` or ``@as_job(prepare=...)``.
    """
    if command is None:
        return functools.partial(as_job, prepare=prepare, check=check)

    def body(launch: Any, args: Any, kwargs: Any) -> Any:
        status = StatusLine(bool(kwargs.get("quiet")))  # the command's own -q too
        if check is not None:
            check(*args, **kwargs)
        if prepare is not None:
            args, kwargs = (prepare(*args, **kwargs),), {}
        with status:
            status("importing PyTorch")
            start = psegzoo.distributed.Job.start  # the first use of torch
        with start(launch) as job:
            use_cpu_share(job)
            return command(*args, job=job, **kwargs)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        launch = psegzoo.distributed.Launch.from_environ()  # no torch: the rank is read from the environment
        if launch.is_main:
            return body(launch, args, kwargs)
        try:
            with _silenced():
                return body(launch, args, kwargs)
        except SystemExit:
            raise
        except BaseException:  # rank 0 tells the user; this process only stops (its traceback at -vv)
            log.debug("process %d stops on an error", launch.rank, exc_info=True)
            sys.exit(1)

    return wrapper
