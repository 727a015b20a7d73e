"""Seconds per image of each exact speed-up against a naive port of mmseg, in one process, on this CPU.

The baseline is what a straightforward port does: BatchNorm kept as separate layers, contiguous NCHW
tensors, decode heads that concatenate full-size upsampled maps, one sliding window at a time. Then,
each alone on top of BatchNorm folding: channels-last, the decomposed heads, Winograd's 3x3; then what
psegzoo chooses for this CPU (``psegzoo.models.fast.tuning``, its measurement printed too). All run the
same synthetic weights (``tests/support/synth.py``; initial weights when the zoo has no spec for the
checkpoint) on the same random image, round-robin, ``--repeat`` times each; each variant's shortest
run is reported (another process only makes runs longer) with its median, the ratio to the baseline,
and how far its labels and logits agree with the baseline's.

    python benchmarks/bench_predict.py                          # PSPNet R-50-D8, whole, forward at 512x1024
    python benchmarks/bench_predict.py --size 1024x2048 --repeat 3
    python benchmarks/bench_predict.py --model deeplabv3_r50-d8_769x769_40k_cityscapes --mode slide --size 769x1537
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import parse_size  # noqa: E402
from psegzoo.convert import convert_state_dict, load_into  # noqa: E402
from psegzoo.manifest import Entry, get_entry  # noqa: E402
from psegzoo.models import FastPaths, Segmentor, build_segmentor, state_shapes, use_fast_paths  # noqa: E402
from psegzoo.models.fast import tuning  # noqa: E402
from psegzoo.predictor import InferenceSettings, argmax_labels, infer  # noqa: E402
from tests.support.synth import load_specs, synth_state_dict  # noqa: E402

DEFAULT_MODEL = "pspnet_r50-d8_512x1024_40k_cityscapes"


def synthetic_model(entry: Entry) -> tuple[Segmentor, str]:
    """The entry's model with the synthetic weights of its checkpoint (initial weights if none)."""
    model = build_segmentor(entry.architecture)
    specs = load_specs()
    spec_id = specs.mmseg_index.get(entry.weights.file) if entry.weights is not None else None
    if spec_id is None:
        return model.eval(), "initial weights"
    sd = synth_state_dict(specs.mmseg[spec_id])
    load_into(model, convert_state_dict(sd, entry.architecture, state_shapes(model), "mmseg"))
    return model.eval(), "synthetic weights"



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
    parser.add_argument("--size", default="512x1024", type=parse_size,
                        help="image HxW; the test scale is set to it, so forwards run at this size (default 512x1024)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None, help="default: the entry's test mode")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each variant (default 2)")
    args = parser.parse_args()

    entry = get_entry(args.model)
    h, w = args.size
    settings = InferenceSettings.from_entry(entry, mode=args.mode, scale=(max(h, w), min(h, w)))
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    reference, source = synthetic_model(entry)
    t0 = time.perf_counter()
    measured = tuning.measure()
    chosen = tuning.decide(measured)
    measure_s = time.perf_counter() - t0
    fused = copy.deepcopy(reference).fuse_bn()
    variants: dict[str, tuple[Segmentor, int | None]] = {
        "baseline": (use_fast_paths(reference, False), 1),
        "BN folded": (use_fast_paths(copy.deepcopy(fused), False), None),
        "+ channels_last": (use_fast_paths(copy.deepcopy(fused), FastPaths(channels_last=True)), None),
        "+ decompose": (use_fast_paths(copy.deepcopy(fused), FastPaths(decompose=True)), None),
        "+ winograd (cl)": (use_fast_paths(copy.deepcopy(fused), FastPaths(winograd=True, channels_last=True)), None),
        "all": (use_fast_paths(copy.deepcopy(fused), True), None),
        f"chosen: {chosen}": (use_fast_paths(copy.deepcopy(fused), chosen), None),
    }
    print(f"{entry.name}: {h}x{w} image, {settings.mode} mode, forwards at {h}x{w}"
          f"{'' if settings.mode == 'whole' else f' over {settings.crop_size} windows'}, {source}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, {tuning.machine_key()}")
    print(f"fast-path measurement ({measure_s:.1f} s): " + ", ".join(
        f"{k} {v['plain'] / v['fast']:.2f}x" for k, v in measured.items()) + f" -> chosen: {chosen}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, torch.Tensor] = {}
    for _ in range(args.repeat):
        for name, (model, batch) in variants.items():
            t0 = time.perf_counter()
            result = infer(model, image, settings, batch_windows=batch)
            times[name].append(time.perf_counter() - t0)
            results[name] = result.scores
            del result

    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    base = min(times["baseline"])
    ref = results["baseline"]
    ref_labels = argmax_labels(ref)
    print(f"{'variant':34s} {'min s':>7s} {'median':>7s} {'vs baseline':>12s} {'labels =':>9s} {'max|diff|':>10s}")
    for name, ts in times.items():
        out = results[name]
        labels = float((argmax_labels(out) == ref_labels).mean())
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        print(f"{name:34s} {min(ts):7.2f} {statistics.median(ts):7.2f} {base / min(ts):11.2f}x "
              f"{100 * labels:8.3f}% {err:10.1e}")


if __name__ == "__main__":
    main()
