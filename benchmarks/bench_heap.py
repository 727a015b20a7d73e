"""What keeping freed memory (``psegzoo.heap``) is worth: page faults, kernel time and wall time per prediction.

Each case of ``bench_vs_mmseg.py`` (same synthetic weights, same image, psegzoo's default fast paths)
runs in child processes, one per setting, alternating: malloc as it is, then freed memory kept
(:func:`psegzoo.keep_freed_memory`, as psegzoo's command line does at start). Each child loads the
model, predicts once to warm up, then ``--repeat`` times; per prediction it reports the minor page
faults and the kernel (system) CPU seconds from ``getrusage`` and the wall time. The shortest wall
time of each setting is kept, with its faults and kernel time.

    python benchmarks/bench_heap.py                       # pspnet-slide, 3 processes per setting
    python benchmarks/bench_heap.py --cases upernet,pspnet-whole --processes 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_vs_mmseg import CASES, _settings  # noqa: E402


def _child(case: str, checkpoint: str, keep: bool, repeat: int, threads: int) -> None:
    import numpy as np
    import torch

    import psegzoo

    torch.set_num_threads(threads)
    if keep:
        assert psegzoo.keep_freed_memory(), "freed memory is not kept here (not glibc)"
    name, _, size = CASES[case]
    settings = _settings(name, size, None)
    options: dict = {"mode": settings["mode"], "scale": tuple(settings["scale"])}
    if settings["mode"] == "slide":
        options.update(crop_size=tuple(settings["crop"]), stride=tuple(settings["stride"]))
    seg = psegzoo.load(name, weights=checkpoint, device="cpu", offline=True)
    rgb = np.random.default_rng(0).integers(0, 256, (*settings["size"], 3), dtype=np.uint8)
    seg.predict(rgb, **options)
    for _ in range(repeat):
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        seg.predict(rgb, **options)
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        print("@@" + json.dumps({"wall": wall, "faults": after.ru_minflt - before.ru_minflt,
                                 "kernel": after.ru_stime - before.ru_stime, "user": after.ru_utime - before.ru_utime}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="pspnet-slide", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--processes", type=int, default=3, help="child processes per setting, alternating")
    parser.add_argument("--repeat", type=int, default=1, help="timed predictions per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, checkpoint, keep = args.child
        _child(case, checkpoint, keep == "keep", args.repeat, args.threads)
        return
    from tests.support.synth import load_specs, write_mmseg_checkpoint

    specs = load_specs()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSEGZOO_")}
    with tempfile.TemporaryDirectory(prefix="psegzoo-heap-") as tmp:
        env.update(PSEGZOO_HOME=tmp, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            spec_file = CASES[case][1]
            ckpt = write_mmseg_checkpoint(specs.mmseg[specs.mmseg_index[spec_file]], Path(tmp) / f"{case}.pth")
            runs: dict[str, list[dict]] = {"as is": [], "kept": []}
            for _ in range(args.processes):
                for setting in runs:
                    out = subprocess.run([sys.executable, __file__, "--child", case, str(ckpt),
                                          "keep" if setting == "kept" else "plain", "--repeat", str(args.repeat),
                                          "--threads", str(args.threads)],
                                         env=env, capture_output=True, text=True, check=True).stdout
                    got = [json.loads(line[2:]) for line in out.splitlines() if line.startswith("@@")]
                    runs[setting].extend(got)
                    print(f"  {case} {setting}: " + ", ".join(f"{r['wall']:.2f} s" for r in got), flush=True)
            best = {s: min(r, key=lambda x: x["wall"]) for s, r in runs.items()}
            print(f"{case}: " + "; ".join(
                f"{s}: {b['wall']:.2f} s, {b['faults']} page faults, {b['kernel']:.2f} s kernel, {b['user']:.2f} s user"
                for s, b in best.items()) + f"; ratio {best['as is']['wall'] / best['kept']['wall']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
