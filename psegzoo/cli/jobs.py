"""Commands that run as a job: alone, or as one of the processes torchrun starts.

``@as_job`` (placed under ``@handle_errors``) starts a :class:`psegzoo.distributed.Job` around the
command and passes it as ``job=``. Under torchrun only rank 0 speaks: the other processes run
with stdout and stderr sent to the null device and leave quietly with exit code 1 on any error;
rank 0 reports the job's errors (its own, or another process's, which the job forwards).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psegzoo


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def as_job(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``command(..., job=Job)``; torchrun's other ranks print nothing and exit 1 on failure."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        launch = psegzoo.distributed.Launch.from_environ()
        if launch.is_main:
            with psegzoo.distributed.Job.start(launch) as job:
                return command(*args, job=job, **kwargs)
        try:
            with _silenced(), psegzoo.distributed.Job.start(launch) as job:
                return command(*args, job=job, **kwargs)
        except SystemExit:
            raise
        except BaseException:  # rank 0 tells the user; this process only stops
            sys.exit(1)

    return wrapper
