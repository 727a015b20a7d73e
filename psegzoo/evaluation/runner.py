"""Running a split: plan (settings read once, split listed and checked) -> accumulate -> summarize.

An evaluation is "add up per-image counts over some images, then turn the sum into figures", so it
splits into three calls that also serve a run spread over several processes::

    job = plan("pspnet_r50-d8_512x1024_40k_cityscapes", "data/cityscapes")
    part = accumulate(segmenter, job, job.samples[rank::world])     # counts of this process's images
    total = part.counts.to_tensor(device); torch.distributed.all_reduce(total)
    result = summarize(job, Counts.from_tensor(total), images=len(job.samples), seconds=...)

:func:`evaluate` is the three in one process. While the model runs on the calling thread, images
and labels are decoded by background threads (a bounded prefetch queue), and counting, saving the
predictions and saving the counts happen on another, so the model waits neither for the disk nor
for the bookkeeping.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import hub, outputs
from .. import images as image_io
from ..api import Segmenter, load
from ..errors import DatasetError, ImageError, PredictionError, check_count, option
from ..hub import DownloadOptions
from ..manifest import Dataset, Entry, get_dataset, get_entry
from ..predictor import InferenceSettings, default_workers, torch_dtype
from ..prefetch import prefetch
from .guard import check_save_predictions
from .labels import label_table, load_label
from .layouts import GENERIC, LAYOUTS, Layout, generic_layout, layout_for_dataset, layout_named
from .metric import Counts, count_image, label_areas, percent, sum_counts
from .processes import Alone, Processes
from .reading import hint_of, read_input, sample_key, size_limit, stat_hint
from .result import MS_FLIP_RATIOS, EvalResult, EvalSettings
from .split import Sample, Split, check_all_sizes, image_size, list_split, size_mismatch
from .state import WorkState, default_work_dir


@dataclass(frozen=True, eq=False)
class EvalPlan:
    """Everything an evaluation needs but the model: the entry, the listed split and the settings."""

    entry: Entry
    dataset: Dataset
    split: Split  # the images to evaluate (the first ``limit`` of the split)
    listing: str  # fingerprint of the whole split's listing
    inference: InferenceSettings
    overrides: dict[str, Any]
    flip: bool
    scales: tuple[float, ...] | None
    amp_dtype: str | None
    settings: EvalSettings
    table: np.ndarray | None = field(repr=False)
    fallback_table: np.ndarray | None = field(repr=False)

    @property
    def samples(self) -> tuple[Sample, ...]:
        return self.split.samples

    @property
    def num_classes(self) -> int:
        return self.entry.num_classes

    @property
    def ignore_index(self) -> int:
        return self.settings.ignore_index

    def identity(self, weights: Mapping[str, str]) -> dict[str, Any]:
        """What decides every image's counts but the image and label files themselves (the work
        folder's key; the files' contents key each image's counts). ``weights``: see
        :func:`weights_identity`."""
        s = self.settings
        return {
            "format": 2, "model": self.entry.name, "weights": dict(weights), "layout": s.layout,
            "data_root": s.data_root, "images": s.image_dir, "labels": s.label_dir, "split": s.split,
            "reduce_zero_label": s.reduce_zero_label, "ignore_index": s.ignore_index,
            "scale": list(s.scale), "mode": s.mode, "crop_size": s.crop_size and list(s.crop_size),
            "stride": s.stride and list(s.stride), "flip": s.flip, "scales": s.scales and list(s.scales),
            "amp_dtype": s.amp_dtype,
        }


@dataclass(frozen=True)
class EvalProgress:
    """Where a running evaluation stands (given to ``on_progress`` after every image)."""

    done: int  # images counted, resumed ones included
    total: int
    resumed: int
    seconds: float  # since this process started evaluating
    miou: float | None  # running mIoU in percent over the images done
    counts: Counts | None = field(default=None, repr=False)  # the running sum the mIoU comes from

    @property
    def images_per_second(self) -> float | None:
        ran = self.done - self.resumed
        return ran / self.seconds if ran > 0 and self.seconds > 0 else None

    @classmethod
    def combine(cls, parts: Sequence[EvalProgress], *, total: int, seconds: float) -> EvalProgress:
        """Where a run spread over several processes stands, from each process's latest report:
        images added up, the running mIoU of all their counts together, ``seconds`` of the job."""
        counted = [p.counts for p in parts if p.counts is not None]
        counts = sum_counts(counted, counted[0].num_classes) if counted else None
        done = sum(p.done for p in parts)
        miou = percent(counts.metrics().miou) if counts is not None and done else None
        return cls(done, total, sum(p.resumed for p in parts), seconds, miou, counts)


@dataclass(frozen=True)
class Accumulated:
    """Counts over some images: ``evaluated`` run now, ``resumed`` read from the work folder."""

    counts: Counts
    evaluated: int
    resumed: int
    seconds: float


def _entry_of(model: str | Entry | Segmenter, index: Any = None) -> Entry:
    if isinstance(model, Segmenter):
        return model.entry
    if isinstance(model, Entry):
        return model
    if isinstance(model, str):
        return get_entry(model, index=index)
    raise TypeError(f"evaluate() takes a model name, an Entry or a Segmenter, got {type(model).__name__}")


def _tta(ms_flip: bool, flip: bool, scales: Sequence[float] | None) -> tuple[bool, tuple[float, ...] | None, str]:
    if ms_flip:
        if scales is not None:
            raise PredictionError("ms_flip=True sets the published scales; do not pass scales as well")
        return True, MS_FLIP_RATIOS, "ms+flip"
    ratios = tuple(float(r) for r in scales) if scales is not None else None
    if not flip and ratios in (None, (1.0,)):
        return False, None, "none"
    if flip and ratios == MS_FLIP_RATIOS:
        return True, ratios, "ms+flip"
    return flip, ratios, "custom"


def _amp_name(amp_dtype: str | torch.dtype | None) -> str | None:
    """The canonical name of the autocast asked for (None: float32, no autocast), as :func:`predict` reads it."""
    if amp_dtype is None:
        return None
    dtype = torch_dtype(amp_dtype) if isinstance(amp_dtype, (str, torch.dtype)) else None
    if dtype == torch.float32:
        return None
    if dtype in (torch.float16, torch.bfloat16):
        return str(dtype).removeprefix("torch.")
    raise PredictionError(f"amp_dtype must be float16, bfloat16 or float32 (no autocast), got {amp_dtype!r}")


def _pick_layout(entry: Entry, layout: str | None, images: Any, labels: Any, label_suffix: str | None,
                 reduce_zero_label: bool | None, ignore_index: int | None) -> Layout:
    name = layout_named(layout) if layout is not None else (GENERIC if images is not None or labels is not None else None)
    if name == GENERIC:
        return generic_layout(label_suffix=".png" if label_suffix is None else label_suffix,
                              reduce_zero_label=bool(reduce_zero_label),
                              ignore_index=255 if ignore_index is None else ignore_index)
    if images is not None or labels is not None:
        raise DatasetError(f"images and labels folders make a generic dataset; drop {option('layout=...', '--layout')} "
                           "or the folders")
    for value, what in ((label_suffix, option("label_suffix", "--label-suffix")),
                        (reduce_zero_label, option("reduce_zero_label", "--reduce-zero-label")),
                        (ignore_index, option("ignore_index", "--ignore-index"))):
        if value is not None:
            raise DatasetError(f"{what} applies to generic folders ({option('images=DIR, labels=DIR', '--images DIR --labels DIR')}); "
                               "a dataset layout fixes it as mmseg does")
    chosen = LAYOUTS[name] if name is not None else layout_for_dataset(entry.dataset, entry.name)
    classes = len(get_dataset(chosen.name).classes)
    if classes != entry.num_classes:
        raise DatasetError(
            f"{entry.name} predicts {entry.num_classes} classes but a {chosen.name} dataset has {classes}; "
            "pick a model trained on this dataset"
        )
    return chosen


def _differences(entry: Entry, inference: InferenceSettings, tta: str, flip: bool,
                 scales: tuple[float, ...] | None) -> list[str]:
    published = InferenceSettings.from_entry(entry)
    out = []
    if inference.mode != published.mode:
        out.append(f"mode {inference.mode} (published: {published.mode})")
    if inference.scale != published.scale:
        out.append(f"scale {inference.scale[0]}x{inference.scale[1]} (published: {published.scale[0]}x{published.scale[1]})")
    if inference.mode == "slide" and inference.crop_size != published.crop_size:
        c = inference.crop_size or (0, 0)
        out.append(f"crop {c[0]}x{c[1]}")
    if inference.mode == "slide" and inference.stride != published.stride:
        s = inference.stride or (0, 0)
        out.append(f"stride {s[0]}x{s[1]}")
    if tta == "custom":
        out.append(f"test-time augmentation flip={flip} scales={list(scales) if scales else None} "
                   f"(published: none, or ms+flip {list(MS_FLIP_RATIOS)})")
    return out


def plan(model: str | Entry | Segmenter, data_root: str | os.PathLike | None = None, *, split: str | None = None,
         layout: str | None = None, images: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
         label_suffix: str | None = None, reduce_zero_label: bool | None = None, ignore_index: int | None = None,
         ms_flip: bool = False, flip: bool = False, scales: Sequence[float] | None = None, mode: str | None = None,
         crop_size: Any = None, stride: Any = None, scale: Any = None, amp_dtype: str | torch.dtype | None = None,
         limit: int | None = None, index: Any = None) -> EvalPlan:
    """Read the settings once, list the split and check its files; no model is loaded.

    Raises :class:`DatasetError` (missing folder, split list or label, labels of another size than
    their image, an empty split, a dataset without a layout) or :class:`PredictionError` (settings).
    """
    entry = _entry_of(model, index)
    check_count(limit, "limit", DatasetError, unit="number of images", none=True)
    chosen = _pick_layout(entry, layout, images, labels, label_suffix, reduce_zero_label, ignore_index)
    if chosen.name == GENERIC and split is not None:
        raise DatasetError(f"a generic folder is evaluated whole; drop {option('split=...', '--split')} or point "
                           f"{option('images=DIR', '--images DIR')} at the split's folder")
    overrides = dict(mode=mode, crop_size=crop_size, stride=stride, scale=scale)
    inference = InferenceSettings.from_entry(entry, **overrides)
    flip, ratios, tta = _tta(ms_flip, flip, scales)
    amp = _amp_name(amp_dtype)
    whole = list_split(chosen, data_root, split, images=images, labels=labels)
    chosen_split = whole.head(limit)
    check_all_sizes(chosen_split.samples)
    nonstandard = _differences(entry, inference, tta, flip, ratios)
    reasons = list(nonstandard)
    if limit is not None and limit < len(whole.samples):
        reasons.append(f"first {limit} of {len(whole.samples)} images")
    if chosen.name == GENERIC:
        reasons.append("a folder of your own, not the published dataset")
    elif chosen.name != entry.dataset:
        reasons.append(f"a {chosen.name} folder, not {entry.dataset}")
    elif whole.split is not None and chosen.split_name(whole.split) != chosen.split_name(chosen.published_split):
        reasons.append(f"the {whole.split} split (published: {chosen.published_split})")
    settings = EvalSettings(
        layout=chosen.name,
        data_root=str(whole.root.resolve()) if whole.root is not None else None,
        image_dir=str(whole.image_dir.resolve()),
        label_dir=str(whole.label_dir.resolve()),
        split=whole.split,
        scale=inference.scale,
        mode=inference.mode,
        crop_size=inference.crop_size,
        stride=inference.stride,
        flip=flip,
        scales=ratios,
        tta=tta,
        reduce_zero_label=chosen.reduce_zero_label,
        ignore_index=chosen.ignore_index,
        limit=limit,
        amp_dtype=amp,
        labels_converted=chosen_split.fallback_labels,
        nonstandard=tuple(nonstandard),
        not_comparable=tuple(reasons),
    )
    return EvalPlan(
        entry=entry,
        dataset=get_dataset(entry.dataset, index=index),
        split=chosen_split,
        listing=whole.fingerprint(),
        inference=inference,
        overrides=overrides,
        flip=flip,
        scales=ratios,
        amp_dtype=amp,
        settings=settings,
        table=label_table(reduce_zero_label=chosen.reduce_zero_label),
        fallback_table=label_table(ids=chosen.fallback.ids, reduce_zero_label=chosen.reduce_zero_label)
        if chosen.fallback is not None else None,
    )


def weights_digest(segmenter: Segmenter) -> str:
    """The SHA-256 of a loaded model's weights (every name, shape, dtype and value): the identity of
    weights that came from no file psegzoo knows."""
    h = hashlib.sha256(segmenter.entry.name.encode())
    with torch.inference_mode():
        for name, tensor in segmenter.model.state_dict().items():
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_identity(entry: Entry, weights: str | os.PathLike | None = None, download: DownloadOptions | None = None,
                     *, dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """The SHA-256 of the checkpoint file a model is loaded from: the file given (hashed now), else
    the verified checkpoint in the cache (its SHA-256 is in the cache record); and the dtype the
    model runs in."""
    if weights is not None:
        sha = hub.file_sha256(Path(weights))
    else:
        opts = download if download is not None else DownloadOptions()
        sha = hub.fetch(entry, opts.with_(offline=True, progress=False)).sha256
    return {"sha256": sha, "dtype": str(dtype).removeprefix("torch.")}


def open_state(job: EvalPlan, weights: Mapping[str, str], work_dir: str | os.PathLike | None, *,
               resume: bool, cache_root: Path | None = None) -> WorkState:
    """The run's work folder: under ``work_dir``, else ``<cache root>/eval``."""
    where = work_dir if work_dir is not None else default_work_dir(cache_root if cache_root is not None else hub.cache_root())
    return WorkState.open(where, job.entry.name, job.settings.split, job.identity(weights), job.num_classes, resume=resume)


