"""Images per second of ``psegzoo predict`` in one process and in a torchrun job of two, on this machine.

Three runs of the same command over the same folder, alternately, ``--repeat`` times each:

* ``1 x 1 thread``  ``OMP_NUM_THREADS=1 python -m psegzoo predict ...`` (the baseline: one process, one core)
* ``1 x default``   ``python -m psegzoo predict ...`` (torch's default: one thread per core)
* ``torchrun x2``   ``torchrun --nproc-per-node 2 -m psegzoo predict ...`` (each process its share of the cores)

Throughput is measured from the outputs themselves: (label maps - 1) / (last one's mtime - first
one's mtime), so start-up and model loading (the same in every run) are left out; the wall time
of the whole command is shown too. The best run of each is reported (another process loading
the machine only makes runs slower), with the ratios and the load average. The model is a
synthetic PSPNet R-18-D8 (tests/support/synth.py), converted once and given with ``--weights``.

    python benchmarks/bench_scale.py                    # 24 images of 256x512, 2 repeats
    python benchmarks/bench_scale.py --images 48 --size 512x1024 --scale 1024x512
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import parse_size, random_pngs, synthetic_weights  # noqa: E402
from tests.support.served import MMSEG_BASE  # noqa: E402

KINDS = ("1 x 1 thread", "1 x default", "torchrun x2")


def run(kind: str, args: list[str], out: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(images per second between the first and last output, wall seconds, outputs) of one run."""
    shutil.rmtree(out, ignore_errors=True)
    python = [sys.executable, "-m"]
    launcher = python + ["torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"] if kind == "torchrun x2" else python
    env = dict(env, OMP_NUM_THREADS="1") if kind == "1 x 1 thread" else env
    t0 = time.perf_counter()
    proc = subprocess.run(launcher + ["psegzoo", "predict", *args, "-o", str(out), "-q"], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr}")
    stamps = sorted(p.stat().st_mtime_ns for p in out.glob("*.png"))
    rate = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9) if len(stamps) > 1 else float("nan")
    return rate, wall, len(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images in the folder (default 24)")
    parser.add_argument("--size", default="256x512", type=parse_size, help="image HxW (default 256x512)")
    parser.add_argument("--scale", default="512x256", help="--scale LONGxSHORT given to predict (default 512x256)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each kind (default 2)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        weights = synthetic_weights(tmp)
        h, w = args.size
        random_pngs(tmp / "in", args.images, args.size)
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PSEGZOO_HOME"] = str(tmp / "home")
        command = ["-m", MMSEG_BASE, "--weights", str(weights), "--scale", args.scale, "--device", "cpu", str(tmp / "in")]
        results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in KINDS}
        for _ in range(args.repeat):
            for kind in KINDS:
                results[kind].append(run(kind, command, tmp / "out", env))
        best = {k: max(r[0] for r in v) for k, v in results.items()}
        print(f"{args.images} images of {h}x{w}, --scale {args.scale}, PSPNet R-18-D8 (synthetic weights), CPU, "
              f"{os.cpu_count()} cores, best of {args.repeat}")
        print(f"{'run':<14} {'images/s':>9} {'wall s':>8}  outputs")
        for kind in KINDS:
            wall = min(r[1] for r in results[kind])
            print(f"{kind:<14} {best[kind]:>9.2f} {wall:>8.1f}  {results[kind][0][2]}")
        print(f"ratio torchrun x2 / 1 x 1 thread: {best['torchrun x2'] / best['1 x 1 thread']:.2f}")
        print(f"ratio torchrun x2 / 1 x default:  {best['torchrun x2'] / best['1 x default']:.2f}")
        print(f"load average (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
