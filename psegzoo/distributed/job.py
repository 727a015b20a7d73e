"""One job over one or many processes: plan the shards, load once, run, report, fail cleanly.

A :class:`Job` is the same object whether psegzoo runs alone or under torchrun; alone, every
step is local and immediate. Under torchrun the processes coordinate in two ways:

* **collectives** (gloo) for the few exchanges where everyone takes part: the input listing's
  fingerprint, header sizes and "already done" flags at planning, and the final totals. Each is
  preceded by an arrival count in the store, so no process waits inside a collective for a peer
  that is still working (the process group timeout then only bounds a peer that hangs mid-exchange;
  a peer that dies breaks gloo's connection at once);
* **the job's key-value store** (torchrun's TCPStore) for everything asynchronous: each finished
  input is an event that rank 0 shows (one progress view, one stream of messages); a process that
  fails records why, and every other process checks for that record after each input and stops.

Threads: each process of a node should run torch on its share of the cores (cores / processes per
node, see :meth:`Launch.cpu_threads` and :attr:`Job.cpu_threads`), so two processes on two cores use one
thread each. The job only tells the count; the program sets it (the command line's job runner does).

Loading: the first process of each node (local rank 0) runs the loader first, with network access;
the others wait for all of them, then load from the cache with network access off. On one node
that is exactly one download. Nodes that share a cache directory are safe too: the cache's file
lock lets one process download while the others wait, then they find the verified file.

Failure: an input that fails in an expected way (a bad image) is an event like any other. Any
other exception stops the job: the failing process records it and waits briefly for rank 0 to
take it, rank 0 raises it as a one-line :class:`DistributedError` naming the process and input,
the others stop quietly. ``SIGTERM`` (what torchrun sends every process when one of them exits
or is killed) becomes an exception too, so temporary files are removed on the way out; outputs
are only ever renamed into place when complete.
"""
from __future__ import annotations

import itertools
import logging
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

import numpy as np
import torch.distributed as dist

