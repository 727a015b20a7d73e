"""Images per second of ``Segmenter.predict_many`` with one image per forward against batches, in one process.

The same folder of PNGs of one size is segmented in turns, alternately, ``--repeat`` times each:

* ``batch 1``             one image per forward, read on the model's thread (the CPU default; baseline)
* ``batch 1, 2 readers``  one image per forward, the next images read on 2 background threads
* ``batch N``             N images of one resized size per forward (``--batch-size N``)
* ``batch N, 2 readers``  the same, with images read and resized on 2 background threads

The model is a synthetic PSPNet R-18-D8 (tests/support/synth.py) in whole mode at ``--scale``; the
labels of every kind are checked equal to the baseline's. The best turn of each is reported with
its ratio to the baseline (another process loading the machine only makes turns slower).

    python benchmarks/bench_batch.py                           # CPU: 16 images of 256x512, batch 4
    python benchmarks/bench_batch.py --device cuda --images 64 --batch-size 16 --scale 2048x1024 --size 1024x2048
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psegzoo  # noqa: E402
from benchmarks.common import parse_size, random_pngs, synthetic_weights  # noqa: E402
from tests.support.served import MMSEG_BASE  # noqa: E402


def turn(seg: psegzoo.Segmenter, files: list[Path], batch: int, workers: int, scale: tuple[int, int]) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = list(seg.predict_many(files, batch_size=batch, workers=workers, scale=scale))
    if seg.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    bad = [r for r in out if isinstance(r, Exception)]
    if bad:
        raise SystemExit(f"prediction failed: {bad[0]}")
    return len(files) / seconds, [r.labels for r in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images in the folder (default 16)")
    parser.add_argument("--size", default="256x512", type=parse_size, help="image HxW (default 256x512)")
    parser.add_argument("--scale", default="512x256", type=parse_size, help="test scale LONGxSHORT (default 512x256)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward of the batched turns (default 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="turns of each kind (default 3)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        seg = psegzoo.load(MMSEG_BASE, weights=synthetic_weights(tmp), device=args.device)
        h, w = args.size
        files = random_pngs(tmp / "in", args.images, args.size)
        kinds = {"batch 1": (1, 0), "batch 1, 2 readers": (1, 2),
                 f"batch {args.batch_size}": (args.batch_size, 0), f"batch {args.batch_size}, 2 readers": (args.batch_size, 2)}
        turn(seg, files[:2], 1, 0, args.scale)  # warm-up: first-call costs are the same for every kind
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        baseline: list | None = None
        for _ in range(args.repeat):
            for kind, (batch, workers) in kinds.items():
                rate, labels = turn(seg, files, batch, workers, args.scale)
                rates[kind].append(rate)
                if baseline is None:
                    baseline = labels
                elif not all(np.array_equal(a, b) for a, b in zip(baseline, labels)):
                    raise SystemExit(f"{kind}: labels differ from one image per forward")
        best = {k: max(v) for k, v in rates.items()}
        print(f"{args.images} images of {h}x{w}, scale {args.scale[0]}x{args.scale[1]}, PSPNet R-18-D8 (synthetic), "
              f"{seg.device}, {torch.get_num_threads()} threads, best of {args.repeat}; labels equal in every turn")
        print(f"{'kind':<22} {'images/s':>9} {'ratio':>7}")
        for kind in kinds:
            print(f"{kind:<22} {best[kind]:>9.2f} {best[kind] / best['batch 1']:>6.2f}x")
        print(f"load average (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
