"""Every function of the package reads as one idea: radon's cyclomatic-complexity grade C or better.

The same check as ``radon cc -n D psegzoo`` (which must print nothing), run through radon's API so a
grade D, E or F fails the suite with the function's place and score.
"""
from __future__ import annotations

from pathlib import Path

from radon.complexity import cc_rank, cc_visit

PACKAGE = Path(__file__).resolve().parents[1] / "psegzoo"


def _blocks() -> list[tuple[str, str, int, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for block in cc_visit(path.read_text()):  # functions, classes and methods, as `radon cc` lists them
            found.append((str(path.relative_to(PACKAGE.parent)), block.fullname, block.lineno, block.complexity))
    return found


def test_the_package_is_read_whole():
    assert len(_blocks()) > 500  # the walk saw the package (a wrong path would pass every grade)


def test_no_function_is_graded_d_or_worse():
    worse = [f"{path}:{line} {name} {cc_rank(score)} ({score})" for path, name, line, score in _blocks()
             if cc_rank(score) > "C"]
    assert not worse, "functions above radon grade C: " + "; ".join(worse)
