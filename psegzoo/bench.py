"""``psegzoo.benchmark()``: time a model against a naive baseline in the same process."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from . import hub, predictor
from .api import Segmenter, load
from .api.loading import tuning_record
from .errors import PredictionError
from .manifest import Entry, get_dataset, get_entry
from .models import build_segmentor
from .predictor.cuda import PeakMeter


class _PeakRSS:
    """Samples this process's resident memory in a thread: the peak while a block runs (CPU)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def __enter__(self) -> _PeakRSS:
        self._stop = threading.Event()
        self.peak = self._rss()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _timed_predict(segmenter: Segmenter, image: np.ndarray, settings: predictor.InferenceSettings,
                   batch_windows: int | None, repeat: int) -> tuple[float, int | None, bool, np.ndarray]:
    dev = segmenter.device
    best = float("inf")
    labels = np.empty(0)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    gpu = PeakMeter(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with _PeakRSS() as rss, gpu:
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = predictor.infer(segmenter.model, image, settings, device=dev, batch_windows=batch_windows,
                                     keep_scores=False)
            assert result.labels is not None
            labels = result.labels
            best = min(best, time.perf_counter() - t0)
            del result
    # On CUDA the process's peak while the runs went (not reset: the counter is the program's); when an
    # earlier run had gone higher, this is an upper bound (``peak_exact`` False).
    if isinstance(gpu, PeakMeter):
        return best, gpu.after, gpu.exact, labels
    return best, rss.peak or None, True, labels


def _settings_at(entry: Entry, mode: str, size: tuple[int, int]) -> predictor.InferenceSettings:
    """The entry's test pipeline in ``mode`` with the test scale set to the image's own size, so the
    forwards run at ``size`` (whole mode) or over windows of ``size`` (slide mode)."""
    h, w = size
    return predictor.InferenceSettings.from_entry(entry, mode=mode, scale=(max(h, w), min(h, w)))


def benchmark(name: str, *, size: tuple[int, int] = (1024, 2048), device: str | None = None,
              modes: Sequence[str] = ("whole", "slide"), repeat: int = 1, weights: str | os.PathLike | None = None,
              baseline: bool = True, log: Any = None) -> dict[str, Any]:
    """Time loading and prediction of one model on a synthetic ``size`` (h, w) image, at that size.

    The image is not resized to the entry's test scale: whole mode runs one ``size`` forward, slide
    mode the entry's windows over it. Each mode runs the optimized path (BatchNorm folded into
    convolutions, the fast paths chosen for the device (on the CPU, as 'psegzoo tune' recorded, else the rule), batched
    windows) and, with ``baseline``, a naive one in the same process (BatchNorm kept, contiguous
    memory, heads that concatenate, one window at a time); labels of the two are compared. Weights:
    ``weights``, else the cached checkpoint, else the architecture's initial weights (timings do not
    depend on values).
    """
    say = log or (lambda _msg: None)
    entry = get_entry(name)
    h, w = size
    if min(h, w) <= 0 or max(h, w) > predictor.MAX_SIDE:
        raise PredictionError(f"size {h}x{w} must be between 1 and {predictor.MAX_SIDE} pixels a side")
    settings = {mode: _settings_at(entry, mode, (h, w)) for mode in modes}  # checked before any work
    dev = predictor.select_device(device)
    dataset = get_dataset(entry.dataset)
    cached = entry.weights is not None and hub.checkpoint_path(entry).is_file()
    t0 = time.perf_counter()
    slow: Segmenter | None
    if weights is not None or cached:
        source = str(weights) if weights is not None else "cached checkpoint"
        fast = load(entry.name, weights=weights, device=dev, offline=True)
        load_seconds = time.perf_counter() - t0
        slow = load(entry.name, weights=weights, device=dev, offline=True, fuse_bn=False).use_fast_paths(False)
    else:
        source = "initial weights (no checkpoint cached)"
        plain = build_segmentor(entry.architecture).eval()
        fused = build_segmentor(entry.architecture).eval()
        fused.load_state_dict(plain.state_dict())
        predictor.prepare_model(fused.fuse_bn(), dev)
        fast = Segmenter(fused, entry, dev, torch.float32, dataset, tuning_record=tuning_record())
        load_seconds = time.perf_counter() - t0
        predictor.prepare_model(plain, dev)
        slow = Segmenter(plain, entry, dev, torch.float32, dataset, fast_paths=False)
    if not baseline:
        slow = None
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    runs: list[dict[str, Any]] = []
    for mode in modes:
        say(f"{mode}: optimized ...")
        t_fast, peak_fast, exact_fast, labels_fast = _timed_predict(fast, image, settings[mode], None, repeat)
        crop = settings[mode].crop_size
        forward = [h, w] if crop is None or mode == "whole" else [min(h, crop[0]), min(w, crop[1])]
        row: dict[str, Any] = {"mode": mode, "variant": "optimized", "seconds": t_fast, "peak_bytes": peak_fast,
                               "peak_exact": exact_fast, "forward_size": forward}
        runs.append(row)
        if slow is not None:
            say(f"{mode}: baseline ...")
            t_slow, peak_slow, exact_slow, labels_slow = _timed_predict(slow, image, settings[mode], 1, repeat)
            runs.append({"mode": mode, "variant": "baseline", "seconds": t_slow, "peak_bytes": peak_slow,
                         "peak_exact": exact_slow, "forward_size": row["forward_size"]})
            row["speedup"] = t_slow / t_fast
            row["labels_equal"] = float((labels_fast == labels_slow).mean())
    return {
        "model": entry.name,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "size": [h, w],
        "weights": source,
        "load_seconds": load_seconds,
        "fast_paths": asdict(fast.fast_paths),
        "fast_paths_source": fast.fast_path_choice.source if fast.fast_path_choice else "device",
        "fast_path_measurement": fast.fast_path_choice.measured if fast.fast_path_choice else None,
        "runs": runs,
    }
