"""GPU throughput, precision and compile of psegzoo's predictor, in one run that fits a time budget.

On CUDA it first runs the CUDA-marked tests (``pytest -m cuda``), then times, through the predictor's
own path (uint8 image in, labels out: ``psegzoo.predictor.infer_batch``; in slide mode the batch
is the number of images whose windows share forwards):

* PSPNet R-50-D8, Cityscapes, whole 1024 x 2048;
* DeepLabV3 R-101-D8, Cityscapes 769 x 769 entry, slide (windows of 769) over 1024 x 2048;
* UPerNet R-50, ADE20K, whole 512 x 683;

in fp32, fp16 and bf16 autocast, channels-last on and off, the decomposed heads on and off, eager and
``torch.compile`` (default, ``reduce-overhead`` = CUDA graphs, ``max-autotune``), batch 1 and the best
batch. For each: images/s and ms/image end to end, the model's forward alone, achieved TFLOP/s (FLOPs
counted once with ``torch.utils.flop_counter.FlopCounterMode``) against the device's dense peak, and
the share of labels equal to the fp32 reference (must be >= 99.5%). Each eager variant is also profiled
once at its best batch (torch.profiler, CPU and CUDA activities): per image, the host and device
milliseconds of each named stage of the predictor (``psegzoo.predictor.stages``: prepare, upload,
forward, outputs, wait) and the calls that made the host wait (synchronisations, pageable copies,
``.item()``, memory queries).

Weights are the synthetic ones of ``tests/support/synth.py`` (deterministic, non-degenerate labels; no
download). A hard budget (``--budget``, seconds, default 460) bounds the whole run: variants are run in
order of importance and the rest are skipped with a note; compiled variants run in a child process
killed at the budget. Each variant's failure (out of memory, compile error) is recorded and the run
goes on. Results: ``OUT/bench_gpu.json`` and ``OUT/bench_gpu.md``.

    python benchmarks/bench_gpu.py                       # on a CUDA machine: about 7 minutes
    python benchmarks/bench_gpu.py --out /tmp/gpu --budget 300
    python benchmarks/bench_gpu.py --smoke               # anywhere (CPU too): tiny models, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psegzoo.convert import convert_state_dict, load_into  # noqa: E402
from psegzoo.manifest import Architecture, get_entry  # noqa: E402
from psegzoo.models import FastPaths, Segmentor, build_segmentor, state_shapes, use_fast_paths  # noqa: E402
from psegzoo.predictor import (  # noqa: E402
    MAX_BATCH_WINDOWS,
    InferenceSettings,
    infer_batch,
    prepare_model,
    slide_windows,
)
from tests.support.synth import load_specs, synth_state_dict, synth_tensor  # noqa: E402

GOAL = ("pspnet", "bf16", 110.0)  # PSPNet R-50-D8 at 1024x2048 in bf16: images/s on an H100/H200-class GPU
AGREEMENT = 0.995

# Dense peak TFLOP/s by device name: (tf32, bf16 = fp16). fp32 convolutions run as TF32 by default
# (torch.backends.cudnn.allow_tf32).
PEAKS = [
    ("H200", (494.0, 989.0)),
    ("H100 PCIe", (378.0, 756.0)),
    ("H100", (494.0, 989.0)),
    ("A100", (156.0, 312.0)),
    ("L40S", (183.0, 362.0)),
    ("A10", (62.5, 125.0)),
]


# --------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One model at one input: the zoo entry (or a tiny architecture for ``--smoke``) and the image size."""

    key: str
    name: str
    size: tuple[int, int]
    mode: str
    arch: Architecture | None = None  # smoke: a tiny architecture instead of the entry's

    def settings(self) -> InferenceSettings:
        entry = get_entry(self.name)
        if self.arch is None:
            return InferenceSettings.from_entry(entry)
        h, w = self.size
        crop = (min(h, w) // 2, min(h, w) // 2) if self.mode == "slide" else None
        return InferenceSettings.from_entry(entry, mode=self.mode, scale=(max(h, w), min(h, w)), crop_size=crop)


@dataclass(frozen=True)
class Variant:
    """How a case is run."""

    precision: str = "fp32"  # fp32, fp16, bf16
    channels_last: bool = True
    decompose: bool = True
    batch: int | str = 1  # an int, or "best": the best of BATCHES
    compile: str | None = None  # None, "default", "reduce-overhead", "max-autotune", "eager-backend" (smoke)
    files: bool = False  # `psegzoo predict` on a folder of PNG files instead of arrays in memory

    @property
    def label(self) -> str:
        parts = [self.precision, "NHWC" if self.channels_last else "NCHW"]
        if not self.decompose:
            parts.append("concat heads")
        parts.append(f"batch {self.batch}")
        parts.append(f"compiled ({self.compile})" if self.compile else "eager")
        if self.files:
            parts.append("PNG files in and out")
        return ", ".join(parts)

    @property
    def amp(self) -> torch.dtype | None:
        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]


