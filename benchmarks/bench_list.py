"""Time `psegzoo list` and `psegzoo info` as a user runs them (fresh processes).

Reports the median wall time of each command against the bare interpreter start-up measured in
the same run (`python -c pass`), so the figure is comparable across machines. Target: `psegzoo
list` under 0.3 s. Two set-ups are timed:

* installed: bytecode cached (what `pip install` leaves; kept here in a temporary
  PYTHONPYCACHEPREFIX, warmed by one run);
* from source: PYTHONDONTWRITEBYTECODE=1, every psegzoo module compiled on each start.

The cache holds one checkpoint file (cached column filled for one row).

    python benchmarks/bench_list.py [--repeat 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_time(argv: list[str], repeat: int, env: dict[str, str]) -> float:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)  # warm the file cache (and bytecode)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environments(home: str) -> dict[str, dict[str, str]]:
    base = {**os.environ, "PSEGZOO_HOME": home, "COLUMNS": "100"}
    base.pop("PSEGZOO_INDEX", None)
    installed = {**base, "PYTHONPYCACHEPREFIX": tempfile.mkdtemp(prefix="psegzoo-bench-pyc-")}
    installed.pop("PYTHONDONTWRITEBYTECODE", None)
    return {"installed": installed, "from source": {**base, "PYTHONDONTWRITEBYTECODE": "1"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="psegzoo-bench-")
    ckpt = Path(home) / "checkpoints" / "pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    py = sys.executable
    commands = [
        ("psegzoo list", [py, "-m", "psegzoo", "list"]),
        ("psegzoo list --wide", [py, "-m", "psegzoo", "list", "--wide"]),
        ("psegzoo list --dataset ade20k --json", [py, "-m", "psegzoo", "list", "--dataset", "ade20k", "--json"]),
        ("psegzoo info pspnet_r101-d8_cityscapes", [py, "-m", "psegzoo", "info", "pspnet_r101-d8_cityscapes"]),
    ]
    print(f"{'set-up':12s} {'command':42s} {'median s':>9s} {'x baseline':>11s}")
    for setup, env in environments(home).items():
        baseline = median_time([py, "-c", "pass"], args.repeat, env)
        print(f"{setup:12s} {'python -c pass (baseline)':42s} {baseline:9.3f} {1.0:11.1f}")
        for label, argv in commands:
            t = median_time(argv, args.repeat, env)
            print(f"{setup:12s} {label:42s} {t:9.3f} {t / baseline:11.1f}")


if __name__ == "__main__":
    main()