from ..devices import usable_cores
from ..errors import DistributedError, PsegzooError, option
from . import sharding
from .launch import (
    DEFAULT_TIMEOUT,
    Launch,
    all_reduce_max,
    all_reduce_sum,
    close_group,
    init_group,
    rank_device,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
X = TypeVar("X")

ACK_WAIT_S = 10.0  # how long a failing process waits for rank 0 to take its error before exiting
_POLL_S = (0.002, 0.1)  # store polling interval: first, longest
_serial = itertools.count()  # jobs started in this process (keys of one job never meet another's)
_RESUME = option("skip_existing=True", "--skip-existing")


class Terminated(BaseException):
    """SIGTERM arrived (torchrun stopping the job, or a user): unwinds like KeyboardInterrupt."""


class _Aborted(DistributedError):
    """Another process failed first (this process is not the origin of the failure)."""


@dataclass(frozen=True)
class Plan(Generic[T]):
    """This process's share of a job: its tasks in input order, and counts over the whole job."""

    tasks: tuple[T, ...]
    total: int  # tasks to run, all processes together
    skipped: int  # tasks left out because their outputs exist
    shard_pixels: tuple[int, ...]  # work of each process's shard


@dataclass(frozen=True)
class Event(Generic[T, R]):
    """One finished task: its result, or the expected error it failed with; ``rank`` ran it."""

    task: T
    value: R | None
    error: BaseException | None
    rank: int

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Totals:
    """Tasks that succeeded and that failed, over the whole job."""

    done: int
    failed: int


class Job:
    """A job of ``launch.world_size`` processes (one when not started by torchrun). Use :meth:`start`."""

    def __init__(self, launch: Launch, store: dist.Store | None = None, nodes: int = 1):
        self.launch = launch
        self._store = store
        self.nodes = nodes
        self._where = ""
        self._seen = 0
        self._meetings = itertools.count()
        self._previous_handler: Any = None

    @classmethod
    def start(cls, launch: Launch | None = None, *, timeout: timedelta = DEFAULT_TIMEOUT) -> Job:
        """Join the torchrun job described by the environment (a job of one without torchrun)."""
        launch = launch if launch is not None else Launch.from_environ()
        if not launch.distributed:
            return cls(launch)
        store = init_group(launch, timeout)
        job = cls(launch, dist.PrefixStore(f"psegzoo/{launch.restart}/{next(_serial)}", store))
        job.nodes = int(all_reduce_sum([int(launch.is_node_leader)])[0])
        return job

    # -- who am I ------------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.is_main

    @property
    def distributed(self) -> bool:
        return self._store is not None

    @property
    def cpu_threads(self) -> int | None:
        """torch's CPU threads for this process in a torchrun job (its share of the node's cores, see
        :meth:`Launch.cpu_threads`); None for a job of one. Setting them is the program's business
        (the command line's job runner does), not this library's."""
        return self.launch.cpu_threads(usable_cores()) if self.launch.distributed else None

    def device(self, requested: str | None) -> str | None:
        """The device for this process: ``cuda:LOCAL_RANK`` under torchrun for ``auto``/``cuda``."""
        return rank_device(requested, self.launch)

    # -- context: signals, failure, teardown -----------------------------------------------------

    def __enter__(self) -> Job:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: a second SIGTERM waits
        try:
            if exc is not None and self.distributed:
                self._failed(exc)
            elif isinstance(exc, Terminated):
                raise DistributedError(f"stopped by SIGTERM; the outputs written so far are complete ({_RESUME} resumes)") from None
        finally:
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)
                self._previous_handler = None
            if self.distributed:
                close_group()

    def _failed(self, exc: BaseException) -> None:
        """Record this process's failure for the others; rank 0 raises the root cause as one line."""
        if isinstance(exc, (_Aborted, SystemExit)):
            return  # someone else's failure (already reported), or a deliberate exit
        record = self._abort_record()
        if record is not None and isinstance(exc, (Terminated, DistributedError)):
            # A consequence of another process's failure: torchrun's SIGTERM, a broken exchange.
            if self.is_main:
                self._acknowledge()
                raise _Aborted(record) from None
            return
        terminated = isinstance(exc, Terminated)
        if not terminated:
            log.debug("process %d of %d failed%s", self.rank, self.world_size, self._where, exc_info=exc)
        what = "was stopped by SIGTERM" if terminated else "failed"
        mine = f"process {self.rank} of {self.world_size} {what}{self._where}" + ("" if terminated else f": {_one_line(exc)}")
        if record is None:
            self._try("compare_set", "abort", "", mine.encode("utf-8", "surrogateescape"))
        if not self.is_main:
            deadline = time.monotonic() + ACK_WAIT_S
            while time.monotonic() < deadline and not self._try("check", ["ack"]):
                time.sleep(_POLL_S[1])
        elif terminated:
            raise DistributedError(
                f"stopped by SIGTERM: torchrun stops every process when one of them exits; the outputs written so far "
                f"are complete ({_RESUME} resumes)"
            ) from None
        elif not isinstance(exc, (PsegzooError, KeyboardInterrupt)):
            raise DistributedError(mine) from exc  # one line, as when another process fails this way

    def _abort_record(self) -> str | None:
        if self._store is None or not self._try("check", ["abort"]):
            return None
        raw = self._try("get", "abort")
        return raw.decode("utf-8", "surrogateescape") if raw else None

    def _acknowledge(self) -> None:
        self._try("set", "ack", b"1")

    def _check_abort(self) -> None:
        """Raise if another process has failed (rank 0: with its message)."""
        record = self._abort_record()
        if record is None:
            return
        if self.is_main:
            self._acknowledge()
        raise _Aborted(record)

    def _try(self, method: str, *args: Any) -> Any:
        """A store operation where failure is already being handled: errors give None."""
        try:
            return getattr(self._store, method)(*args) if self._store is not None else None
        except Exception:
            return None

    def _call(self, method: str, *args: Any) -> Any:
        """A store operation (``add``, ``get``, ``set``, ...); a lost store is a one-line error."""
        try:
            return getattr(self._store, method)(*args)
        except RuntimeError as exc:  # DistStoreError, DistNetworkError: the store's host is gone
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise DistributedError(f"lost contact with the torchrun job's store ({text})") from None

    def _wait(self, ready: Callable[[], bool], tick: Callable[[], None] | None = None) -> None:
        """Poll until ``ready()``: checks for another process's failure, runs ``tick`` (progress)."""
        delay = _POLL_S[0]
        while True:
            if tick is not None:
                tick()
            if ready():
                return
            self._check_abort()
            time.sleep(delay)
            delay = min(delay * 1.5, _POLL_S[1])

    def _meet(self, tag: str, tick: Callable[[], None] | None = None) -> None:
        """Wait until every process has arrived here (before a collective); all meet in the same order."""
        key = f"arrived/{next(self._meetings)}/{tag}"
        self._call("add", key, 1)
        self._wait(lambda: self._call("add", key, 0) >= self.world_size, tick)

    def _collective(self, tag: str, call: Callable[[], np.ndarray]) -> np.ndarray:
        self._meet(tag)
        try:
            return call()
        except DistributedError:
            self._check_abort()  # a peer's recorded failure explains the broken exchange better
            raise

    # -- the steps of a job ----------------------------------------------------------------------

    def plan(self, tasks: Sequence[T], *, weigh: Callable[[T], int],
             skip: Callable[[T], bool] | None = None) -> Plan[T]:
        """Leave out tasks ``skip`` says are done, and split the rest into shards balanced by ``weigh``.

        ``tasks`` must be the same list, in the same order, on every process (checked). Each
        process evaluates ``weigh``/``skip`` for every ``world_size``-th task and the results are
        summed, so header reads and existence checks are shared, and every process agrees on them.
        """
        n = len(tasks)
        self._where = " while planning"
        if self.distributed:
            fingerprint = sharding.digest(repr(t) for t in tasks)
            seen = self._collective("listing", lambda: all_reduce_max([fingerprint, -fingerprint, n, -n]))
            if seen[0] != -seen[1] or seen[2] != -seen[3]:
                raise DistributedError(
                    f"the processes of this job see different inputs ({n} here); every process must see the same "
                    "files, in the same place: use a file system shared by all nodes"
                )
        facts = np.zeros((2, n), dtype=np.int64)
        mine = range(self.rank, n, self.world_size)
        for i in mine:
            if skip is not None and skip(tasks[i]):
                facts[1, i] = 1
            elif self.world_size > 1:
                facts[0, i] = max(0, int(weigh(tasks[i])))
        if self.distributed:
            facts = self._collective("facts", lambda: all_reduce_sum(facts))
        todo = [i for i in range(n) if not facts[1, i]]
        shards = sharding.split([int(facts[0, i]) for i in todo], self.world_size)
        self._where = ""
        return Plan(
            tasks=tuple(tasks[todo[j]] for j in shards[self.rank]),
            total=len(todo),
            skipped=n - len(todo),
            shard_pixels=tuple(sum(int(facts[0, todo[j]]) for j in shard) for shard in shards),
        )

    def main_first(self, load: Callable[[bool], R]) -> R:
        """``load(True)`` on the first process of each node, then ``load(False)`` on the others.

        ``load(first)``: with ``first`` False the loader must not use the network (the first
        processes have filled the cache), e.g. ``psegzoo.load(..., download=options if first else options.with_(offline=True))``.
        """
        self._where = " while loading the model"
        if not self.distributed:
            value = load(True)
        elif self.launch.is_node_leader:
            value = load(True)
            self._call("add", "loaded", 1)
        else:
            self._wait(lambda: self._call("add", "loaded", 0) >= self.nodes)
            value = load(False)
        self._where = ""
        return value

    def barrier(self, tag: str = "barrier") -> None:
        """Wait until every process gets here; a process that fails meanwhile ends the wait with its error."""
        if self.distributed:
            self._meet(tag)

    def sum(self, array: Any) -> np.ndarray:
        """The element-wise int64 sum of ``array`` over all processes (``array`` itself alone), e.g.
        per-class counts. Every process must call it with the same shape."""
        if not self.distributed:
            return all_reduce_sum(array)
        return self._collective("sum", lambda: all_reduce_sum(array))

    def reports(self, show: Callable[[Event[Any, Any]], None] | None) -> Reports:
        """A stream of events from every process to ``show`` on rank 0 (see :class:`Reports`)."""
        return Reports(self, show)

    def run(self, tasks: Sequence[T], work: Callable[[T], R], *, show: Callable[[Event[T, R]], None] | None = None,
            failed: tuple[type[BaseException], ...] = ()) -> Totals:
        """Run ``work`` on each of this process's ``tasks``; rank 0 calls ``show`` for every task of the job.

        An exception of a ``failed`` type fails that task only (an :class:`Event` with the error);
        any other stops the whole job (see the module docstring). Returns the totals of the whole
        job, on every process.
        """
        return self.run_each(((task, None) for task in tasks), lambda task, _: work(task), show=show, failed=failed)

    def run_each(self, pairs: Iterable[tuple[T, X]], work: Callable[[T, X], R], *,
                 show: Callable[[Event[T, R]], None] | None = None,
                 failed: tuple[type[BaseException], ...] = ()) -> Totals:
        """:meth:`run` over tasks that come paired with what a stream made for them (e.g. a prediction):
        ``work(task, made)``. The stream is pulled once per task, after checking that no other process
        has failed; an exception it raises stops the job (its own errors per task travel as values)."""
        counts = np.zeros(2, dtype=np.int64)
        reports = self.reports(show)
        items = iter(pairs)
        self._where = " on its first task"  # while the stream makes it, the task is not known yet
        while True:
            self._check_abort()
            pair = next(items, None)
            if pair is None:
                break
            task, made = pair
            self._where = f" on {task}"
            try:
                event: Event[T, R] = Event(task, work(task, made), None, self.rank)
            except failed as exc:
                event = Event(task, None, exc, self.rank)
            self._where = ""
            counts[0 if event.ok else 1] += 1
            reports.send(event)
            self._where = f" on the task after {task}"
        self._where = ""
        reports.close()
        if not self.distributed:
            return Totals(int(counts[0]), int(counts[1]))
        counts = self._collective("totals", lambda: all_reduce_sum(counts))
        return Totals(int(counts[0]), int(counts[1]))

    def _publish(self, event: Event[T, R]) -> None:
        try:
            blob = pickle.dumps(event)
        except Exception:  # a result or error that does not pickle travels as text
            error = None if event.error is None else PsegzooError(_one_line(event.error))
            blob = pickle.dumps(Event(event.task, None if event.value is None else str(event.value), error, event.rank))
        k = self._call("add", "events", 1) - 1
        self._call("set", f"event/{k}", blob)

    def _deliver(self, show: Callable[[Event[T, R]], None] | None) -> None:
        """Rank 0: show the events that have arrived since the last call, in arrival order."""
        n = self._call("add", "events", 0)
        while self._seen < n:
            key = f"event/{self._seen}"
            event = pickle.loads(self._call("get", key))
            self._call("delete_key", key)
            self._seen += 1
            if show is not None:
                show(event)


