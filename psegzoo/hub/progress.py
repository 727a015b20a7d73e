"""The download bar: one line that fits 80 columns (short label, bar, size, speed, time left).

Sizes and speeds use :func:`psegzoo.units.format_size` (decimal kB/MB/GB), like every other size
psegzoo prints.
"""
from __future__ import annotations

from typing import Any

from ..units import format_size

LABEL_WIDTH = 20
BAR_WIDTH = 18


def short_label(text: str, width: int = LABEL_WIDTH) -> str:
    """``text`` cut to ``width`` characters, keeping its start (the model family) and marking the cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _size_text(completed: float, total: float | None) -> str:
    if total is None:
        return format_size(completed)
    done, whole = format_size(completed), format_size(total)
    if done.split()[-1] == whole.split()[-1]:  # same unit: "12.3/45.6 MB"
        return f"{done.split()[0]}/{whole}"
    return f"{done}/{whole}"


def columns() -> list[Any]:
    """The bar's columns (rich imported here only: the hub imports rich only when it draws)."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class SizeColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(_size_text(task.completed, task.total).rjust(16), style="progress.download")

    class SpeedColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(("-" if speed is None else format_size(speed) + "/s").rjust(10), style="progress.data.speed")

    return [
        TextColumn("{task.description}", style="bold"),
        BarColumn(bar_width=BAR_WIDTH),
        SizeColumn(),
        SpeedColumn(),
        TimeRemainingColumn(),
    ]


class Bar:
    """A progress bar on stderr, or nothing (``enabled=False``)."""

    def __init__(self, enabled: bool, label: str):
        self._progress: Any = None
        self._task: Any = None
        self._label = short_label(label).ljust(LABEL_WIDTH)
        if enabled:
            from rich.console import Console
            from rich.progress import Progress

            self._progress = Progress(*columns(), console=Console(stderr=True), transient=False, expand=False)

    def start(self, total: int | None, completed: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=total, completed=completed)
        else:
            self._progress.reset(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.stop()
