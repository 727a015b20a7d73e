"""``psegzoo.load()``: name -> entry -> verified file -> converted weights -> model -> Segmenter.

Converted weights are cached as safetensors beside the download, so every load after the first
reads no pickle at all.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, convert, hub, images, outputs, predictor
from .errors import CheckpointError, ImageError, OutputError, PsegzooError
from .manifest import Dataset, Entry, get_dataset, get_entry
from .models import Segmentor, build_segmentor, state_shapes, use_fast_paths

log = logging.getLogger(__name__)

ImageInput = Any  # path, PIL image or HxWx3 uint8 array


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise PsegzooError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}") from None


@dataclass
class Prediction:
    """The result for one image, at its original size.

    ``logits`` (C x H x W float32) are the model's logits; with test-time augmentation they are the
    log of the averaged softmax probabilities, so :meth:`probs` is right in both cases.
    """

    labels: np.ndarray
    logits: np.ndarray
    image: np.ndarray
    entry: Entry
    dataset: Dataset
    timings: dict[str, float] = field(default_factory=dict)
    source: str | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.dataset.palette

    def probs(self) -> np.ndarray:
        """Per-class softmax probabilities, C x H x W float32."""
        return predictor.probabilities(torch.from_numpy(self.logits), False).numpy()

    def confidence(self) -> np.ndarray:
        """The largest softmax probability of each pixel, H x W float32."""
        return outputs.confidence_from_logits(self.logits)

    def colorize(self) -> np.ndarray:
        """The label map in the dataset's palette, H x W x 3 uint8."""
        return outputs.colorize(self.labels, self.palette)

    def overlay(self, opacity: float = 0.5) -> np.ndarray:
        """The palette colours blended over the image, H x W x 3 uint8."""
        return outputs.overlay(self.image, self.labels, self.palette, opacity)

    def class_areas(self) -> list[dict[str, Any]]:
        """Pixels and percentage of each class present, largest first."""
        return outputs.class_areas(self.labels, self.classes)

    def summary(self) -> dict[str, Any]:
        """The per-image JSON document (class areas, model, timings)."""
        return outputs.summary(self.labels, self.classes, model=self.entry.name, image=self.source, timings=self.timings)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the label map as a palette PNG (pixel value = class index)."""
        return outputs.save_label_png(self.labels, self.palette, path)

    def write(self, out_dir: str | os.PathLike, name: str, *, overlay: bool = False, opacity: float = 0.5,
              color: bool = False, probs: str | None = None, logits: bool = False, summary: bool = False) -> list[Path]:
        """Write the label PNG and the requested extras as ``out_dir/<name>*``; returns the paths.

        ``probs`` is ``"png"`` (16-bit confidence) or ``"npy"`` (float32), or None for none.
        """
        paths = outputs.output_paths(out_dir, name)
        written = [self.save(paths.labels)]
        if color:
            written.append(outputs.save_rgb_png(self.colorize(), paths.color))
        if overlay:
            written.append(outputs.save_rgb_png(self.overlay(opacity), paths.overlay))
        if probs is not None:
            if probs not in ("png", "npy"):
                raise OutputError(f"probs must be 'png' or 'npy', got {probs!r}")
            target = paths.probs_png if probs == "png" else paths.probs_npy
            written.append(outputs.save_confidence(self.confidence(), target))
        if logits:
            written.append(outputs.save_logits(self.logits, paths.logits))
        if summary:
            written.append(outputs.save_json(self.summary(), paths.json))
        return written


class Segmenter:
    """A loaded checkpoint ready to predict; ``model(x)`` gives logits for normalized NCHW input."""

    def __init__(self, model: Segmentor, entry: Entry, device: torch.device, dtype: torch.dtype,
                 dataset: Dataset, timings: Mapping[str, float] | None = None):
        self.model = model
        self.entry = entry
        self.device = device
        self.dtype = dtype
        self.dataset = dataset
        self.load_timings = dict(timings or {})

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.dataset.palette

    def __repr__(self) -> str:
        return f"Segmenter({self.entry.name!r}, device={self.device}, dtype={self.dtype})"

    def compile(self, **kwargs: Any) -> Segmenter:
        """Compile the model with ``torch.compile`` (first prediction is slow, later ones faster)."""
        self.model = torch.compile(self.model, **kwargs)  # type: ignore[assignment]
        return self

    def settings(self, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                 scale: Any = None) -> predictor.InferenceSettings:
        """The entry's test settings with overrides, validated."""
        return predictor.InferenceSettings.from_entry(self.entry, mode=mode, crop_size=crop_size, stride=stride, scale=scale)

    def predict(self, image: ImageInput, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                scale: Any = None, flip: bool = False, scales: Sequence[float] | None = None,
                batch_windows: int | None = None, amp_dtype: torch.dtype | None = None,
                max_pixels: int | None = None) -> Prediction:
        """Run the checkpoint's test pipeline (or the overridden one) on one image.

        ``image`` is a path, a PIL image or an H x W x 3 uint8 RGB array. ``mode``, ``crop_size``
        ``(h, w)``, ``stride`` and ``scale`` ``(long, short)`` override the published test settings;
        ``flip`` and ``scales`` (ratios of the test scale) add test-time augmentation.
        """
        settings = self.settings(mode=mode, crop_size=crop_size, stride=stride, scale=scale)
        t0 = time.perf_counter()
        rgb = images.load_image(image, max_pixels=max_pixels)
        t1 = time.perf_counter()
        result = predictor.infer(self.model, rgb, settings, flip=flip, scales=scales, device=self.device,
                                 batch_windows=batch_windows, amp_dtype=amp_dtype)
        scores = result.scores
        labels = predictor.argmax_labels(scores)
        if result.is_probs:
            with torch.inference_mode():
                scores.clamp_(min=torch.finfo(torch.float32).tiny).log_()
        timings = {"load_image": t1 - t0, **{k: float(v) for k, v in result.seconds.items()}}
        return Prediction(
            labels=labels,
            logits=scores.numpy(),
            image=rgb,
            entry=self.entry,
            dataset=self.dataset,
            timings=timings,
            source=str(image) if isinstance(image, (str, os.PathLike)) else None,
        )

    def predict_many(self, inputs: Iterable[ImageInput] | str | os.PathLike, **kwargs: Any) -> Iterator[Prediction | ImageError]:
        """Predict images one by one (the model stays loaded); paths may be files, folders or globs.

        A bad image yields its :class:`ImageError` instead of stopping the batch.
        """
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        for item in inputs:
            if isinstance(item, (str, os.PathLike)):
                found = images.find_images([item])
                yield from found.errors
                for image in found.images:
                    try:
                        yield self.predict(image.path, **kwargs)
                    except ImageError as exc:
                        yield exc
                continue
            try:
                yield self.predict(item, **kwargs)
            except ImageError as exc:
                yield exc


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _convert_file(path: Path, entry: Entry, model: Segmentor) -> tuple[dict[str, torch.Tensor], str]:
    state_dict, meta, fmt = convert.read_checkpoint(path)
    convert.check_classes(meta, entry.architecture.num_classes, path=path)
    converted = convert.convert_state_dict(state_dict, entry.architecture, state_shapes(model), fmt, path=path)
    return converted, fmt


