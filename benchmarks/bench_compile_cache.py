"""What ``psegzoo predict --compile`` costs a user, with inductor's cache empty and then filled.

Three runs of the real command, each in a fresh process on two PNGs of one size: eager, compiled
with an empty inductor cache (a folder of its own, ``TORCHINDUCTOR_CACHE_DIR`` in the child's
environment), then compiled again with the cache the previous run filled. Each image's forward time
comes from the command's ``--json`` lines: the first image of a size compiles, the second runs the
compiled model. The model is a synthetic PSPNet R-18-D8 (the zoo's architecture).

    python benchmarks/bench_compile_cache.py                       # 256x512 images, CPU
    python benchmarks/bench_compile_cache.py --size 512x1024 --out benchmarks/results/compile-DATE-CPU.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_vs_mmseg import cpu_name  # noqa: E402
from benchmarks.common import parse_size, random_pngs, synthetic_weights  # noqa: E402
from tests.support.served import MMSEG_BASE  # noqa: E402

RUNS = (("eager", False), ("compiled, cache empty", True), ("compiled, cache filled", True))


def predict(args: argparse.Namespace, weights: Path, pngs: list[Path], out: Path, compile_model: bool,
            cache: Path) -> dict[str, object]:
    """One ``psegzoo predict`` process: its wall time and each image's forward seconds."""
    h, w = parse_size(args.size)
    command = [sys.executable, "-m", "psegzoo", "predict", "-m", MMSEG_BASE, "--weights", str(weights),
               *map(str, pngs), "-o", str(out), "--device", args.device, "--scale", f"{max(h, w)}x{min(h, w)}",
               "--json", *(["--compile"] if compile_model else [])]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"psegzoo predict failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {"wall_s": round(wall, 2), "forward_s": [round(line["timings"]["forward"], 3) for line in lines]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x512", help="image HxW (also the test scale: no resize)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = synthetic_weights(tmp)
        pngs = random_pngs(tmp / "in", 2, parse_size(args.size))
        for i, (name, compile_model) in enumerate(RUNS):
            rows[name] = predict(args, weights, pngs, tmp / f"out{i}", compile_model, tmp / "inductor")
            print(f"{name:24s} wall {rows[name]['wall_s']:7.2f} s   forward per image {rows[name]['forward_s']} s",
                  flush=True)
    result = {"model": MMSEG_BASE, "size": args.size, "device": args.device, "torch": torch.__version__,
              "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "load": round(os.getloadavg()[0], 2), "runs": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