class Reports:
    """Events of every process, shown by rank 0 in arrival order: one view of the whole job.

    Each process sends its events (a finished task, or a progress report: any picklable value);
    rank 0 shows its own at once and the others' whenever it sends, polls or closes. Sending also
    checks whether another process has failed (and raises if so), so a long loop that reports
    stops with the job. Every process must :meth:`close` the stream
    (a meeting: rank 0 shows the last events of everyone before any process goes on).
    """

    def __init__(self, job: Job, show: Callable[[Event[Any, Any]], None] | None):
        self.job = job
        self.show = show

    def send(self, event: Event[Any, Any] | Any) -> None:
        """Send an :class:`Event`, or a bare value (an event of no task from this process)."""
        job = self.job
        job._check_abort()
        if not isinstance(event, Event):
            event = Event(None, event, None, job.rank)
        if not job.distributed:
            if self.show is not None:
                self.show(event)
            return
        job._publish(event)
        self.poll()

    def poll(self) -> None:
        """Rank 0: show what the other processes have sent so far (nothing elsewhere)."""
        if self.job.distributed and self.job.is_main:
            self.job._deliver(self.show)

    def close(self) -> None:
        """Wait for every process to finish sending; rank 0 shows everything that was sent."""
        if self.job.distributed:
            self.job._meet("finished", self.poll)  # every event is published before its process arrives here
            self.poll()


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the first one unwinds, cleanup is not interrupted
    raise Terminated()


def _one_line(exc: BaseException) -> str:
    """An error as one line; our own errors keep their option markers (rendered by the reader)."""
    if isinstance(exc, PsegzooError):
        text = Exception.__str__(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return (text.strip() or type(exc).__name__).splitlines()[0]
