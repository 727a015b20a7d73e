"""Concurrent requests with the same key (model, settings, image shape) share one forward.

A request joins the open group of its key; the group is ready when it holds ``max_batch`` items
or ``max_wait`` after its first item came, whichever is first. One worker thread runs the ready
groups in turn, off the event loop, so the server keeps answering (health checks, metrics, 503s)
while the model runs. The groups of a key that gathered while the device was busy go to it
together (up to ``max_batch`` items), so under load batches fill up by themselves. At most
``capacity`` items wait: beyond that :meth:`Batcher.submit` raises :class:`QueueFull` at once
rather than letting latency grow without bound.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

Run = Callable[[Any, Sequence[Any]], Sequence[Any]]
"""``run(key, items)`` -> one result per item (an exception instance fails that item only)."""


class QueueFull(Exception):
    """Every place in the queue is taken; the client should retry later."""


@dataclass(eq=False)
class _Group:
    key: Hashable
    items: list[Any] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    closed: bool = False


class Batcher:
    """Groups items by key and runs each group through ``run`` in one worker thread."""

    def __init__(self, run: Run, *, max_batch: int, max_wait: float, capacity: int,
                 on_depth: Callable[[int], None] | None = None):
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.capacity = capacity
        self._on_depth = on_depth or (lambda depth: None)
        self._open: dict[Hashable, _Group] = {}
        self._ready: collections.deque[_Group] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="psegzoo-model")
        self.depth = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        """The result of ``item`` once its group has run; :class:`QueueFull` when no place is free."""
        if self.depth >= self.capacity:
            raise QueueFull(f"{self.depth} image(s) are waiting for the model, the most this server queues")
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group(key)
            group.timer = loop.call_later(self.max_wait, self._close, group)
        future: asyncio.Future = loop.create_future()
        group.items.append(item)
        group.futures.append(future)
        self._set_depth(self.depth + 1)
        if len(group.items) >= self.max_batch:
            self._close(group)
        return await future

    def _set_depth(self, depth: int) -> None:
        self.depth = depth
        self._on_depth(depth)

    def _close(self, group: _Group) -> None:
        """The group takes no more items and waits for the worker."""
        if group.closed:
            return
        group.closed = True
        if group.timer is not None:
            group.timer.cancel()
        if self._open.get(group.key) is group:
            del self._open[group.key]
        self._ready.append(group)
        assert self._wake is not None
        self._wake.set()

    def _take(self) -> _Group:
        """The next ready group, joined by the groups of its key that gathered while the device was
        busy (ready or still open), up to ``max_batch`` items: under load, batches fill up by themselves."""
        group = self._ready.popleft()
        for other in [g for g in self._ready if g.key == group.key]:
            if len(group.items) + len(other.items) <= self.max_batch:
                self._ready.remove(other)
                group.items += other.items
                group.futures += other.futures
        still_open = self._open.get(group.key)
        if still_open is not None and len(group.items) + len(still_open.items) <= self.max_batch:
            self._close(still_open)
            self._ready.remove(still_open)
            group.items += still_open.items
            group.futures += still_open.futures
        return group

    async def _work(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._ready:
                self._wake.clear()
                await self._wake.wait()
            group = self._take()
            self._set_depth(self.depth - len(group.items))
            live = [(item, fut) for item, fut in zip(group.items, group.futures) if not fut.done()]  # not cancelled
            if not live:
                continue
            try:
                results = list(await loop.run_in_executor(self._executor, self._run, group.key, [i for i, _ in live]))
            except Exception as exc:  # the whole group failed: each of its requests is told why
                results = [exc] * len(live)
            for (_, fut), result in zip(live, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        """Stop the worker (after the requests in flight have been answered) and its thread."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=True)
