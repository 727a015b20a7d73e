"""``Segmenter``: a loaded checkpoint that runs the test pipeline on images."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import images, predictor
from ..errors import ImageError, PredictionError, PsegzooError, check_count
from ..manifest import Dataset, Entry
from ..models import FastPaths, Segmentor, fast_paths_of, use_fast_paths
from ..prefetch import prefetch
from .prediction import Prediction

if TYPE_CHECKING:
    from ..models.fast import tuning

log = logging.getLogger(__name__)

ImageInput = Any  # path, PIL image or HxWx3 uint8 array

COMPILED_FAST_PATHS = FastPaths(decompose=True, winograd=False, channels_last=True)
"""What :meth:`Segmenter.compile` may keep (where the device's own choice has it on). Winograd is a
sequence of small operations that breaks the traced model into 39 graphs (``benchmarks/bench_compile.py``);
the decomposed heads and channels-last trace in one graph and compile as fast as the plain model or faster."""

_PREDICT_ONLY = ("flip", "scales", "batch_windows", "max_pixels", "progress")


def _check_compile_arguments(kwargs: Mapping[str, Any]) -> None:
    """``torch.compile``'s own checks of ``kwargs`` (mode, backend, options), made on a stand-in function
    before the model changes: a misspelt mode is one line, and the model stays as it was."""
    try:
        torch.compile(_same, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        asked = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PredictionError(f"compile({asked}): {reason}") from None


def _same(x: Any) -> Any:
    return x


class Segmenter:
    """A loaded checkpoint ready to predict; ``model(x)`` gives logits for normalized NCHW input.

    ``fast_paths`` (the exact speed-ups of :mod:`psegzoo.models.fast`) are chosen per device: on a
    GPU by a fixed table; on the CPU from ``tuning_record`` (what ``psegzoo tune`` measured on this
    machine), else by a rule on the CPU's vector features. Nothing is measured here, and the model's
    form is settled here (or by an explicit :meth:`use_fast_paths` or :meth:`compile`), never by a prediction.
    ``channels_last`` True or False overrides that choice for the memory format.

    Safe to use from several threads at once: a lock serializes the model's forwards and every change
    of its form, so threads overlap only in reading and preparing images (on a CPU the forwards use
    every core already). Results are those of the same calls made one after another.
    """

    def __init__(self, model: Segmentor, entry: Entry, device: torch.device, dtype: torch.dtype,
                 dataset: Dataset, timings: Mapping[str, float] | None = None, *, channels_last: bool | None = None,
                 fast_paths: bool | FastPaths | str = "auto", tuning_record: Path | None = None):
        self.model = model
        self.entry = entry
        self.device = device
        self.dtype = dtype
        self.dataset = dataset
        self.load_timings = dict(timings or {})
        self._channels_last = channels_last
        self._tuning_record = tuning_record
        self._lock = threading.RLock()  # the model: its forwards and any change of its form
        self.fast_path_choice: tuning.Choice | None = None
        self.use_fast_paths(fast_paths)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.dataset.palette

    @property
    def fast_paths(self) -> FastPaths:
        """The fast paths installed now."""
        return fast_paths_of(self.model)

    def __repr__(self) -> str:
        return f"Segmenter({self.entry.name!r}, device={self.device}, dtype={self.dtype}, fast_paths={self.fast_paths})"

    # ----------------------------------------------------------------------------------------
    # Fast paths and compilation
    # ----------------------------------------------------------------------------------------

    def use_fast_paths(self, paths: bool | FastPaths | str = "auto") -> Segmenter:
        """Install fast paths: ``"auto"`` (the device's choice), True (all), False (none) or a
        :class:`~psegzoo.models.FastPaths`. Returns self."""
        if isinstance(paths, str):
            if paths != "auto":
                raise PredictionError(f"fast_paths must be 'auto', True, False or a FastPaths, got {paths!r}")
            from ..models.fast import tuning  # torch models only: an ONNX file never reads it

            if self.device.type == "cpu":
                self.fast_path_choice = tuning.cpu_fast_paths(self._tuning_record)
                log.info("fast paths on this CPU: %s", self.fast_path_choice.describe())
                chosen = self.fast_path_choice.paths
            else:
                chosen = tuning.device_fast_paths(self.device)
        elif isinstance(paths, bool):
            chosen = FastPaths.all() if paths else FastPaths.none()
        elif isinstance(paths, FastPaths):
            chosen = paths
        else:
            raise PredictionError(f"fast_paths must be 'auto', True, False or a FastPaths, got {paths!r}")
        self._install(chosen)
        return self

    def _install(self, paths: FastPaths) -> None:
        if self._channels_last is not None:
            cl = self._channels_last  # Winograd runs on channels-last inputs only
            paths = replace(paths, winograd=paths.winograd and cl, winograd_f4=paths.winograd_f4 and cl,
                            channels_last=cl)
        with self._lock:
            use_fast_paths(self.model, paths)

    def decide_fast_paths(self) -> FastPaths:
        """The fast paths installed; nothing is measured here (``psegzoo tune`` measures the CPU)."""
        return self.fast_paths

    def compile(self, **kwargs: Any) -> Segmenter:
        """Compile the model with ``torch.compile`` (``kwargs``, e.g. ``mode="max-autotune"``), in place.

        Of the fast paths installed only those that help a compiled model are kept
        (``COMPILED_FAST_PATHS``); the model traces in one graph. The first prediction at each new
        input size compiles (slow); later ones are faster. A mode that replays CUDA graphs
        (``"reduce-overhead"``, ``"max-autotune"``) reuses its output buffers: the predictor copies
        the logits it keeps (``Segmentor.outputs_reused``), so flipped and rescaled views stay right.
        """
        _check_compile_arguments(kwargs)
        with self._lock:
            chosen = self.fast_paths
            self._install(FastPaths(decompose=chosen.decompose and COMPILED_FAST_PATHS.decompose,
                                    winograd=chosen.winograd and COMPILED_FAST_PATHS.winograd,
                                    channels_last=chosen.channels_last and COMPILED_FAST_PATHS.channels_last))
            self.model.compile(**kwargs)
            if self.entry.test.resize_logits == "direct":
                self.model.forward_lowres = torch.compile(self.model.forward_lowres, **kwargs)  # type: ignore[method-assign]
            self.model.outputs_reused = predictor.replays_cuda_graphs(self.device, kwargs)
        return self

    # ----------------------------------------------------------------------------------------
    # Prediction
    # ----------------------------------------------------------------------------------------

    def settings(self, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                 scale: Any = None) -> predictor.InferenceSettings:
        """The entry's test settings with overrides, validated."""
        return predictor.InferenceSettings.from_entry(self.entry, mode=mode, crop_size=crop_size, stride=stride, scale=scale)

    def predict(self, image: ImageInput, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                scale: Any = None, flip: bool = False, scales: Sequence[float] | None = None,
                batch_windows: int | None = None, amp_dtype: str | torch.dtype | None = None,
                max_pixels: int | None = None, keep_scores: bool = True, confidence: bool = False,
                progress: predictor.Progress | None = None, max_memory: int | None = None) -> Prediction:
        """Run the checkpoint's test pipeline (or the overridden one) on one image.

        ``image`` is a path, a PIL image or an H x W x 3 uint8 RGB array. ``mode``, ``crop_size``
        ``(h, w)``, ``stride`` and ``scale`` ``(long, short)`` override the published test settings;
        ``flip`` and ``scales`` (ratios of the test scale) add test-time augmentation.
        ``amp_dtype``: autocast, ``torch.float16``/``"float16"`` (GPU) or ``torch.bfloat16``/``"bf16"``.
        ``keep_scores=False`` keeps only the labels (and the top probability with ``confidence``),
        made without the C x H x W scores: any image size then needs little more than its labels.
        ``progress(done, total)`` is told of the forwards as they run. ``max_memory`` (bytes)
        refuses a prediction estimated to need more (default: the memory available).
        """
        settings = self.settings(mode=mode, crop_size=crop_size, stride=stride, scale=scale)
        settings.views(flip, scales)
        predictor.autocast_dtype(amp_dtype, self.device)
        t0 = time.perf_counter()
        rgb = images.load_image(image, max_pixels=max_pixels)
        return self._predict_loaded(rgb, image, time.perf_counter() - t0, settings, flip=flip, scales=scales,
                                    batch_windows=batch_windows, amp_dtype=amp_dtype, keep_scores=keep_scores,
                                    confidence=confidence, progress=progress, max_memory=max_memory)

    def _predict_loaded(self, rgb: np.ndarray, source: ImageInput, load_seconds: float,
                        settings: predictor.InferenceSettings, **kwargs: Any) -> Prediction:
        """:meth:`predict` on an image already read (``source`` is what it was read from)."""
        with self._lock:
            result = predictor.infer(self.model, rgb, settings, device=self.device, **kwargs)
        timings = {"load_image": load_seconds, **{k: float(v) for k, v in result.seconds.items()}}
        return self._prediction(result, rgb, source, timings)

    def _prediction(self, result: predictor.Inference, rgb: np.ndarray, source: ImageInput,
                    timings: dict[str, float]) -> Prediction:
        scores: np.ndarray | None = None
        if result.scores is not None:
            with predictor.stage("outputs"):
                labels = predictor.argmax_labels(result.scores)
                scores = result.scores.cpu().numpy()
        elif result.labels is not None:
            labels = result.labels
        else:
            raise PredictionError("the prediction gave neither scores nor labels")
        return Prediction(
            labels=labels,
            scores=scores,
            is_probs=result.is_probs,
            image=rgb,
            entry=self.entry,
            dataset=self.dataset,
            timings=timings,
            source=str(source) if isinstance(source, (str, os.PathLike)) else None,
            top_probability=result.confidence,
        )

    def predict_many(self, inputs: Iterable[ImageInput] | str | os.PathLike, *, batch_size: int | None = 1,
                     workers: int | None = None, **kwargs: Any) -> Iterator[Prediction | PsegzooError]:
        """Predict images in turn (the model stays loaded); paths may be files, folders or globs.

        Takes :meth:`predict`'s options. A bad image (unreadable, too large, one the model fails on)
        yields its error (:class:`~psegzoo.ImageError` or :class:`~psegzoo.PredictionError`, naming
        the image) instead of stopping the others; options that are wrong for every image raise at
        once, when ``predict_many`` is called. Results come in input order.

        ``batch_size`` > 1 runs consecutive images that resize to the same size through the model
        together (one view each: no ``flip``/``scales``): whole images share forwards; in slide mode
        the windows of the images share them, ``batch_windows`` per forward. None: on a GPU, whole-mode
        batches sized from the free memory and slide-mode batches of ``SLIDE_BATCH_IMAGES`` images;
        one image at a time on other devices. ``workers`` threads read the next
        images, and resize them when batching, while the model runs (default: one per core but one
        beside a GPU, at most 16; none beside a CPU model, see :func:`psegzoo.predictor.default_workers`).
        """
        self._check_options(kwargs)
        check_count(batch_size, "batch_size", PredictionError, none=True)
        check_count(workers, "workers", PredictionError, unit="number of threads", minimum=0, none=True)
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        return _Run.of(self, batch_size, workers, kwargs).results(inputs)

    @staticmethod
    def _named(inputs: Iterable[ImageInput]) -> Iterator[tuple[ImageInput, str] | PsegzooError]:
        """Each image with the name its errors use; folders and globs expanded, their errors in place."""
        for n, item in enumerate(inputs):
            if isinstance(item, (str, os.PathLike)):
                found = images.find_images([item])
                yield from found.errors
                for image in found.images:
                    yield image.path, str(image.path)
            else:
                yield item, f"input {n}"

    @staticmethod
    def _size_of(pending: Sequence[_Read | PsegzooError]) -> predictor.Size2 | None:
        for got in pending:
            if isinstance(got, _Read) and got.prepared is not None:
                return got.prepared.size
        return None

    def _check_options(self, kwargs: Mapping[str, Any]) -> None:
        """Raise at once for options that would fail on every image."""
        known = {"mode", "crop_size", "stride", "scale", "amp_dtype", "keep_scores", "confidence", "max_memory",
                 *_PREDICT_ONLY}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise PredictionError(f"unknown option(s) {', '.join(unknown)}; see Segmenter.predict")
        settings = self.settings(**{k: kwargs.get(k) for k in ("mode", "crop_size", "stride", "scale")})
        settings.views(bool(kwargs.get("flip", False)), kwargs.get("scales"))
        predictor.autocast_dtype(kwargs.get("amp_dtype"), self.device)

    def _guarded(self, read: _Read, settings: predictor.InferenceSettings,
                 kwargs: Mapping[str, Any]) -> Prediction | PsegzooError:
        """The prediction of an image already read, or the error that stopped it, naming the image."""
        options = {k: v for k, v in kwargs.items() if k not in ("mode", "crop_size", "stride", "scale", "max_pixels")}
        try:
            return self._predict_loaded(read.rgb, read.image, read.seconds, settings, **options)
        except ImageError as exc:
            return exc
        except PsegzooError as exc:
            return type(exc)(f"{read.label}: {exc.args[0] if exc.args else exc}")
        except (RuntimeError, ValueError, MemoryError) as exc:  # the model failed on this input
            log.debug("%s: prediction failed", read.label, exc_info=True)
            return PredictionError(f"{read.label}: prediction failed: {exc}".splitlines()[0])

    @staticmethod
    def _batchable(settings: predictor.InferenceSettings, kwargs: Mapping[str, Any]) -> bool:
        return not kwargs.get("flip") and kwargs.get("scales") in (None, [1.0], (1.0,))

    def _batch(self, pending: Sequence[_Read | PsegzooError], settings: predictor.InferenceSettings,
               batch_size: int | None, kwargs: Mapping[str, Any]) -> Iterator[Prediction | PsegzooError]:
        """Read images through :func:`predictor.infer_batch`; one by one if that fails."""
        good = [got for got in pending if isinstance(got, _Read) and got.prepared is not None]
        results: dict[int, predictor.Inference] = {}
        if good:
            try:
                with self._lock:
                    out = predictor.infer_batch(self.model, [got.prepared for got in good if got.prepared is not None],
                                                settings, device=self.device, amp_dtype=kwargs.get("amp_dtype"),
                                                batch_size=batch_size, batch_windows=kwargs.get("batch_windows"),
                                                keep_scores=kwargs.get("keep_scores", True),
                                                confidence=kwargs.get("confidence", False),
                                                max_memory=kwargs.get("max_memory"))
                results = {id(got): r for got, r in zip(good, out)}
            except (PsegzooError, RuntimeError, ValueError, MemoryError) as exc:
                log.info("batched prediction failed (%s); predicting one by one", str(exc).splitlines()[0])
                log.debug("the batched prediction's failure", exc_info=True)
        progress = kwargs.get("progress")
        for got in pending:
            if isinstance(got, PsegzooError):
                yield got
            elif id(got) in results:
                result = results[id(got)]
                timings = {"load_image": got.seconds, **{k: float(v) for k, v in result.seconds.items()}}
                if progress is not None:
                    progress(1, 1)  # its one forward is done
                yield self._prediction(result, got.rgb, got.image, timings)
            else:
                yield self._guarded(got, settings, kwargs)


@dataclass(frozen=True, eq=False)
class _Read:
    """An image read (and, when batching, prepared) ahead of the model by :meth:`Segmenter.predict_many`."""

    image: ImageInput
    label: str
    rgb: np.ndarray
    prepared: predictor.Prepared | None
    seconds: float


@dataclass(frozen=True)
class _Run:
    """One :meth:`Segmenter.predict_many` call, its options checked: how images are read (on
    ``threads`` workers) and whether they go through the model in batches (up to ``gather``)."""

    segmenter: Segmenter
    settings: predictor.InferenceSettings
    options: Mapping[str, Any]
    batch_size: int | None
    batched: bool
    threads: int
    gather: int

    @classmethod
    def of(cls, segmenter: Segmenter, batch_size: int | None, workers: int | None, options: Mapping[str, Any]) -> _Run:
        settings = segmenter.settings(**{k: options.get(k) for k in ("mode", "crop_size", "stride", "scale")})
        batched = Segmenter._batchable(settings, options) and (
            segmenter.device.type == "cuda" if batch_size is None else batch_size > 1)
        threads = predictor.default_workers(segmenter.device) if workers is None else workers
        options = {**options, "max_pixels": images.max_pixels_limit(options.get("max_pixels"))}  # once, not per image
        return cls(segmenter, settings, options, batch_size, batched, threads,
                   batch_size or predictor.MAX_BATCH_IMAGES)

    def read(self, item: tuple[ImageInput, str] | PsegzooError) -> _Read | PsegzooError:
        """One image read (and prepared when batching), or the error that stopped it, naming it."""
        if isinstance(item, PsegzooError):
            return item
        image, label = item
        t0 = time.perf_counter()
        try:
            rgb = images.load_image(image, max_pixels=self.options.get("max_pixels"))
            prepared = predictor.prepare(rgb, self.settings, self.segmenter.device) if self.batched else None
        except ImageError as exc:
            return exc
        except PsegzooError as exc:
            return type(exc)(f"{label}: {exc.args[0] if exc.args else exc}")
        return _Read(image, label, rgb, prepared, time.perf_counter() - t0)

    def results(self, inputs: Iterable[ImageInput]) -> Iterator[Prediction | PsegzooError]:
        """Each input's prediction or error, in order, images read ahead while the model runs."""
        depth = max(2, 2 * self.threads, self.gather if self.batched else 0)
        stream = prefetch(Segmenter._named(inputs), self.read, workers=self.threads, depth=depth)
        try:
            reads = (got for _, got in stream)
            if self.batched:
                yield from self._in_batches(reads)
            else:
                for got in reads:
                    yield got if isinstance(got, PsegzooError) else self.segmenter._guarded(got, self.settings, self.options)
        finally:
            stream.close()

    def _in_batches(self, reads: Iterable[_Read | PsegzooError]) -> Iterator[Prediction | PsegzooError]:
        """Consecutive images of one resized size, up to ``gather`` of them, through the model together."""
        pending: list[_Read | PsegzooError] = []  # read images (and errors, in order) awaiting their batch
        count = 0
        for got in reads:
            if isinstance(got, _Read):
                size = got.prepared.size if got.prepared is not None else None
                if count and size != Segmenter._size_of(pending):
                    yield from self.segmenter._batch(pending, self.settings, self.batch_size, self.options)
                    pending, count = [], 0
                count += 1
            pending.append(got)
            if count == self.gather:
                yield from self.segmenter._batch(pending, self.settings, self.batch_size, self.options)
                pending, count = [], 0
        yield from self.segmenter._batch(pending, self.settings, self.batch_size, self.options)
