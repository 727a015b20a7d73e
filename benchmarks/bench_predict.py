"""Seconds per image of psegzoo's prediction path against a naive port of mmseg, in one process.

The naive baseline is what a straightforward port does: BatchNorm kept as separate layers, contiguous
NCHW tensors, decode heads that concatenate full-size upsampled maps (``decompose=False``), one
sliding window at a time. The optimized path is ``psegzoo.predictor.infer`` on the model as
``psegzoo.load`` prepares it (BatchNorm folded, channels-last, decomposed heads). Both run the same
synthetic weights (``tests/support/synth.py``; the architecture's initial weights when the zoo has no
spec for the checkpoint) on the same random image, alternately, ``--repeat`` times each; the minimum
is reported (another process loading the machine only makes times longer), with the median, the load
average, the ratio, and how far the two results agree (labels, logits).

    python benchmarks/bench_predict.py                      # PSPNet R-50-D8, whole 1024x2048 image
    python benchmarks/bench_predict.py --repeat 3
    python benchmarks/bench_predict.py --model pspnet_r50-d8_769x769_40k_cityscapes --mode slide
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psegzoo.convert import convert_state_dict, load_into  # noqa: E402
from psegzoo.manifest import Entry, get_entry  # noqa: E402
from psegzoo.models import Segmentor, build_segmentor, state_shapes  # noqa: E402
from psegzoo.predictor import InferenceSettings, argmax_labels, infer, prepare_model  # noqa: E402
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


def naive(model: Segmentor) -> Segmentor:
    """BatchNorm unfused, NCHW, concatenating heads: the baseline."""
    if hasattr(model.head, "decompose"):
        model.head.decompose = False
    return prepare_model(model, "cpu", channels_last=False)


def optimized(model: Segmentor) -> Segmentor:
    """What ``psegzoo.load`` does after loading the weights."""
    return prepare_model(model.fuse_bn(), "cpu")


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
    parser.add_argument("--size", default="1024x2048", type=parse_size,
                        help="image HxW, before the test pipeline rescales it (default 1024x2048)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None, help="default: the entry's test mode")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each variant (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="time the optimized path only")
    args = parser.parse_args()

    entry = get_entry(args.model)
    settings = InferenceSettings.from_entry(entry, mode=args.mode)
    h, w = args.size
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    reference, source = synthetic_model(entry)
    fast = optimized(synthetic_model(entry)[0])
    slow = None if args.no_baseline else naive(reference)
    print(f"{entry.name}: {h}x{w} image, {settings.mode} mode (test scale {settings.scale[0]}x{settings.scale[1]}), "
          f"{source}, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    times: dict[str, list[float]] = {"baseline": [], "optimized": []}
    results: dict[str, torch.Tensor] = {}
    variants = [("optimized", fast, None)] + ([] if slow is None else [("baseline", slow, 1)])
    for _ in range(args.repeat):
        for name, model, batch in variants:
            t0 = time.perf_counter()
            result = infer(model, image, settings, batch_windows=batch)
            times[name].append(time.perf_counter() - t0)
            results[name] = result.scores
            del result

    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'variant':10s} {'min s/image':>12s} {'median':>8s}  runs")
    for name, ts in times.items():
        if ts:
            print(f"{name:10s} {min(ts):12.2f} {statistics.median(ts):8.2f}  {' '.join(f'{t:.2f}' for t in ts)}")
    if slow is not None:
        a, b = results["optimized"], results["baseline"]
        labels = float((argmax_labels(a) == argmax_labels(b)).mean())
        err = ((a - b).abs().max() / b.abs().max()).item()
        print(f"speed-up (min baseline / min optimized): {min(times['baseline']) / min(times['optimized']):.2f}x")
        print(f"labels equal: {100 * labels:.4f}%   max |logits difference| / max |logits|: {err:.2e}")


if __name__ == "__main__":
    main()