@dataclass(frozen=True, eq=False)
class _Loaded:
    """A sample read once: its counts key, a stat hint, and either saved counts or what to predict."""

    key: str
    hint: str
    label: np.ndarray
    rgb: np.ndarray | None = None
    saved: Counts | None = None


def _read_sample(job: EvalPlan, state: WorkState | None, out_dir: Path | None,
                 max_pixels: int | None) -> Callable[[Sample], _Loaded]:
    limit = size_limit(image_io.max_pixels_limit(max_pixels))

    def read(sample: Sample) -> _Loaded:
        image = read_input(sample.image, limit, ImageError, "image")
        label_file = read_input(sample.label, limit, DatasetError, "label")
        key = sample_key(image, label_file, sample.fallback)
        hint = stat_hint(sample.image, sample.label, image.size, image.mtime_ns, label_file.size, label_file.mtime_ns)
        label = load_label(sample.label, job.fallback_table if sample.fallback else job.table, label_file.data)
        if state is not None and (out_dir is None or outputs.output_paths(out_dir, sample.name).labels.is_file()):
            saved = state.lookup(key, label_areas(label, job.num_classes, job.ignore_index))
            if saved is not None:
                return _Loaded(key, hint, label, saved=saved)
        rgb = image_io.decode_image(image.data, name=str(sample.image), max_pixels=max_pixels)
        del image
        if rgb.shape[:2] != label.shape[:2] or label.ndim != 2:
            raise size_mismatch(sample, (rgb.shape[1], rgb.shape[0]), (label.shape[-1], label.shape[0]))
        return _Loaded(key, hint, label, rgb=rgb)

    return read


