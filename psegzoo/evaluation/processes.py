"""The processes an evaluation spans: what :func:`~psegzoo.evaluation.evaluate` asks of them, and one process.

Under torchrun the caller passes a :class:`psegzoo.distributed.Job`, which has these methods (the
evaluation sits beside ``distributed`` and does not import it); alone, :class:`Alone` does each
step locally and at once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

R = TypeVar("R")


class Reporting(Protocol):
    def send(self, event: Any) -> None: ...

    def close(self) -> None: ...


class Processes(Protocol):
    """The steps of a job over one or many processes that an evaluation takes (see :class:`psegzoo.distributed.Job`)."""

    @property
    def is_main(self) -> bool: ...

    def device(self, requested: Any) -> Any: ...

    def main_first(self, load: Callable[[bool], R]) -> R: ...

    def barrier(self, tag: str = ...) -> None: ...

    def plan(self, tasks: Sequence[Any], *, weigh: Callable[[Any], int]) -> Any: ...

    def reports(self, show: Callable[[Any], None] | None) -> Reporting: ...

    def sum(self, array: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class _Share:
    tasks: tuple[Any, ...]


@dataclass(frozen=True)
class _Report:
    value: Any
    rank: int = 0


class _Direct:
    """Reports shown as they are sent."""

    def __init__(self, show: Callable[[Any], None] | None):
        self.show = show

    def send(self, event: Any) -> None:
        if self.show is not None:
            self.show(_Report(event))

    def close(self) -> None:
        pass


class Alone:
    """A job of one process: every task is this one's, loading needs no turns, sums are the values."""

    is_main = True

    def device(self, requested: Any) -> Any:
        return requested

    def main_first(self, load: Callable[[bool], R]) -> R:
        return load(True)

    def barrier(self, tag: str = "barrier") -> None:
        pass

    def plan(self, tasks: Sequence[Any], *, weigh: Callable[[Any], int]) -> _Share:
        return _Share(tuple(tasks))

    def reports(self, show: Callable[[Any], None] | None) -> _Direct:
        return _Direct(show)

    def sum(self, array: Any) -> np.ndarray:
        return np.asarray(array, dtype=np.int64)
