"""Compiled plain against compiled fast paths, on this CPU: which fast paths ``Segmenter.compile`` keeps.

A PSPNet with a ResNet-18 backbone (the zoo's R-18-D8 architecture, initial weights) is compiled with
``torch.compile`` once per fast-path set and timed on one input, alternately, keeping each variant's
shortest run (another process only makes runs longer). Eager plain is the baseline of the ratios.
Graph breaks of each variant are counted with ``torch._dynamo.explain``.

    python benchmarks/bench_compile.py                    # 256x512 input, 5 timed runs
    python benchmarks/bench_compile.py --size 512x1024 --repeat 3
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psegzoo.manifest import get_entry  # noqa: E402
from psegzoo.models import FastPaths, build_segmentor, use_fast_paths  # noqa: E402

MODEL = "pspnet_r18-d8_512x1024_80k_cityscapes"
VARIANTS = {
    "plain": FastPaths.none(),
    "channels_last": FastPaths(channels_last=True),
    "decompose+channels_last": FastPaths(decompose=True, channels_last=True),
    "decompose": FastPaths(decompose=True),
    "all (with winograd)": FastPaths.all(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    base = build_segmentor(get_entry(args.model).architecture).eval().fuse_bn()
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    print(f"{args.model} at {h}x{w}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, load {os.getloadavg()[0]:.2f}")
    runs: dict[str, object] = {}
    with torch.inference_mode():
        eager = use_fast_paths(copy.deepcopy(base), False)
        runs["eager plain"] = lambda: eager(x)
        for name, paths in VARIANTS.items():
            model = use_fast_paths(copy.deepcopy(base), paths)
            xin = x.contiguous(memory_format=torch.channels_last) if paths.channels_last else x
            torch._dynamo.reset()
            explained = torch._dynamo.explain(model)(xin)
            t0 = time.perf_counter()
            compiled = torch.compile(model)
            compiled(xin)
            print(f"{name:26s} graphs {explained.graph_count}, breaks {explained.graph_break_count}, "
                  f"compiled in {time.perf_counter() - t0:.1f} s")
            runs[name] = (lambda m, i: lambda: m(i))(compiled, xin)
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeat):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()  # type: ignore[operator]
                best[name] = min(best[name], time.perf_counter() - t0)
    print(f"load after {os.getloadavg()[0]:.2f}")
    print(f"{'variant':26s} {'best s':>8s} {'vs eager plain':>15s}")
    for name, t in best.items():
        print(f"{name:26s} {t:8.3f} {best['eager plain'] / t:14.2f}x")


if __name__ == "__main__":
    main()