class _Tally:
    """The running sum of an accumulation and its progress reports."""

    def __init__(self, job: EvalPlan, total: int, on_progress: Callable[[EvalProgress], None] | None):
        self.counts = Counts.zeros(job.num_classes)
        self.done = 0
        self.resumed = 0
        self.total = total
        self.on_progress = on_progress
        self.t0 = time.perf_counter()

    def add(self, counts: Counts, *, resumed: bool = False, report: bool = True) -> None:
        self.counts = self.counts + counts
        self.done += 1
        self.resumed += int(resumed)
        if report:
            self.report()

    def report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(EvalProgress(self.done, self.total, self.resumed, time.perf_counter() - self.t0,
                                          percent(self.counts.metrics().miou) if self.done else None, self.counts))


def accumulate(segmenter: Segmenter, job: EvalPlan, samples: Sequence[Sample] | None = None, *,
               state: WorkState | None = None, save_predictions: str | os.PathLike | None = None,
               batch_windows: int | None = None, max_pixels: int | None = None, workers: int | None = None,
               on_progress: Callable[[EvalProgress], None] | None = None) -> Accumulated:
    """Counts over ``samples`` (default: the plan's images), taking those ``state`` holds for the
    same image and label contents (checked, see :meth:`WorkState.lookup`).

    ``workers`` threads read, hash and decode images and labels ahead of the model (0: none, on this
    thread; default: see :func:`default_workers`). ``save_predictions`` writes each image's predicted
    classes as a palette PNG ``<dir>/<name>.png`` (never into or over an input, see
    :func:`check_save_predictions`); an image whose PNG is missing is evaluated again on resume.
    """
    if segmenter.entry.num_classes != job.num_classes:
        raise PredictionError(f"the model predicts {segmenter.entry.num_classes} classes, the plan expects {job.num_classes}")
    chosen = tuple(job.samples if samples is None else samples)
    out_dir = Path(save_predictions) if save_predictions is not None else None
    if out_dir is not None:
        check_save_predictions(out_dir, job.split)
    n_workers = default_workers(segmenter.device) if workers is None else max(0, int(workers))
    amp = torch_dtype(job.amp_dtype) if job.amp_dtype else None
    tally = _Tally(job, len(chosen), on_progress)

    def finish(sample: Sample, loaded: _Loaded, pred: np.ndarray) -> Counts:
        counts = count_image(pred, loaded.label, job.num_classes, job.ignore_index, source=sample.label)
        if out_dir is not None:
            outputs.save_label_png(pred, segmenter.palette, outputs.output_paths(out_dir, sample.name).labels)
        if state is not None:
            state.save(loaded.key, counts, loaded.hint)
        return counts

    tally.report()
    depth = max(2, 2 * n_workers)
    pending: deque[Future[Counts]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="psegzoo-count") as post:
        loader = prefetch(chosen, _read_sample(job, state, out_dir, max_pixels), workers=n_workers, depth=depth)
        try:
            for sample, loaded in loader:
                if loaded.saved is not None:
                    tally.add(loaded.saved, resumed=True)
                    continue
                prediction = segmenter.predict(loaded.rgb, flip=job.flip, scales=job.scales,
                                               batch_windows=batch_windows, amp_dtype=amp, **job.overrides)
                pending.append(post.submit(finish, sample, loaded, prediction.labels))
                del prediction, loaded
                while pending and (len(pending) > depth or pending[0].done()):
                    tally.add(pending.popleft().result())
            while pending:
                tally.add(pending.popleft().result())
        except KeyboardInterrupt:
            _tally_finished(tally, pending)
            raise
        finally:
            # Images already predicted are still counted and saved (leaving the pool waits for them):
            # after Ctrl-C or an error, a resumed run has that much less to do.
            loader.close()
    return Accumulated(tally.counts, tally.done - tally.resumed, tally.resumed, time.perf_counter() - tally.t0)


