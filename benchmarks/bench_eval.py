"""Evaluation throughput against prediction alone, on the same images, in one process.

Does the prefetch queue hide image and label decoding behind the model? Three ways of going through
the same folder (Cityscapes-sized PNG images and label PNGs written by this script) with the same
model, alternately, ``--repeat`` times each (the best run counts: another process loading the
machine only makes times longer):

* ``predict``: ``Segmenter.predict(path)`` per image, decoding on the model's thread (what
  ``psegzoo predict`` does, without writing files): the baseline;
* ``eval, no prefetch``: ``psegzoo.evaluate(..., workers=0)``: images and labels decoded on the
  model's thread, then counted;
* ``eval``: ``psegzoo.evaluate(..., workers=N)`` (N: ``--workers``, default up to 4, the default
  beside a GPU): decoding on background threads (bounded queue), counting on another.

It also times decoding alone (image + label), the work the queue can hide, and how long the model's
thread waits for its next input with and without background threads (the overlap itself, which a
busy machine blurs less than whole-run times). The model is a synthetic-weight R-18 PSPNet by
default (a tiny model makes the decoding share large, the case the queue is for); ``--scale`` sets
its test scale, ``--threads`` torch's intra-op threads.

    python benchmarks/bench_eval.py                               # 8 images 1024x2048, scale 512x256
    python benchmarks/bench_eval.py --images 16 --scale 1024x512 --repeat 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psegzoo  # noqa: E402
from psegzoo.evaluation.labels import read_label  # noqa: E402
from psegzoo.images import load_image  # noqa: E402
from psegzoo.predictor import DEFAULT_WORKERS  # noqa: E402
from psegzoo.prefetch import prefetch  # noqa: E402
from tests.support.synth import load_specs, write_mmseg_checkpoint  # noqa: E402

DEFAULT_MODEL = "pspnet_r18-d8_512x1024_80k_cityscapes"


def parse_pair(text: str) -> tuple[int, int]:
    a, _, b = text.lower().partition("x")
    return int(a), int(b)


def write_folder(root: Path, n: int, h: int, w: int) -> None:
    """A generic folder: n street-like RGB PNGs and trainId label PNGs (19 classes and 255)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.stack([(xx * 255 // w + 40 * i) % 256, yy * 255 // h, (xx + yy) % 256], axis=-1).astype(np.int16)
        img += rng.integers(-12, 13, img.shape, dtype=np.int16)
        label = ((yy // 64 + xx // 128 + i) % 20).astype(np.uint8)
        label[label == 19] = 255
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(label).save(root / "labels" / f"{i:03d}.png")


def best(times: list[float]) -> float:
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
    parser.add_argument("--images", type=int, default=8, help="images in the folder (default 8)")
    parser.add_argument("--size", default="1024x2048", type=parse_pair, help="image HxW (default 1024x2048)")
    parser.add_argument("--scale", default="512x256", type=parse_pair, help="test scale LONGxSHORT (default 512x256)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each way (default 2)")
    parser.add_argument("--workers", type=int, default=None, help="prefetch threads (default: up to 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    entry = psegzoo.get_entry(args.model)
    workers = args.workers if args.workers is not None else min(DEFAULT_WORKERS, os.cpu_count() or 1)
    # The default on a CPU model is no prefetch thread (see psegzoo.evaluation.runner.default_workers);
    # this benchmark measures what the threads do, as beside a GPU, so it asks for them explicitly.
    with tempfile.TemporaryDirectory(prefix="psegzoo-bench-eval-") as tmp_name:
        tmp = Path(tmp_name)
        specs = load_specs()
        spec_id = specs.mmseg_index.get(entry.weights.file) if entry.weights is not None else None
        if spec_id is None:
            raise SystemExit(f"no synthetic spec for {entry.name}; pick an mmseg entry of the zoo")
        ckpt = write_mmseg_checkpoint(specs.mmseg[spec_id], tmp / "model.pth")
        seg = psegzoo.load(entry.name, weights=ckpt, device="cpu")
        write_folder(tmp / "data", args.images, *args.size)
        paths = sorted((tmp / "data" / "images").iterdir())
        labels = sorted((tmp / "data" / "labels").iterdir())
        common = dict(images=tmp / "data" / "images", labels=tmp / "data" / "labels", scale=args.scale)

        def run_predict() -> float:
            t0 = time.perf_counter()
            for p in paths:
                _ = seg.predict(p, scale=args.scale).labels
            return time.perf_counter() - t0

        def run_eval(workers: int | None) -> float:
            t0 = time.perf_counter()
            psegzoo.evaluate(seg, workers=workers, **common)
            return time.perf_counter() - t0

        def run_decode() -> float:
            t0 = time.perf_counter()
            for p, q in zip(paths, labels):
                load_image(p)
                read_label(q)
            return time.perf_counter() - t0

        def model_wait(workers: int) -> float:
            """Seconds the model's thread waits for the next decoded image and label, over the folder."""
            waited = 0.0
            items = prefetch(list(zip(paths, labels)), lambda pq: (load_image(pq[0]), read_label(pq[1])),
                             workers=workers, depth=2 * max(1, workers))
            t = time.perf_counter()
            for _, (rgb, _label) in items:
                waited += time.perf_counter() - t
                seg.predict(rgb, scale=args.scale)
                t = time.perf_counter()
            return waited

        run_eval(workers)  # warm-up: first forward, allocator, page cache
        times: dict[str, list[float]] = {"predict": [], "eval, no prefetch": [], "eval": [], "decode only": []}
        waits: dict[int, list[float]] = {0: [], workers: []}
        for _ in range(args.repeat):
            times["predict"].append(run_predict())
            times["eval, no prefetch"].append(run_eval(0))
            times["eval"].append(run_eval(workers))
            times["decode only"].append(run_decode())
            for w in waits:
                waits[w].append(model_wait(w))

    n = len(paths)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{entry.name}, {n} images {args.size[0]}x{args.size[1]}, scale {args.scale[0]}x{args.scale[1]}, "
          f"cpu threads {torch.get_num_threads()}, load average {load:.2f}, best of {args.repeat}")
    base = n / best(times["predict"])
    for name, ts in times.items():
        rate = n / best(ts)
        extra = f"  {rate / base:.2f}x predict" if name.startswith("eval") else ""
        print(f"  {name:<18} {best(ts) / n * 1000:8.1f} ms/image  {rate:7.2f} images/s{extra}")
    for w, ts in waits.items():
        print(f"  model thread waits for its input {min(ts) / n * 1000:7.1f} ms/image with {w} prefetch thread(s)")


if __name__ == "__main__":
    main()