@dataclass
class Result:
    case: str
    variant: str
    status: str = "ok"  # ok, failed, skipped
    note: str = ""
    batch: int | None = None
    images_per_s: float | None = None
    ms_per_image: float | None = None
    model_images_per_s: float | None = None
    tflops: float | None = None
    peak_tflops: float | None = None
    peak_share: float | None = None
    labels_equal: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def full_cases() -> list[Case]:
    return [
        Case("pspnet", "pspnet_r50-d8_512x1024_40k_cityscapes", (1024, 2048), "whole"),
        Case("deeplabv3", "deeplabv3_r101-d8_769x769_40k_cityscapes", (1024, 2048), "slide"),
        Case("upernet", "upernet_r50_512x512_160k_ade20k", (512, 683), "whole"),
    ]


def _tiny(name: str) -> Architecture:
    arch = get_entry(name).architecture
    backbone = dataclasses.replace(arch.backbone, depth=18, stem_channels=8, base_channels=8)
    uper = arch.decode_head.type == "UPerHead"
    head = dataclasses.replace(arch.decode_head, in_channels=(8, 16, 32, 64) if uper else 64, channels=8)
    return dataclasses.replace(arch, backbone=backbone, decode_head=head, auxiliary_head=None)


def smoke_cases() -> list[Case]:
    return [
        Case("pspnet", "pspnet_r50-d8_512x1024_40k_cityscapes", (64, 128), "whole",
             _tiny("pspnet_r50-d8_512x1024_40k_cityscapes")),
        Case("deeplabv3", "deeplabv3_r101-d8_769x769_40k_cityscapes", (96, 128), "slide",
             _tiny("deeplabv3_r101-d8_769x769_40k_cityscapes")),
        Case("upernet", "upernet_r50_512x512_160k_ade20k", (64, 86), "whole", _tiny("upernet_r50_512x512_160k_ade20k")),
    ]


def plan(smoke: bool, cuda: bool) -> list[tuple[str, Variant]]:
    """(case key, variant) in order of importance: what the budget runs first."""
    if smoke:
        low = "bf16"
        return [("pspnet", Variant()), ("pspnet", Variant(low)), ("pspnet", Variant(low, channels_last=False)),
                ("pspnet", Variant(low, batch="best")), ("pspnet", Variant(low, decompose=False)),
                ("deeplabv3", Variant()), ("deeplabv3", Variant(low)), ("upernet", Variant()),
                ("upernet", Variant(low, batch="best")), ("pspnet", Variant(low, compile="eager-backend")),
                ("deeplabv3", Variant(low, batch="best")), ("pspnet", Variant(low, batch="best", files=True))]
    p = [  # (a) profile and end to end against model-only; (b) compiled; (c) slide; (d) UPerNet, files; (e) autotune
        ("pspnet", Variant("fp32", channels_last=False, decompose=False)),  # the reference
        ("pspnet", Variant("bf16")),
        ("pspnet", Variant("bf16", batch="best")),
        ("pspnet", Variant("bf16", batch="best", compile="default")),
        ("pspnet", Variant("bf16", batch="best", compile="reduce-overhead")),  # CUDA graphs
        ("deeplabv3", Variant("fp32", channels_last=False, decompose=False)),
        ("deeplabv3", Variant("bf16")),
        ("deeplabv3", Variant("bf16", batch="best")),  # windows of several images per forward
        ("upernet", Variant("fp32", channels_last=False, decompose=False)),
        ("upernet", Variant("bf16")),
        ("upernet", Variant("bf16", batch="best")),
        ("upernet", Variant("fp32", batch="best")),
        ("pspnet", Variant("bf16", batch="best", files=True)),
        ("pspnet", Variant("bf16", batch="best", compile="max-autotune")),
        ("pspnet", Variant("bf16", channels_last=False, batch="best")),
        ("pspnet", Variant("fp16", batch="best")),
        ("pspnet", Variant("fp32")),
        ("pspnet", Variant("bf16", decompose=False)),
        ("deeplabv3", Variant("fp16", batch="best")),
    ]
    return p if cuda else [v for v in p if not v[1].compile][:10]


