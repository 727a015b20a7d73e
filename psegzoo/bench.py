"""``psegzoo.benchmark()``: time a model against a naive baseline in the same process."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import hub, predictor
from .api import Segmenter, inference_settings, load
from .manifest import get_dataset, get_entry
from .models import build_segmentor, use_fast_paths


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
        import threading

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
                   batch_windows: int | None, repeat: int) -> tuple[float, int | None, np.ndarray]:
    dev = segmenter.device
    best = float("inf")
    labels = np.empty(0)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    with _PeakRSS() as rss:
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = predictor.infer(segmenter.model, image, settings, device=dev, batch_windows=batch_windows)
            labels = predictor.argmax_labels(result.scores)
            best = min(best, time.perf_counter() - t0)
            del result
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else (rss.peak or None)
    return best, peak, labels


def benchmark(name: str, *, size: tuple[int, int] = (1024, 2048), device: str | None = None,
              modes: Sequence[str] = ("whole", "slide"), repeat: int = 1, weights: str | os.PathLike | None = None,
              baseline: bool = True, log: Any = None) -> dict[str, Any]:
    """Time loading and prediction of one model on a synthetic ``size`` (h, w) image.

    Each mode runs the optimized path (BatchNorm folded into convolutions, channels_last, decomposed
    heads, Winograd 3x3, batched windows) and, with ``baseline``, a naive one in the same process
    (BatchNorm kept, contiguous memory, concatenating heads, one window at a time); labels of the
    two are compared. Weights: ``weights``, else the
    cached checkpoint, else the architecture's initial weights (timings do not depend on values).
    """
    say = log or (lambda _msg: None)
    entry = get_entry(name)
    dev = predictor.select_device(device)
    dataset = get_dataset(entry.dataset)
    cached = entry.weights is not None and hub.checkpoint_path(entry).is_file()
    t0 = time.perf_counter()
    if weights is not None or cached:
        source = str(weights) if weights is not None else "cached checkpoint"
        fast = load(entry.name, weights=weights, device=dev, offline=True)
        load_seconds = time.perf_counter() - t0
        slow = load(entry.name, weights=weights, device=dev, offline=True, fuse_bn=False, channels_last=False)
        use_fast_paths(slow.model, False)
    else:
        source = "initial weights (no checkpoint cached)"
        plain = build_segmentor(entry.architecture).eval()
        fused = build_segmentor(entry.architecture).eval()
        fused.load_state_dict(plain.state_dict())
        fast = Segmenter(predictor.prepare_model(fused.fuse_bn(), dev), entry, dev, torch.float32, dataset)
        load_seconds = time.perf_counter() - t0
        plain = use_fast_paths(predictor.prepare_model(plain, dev, channels_last=False), False)
        slow = Segmenter(plain, entry, dev, torch.float32, dataset)
    if not baseline:
        slow = None
    h, w = size
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    runs: list[dict[str, Any]] = []
    for mode in modes:
        settings = inference_settings(entry, mode=mode)
        say(f"{mode}: optimized ...")
        t_fast, peak_fast, labels_fast = _timed_predict(fast, image, settings, None, repeat)
        row = {"mode": mode, "variant": "optimized", "seconds": t_fast, "peak_bytes": peak_fast}
        runs.append(row)
        if slow is not None:
            say(f"{mode}: baseline ...")
            t_slow, peak_slow, labels_slow = _timed_predict(slow, image, settings, 1, repeat)
            runs.append({"mode": mode, "variant": "baseline", "seconds": t_slow, "peak_bytes": peak_slow})
            row["speedup"] = t_slow / t_fast
            row["labels_equal"] = float((labels_fast == labels_slow).mean())
    return {
        "model": entry.name,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "size": [h, w],
        "weights": source,
        "load_seconds": load_seconds,
        "runs": runs,
    }
