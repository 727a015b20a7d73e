"""How far psegzoo is from the dense-arithmetic bound on this CPU: work done / matmul rate.

For each case of ``bench_vs_mmseg.py`` the model runs as ``Segmenter.predict`` runs it (BatchNorm
folded, the given fast paths installed, the published test settings) once under
``torch.utils.flop_counter.FlopCounterMode``, which counts the floating-point operations of the
convolutions and matrix products actually executed: Winograd layers count their batched products,
decomposed heads their small convolutions, slide mode every window. The CPU's float32 rate is the
best of ``--repeat`` 4096^3 matrix products on ``--threads`` threads. The bound is FLOPs / rate;
a measured time (e.g. from ``bench_vs_mmseg.py``) divided by it tells how close the run is to it.
Weights are the architecture's initial ones (the work does not depend on their values).

    python benchmarks/bench_bound.py                                 # the fast paths all on
    python benchmarks/bench_bound.py --paths none --cases pspnet-whole
    python benchmarks/bench_bound.py --paths decompose,winograd,channels_last --seconds 6.1,1.0,15.2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {  # as bench_vs_mmseg.py: model, image (h, w)
    "pspnet-whole": ("pspnet_r50-d8_512x1024_40k_cityscapes", (1024, 2048)),
    "upernet": ("upernet_r50_512x512_160k_ade20k", (512, 683)),
    "pspnet-slide": ("pspnet_r50-d8_769x769_40k_cityscapes", (1024, 2048)),
}


def matmul_gflops(threads: int, repeat: int, n: int = 4096) -> float:
    """The best float32 rate of an n^3 matrix product on this CPU, GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _paths(text: str):  # -> FastPaths
    from psegzoo.models import FastPaths

    if text in ("all", "none"):
        return FastPaths.all() if text == "all" else FastPaths.none()
    return FastPaths(**{name.strip(): True for name in text.split(",") if name.strip()})


def count_flops(case: str, paths_text: str, scale: float) -> tuple[float, str]:
    """FLOPs of one prediction of ``case`` (the image scaled by ``scale``) and the fast paths it ran with."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from psegzoo import predictor
    from psegzoo.api import Segmenter
    from psegzoo.manifest import get_dataset, get_entry
    from psegzoo.models import build_segmentor

    name, (h, w) = CASES[case]
    entry = get_entry(name)
    model = build_segmentor(entry.architecture).eval()
    predictor.prepare_model(model.fuse_bn(), torch.device("cpu"))
    seg = Segmenter(model, entry, torch.device("cpu"), torch.float32, get_dataset(entry.dataset),
                    fast_paths=_paths(paths_text))
    h, w = round(h * scale), round(w * scale)
    options = {}
    if scale != 1:
        test = entry.test
        options = {"scale": (max(h, w), min(h, w))}
        if test.crop_size:
            options.update(crop_size=tuple(round(c * scale) for c in test.crop_size),
                           stride=tuple(round(s * scale) for s in (test.stride or test.crop_size)))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        seg.predict(image, keep_scores=False, **options)
    return float(counter.get_total_flops()), str(seg.fast_paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--paths", default="all", help="all, none, or comma-separated FastPaths fields")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="matrix products timed (the best is kept)")
    parser.add_argument("--scale", type=float, default=1.0, help="count at a smaller image (FLOPs scale with area)")
    parser.add_argument("--seconds", default="", help="measured times of the cases, comma-separated, to compare")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}: choose from {', '.join(CASES)}")
    measured = [float(s) for s in args.seconds.split(",") if s.strip()]
    rate = matmul_gflops(args.threads, args.repeat)
    print(f"float32 4096^3 matmul, {args.threads} threads: {rate:.0f} GFLOP/s")
    for i, case in enumerate(cases):
        flops, ran = count_flops(case, args.paths, args.scale)
        flops /= args.scale**2  # back to the full image (exact for whole mode, close for slide)
        bound = flops / (rate * 1e9)
        line = f"{case:14s} {flops / 1e12:6.3f} TFLOP ({ran}): bound {bound:6.2f} s"
        if i < len(measured):
            line += f", measured {measured[i]:.2f} s = {measured[i] / bound:.2f}x the bound"
        print(line, flush=True)


if __name__ == "__main__":
    main()