def _tally_finished(tally: _Tally, pending: deque[Future[Counts]]) -> None:
    """After Ctrl-C: count the images predicted before it, whose counts are being saved, so the
    interruption says how far the run got (``--resume`` finds them)."""
    for future in pending:
        try:
            tally.add(future.result(), report=False)
        except Exception:  # an image that failed is not counted; the interruption is what is reported
            continue
    try:
        tally.report()  # one last report: every image whose counts were saved
    except KeyboardInterrupt:  # a second Ctrl-C (or a callback that stops the run) while reporting
        pass


def summarize(job: EvalPlan, counts: Counts, *, images: int, seconds: float, resumed: int = 0,
              work_dir: str | os.PathLike | None = None, timings: dict[str, float] | None = None) -> EvalResult:
    """The result of ``counts`` summed over ``images`` images of the plan."""
    if int(counts.label.sum()) == 0:
        raise DatasetError(
            f"no labelled pixel in the {images} image(s) evaluated: every label is the ignore index "
            f"{job.ignore_index}; check the label files"
            + (" (or the reduce_zero_label setting)" if job.settings.reduce_zero_label else "")
        )
    return EvalResult(
        model=job.entry.name,
        dataset=job.entry.dataset,
        split=job.settings.split,
        images=images,
        classes=job.dataset.classes,
        counts=counts,
        settings=job.settings,
        published_miou=job.entry.miou,
        published_miou_ms_flip=job.entry.miou_ms_flip,
        seconds=seconds,
        resumed=resumed,
        work_dir=str(work_dir) if work_dir is not None else None,
        timings=dict(timings or {}),
    )