BATCHES = (2, 4, 8, 16)
COMPILE_RESERVE = {"default": 150.0, "reduce-overhead": 150.0, "max-autotune": 240.0, "eager-backend": 5.0}


# --------------------------------------------------------------------------------------------
# Models, images, timing
# --------------------------------------------------------------------------------------------


def build_model(case: Case, device: torch.device) -> Segmentor:
    """The case's model with synthetic weights (BatchNorm folded), in eval mode on ``device``."""
    if case.arch is not None:
        model = build_segmentor(case.arch)
        model.load_state_dict({k: synth_tensor(k, v.shape) for k, v in model.state_dict().items()})
    else:
        entry = get_entry(case.name)
        model = build_segmentor(entry.architecture)
        specs = load_specs()
        spec = specs.mmseg[specs.mmseg_index[entry.weights.file]]  # type: ignore[union-attr]
        load_into(model, convert_state_dict(synth_state_dict(spec), entry.architecture, state_shapes(model), "mmseg"))
    model.eval().fuse_bn()
    return prepare_model(model, device)  # type: ignore[return-value]


def images_for(case: Case, n: int) -> list[np.ndarray]:
    """``n`` structured RGB images (smooth colour fields, blocks, noise): labels that are not one class."""
    h, w = case.size
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (6, 12, 3)).astype(np.float32)
        field_ = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(h, w),
                                                 mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
        field_ += rng.normal(0, 10, field_.shape)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        field_[y0:y0 + h // 3, x0:x0 + w // 4] = rng.integers(0, 256, 3)
        out.append(np.clip(field_, 0, 255).astype(np.uint8))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure(model: Segmentor, variant: Variant) -> Segmentor:
    return use_fast_paths(model, FastPaths(decompose=variant.decompose, channels_last=variant.channels_last))


def run_pipeline(model: Any, case: Case, images: list[np.ndarray], variant: Variant, batch: int,
                 device: torch.device) -> list[np.ndarray]:
    settings = case.settings()
    if settings.mode == "whole":
        out = infer_batch(model, images, settings, device=device, amp_dtype=variant.amp, batch_size=batch,
                          keep_scores=False)
        return [r.labels for r in out]  # type: ignore[misc]
    out = infer_batch(model, images, settings, device=device, amp_dtype=variant.amp, batch_size=batch,
                      batch_windows=None if device.type == "cuda" else 2, keep_scores=False)
    return [r.labels for r in out]  # type: ignore[misc]


def timed(fn: Callable[[], Any], device: torch.device, min_seconds: float, max_runs: int) -> tuple[float, int]:
    """Seconds per call of ``fn`` (already warm) over at least ``min_seconds`` or ``max_runs`` calls."""
    sync(device)
    t0 = time.perf_counter()
    runs = 0
    while runs < max_runs and (runs < 2 or time.perf_counter() - t0 < min_seconds):
        fn()
        runs += 1
    sync(device)
    return (time.perf_counter() - t0) / runs, runs


def forward_input(case: Case, images: list[np.ndarray], batch: int, device: torch.device,
                  channels_last: bool) -> torch.Tensor:
    """One forward's normalized input: ``batch`` images (whole) or windows (slide), on the device."""
    settings = case.settings()
    x = torch.from_numpy(np.stack(images[:1] * batch)).to(device).permute(0, 3, 1, 2).float()
    if settings.mode == "slide" and settings.crop_size is not None:
        x = x[:, :, :settings.crop_size[0], :settings.crop_size[1]]
    mean = torch.tensor(settings.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(settings.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def forwards_per_image(case: Case) -> int:
    settings = case.settings()
    if settings.mode != "slide" or settings.crop_size is None or settings.stride is None:
        return 1
    from psegzoo.predictor import rescale_size

    h, w = case.size
    nw, nh = rescale_size(w, h, settings.scale)
    return len(slide_windows(nh, nw, settings.crop_size, settings.stride))


def count_flops(model: Segmentor, case: Case, device: torch.device) -> float:
    """FLOPs of one image: one forward (whole) or all of its windows (slide), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = forward_input(case, images_for(case, 1), 1, device, False)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return float(counter.get_total_flops()) * forwards_per_image(case)


def peak_for(device: torch.device, precision: str, args: argparse.Namespace) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    tf32, low = args.peak_tf32, args.peak_bf16
    for key, (p32, p16) in PEAKS:
        if key in name:
            tf32, low = tf32 or p32, low or p16
            break
    return tf32 if precision == "fp32" else low


# --------------------------------------------------------------------------------------------
# One variant (in this process, or in a child process for compiled ones)
# --------------------------------------------------------------------------------------------


WAITS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemGetInfo",
         "aten::item", "aten::_local_scalar_dense", "aten::nonzero")
"""Calls that make the host wait for the device (``cudaMemcpy``: a copy from or to pageable memory)."""


def stage_profile(fn: Callable[[], Any], device: torch.device, images: int) -> dict[str, Any]:
    """One steady-state call of ``fn`` under torch.profiler: per image, the host and device milliseconds of
    each named stage of the predictor (``psegzoo.predictor.stages``), and the calls that made the host wait."""
    from torch.profiler import ProfilerActivity, profile

    from psegzoo.predictor import STAGES

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        fn()
        sync(device)
    stages: dict[str, Any] = {}
    waits: dict[str, Any] = {}
    for ev in prof.key_averages():
        device_us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        row = {"calls": ev.count, "host_ms": round(ev.cpu_time_total / 1000 / images, 3),
               "device_ms": round(device_us / 1000 / images, 3)}
        if ev.key.startswith("psegzoo.") and ev.key[len("psegzoo."):] in STAGES:
            stages[ev.key[len("psegzoo."):]] = row
        elif ev.key in WAITS and device.type == "cuda":  # on the CPU nothing waits for a device
            waits[ev.key] = row
    return {"stages": {name: stages[name] for name in STAGES if name in stages}, "waits": waits}


def measure_variant(case: Case, variant: Variant, model: Segmentor, device: torch.device, args: argparse.Namespace,
                    reference: list[np.ndarray] | None, flops: float, deadline: float) -> Result:
    res = Result(case.key, variant.label)
    t_start = time.perf_counter()
    configure(model, variant)
    n_images = 2 if args.smoke else 16
    images = images_for(case, n_images)
    run_model: Any = model
    if variant.compile == "eager-backend":
        run_model = torch.compile(model, backend="eager")
    elif variant.compile:
        run_model = torch.compile(model, mode=variant.compile)

    def pipeline(batch: int) -> Callable[[], Any]:
        return lambda: run_pipeline(run_model, case, images[: max(batch, 2 if args.smoke else 8)], variant, batch,
                                    device)

    batches = [variant.batch] if isinstance(variant.batch, int) else [1, *BATCHES]
    best: tuple[float, int] | None = None
    tried: dict[int, float] = {}
    for b in batches:
        if time.perf_counter() > deadline:
            res.note += " batch search stopped at the budget;"
            break
        try:
            fn = pipeline(b)
            with torch.inference_mode():
                t_first = time.perf_counter()
                fn()  # warm-up: cuDNN's algorithm search, compilation
                sync(device)
                if variant.compile and "first_call_s" not in res.extra:  # compiling the first shape, included
                    res.extra["first_call_s"] = round(time.perf_counter() - t_first, 2)
                fn()
                per_call, _ = timed(fn, device, args.seconds, 50)
            n = len(images[: max(b, 2 if args.smoke else 8)])
            per_image = per_call / n
            tried[b] = 1 / per_image
            if best is None or per_image < best[0]:
                best = (per_image, b)
            elif len(tried) > 2 and per_image > best[0] * 1.02:
                break  # past the best batch
        except Exception as exc:  # out of memory at this batch: the previous one was the best
            res.note += f" batch {b}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]};"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
    if best is None:
        res.status = "failed"
        res.seconds = time.perf_counter() - t_start
        return res
    per_image, b = best
    res.batch = b
    res.images_per_s = 1 / per_image
    res.ms_per_image = 1000 * per_image
    if len(tried) > 1:
        res.extra["images_per_s_by_batch"] = {str(k): round(v, 2) for k, v in tried.items()}
    # the model alone: one forward (b images, or the windows of b images) on input already on the device
    try:
        per_forward_items = b if case.settings().mode == "whole" else min(MAX_BATCH_WINDOWS, b * forwards_per_image(case))
        x = forward_input(case, images, per_forward_items, device, variant.channels_last)
        ctx = torch.autocast(device.type, dtype=variant.amp) if variant.amp else contextlib.nullcontext()

        def forward() -> Any:
            with ctx:
                return run_model(x)

        with torch.inference_mode():
            forward()
            per_forward, _ = timed(forward, device, args.seconds / 2, 50)
        per_img_model = per_forward / x.shape[0] * forwards_per_image(case)
        res.model_images_per_s = 1 / per_img_model
    except Exception as exc:
        res.note += f" model-only timing: {type(exc).__name__};"
    if variant.compile is None:  # where an image's time goes, at the best batch
        try:
            n = len(images[: max(b, 2 if args.smoke else 8)])
            res.extra["profile_per_image"] = stage_profile(pipeline(b), device, n)
        except Exception as exc:
            res.note += f" stage profile: {type(exc).__name__};"
    res.tflops = flops * res.images_per_s / 1e12
    res.peak_tflops = peak_for(device, variant.precision, args)
    if res.peak_tflops:
        res.peak_share = res.tflops / res.peak_tflops
    with torch.inference_mode():  # the shapes already run (a compiled model does not compile again)
        first = images[:2] * max(1, b // 2)
        labels = run_pipeline(run_model, case, first, variant, b, device)[:2]
    if reference is not None:
        res.labels_equal = float(np.mean([(a == r).mean() for a, r in zip(labels, reference)]))
        if res.labels_equal < AGREEMENT:
            res.note += f" labels below {AGREEMENT:.1%} of fp32;"
    res.extra["classes_in_labels"] = len(np.unique(labels[0]))
    res.seconds = time.perf_counter() - t_start
    return res


FILES = (32, 128)  # images in the two timed runs from files (smoke: a sixteenth)


def png_folder(case: Case, root: Path, n: int, distinct: list[Path]) -> list[Path]:
    """``n`` PNG files in ``root`` (hard links of ``distinct`` ones: each is decoded as a file of its own)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"im{i:04d}.png"
        os.link(distinct[i % len(distinct)], path)
        paths.append(path)
    return paths


def measure_files(case: Case, variant: Variant, model: Segmentor, device: torch.device, args: argparse.Namespace,
                  batch: int, memory_rate: float | None, scratch: Path) -> Result:
    """What ``psegzoo predict FOLDER --bf16`` does after loading: ``run_predict`` over PNG files, decoded,
    and label maps encoded and written, on its threads (default count), the model on this one.

    Timed over two folders of ``FILES`` images after a warm-up run; the rate is the difference of images
    over the difference of seconds, so what each run costs once (threads, the first batch's memory
    measurement) cancels out. ``files_share`` is that rate over the in-memory rate at the same batch.
    """
    from PIL import Image

    from psegzoo.api import Segmenter
    from psegzoo.distributed import Job, PredictJob, PredictTask, run_predict
    from psegzoo.manifest import get_dataset
    from psegzoo.predictor import default_workers

    res = Result(case.key, variant.label)
    t_start = time.perf_counter()
    configure(model, variant)
    entry = get_entry(case.name)
    segmenter = Segmenter(model, entry, device, torch.float32, get_dataset(entry.dataset),
                          fast_paths=FastPaths(decompose=variant.decompose, channels_last=variant.channels_last))
    distinct = []
    for i, img in enumerate(images_for(case, 4)):
        distinct.append(scratch / f"distinct{i}.png")
        Image.fromarray(img).save(distinct[-1])
    sizes = [max(2, n // 16) for n in FILES] if args.smoke else list(FILES)
    options = {"amp_dtype": variant.amp, **({} if case.arch is None else {"mode": case.mode, "scale": case.settings().scale,
                                                                          "crop_size": case.settings().crop_size})}
    seconds = []
    with Job.start() as job:
        for k, n in enumerate([2, *sizes]):  # the first: a warm-up
            paths = png_folder(case, scratch / f"files{k}", n, distinct)
            tasks = [PredictTask(path, path.stem, False) for path in paths]
            settings = PredictJob(out_dir=str(scratch / f"out{k}"), batch_size=batch, options=options)
            sync(device)
            t0 = time.perf_counter()
            totals = run_predict(job, tasks, settings, lambda: segmenter)
            sync(device)
            seconds.append(time.perf_counter() - t0)
            if totals.failed:
                raise RuntimeError(f"{totals.failed} of {n} files failed")
            shutil.rmtree(scratch / f"files{k}")
            shutil.rmtree(scratch / f"out{k}")
    per_image = (seconds[2] - seconds[1]) / (sizes[1] - sizes[0])
    res.batch = batch
    res.images_per_s = 1 / per_image
    res.ms_per_image = 1000 * per_image
    res.extra["run_seconds"] = {str(n): round(t, 3) for n, t in zip(sizes, seconds[1:])}
    res.extra["workers"] = default_workers(device)
    if memory_rate:
        res.extra["files_share"] = round(res.images_per_s / memory_rate, 3)
        res.note += f" {res.extra['files_share']:.2f} of the in-memory rate;"
    res.seconds = time.perf_counter() - t_start
    return res


def reference_labels(case: Case, model: Segmentor, device: torch.device) -> list[np.ndarray]:
    """fp32, NCHW, plain heads: the labels every variant is compared with."""
    configure(model, Variant("fp32", channels_last=False, decompose=False))
    with torch.inference_mode():
        return run_pipeline(model, case, images_for(case, 2), Variant(), 1, device)


def worker(spec: str) -> None:
    """A compiled variant in a child process (killed by the parent at the budget): prints its result."""
    job = json.loads(spec)
    args = argparse.Namespace(**job["args"])
    cases = {c.key: c for c in (smoke_cases() if args.smoke else full_cases())}
    case = cases[job["case"]]
    variant = Variant(**job["variant"])
    device = torch.device(job["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)
    model = build_model(case, device)
    reference = [np.load(p) for p in job["reference"]]
    res = measure_variant(case, variant, model, device, args, reference, job["flops"], time.perf_counter() + 1e9)
    print("RESULT " + json.dumps(dataclasses.asdict(res)))


def run_child(case: Case, variant: Variant, device: torch.device, args: argparse.Namespace, reference_paths: list[str],
              flops: float, timeout: float) -> Result:
    job = {"case": case.key, "variant": dataclasses.asdict(variant), "device": str(device), "flops": flops,
           "reference": reference_paths, "args": vars(args)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env())
    except subprocess.TimeoutExpired:
        return Result(case.key, variant.label, status="skipped", seconds=time.perf_counter() - t0,
                      note=f"did not finish within the {timeout:.0f} s left of the budget (compilation)")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return Result(**json.loads(line[len("RESULT "):]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return Result(case.key, variant.label, status="failed", seconds=time.perf_counter() - t0,
                  note=f"exit {proc.returncode}: {tail}")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """This environment with the checkout first on the path: psegzoo need not be installed."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def run_tests(device: torch.device, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "cuda", "-rfEs", "--tb=short",
           "tests/test_predictor_cuda.py"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env())
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        summary = lines[-1] if lines else proc.stderr.strip()[-300:]
        failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        return {"returncode": proc.returncode, "summary": summary, "failed": failures,
                "seconds": round(time.perf_counter() - t0, 1), "output": proc.stdout[-20000:]}
    except subprocess.TimeoutExpired as exc:  # what ran before the stop still tells (-v: a line per test)
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return {"returncode": None, "summary": f"stopped after {timeout:.0f} s", "failed": [],
                "seconds": round(time.perf_counter() - t0, 1), "output": partial[-20000:]}


def probe(device: torch.device, cases: dict[str, Case]) -> dict[str, Any]:
    """Where the time goes: adaptive pooling per memory format, and the top kernels of one PSPNet forward."""
    from psegzoo.models.pooling import adaptive_avg_pool2d

    out: dict[str, Any] = {"pooling_ms": {}}
    x = torch.randn(1, 2048, 128, 256, device=device, dtype=torch.bfloat16)
    for fmt, t in (("NCHW", x), ("NHWC", x.contiguous(memory_format=torch.channels_last))):
        for s in (1, 2, 3, 6):
            for name, fn in (("torch", torch.nn.functional.adaptive_avg_pool2d), ("psegzoo", adaptive_avg_pool2d)):
                fn(t, s)
                seconds, _ = timed(lambda fn=fn, t=t, s=s: fn(t, s), device, 0.05, 50)
                out["pooling_ms"][f"{fmt} {s}x{s} {name}"] = round(1000 * seconds, 3)
    case = cases["pspnet"]
    model = configure(build_model(case, device), Variant("bf16"))
    xin = forward_input(case, images_for(case, 1), 1, device, channels_last=True)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(xin)
        sync(device)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(xin)
            sync(device)
    out["top_kernels"] = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=70)
    del model, x
    torch.cuda.empty_cache()
    return out


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host_cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                   memory_gb=round(props.total_memory / 1e9, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tf32_convolutions=torch.backends.cudnn.allow_tf32)
    else:
        env.update(cpu=platform.processor() or platform.machine(),
                   capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())
    return env


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# psegzoo GPU benchmark: {env.get('gpu', env.get('cpu'))}, {env['date']}", "",
             f"torch {env['torch']}" + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if "gpu" in env else ""),
             "", f"CUDA tests: {report['tests'].get('summary')}", ""]
    goal = report.get("goal")
    if goal:
        lines += [f"Goal: {goal['text']}: **{goal['verdict']}**", ""]
    lines += ["| model | variant | batch | images/s | ms/image | model only, images/s | end to end / model only "
              "| TFLOP/s | % of peak | labels = fp32 | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in report["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['variant']} | | | | | | | | | {r['status']}: {r['note'].strip()} |")
            continue
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['batch']} | {f(r['images_per_s'], '.2f')} | {f(r['ms_per_image'], '.2f')} "
            f"| {f(r['model_images_per_s'], '.2f')} "
            f"| {f(r['images_per_s'] / r['model_images_per_s'] if r['images_per_s'] and r['model_images_per_s'] else None, '.2f')} "
            f"| {f(r['tflops'], '.3g')} "
            f"| {f(None if r['peak_share'] is None else 100 * r['peak_share'], '.1f')} "
            f"| {f(None if r['labels_equal'] is None else 100 * r['labels_equal'], '.2f')}% | {r['note'].strip()} |")
    lines += ["", "FLOPs per image of the plain model (torch.utils.flop_counter; TFLOP/s and % of peak count these "
              "also for the decomposed heads, which do less work): " + ", ".join(
        f"{k} {v / 1e12:.3g} TFLOP" for k, v in report["flops_per_image"].items()), ""]
    return "\n".join(lines + stage_table(report["results"]))


def stage_table(results: list[dict[str, Any]]) -> list[str]:
    """Per image, host / device ms of each stage of the eager variants, and the calls that waited."""
    from psegzoo.predictor import STAGES

    profiled = [r for r in results if r["status"] == "ok" and "profile_per_image" in r["extra"]]
    if not profiled:
        return []
    lines = ["## Where an image's time goes (ms per image, host / device; torch.profiler, one steady-state call)", "",
             "| model | variant | batch | " + " | ".join(STAGES) + " | waits (calls) |",
             "|---|---|---|" + "---|" * len(STAGES) + "---|"]
    for r in profiled:
        prof = r["extra"]["profile_per_image"]
        cells = [f"{prof['stages'][s]['host_ms']:.2f} / {prof['stages'][s]['device_ms']:.2f}" if s in prof["stages"]
                 else "-" for s in STAGES]
        waits = ", ".join(f"{k} {v['calls']}" for k, v in prof["waits"].items()) or "none"
        lines.append(f"| {r['case']} | {r['variant']} | {r['batch']} | " + " | ".join(cells) + f" | {waits} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_gpu_out", help="folder for bench_gpu.json and bench_gpu.md")
    parser.add_argument("--budget", type=float, default=460.0, help="seconds for the whole run (default 460)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes, a few variants; runs on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda when present, else (with --smoke) cpu")
    parser.add_argument("--seconds", type=float, default=None, help="timing per variant (default 3, smoke 0.2)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests first")
    parser.add_argument("--skip-probe", action="store_true", help="do not profile pooling and one forward first")
    parser.add_argument("--peak-tf32", type=float, default=None, help="device peak TF32 TFLOP/s (default: by name)")
    parser.add_argument("--peak-bf16", type=float, default=None, help="device peak bf16/fp16 TFLOP/s (default: by name)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    t_begin = time.perf_counter()
    deadline = t_begin + args.budget
    args.seconds = args.seconds if args.seconds is not None else (0.2 if args.smoke else 3.0)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        parser.error("no CUDA device: run with --smoke (tiny models on the CPU) or on a GPU machine")
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: threads only add waiting, badly so on a shared machine
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(device), "budget_s": args.budget, "smoke": args.smoke,
                              "results": [], "flops_per_image": {}}
    print(f"bench_gpu: {report['environment']}", flush=True)

    def save() -> None:
        report["seconds"] = round(time.perf_counter() - t_begin, 1)
        (out_dir / "bench_gpu.json").write_text(json.dumps(report, indent=1))
        (out_dir / "bench_gpu.md").write_text(markdown(report))

    if not args.skip_tests:
        report["tests"] = run_tests(device, timeout=min(150.0, args.budget / 3))
        print(f"CUDA tests: {report['tests']['summary']}", flush=True)
        if report["tests"].get("returncode"):
            print(report["tests"].get("output", ""), flush=True)
    else:
        report["tests"] = {"summary": "not run (--skip-tests)"}
    save()

    cases = {c.key: c for c in (smoke_cases() if args.smoke else full_cases())}
    if device.type == "cuda" and not args.skip_probe:
        try:
            report["probe"] = probe(device, cases)
            print(json.dumps(report["probe"]["pooling_ms"], indent=1), flush=True)
            print(report["probe"]["top_kernels"], flush=True)
        except Exception as exc:  # a diagnosis, never a reason to stop the measurements
            report["probe"] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        save()
    models: dict[str, Segmentor] = {}
    references: dict[str, list[np.ndarray]] = {}
    ref_paths: dict[str, list[str]] = {}
    best_batch: dict[tuple[str, str], int] = {}
    best_rate: dict[tuple[str, str], float | None] = {}  # in memory, at the best batch: what files are compared with
    scratch = Path(tempfile.mkdtemp(prefix="bench_gpu_"))  # reference labels for the child processes
    for key, variant in plan(args.smoke, device.type == "cuda"):
        case = cases[key]
        left = deadline - time.perf_counter()
        reserve = COMPILE_RESERVE.get(variant.compile or "", 0.0) + (30.0 if not args.smoke else 1.0)
        if variant.compile and variant.compile != "eager-backend" and left < reserve:
            report["results"].append(dataclasses.asdict(Result(key, variant.label, status="skipped",
                                                               note=f"{left:.0f} s left of the budget, "
                                                                    f"compiling needs about {reserve:.0f} s")))
            continue
        if left < (2.0 if args.smoke else 25.0):
            report["results"].append(dataclasses.asdict(Result(key, variant.label, status="skipped",
                                                               note="the time budget ran out")))
            continue
        if (variant.compile or variant.files) and variant.batch == "best":  # compile one shape: the best eager batch
            variant = dataclasses.replace(variant, batch=best_batch.get((key, variant.precision), 1 if args.smoke else 8))
        print(f"{key}: {variant.label} ...", flush=True)
        try:
            if key not in models:
                models[key] = build_model(case, device)
                references[key] = reference_labels(case, models[key], device)
                report["flops_per_image"][key] = count_flops(models[key], case, device)
                ref_paths[key] = []
                for i, labels in enumerate(references[key]):
                    path = scratch / f"reference_{key}_{i}.npy"
                    np.save(path, labels)
                    ref_paths[key].append(str(path))
            flops = report["flops_per_image"][key]
            if variant.files:
                res = measure_files(case, variant, models[key], device, args, int(variant.batch),
                                    best_rate.get((key, variant.precision)), scratch)
            elif variant.compile and variant.compile != "eager-backend":
                res = run_child(case, variant, device, args, ref_paths[key], flops,
                                timeout=max(10.0, deadline - time.perf_counter() - 20.0))
            else:
                res = measure_variant(case, variant, models[key], device, args, references[key], flops,
                                      deadline - 20.0)
        except Exception as exc:
            res = Result(key, variant.label, status="failed",
                         note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            traceback.print_exc()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report["results"].append(dataclasses.asdict(res))
        if res.status == "ok" and variant.batch == "best" and res.batch and not variant.compile:
            best_batch[(key, variant.precision)] = res.batch
            best_rate[(key, variant.precision)] = res.images_per_s
        print(f"  {res.status}: {res.images_per_s and round(res.images_per_s, 2)} images/s, batch {res.batch}, "
              f"labels {res.labels_equal and round(100 * res.labels_equal, 3)}% {res.note}", flush=True)
        save()
    shutil.rmtree(scratch, ignore_errors=True)
    name, precision, target = GOAL
    best = max((r["images_per_s"] or 0 for r in report["results"] if r["case"] == name and r["status"] == "ok"
                and r["variant"].startswith(precision)), default=0)
    if not args.smoke:
        report["goal"] = {"text": f"PSPNet R-50-D8 1024x2048 {precision}: >= {target:.0f} images/s "
                                  f"(best here {best:.1f})", "verdict": "met" if best >= target else "not met"}
    save()
    print(f"done in {time.perf_counter() - t_begin:.1f} s: {out_dir / 'bench_gpu.md'}", flush=True)
    print(markdown(report))


if __name__ == "__main__":
    main()
