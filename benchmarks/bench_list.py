"""Time `psegzoo list` and `psegzoo info` as a user runs them (fresh processes).

Reports the median wall time of each command against the bare interpreter start-up measured in
the same run (`python -c pass`), so the figure is comparable across machines. Target: `psegzoo
list` under 0.3 s.

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


def median_time(argv: list[str], repeat: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "PSEGZOO_HOME": tempfile.mkdtemp(prefix="psegzoo-bench-")}
    env.pop("PSEGZOO_INDEX", None)
    py = sys.executable
    baseline = median_time([py, "-c", "pass"], args.repeat, env)
    rows = [
        ("python -c pass (baseline)", [py, "-c", "pass"]),
        ("psegzoo list", [py, "-m", "psegzoo", "list"]),
        ("psegzoo list --dataset ade20k --json", [py, "-m", "psegzoo", "list", "--dataset", "ade20k", "--json"]),
        ("psegzoo info pspnet_r101-d8_cityscapes", [py, "-m", "psegzoo", "info", "pspnet_r101-d8_cityscapes"]),
    ]
    print(f"{'command':45s} {'median s':>9s} {'x baseline':>11s}")
    for label, argv in rows:
        t = baseline if label.endswith("(baseline)") else median_time(argv, args.repeat, env)
        print(f"{label:45s} {t:9.3f} {t / baseline:11.1f}")


if __name__ == "__main__":
    main()
