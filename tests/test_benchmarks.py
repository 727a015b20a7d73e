"""Every benchmark script still imports what it uses and parses its arguments (``--help``), in one process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "benchmarks").glob("bench_*.py"))

CHECK = """
import contextlib, io, runpy, sys
broken = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None) or "usage:" not in out.getvalue():
            broken.append(f"{path}: exit {exc.code}")
    except Exception as exc:
        broken.append(f"{path}: {type(exc).__name__}: {exc}")
    else:
        broken.append(f"{path}: --help did not exit")
print("\\n".join(broken))
"""


def test_every_benchmark_starts():
    assert len(SCRIPTS) >= 10
    proc = subprocess.run([sys.executable, "-c", CHECK, *map(str, SCRIPTS)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", proc.stdout
