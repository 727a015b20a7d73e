"""Images per second of an exported model under onnxruntime (CPU) against psegzoo's eager PyTorch, in one process.

The model (PSPNet R-50-D8 by default) is loaded with ``psegzoo.load`` from a synthetic checkpoint in
mmseg's format (``tests/support/synth.py``), exported with ``psegzoo.export_onnx`` (dynamic sizes)
and opened with ``psegzoo.load_onnx``. Two things are timed, alternately, ``--repeat`` times each:

* forward: one normalized 1 x 3 x H x W batch (``--size``, default 512x1024) through ``seg.model(x)``
  against the onnxruntime session;
* predict: the whole test pipeline on an H x W image kept at its size (``scale=(W, H)``, whole mode)
  through ``Segmenter.predict`` against ``OnnxSegmenter.predict``.

The minimum is reported (another process loading the machine only makes times longer), with the
median, the load average, the ratio and how far the two agree (labels, logits). Both use the same
number of threads (``--threads``, default torch's).

    python benchmarks/bench_export.py
    python benchmarks/bench_export.py --repeat 5 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psegzoo  # noqa: E402
from benchmarks.common import parse_size  # noqa: E402
from psegzoo.export import export_onnx, load_onnx  # noqa: E402
from tests.support.served import mmseg_spec  # noqa: E402
from tests.support.synth import write_mmseg_checkpoint  # noqa: E402

DEFAULT_MODEL = "pspnet_r50-d8_512x1024_40k_cityscapes"



def report(times: dict[str, list[float]], what: str) -> None:
    print(f"{what}:")
    print(f"  {'engine':12s} {'min s':>8s} {'images/s':>9s} {'median s':>9s}  runs")
    for name, ts in times.items():
        print(f"  {name:12s} {min(ts):8.3f} {1 / min(ts):9.3f} {statistics.median(ts):9.3f}  {' '.join(f'{t:.3f}' for t in ts)}")
    print(f"  onnxruntime / eager images/s: {min(times['eager']) / min(times['onnxruntime']):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
    parser.add_argument("--size", default="512x1024", type=parse_size, help="input HxW (default 512x1024)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each engine (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both engines (default: torch's)")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    h, w = args.size

    with tempfile.TemporaryDirectory() as tmp:
        weights = write_mmseg_checkpoint(mmseg_spec(args.model), Path(tmp) / "weights.pth")
        seg = psegzoo.load(args.model, weights=weights, device="cpu")
        t0 = time.perf_counter()
        exported = export_onnx(seg, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        onnx_seg = load_onnx(exported.path, device="cpu", threads=threads)
        import onnxruntime

        print(f"{args.model}: {h}x{w}, synthetic weights, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
              f"{threads} threads each, {os.cpu_count()} CPUs")
        print(f"export: {export_s:.1f} s, {exported.describe()}")
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        engines = {"eager": (seg.model, seg), "onnxruntime": (onnx_seg.engine, onnx_seg)}
        with torch.inference_mode():
            for model, _ in engines.values():  # warm-up: first calls allocate
                model(x)
        forward: dict[str, list[float]] = {name: [] for name in engines}
        predict: dict[str, list[float]] = {name: [] for name in engines}
        logits: dict[str, torch.Tensor] = {}
        labels: dict[str, np.ndarray] = {}
        for _ in range(args.repeat):
            for name, (model, segmenter) in engines.items():
                t0 = time.perf_counter()
                with torch.inference_mode():
                    logits[name] = model(x)
                forward[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                labels[name] = segmenter.predict(image, scale=(w, h), mode="whole").labels
                predict[name].append(time.perf_counter() - t0)
        print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        report(forward, f"forward of 1 x 3 x {h} x {w}")
        report(predict, f"predict on a {h}x{w} image (whole, no resize)")
        a, b = logits["onnxruntime"], logits["eager"]
        err = ((a - b).abs().max() / b.abs().max()).item()
        same = float((labels["onnxruntime"] == labels["eager"]).mean())
        print(f"agreement: max |logits difference| / max |logits| {err:.2e}, labels equal {100 * same:.4f}%")


if __name__ == "__main__":
    main()