def _save_converted(state_dict: Mapping[str, torch.Tensor], out: Path, *, source: Path, source_sha256: str,
                    entry: Entry, fmt: str) -> None:
    convert.save_converted(dict(state_dict), out, {
        "source_file": source.name, "source_sha256": source_sha256, "name": entry.name,
        "source_format": fmt, "psegzoo_version": __version__,
    })


def _converted_for(path: Path, source_sha256: str, entry: Entry, model: Segmentor,
                   out: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Converted weights of the verified checkpoint ``path`` and its format, from ``out`` when made from the same file."""
    if out.is_file():
        try:
            state_dict, metadata = convert.load_converted(out)
            if metadata.get("source_sha256") == source_sha256 and metadata.get("name") == entry.name:
                return state_dict, metadata.get("source_format", "mmseg")
            log.info("converted weights %s are stale; converting again", out)
        except CheckpointError as exc:
            log.warning("ignoring unreadable converted weights %s: %s", out, exc)
    state_dict, fmt = _convert_file(path, entry, model)
    _save_converted(state_dict, out, source=path, source_sha256=source_sha256, entry=entry, fmt=fmt)
    return state_dict, fmt


def _entry_for_weights(name: str | None, weights: Path) -> Entry:
    if name is not None:
        return get_entry(name)
    if weights.suffix == ".safetensors":
        metadata = convert.converted_metadata(weights)
        if metadata.get("name"):
            return get_entry(metadata["name"])
    try:
        return get_entry(weights.name)
    except PsegzooError:
        raise CheckpointError(
            f"cannot tell which model {weights.name!r} is; pass the model name too: --model NAME on the "
            f"command line, or in Python e.g. "
            f"psegzoo.load('pspnet_r50-d8_512x1024_40k_cityscapes', weights={str(weights)!r})"
        ) from None


def _build(entry: Entry) -> Segmentor:
    """The architecture on the meta device: no time spent initialising weights we replace."""
    with torch.device("meta"):
        return build_segmentor(entry.architecture)


def _fetch(entry: Entry, download_kwargs: Mapping[str, Any]) -> tuple[Path, str]:
    fetched = hub.fetch(entry, **download_kwargs)
    if fetched.newly_trusted:  # hub has already warned, with the hash and where it is recorded
        log.debug("%s trusted on first use with SHA-256 %s", entry.name, fetched.sha256)
    return fetched.path, fetched.sha256


def load(name: str | None = None, *, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, fuse_bn: bool = True, channels_last: bool | None = None,
         mirrors: Sequence[str] | None = None, offline: bool | None = None, allow_unverified: bool | None = None,
         sha256: str | None = None, progress: bool | None = None, retries: int | None = None,
         timeout: float | tuple[float, float] | None = None) -> Segmenter:
    """Resolve ``name``, fetch and verify its checkpoint, convert (cached), build and load strictly.

    ``weights`` may be a local mmseg/SSSegmentation checkpoint or one of our converted
    ``.safetensors`` files; then nothing is downloaded. ``device`` defaults to cuda, mps, then cpu.
    ``fuse_bn`` folds BatchNorm into the convolutions (exact up to float rounding, faster).
    The download options (``mirrors`` ... ``timeout``) are those of :func:`psegzoo.download`.
    """
    t0 = time.perf_counter()
    if name is None and weights is None:
        raise PsegzooError("give a model name (see 'psegzoo list') or weights=PATH")
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise CheckpointError(f"weights file {str(weights_path)!r} does not exist")
    entry = _entry_for_weights(name, weights_path) if weights_path is not None else get_entry(name)
    dev = predictor.select_device(device)
    dt = _pick_dtype(dtype)
    model = _build(entry)
    if weights_path is not None and weights_path.suffix == ".safetensors":
        state_dict, metadata = convert.load_converted(weights_path)
        if metadata.get("name") and metadata["name"] != entry.name:
            log.warning("%s was converted for %s; loading it as %s", weights_path, metadata["name"], entry.name)
    elif weights_path is not None:
        state_dict, _ = _convert_file(weights_path, entry, model)
    else:
        path, sha = _fetch(entry, dict(mirrors=mirrors, offline=offline, allow_unverified=allow_unverified,
                                       sha256=sha256, progress=progress, retries=retries, timeout=timeout))
        state_dict, _ = _converted_for(path, sha, entry, model, hub.converted_path(entry))
    t1 = time.perf_counter()
    convert.load_into(model, state_dict, path=weights_path, assign=True)
    model.eval()
    if fuse_bn:
        model.fuse_bn()
    model = predictor.prepare_model(model, dev, channels_last=channels_last)
    if dt != torch.float32:
        model = model.to(dtype=dt)
    t2 = time.perf_counter()
    timings = {"weights_s": t1 - t0, "build_s": t2 - t1, "total_s": t2 - t0}
    return Segmenter(model, entry, dev, dt, get_dataset(entry.dataset), timings)


def convert_checkpoint(source: str | os.PathLike, output: str | os.PathLike | None = None, *,
                       name: str | None = None, **download_kwargs: Any) -> Path:
    """Convert a model (by name, downloading if needed) or a checkpoint file to our safetensors.

    Without ``output`` a model's converted weights go to the cache (where ``load`` finds them) and a
    file's go beside it as ``<file stem>.safetensors``.
    """
    src = Path(source)
    if src.is_file():
        entry = _entry_for_weights(name, src)
        state_dict, fmt = _convert_file(src, entry, _build(entry))
        out = Path(output) if output else src.with_suffix(".safetensors")
        _save_converted(state_dict, out, source=src, source_sha256=hub.file_sha256(src), entry=entry, fmt=fmt)
        return out
    if name is not None:
        raise CheckpointError(f"checkpoint file {str(src)!r} does not exist")
    entry = get_entry(str(source))
    path, sha = _fetch(entry, download_kwargs)
    cached_out = hub.converted_path(entry)
    state_dict, fmt = _converted_for(path, sha, entry, _build(entry), cached_out)
    if output is None:
        return cached_out
    out = Path(output)
    _save_converted(state_dict, out, source=path, source_sha256=sha, entry=entry, fmt=fmt)
    return out


def inference_settings(entry: Entry | str, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                       scale: Any = None) -> predictor.InferenceSettings:
    """The test settings ``predict`` would use for ``entry`` with these overrides (validated)."""
    if isinstance(entry, str):
        entry = get_entry(entry)
    return predictor.InferenceSettings.from_entry(entry, mode=mode, crop_size=crop_size, stride=stride, scale=scale)


def unique_output_names(names: Sequence[str]) -> list[str]:
    """Output names with ``_2``, ``_3``, ... added where two images would write the same files."""
    return outputs.unique_names(names)


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