def evaluate(model: str | Segmenter, data_root: str | os.PathLike | None = None, *, split: str | None = None,
             layout: str | None = None, images: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
             label_suffix: str | None = None, reduce_zero_label: bool | None = None, ignore_index: int | None = None,
             weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
             ms_flip: bool = False, flip: bool = False, scales: Sequence[float] | None = None,
             mode: str | None = None, crop_size: Any = None, stride: Any = None, scale: Any = None,
             batch_windows: int | None = None, amp_dtype: str | torch.dtype | None = None, limit: int | None = None,
             save_predictions: str | os.PathLike | None = None, work_dir: str | os.PathLike | None = None,
             resume: bool = False, workers: int | None = None, max_pixels: int | None = None,
             on_progress: Callable[[EvalProgress], None] | None = None, job: Processes | None = None,
             **load_kwargs: Any) -> EvalResult:
    """Evaluate a model on a dataset folder with mmseg's metric; returns an :class:`EvalResult`.

    ``model`` is a name (loaded with :func:`psegzoo.load`, with ``weights``, ``device`` and any other
    ``load_kwargs`` such as the download options) or a loaded :class:`Segmenter`. The folder's layout
    follows the model's dataset (or ``layout``; ``images``/``labels`` folders make a generic one).
    ``split`` defaults to ``val``; ``ms_flip`` is the published multi-scale + flip setting; ``mode``,
    ``crop_size``, ``stride`` and ``scale`` override the published test pipeline (the result says so).
    Per-image counts are saved as they are made in ``work_dir`` (default ``<cache root>/eval``) and
    ``resume=True`` continues from them; without it the run starts over.

    ``job`` (a :class:`psegzoo.distributed.Job`, under torchrun) shares the images out between the
    processes, loads the model once per node and sums the counts: every process returns the
    result of the whole split, and rank 0 saves it. ``on_progress`` hears of the whole job (rank 0).
    """
    t0 = time.perf_counter()
    processes = job if job is not None else Alone()
    if isinstance(model, Segmenter) and (weights is not None or device is not None or load_kwargs):
        raise PredictionError("weights, device and download options apply when evaluate() loads the model by name")
    max_pixels = image_io.max_pixels_limit(max_pixels)  # read once, checked before anything is loaded
    download = load_kwargs.get("download")
    # Every process lists and checks the split the same way (sizes, labels) before any download.
    chosen = plan(model, data_root, split=split, layout=layout, images=images, labels=labels, label_suffix=label_suffix,
                  reduce_zero_label=reduce_zero_label, ignore_index=ignore_index, ms_flip=ms_flip, flip=flip,
                  scales=scales, mode=mode, crop_size=crop_size, stride=stride, scale=scale, amp_dtype=amp_dtype,
                  limit=limit, index=getattr(download, "index", None))
    if save_predictions is not None:
        check_save_predictions(save_predictions, chosen.split)
    t1 = time.perf_counter()
    segmenter = model if isinstance(model, Segmenter) else processes.main_first(
        lambda first: load(chosen.entry.name, weights=weights, device=processes.device(device),
                           **(load_kwargs if first else {**load_kwargs, "offline": True})))
    t2 = time.perf_counter()
    identity = ({"state_sha256": weights_digest(segmenter), "dtype": str(segmenter.dtype).removeprefix("torch.")}
                if isinstance(model, Segmenter)
                else weights_identity(chosen.entry, weights, _download_of(load_kwargs), dtype=segmenter.dtype))
    state = _shared_state(processes, chosen, identity, work_dir, resume, getattr(download, "home", None))
    # Shards balanced by the pixels left to do (images whose files were counted before weigh nothing).
    mine = processes.plan(chosen.samples, weigh=lambda s: 0 if resume and state.probably_saved(hint_of(s.image, s.label))
                          else _pixels(s)).tasks
    reports = processes.reports(_progress_of_all(on_progress, len(chosen.samples), t2))
    run = accumulate(segmenter, chosen, mine, state=state, save_predictions=save_predictions,
                     batch_windows=batch_windows, max_pixels=max_pixels, workers=workers, on_progress=reports.send)
    reports.close()
    # Counts are exact integers: summed over the processes they are those of one process.
    counts = Counts.from_array(processes.sum(run.counts.to_array()))
    result = summarize(chosen, counts, images=len(chosen.samples), seconds=time.perf_counter() - t0,
                       resumed=int(processes.sum([run.resumed])[0]), work_dir=state.folder,
                       timings={"plan": t1 - t0, "load": t2 - t1, "evaluate": time.perf_counter() - t2})
    if processes.is_main:
        state.save_result(result.to_json())
    return result


