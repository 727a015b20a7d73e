"""psegzoo against mmsegmentation 1.2.2 on this CPU: same synthetic weights, same image, alternating runs.

mmsegmentation runs in its own virtual environment (created on first use, reused after: torch==2.13.0,
mmengine, mmcv-lite==2.1.0, mmsegmentation==1.2.2 and their pure-Python dependencies). mmcv-lite has
no compiled ops; the three methods measured here (PSPNet, UPerNet, DeepLabV3) use none, so the
names mmseg imports from ``mmcv.ops`` at import time are stubbed (calling one raises). Each side
runs in a child process of its own (mmseg: ``mmseg.apis.inference_model``; psegzoo: ``psegzoo.load``
and ``Segmenter.predict`` with their defaults, under an empty cache root, so no recorded choice of
fast paths is read, and with freed memory kept for reuse as psegzoo's command line does at start,
``psegzoo.heap``; ``--keep-memory both`` does it on both sides, ``none`` on neither), with the same
thread count. The parent sends one image at a time to each in
turn: after one warm-up run per side, ``--repeat`` rounds alternate the two, and each side's shortest
run is kept (another process on the machine only ever makes a run longer). Both get the same
synthetic checkpoint (tests/support/synth.py's rule) and the same random image; labels are compared
pixel by pixel, and where they differ psegzoo's margin (best minus second-best score, over the score
range) says whether those pixels are ties that float32 rounding decides.

Cases: ``pspnet-whole`` (PSPNet R-50-D8, whole 1024x2048), ``upernet`` (UPerNet R-50, ADE20K,
512x683), ``pspnet-slide`` (PSPNet R-50-D8 769x769, slide over 1024x2048). Every test setting is
the published one, the image already at its test scale. ``--quick F`` shrinks images, test scales,
windows and strides by F (e.g. 0.25) for a short check that everything runs.

    python benchmarks/bench_vs_mmseg.py                     # all three cases, 3 rounds
    python benchmarks/bench_vs_mmseg.py --quick 0.25 --repeat 1 --cases upernet
    python benchmarks/bench_vs_mmseg.py --setup-only        # only create the mmseg venv

Rows go to ``benchmarks/results/cpu-<date>-<cpu>.json`` (appended to, one list per file).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = Path(os.environ.get("PSEGZOO_BENCH_VENV") or Path.home() / ".cache" / "psegzoo-bench" / "mmseg-venv")
REQUIREMENTS = ("torch==2.13.0", "mmengine", "mmcv-lite==2.1.0", "mmsegmentation==1.2.2", "ftfy", "regex")
MARK = "@@"  # prefix of the children's answers on stdout (everything else they print is passed through)

# case -> (psegzoo / mmseg model name, published state-dict file (the spec), image (h, w))
CASES: dict[str, tuple[str, str, tuple[int, int]]] = {
    "pspnet-whole": ("pspnet_r50-d8_512x1024_40k_cityscapes",
                     "pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth", (1024, 2048)),
    "upernet": ("upernet_r50_512x512_160k_ade20k", "upernet_r50_512x512_160k_ade20k_20200615_184328-8534de8d.pth",
                (512, 683)),
    "pspnet-slide": ("pspnet_r50-d8_769x769_40k_cityscapes",
                     "pspnet_r50-d8_769x769_40k_cityscapes_20200606_112725-86638686.pth", (1024, 2048)),
}


# ---------------------------------------------------------------------------------------------
# The reference environment
# ---------------------------------------------------------------------------------------------


def ensure_venv(venv: Path) -> Path:
    """The venv's python, after creating the venv and installing the pinned packages if missing."""
    python = venv / "bin" / "python"
    marker = venv / ".psegzoo-bench-ready"
    if marker.is_file() and marker.read_text().strip() == " ".join(REQUIREMENTS):
        return python
    if not python.is_file():
        print(f"creating {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing {' '.join(REQUIREMENTS)} into {venv} (once) ...", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    marker.write_text(" ".join(REQUIREMENTS))
    return python


# Names mmseg 1.2.2 imports from mmcv.ops when its models package is imported (PSANet's PSAMask,
# point_rend, CCNet, DMNet ... heads). None is called by PSPNet, UPerNet or DeepLabV3.
STUB_OPS = """
def _missing(name):
    def fail(*args, **kwargs):
        raise RuntimeError(f"mmcv.ops.{name} is a stub (mmcv-lite has no compiled ops)")
    return type(name, (), {"__init__": fail, "__call__": fail})

def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)
"""


def install_ops_stub(python: Path) -> None:
    """Make ``import mmcv.ops`` work in mmcv-lite (whose ops need the compiled ``mmcv._ext`` it lacks):
    its ``__init__.py`` is kept as ``__init__.py.orig`` and replaced by the stub, once."""
    if subprocess.run([str(python), "-c", "import mmcv.ops"], capture_output=True).returncode == 0:
        return  # a working mmcv.ops (the stub, or a full mmcv): leave it
    found = subprocess.run([str(python), "-c", "import mmcv, os; print(os.path.dirname(mmcv.__file__))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    ops = Path(found) / "ops"
    ops.mkdir(exist_ok=True)
    init = ops / "__init__.py"
    if init.is_file() and not (ops / "__init__.py.orig").exists():
        init.rename(ops / "__init__.py.orig")
    init.write_text(STUB_OPS)


# ---------------------------------------------------------------------------------------------
# The children
# ---------------------------------------------------------------------------------------------


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _serve(load: Any, run: Any) -> None:
    """Answer the parent's requests (one JSON object a line on stdin) until it says quit."""
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            return
        try:
            _answer(load(req) if req["op"] == "load" else run(req))
        except Exception as exc:
            _answer({"error": f"{type(exc).__name__}: {exc}"})


def _keep_freed_memory() -> None:
    """What psegzoo's command line does at start (psegzoo.heap, standard library only, so the mmseg venv runs it too)."""
    sys.path.insert(0, str(ROOT))
    from psegzoo.heap import keep_freed_memory

    if not keep_freed_memory():
        print("freed memory is not kept here (not glibc)", flush=True)


def _mmseg_child() -> None:
    import mmseg
    import numpy as np
    import torch
    from mmseg.apis import inference_model, init_model

    state: dict[str, Any] = {}
    configs = Path(mmseg.__file__).parent / ".mim" / "configs"

    def load(req: dict[str, Any]) -> dict[str, Any]:
        from mmengine import Config
        from mmengine.runner import load_checkpoint
        torch.set_num_threads(req["threads"])
        if req["keep_memory"]:
            _keep_freed_memory()
        found = sorted(configs.glob(f"*/{req['config']}.py"))
        cfg = Config.fromfile(str(found[0]))
        for t in cfg.test_pipeline:
            if t["type"] == "Resize":
                t["scale"] = tuple(req["scale"])  # (long, short) = mmseg's (w, h) with keep_ratio
        cfg.model.test_cfg = {"mode": req["mode"]} if req["mode"] == "whole" else {
            "mode": "slide", "crop_size": tuple(req["crop"]), "stride": tuple(req["stride"])}
        model = init_model(cfg, None, device="cpu")
        load_checkpoint(model, req["checkpoint"], map_location="cpu", strict=True)  # every key, as published
        state["model"] = model.eval()
        return {"ok": True, "torch": torch.__version__, "mmseg": mmseg.__version__}

    def run(req: dict[str, Any]) -> dict[str, Any]:
        bgr = np.ascontiguousarray(np.load(req["image"])[..., ::-1])  # mmseg takes images as cv2 reads them
        t0 = time.perf_counter()
        result = inference_model(state["model"], bgr)
        seconds = time.perf_counter() - t0
        np.save(req["labels"], result.pred_sem_seg.data[0].numpy().astype(np.int32))
        return {"seconds": seconds}

    _serve(load, run)


def _psegzoo_child() -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    import psegzoo
    import psegzoo.models

    state: dict[str, Any] = {}

    def load(req: dict[str, Any]) -> dict[str, Any]:
        torch.set_num_threads(req["threads"])
        if req["keep_memory"]:
            _keep_freed_memory()
        state["seg"] = psegzoo.load(req["name"], weights=req["checkpoint"], device="cpu", offline=True)
        if req["paths"] != "defaults":  # a chosen set instead of psegzoo's own choice
            names = [] if req["paths"] == "none" else req["paths"].split(",")
            paths = psegzoo.models.FastPaths.all() if req["paths"] == "all" else psegzoo.models.FastPaths(
                **{n.strip(): True for n in names if n.strip()})
            state["seg"].use_fast_paths(paths)
        state["options"] = {"mode": req["mode"], "scale": tuple(req["scale"])}
        if req["mode"] == "slide":
            state["options"].update(crop_size=tuple(req["crop"]), stride=tuple(req["stride"]))
        return {"ok": True, "torch": torch.__version__, "psegzoo": getattr(psegzoo, "__version__", "?")}

    def run(req: dict[str, Any]) -> dict[str, Any]:
        rgb = np.load(req["image"])
        t0 = time.perf_counter()
        result = state["seg"].predict(rgb, **state["options"])
        seconds = time.perf_counter() - t0
        np.save(req["labels"], np.asarray(result.labels, dtype=np.int32))
        # how close each pixel's decision is: (best - second best score) / score range (0: a tie)
        scores = torch.from_numpy(result.scores)
        top2 = scores.topk(2, dim=0).values
        np.save(req["margins"], ((top2[0] - top2[1]) / float(scores.amax() - scores.amin())).numpy())
        return {"seconds": seconds, "fast_paths": str(state["seg"].fast_paths)}

    _serve(load, run)


class Child:
    """One side's process: requests go in on stdin, answers come back on stdout after ``MARK``."""

    def __init__(self, name: str, python: Path, env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen([str(python), __file__, "--child", name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def ask(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(MARK):
                answer: dict[str, Any] = json.loads(line[len(MARK):])
                if "error" in answer:
                    raise SystemExit(f"{self.name}: {answer['error']}")
                return answer
            print(f"  [{self.name}] {line.rstrip()}", flush=True)
        raise SystemExit(f"{self.name} exited with {self.proc.wait()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------


def _child_env(threads: int, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PSEGZOO_", "PYTHON"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PSEGZOO_HOME=str(home),
               PYTHONPATH=str(ROOT))
    return env


def _settings(name: str, size: tuple[int, int], quick: float | None) -> dict[str, Any]:
    """The published test settings of ``name`` (scaled by ``quick``), as both children take them."""
    sys.path.insert(0, str(ROOT))
    from psegzoo.manifest import get_entry

    entry = get_entry(name)
    test = entry.test
    scale = list(test.scale)
    crop, stride = (list(test.crop_size or ()), list(test.stride or ()))
    h, w = size
    if quick:
        h, w = round(h * quick), round(w * quick)
        scale = [max(h, w), min(h, w)]  # the image at its test scale: no resize on either side
        crop, stride = [round(c * quick) for c in crop], [round(s * quick) for s in stride]
    return {"config": entry.config, "mode": test.mode, "scale": scale, "crop": crop, "stride": stride,
            "size": [h, w]}


def cpu_name() -> str:
    """The CPU's model name, which results files (and their names) say the figures were measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def run_case(case: str, children: dict[str, Child], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tests.support.synth import load_specs, write_mmseg_checkpoint

    name, spec_file, size = CASES[case]
    settings = _settings(name, size, args.quick)
    specs = load_specs()
    checkpoint = write_mmseg_checkpoint(specs.mmseg[specs.mmseg_index[spec_file]], work / f"{case}.pth")
    image = work / f"{case}.npy"
    np.save(image, np.random.default_rng(0).integers(0, 256, (*settings["size"], 3), dtype=np.uint8))
    info = {}
    for side, child in children.items():
        keep = args.keep_memory == "both" or (args.keep_memory == "psegzoo" and side == "psegzoo")
        info[side] = child.ask(op="load", name=name, checkpoint=str(checkpoint), threads=args.threads,
                               paths=args.paths, keep_memory=keep, **settings)
    best = {side: float("inf") for side in children}
    labels: dict[str, Any] = {}
    fast_paths = ""
    for round_ in range(args.repeat + 1):  # round 0 is the warm-up
        for side, child in children.items():
            out = work / f"{case}.{side}.npy"
            answer = child.ask(op="run", image=str(image), labels=str(out), margins=str(work / f"{case}.margins.npy"))
            fast_paths = answer.get("fast_paths", fast_paths)
            if round_:
                best[side] = min(best[side], answer["seconds"])
            labels[side] = np.load(out)
            print(f"  {case} {side:8s} {'warm-up' if not round_ else f'round {round_}'}: {answer['seconds']:.2f} s",
                  flush=True)
    same_shape = labels["mmseg"].shape == labels["psegzoo"].shape
    equal = float((labels["mmseg"] == labels["psegzoo"]).mean()) if same_shape else 0.0
    # Pixels whose labels differ, and how close psegzoo's two best scores are there: float32 sums
    # added in another order (Winograd, other blocking) differ by about 1e-6 of the score range, so
    # labels may differ only where the decision is that close (TIE_MARGIN in tests/support/precision.py).
    margins = np.load(work / f"{case}.margins.npy")
    differ = labels["mmseg"] != labels["psegzoo"] if same_shape else np.ones(margins.shape, bool)
    ties = {"labels_differ": int(differ.sum()),
            "differ_max_margin": float(margins[differ].max()) if differ.any() else None,
            "labels_equal_beyond_ties": float((~differ[margins > 1e-4]).mean())}
    return {"case": case, "model": name, "image": settings["size"], "mode": settings["mode"],
            "test_scale": settings["scale"], "crop": settings["crop"], "stride": settings["stride"],
            "mmseg_s": best["mmseg"], "psegzoo_s": best["psegzoo"], "ratio": best["mmseg"] / best["psegzoo"],
            "labels_equal": equal, **ties, "fast_paths": fast_paths, "paths_asked": args.paths, "threads": args.threads,
            "rounds": args.repeat, "keep_memory": args.keep_memory, "quick": args.quick, "versions": info}


def write_rows(rows: list[dict[str, Any]], folder: Path) -> Path:
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", cpu_name()).strip("-").lower() or "cpu"
    path = folder / f"cpu-{time.strftime('%Y%m%d')}-{cpu}.json"
    folder.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(old + rows, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", type=float, default=None, metavar="F",
                        help="shrink images, test scales, windows and strides by F (e.g. 0.25)")
    parser.add_argument("--paths", default="defaults",
                        help="psegzoo's fast paths: defaults (its own choice), all, none or comma-separated "
                             "FastPaths fields, e.g. decompose,channels_last,winograd,winograd_f4")
    parser.add_argument("--keep-memory", choices=("psegzoo", "both", "none"), default="psegzoo",
                        help="which side keeps freed memory for reuse (psegzoo.heap): psegzoo (default, as its command "
                             "line runs), both, or none (malloc as it is on both sides)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="mmseg's venv (default: $PSEGZOO_BENCH_VENV or ~/.cache/psegzoo-bench/mmseg-venv)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the JSON rows")
    parser.add_argument("--setup-only", action="store_true", help="create the venv and stop")
    parser.add_argument("--child", choices=("mmseg", "psegzoo"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (_mmseg_child if args.child == "mmseg" else _psegzoo_child)()
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}: choose from {', '.join(CASES)}")
    python = ensure_venv(args.venv.expanduser())
    install_ops_stub(python)
    if args.setup_only:
        print(f"ready: {python}")
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="psegzoo-vs-mmseg-") as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        env = _child_env(args.threads, work / "home")
        children = {"mmseg": Child("mmseg", python, env), "psegzoo": Child("psegzoo", Path(sys.executable), env)}
        try:
            for case in cases:
                rows.append(run_case(case, children, work, args))
        finally:
            for child in children.values():
                child.close()
    print(f"\n{cpu_name()}, {args.threads} threads; shortest of {args.repeat} alternating rounds"
          f" (load average now {os.getloadavg()[0]:.1f})")
    print(f"{'case':14s} {'image':>10s} {'mmseg s':>9s} {'psegzoo s':>10s} {'ratio':>7s} {'labels equal':>13s}"
          "  pixels that differ (their largest margin)")
    for r in rows:
        differ = f"{r['labels_differ']}" + (f" ({r['differ_max_margin']:.1e} of the score range)"
                                           if r["labels_differ"] else "")
        print(f"{r['case']:14s} {'x'.join(map(str, r['image'])):>10s} {r['mmseg_s']:9.2f} {r['psegzoo_s']:10.2f} "
              f"{r['ratio']:6.2f}x {100 * r['labels_equal']:12.4f}%  {differ}")
    print(f"psegzoo fast paths: {rows[-1]['fast_paths'] if rows else '-'}")
    for r in rows:
        r.update(cpu=cpu_name(), when=time.strftime("%Y-%m-%dT%H:%M:%S"), load_average=os.getloadavg()[0])
    print(f"rows written to {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
