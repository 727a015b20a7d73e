"""A bounded, ordered prefetch: items are loaded by background threads while the caller works.

At most ``depth`` items are loaded ahead of the one the caller holds, so memory stays bounded
whatever the split's size, and results come back in input order. Pillow's decoders and numpy release
the GIL, so decoding overlaps with the model on the calling thread. An error raised by ``load`` is
raised again, in order, by the iterator; closing the iterator early (an error or Ctrl-C in the
caller) cancels what has not started and waits only for loads already running.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], load: Callable[[T], R], *, workers: int, depth: int) -> Generator[tuple[T, R], None, None]:
    """``(item, load(item))`` in order, with up to ``depth`` loads running ahead on ``workers`` threads.

    ``workers=0`` loads each item on the calling thread when it is needed (no overlap).
    """
    if workers <= 0:
        for item in items:
            yield item, load(item)
        return
    depth = max(1, depth)
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="psegzoo-prefetch")
    pending: deque[tuple[T, Future[R]]] = deque()
    try:
        for item in source:
            pending.append((item, pool.submit(load, item)))
            if len(pending) >= depth:
                break
        while pending:
            item, future = pending.popleft()
            result = future.result()
            for nxt in source:
                pending.append((nxt, pool.submit(load, nxt)))
                break
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
