"""psegzoo's own processes keep freed memory for the next forward; the library leaves malloc alone.

glibc serves blocks above its mmap threshold (at most 32 MB) with fresh pages, faulted in one 4 KiB page at a time
and given back on free. The probe allocates and fills a 64 MB block several times: with malloc as it is, every round
faults all of it in again; with freed memory kept (:mod:`psegzoo.heap`), only the first does. Page-fault counts come
from ``getrusage`` in a child process, so the test process's own malloc is not changed.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psegzoo.heap import _glibc
from psegzoo.settings import keep_memory_from_env
from tests.support.cli import REPO, run_script

ROUNDS = 16

PROBE = f"""
import resource, sys

def churn():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({ROUNDS}):
        block = b"x" * (64 << 20)  # malloc'ed and written
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def say(n):
    print("@@", int(n))
"""

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="the setting is glibc's; elsewhere psegzoo leaves malloc as it is")


def _faults(body: str, **env: str) -> list[int]:
    """Run PROBE + body (which tells numbers with ``say``) in a child process; the numbers."""
    environ = {k: v for k, v in os.environ.items() if k != "PSEGZOO_KEEP_MEMORY"}
    environ.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", PROBE + body], env=environ, capture_output=True, text=True,
                         timeout=120, check=True, cwd=REPO).stdout
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith("@@ ")]


@needs_glibc
def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_blocks():
    before, applied, after = _faults("say(churn())\nimport psegzoo\nsay(psegzoo.keep_freed_memory())\nsay(churn())\n")
    assert applied == 1
    assert before >= ROUNDS  # every round faults the block in again ...
    assert after * 4 <= before  # ... and with freed memory kept, the first round only (16 rounds: 16x fewer)


@needs_glibc
def test_the_command_line_keeps_freed_memory_unless_told_not_to():
    body = "from psegzoo.cli import main\nmain(['list', '--dataset', 'ade20k'], standalone_mode=False)\nsay(churn())\n"
    faults = {setting: _faults(body, PSEGZOO_KEEP_MEMORY=setting)[0] for setting in ("", "1", "0")}
    assert faults["0"] >= ROUNDS
    assert faults[""] * 4 <= faults["0"] and faults["1"] * 4 <= faults["0"], faults


def test_a_bad_setting_is_a_one_line_error():
    proc = run_script("list", code=1, extra_env={"PSEGZOO_KEEP_MEMORY": "maybe"})
    assert proc.stderr.strip().splitlines() == [
        "error: PSEGZOO_KEEP_MEMORY='maybe' is neither 1 nor 0; unset it, or set 0 to leave malloc as it is"]
    assert [keep_memory_from_env({"PSEGZOO_KEEP_MEMORY": v}) for v in ("", "1", "on", "0", "False")] == [
        True, True, True, False, False]


def test_only_the_command_line_changes_malloc():
    """The library never makes the setting on its own: only psegzoo/cli calls it, and only psegzoo/heap.py
    talks to the C library."""
    pkg = REPO / "psegzoo"
    callers = set()
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(getattr(node, "func", None), "attr", None) or getattr(getattr(node, "func", None), "id", None)
            if isinstance(node, ast.Call) and name in {"keep_freed_memory", "setup_process", "mallopt"}:
                callers.add(str(path.relative_to(pkg).parent if path.parent != pkg else Path(path.name)))
    assert callers == {"cli", "heap.py"}
