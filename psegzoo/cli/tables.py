"""Plain text tables that fit the terminal the way ``psegzoo list`` does (``cache``, ``import DIR``).

A value is never cut: whole columns are left out, least useful first, and when even the columns
that stay are too wide, a column marked ``fold`` (a path) is folded onto more lines. What is left
out is named, so the user knows where to find it (``--json``, a wider terminal).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GAP = "  "
MIN_FOLD = 12  # a folded column narrower than this is no help: the lines run long and the terminal wraps them


@dataclass(frozen=True)
class Col:
    """A column: ``priority`` 0 is never left out, higher numbers go first; ``fold`` may wrap onto lines."""

    header: str
    priority: int = 0
    right: bool = False
    fold: bool = False


@dataclass(frozen=True)
class Fitted:
    """The kept columns' lines (header first, one or more lines per row) and the columns left out."""

    lines: tuple[str, ...]
    hidden: tuple[Col, ...]


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def _keep(cols: Sequence[Col], widths: list[int], width: int) -> list[int]:
    """The indexes of the columns that stay: low-priority ones leave, one by one, until the rest fit."""
    keep = list(range(len(cols)))
    for i in sorted((i for i in keep if cols[i].priority > 0), key=lambda i: (-cols[i].priority, -i)):
        if _total([widths[k] for k in keep]) <= width:
            break
        keep.remove(i)
    return keep


def fold(text: str, width: int) -> list[str]:
    """``text`` in pieces of at most ``width`` characters, broken after a ``/`` where one is near the end;
    joined, the pieces are ``text``."""
    pieces = []
    while len(text) > width:
        cut = text.rfind("/", 0, width) + 1
        cut = cut if cut > width // 2 else width
        pieces.append(text[:cut])
        text = text[cut:]
    return [*pieces, text]


def _fold_width(cols: Sequence[Col], widths: list[int], keep: list[int], width: int) -> None:
    """Narrow the first kept ``fold`` column to what is left of ``width``, when that is enough to be of use."""
    for i in (k for k in keep if cols[k].fold):
        room = width - _total([widths[k] for k in keep if k != i]) - len(GAP)
        if widths[i] > room >= max(MIN_FOLD, len(cols[i].header)):
            widths[i] = room
        return


def fit(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int | None) -> Fitted:
    """Lay out ``rows`` under ``cols`` within ``width`` characters (None: a pipe, no limit)."""
    widths = [max([len(c.header), *(len(r[i]) for r in rows)]) for i, c in enumerate(cols)]
    keep = list(range(len(cols)))
    if width is not None:
        keep = _keep(cols, widths, width)
        _fold_width(cols, widths, keep, width)

    def line(cells: Sequence[str]) -> str:
        return GAP.join(cell.rjust(widths[k]) if cols[k].right else cell.ljust(widths[k])
                        for k, cell in zip(keep, cells)).rstrip()

    lines = [line([cols[k].header for k in keep])]
    for row in rows:
        parts = [fold(row[k], widths[k]) if cols[k].fold else [row[k]] for k in keep]
        lines += [line([p[n] if n < len(p) else "" for p in parts]) for n in range(max(map(len, parts)))]
    return Fitted(tuple(lines), tuple(cols[i] for i in range(len(cols)) if i not in keep))