def _shared_state(processes: Processes, chosen: EvalPlan, identity: Mapping[str, str], work_dir: Any, resume: bool,
                  cache_root: Path | None) -> WorkState:
    """The run's work folder. Opening without ``resume`` clears saved counts: the main process does it
    before the others open the folder."""
    state = open_state(chosen, identity, work_dir, resume=resume, cache_root=cache_root) if processes.is_main else None
    processes.barrier("work folder")
    return state if state is not None else open_state(chosen, identity, work_dir, resume=True, cache_root=cache_root)


def _pixels(sample: Sample) -> int:
    """An image's work, from its header (1 if it cannot be read: its reader reports why)."""
    try:
        w, h = image_size(sample.image)
    except DatasetError:
        return 1
    return max(1, w * h)


def _progress_of_all(on_progress: Callable[[EvalProgress], None] | None, total: int,
                     since: float) -> Callable[[Any], None] | None:
    """What ``on_progress`` hears: every process's latest report combined (a report's ``rank`` sent it)."""
    if on_progress is None:
        return None
    latest: dict[int, EvalProgress] = {}

    def show(event: Any) -> None:
        latest[event.rank] = event.value
        on_progress(EvalProgress.combine(list(latest.values()), total=total, seconds=time.perf_counter() - since))

    return show


def _download_of(load_kwargs: Mapping[str, Any]) -> DownloadOptions:
    """The download options ``load`` was given (``download`` and its keyword shortcuts)."""
    base = load_kwargs.get("download") or DownloadOptions()
    shortcuts = {k: load_kwargs[k] for k in ("offline", "mirrors", "allow_unverified", "sha256") if k in load_kwargs}
    return base.with_(**shortcuts)
