"""The pipeline on one image (or a batch, in whole mode): views, forwards, scores at the original size.

keep-ratio resize (``mmcv.imrescale`` + OpenCV's fixed-point bilinear, reproduced bit for bit)
-> normalization -> whole-image or sliding-window inference (windows batched) -> logits at the
original image size (bilinear, the checkpoint's ``align_corners``) -> labels by argmax.

Test-time augmentation follows how the published "ms+flip" numbers were made (mmseg 0.x
``MultiScaleFlipAug``): each ratio ``r`` resizes to the test scale ``(int(long * r), int(short * r))``
(ratios of the test scale, not of the image), each view may also be flipped horizontally, and the
softmax probabilities of all views, each resized to the original size, are averaged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, overload

import numpy as np
import torch

from ..errors import PredictionError, check_count
from .devices import autocast_dtype, model_is_channels_last, resolve_device
from .memory import check_memory, estimate_memory
from .resize import rescale_size, resize_image
from .scores import banded_labels, class_argmax, label_dtype, resize_bands, resize_scores, to_host
from .settings import InferenceSettings, Size2, tta_scale
from .stages import stage
from .windows import (
    Normalize,
    Runner,
    fit_in_free_memory,
    host_tensor,
    image_tensor,
    is_oom,
    slide_logits,
    slide_logits_batch,
    slide_windows,
    upload,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Told ``(done, total)`` as a prediction goes: forwards (sliding windows, or one per view) run so far."""


@dataclass(frozen=True)
class View:
    """One test-time view: its scale ratio, flip, and the size the image was resized to (h, w)."""

    ratio: float
    flip: bool
    size: Size2


@dataclass(frozen=True, eq=False)
class Inference:
    """What :func:`infer` produced.

    ``scores`` is C x H x W float32 at the original image size, on ``output_device``: the logits
    when one view was run, the averaged softmax probabilities when several were (``is_probs``).
    It is made under ``torch.inference_mode``: read it freely, ``clone()`` it before changing it in
    place outside inference mode. With ``keep_scores=False`` there are no ``scores`` but ``labels``
    (H x W uint8, int32 beyond 256 classes) and, when asked, ``confidence`` (the top probability,
    H x W float32). ``views`` lists what was run; ``seconds`` times the stages (host time: on CUDA
    the stages overlap, ``total`` is exact).
    """

    scores: torch.Tensor | None
    is_probs: bool
    views: tuple[View, ...]
    seconds: Mapping[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None
    confidence: np.ndarray | None = None


def _check_image(image: Any) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise PredictionError(f"infer() takes an HxWx3 uint8 RGB array (see psegzoo.images.load_image), got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise PredictionError(f"the image is empty ({image.shape[1]}x{image.shape[0]})")


@dataclass(frozen=True)
class _Plan:
    """What running ``views`` on one model needs, checked before any work."""

    device: torch.device
    amp_dtype: torch.dtype | None
    normalize: Normalize
    direct: bool


def _plan(model: Any, settings: InferenceSettings, device: str | torch.device | None, amp_dtype: Any,
          channels_last: bool | None, batch_windows: int | None) -> _Plan:
    if model.training:
        raise PredictionError("the model is in training mode; call model.eval() first (psegzoo.load does)")
    dev = resolve_device(model, device)
    amp = autocast_dtype(amp_dtype, dev)
    if channels_last is None:
        channels_last = model_is_channels_last(model)
    check_count(batch_windows, "batch_windows", PredictionError, none=True)
    direct = settings.resize_logits == "direct" and settings.mode == "whole"
    if direct and not hasattr(model, "forward_lowres"):
        raise PredictionError(
            "this checkpoint resizes low-resolution logits directly, but the model has no forward_lowres()"
        )
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    normalize = Normalize.build(settings.mean, settings.std, dev, dtype=model_dtype, channels_last=channels_last)
    return _Plan(dev, amp, normalize, direct)


def _view_sizes(image_size: Size2, settings: InferenceSettings, views: Sequence[tuple[float, bool]]) -> list[Size2]:
    h, w = image_size
    sizes = []
    for ratio, _ in views:
        scale = settings.scale if ratio == 1.0 else tta_scale(settings.scale, ratio)
        new_w, new_h = rescale_size(w, h, scale)
        sizes.append((new_h, new_w))
    return sizes


def _check_memory(model: Any, image_size: Size2, sizes: Sequence[Size2], settings: InferenceSettings,
                  plan: _Plan, *, batch_windows: int | None, keep_scores: bool, confidence: bool,
                  output_device: torch.device, max_memory: int | None) -> None:
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        return  # a model that does not say: nothing to estimate from
    on_host = plan.device.type == "cpu"
    if not on_host and not (keep_scores and output_device.type == "cpu"):
        return  # the GPU side is guarded by batch sizing and out-of-memory handling
    estimate = estimate_memory(
        model, image_size, sizes, num_classes, crop_size=settings.crop_size if settings.mode == "slide" else None,
        batch_windows=batch_windows, keep_scores=keep_scores, confidence=confidence, forward_on_host=on_host,
    )
    check_memory(estimate, image_size, num_classes, keep_scores=keep_scores, limit=max_memory)


@overload
def _whole(runner: Runner, x: torch.Tensor, *, direct: bool, measure: Literal[False] = ...) -> torch.Tensor: ...


@overload
def _whole(runner: Runner, x: torch.Tensor, *, direct: bool, measure: Literal[True]) -> tuple[torch.Tensor, int]: ...


def _whole(runner: Runner, x: torch.Tensor, *, direct: bool,
           measure: bool = False) -> torch.Tensor | tuple[torch.Tensor, int]:
    """The logits of a whole-image forward (with ``measure``, and its GPU bytes per image); out of
    memory is a one-line error saying what to do."""
    try:
        return runner.measure(x, lowres=direct) if measure else runner(x, lowres=direct)
    except Exception as exc:
        if is_oom(exc):
            raise PredictionError(
                f"out of memory running the whole {x.shape[2]}x{x.shape[3]} image on {runner.device}; "
                "use slide mode (mode='slide'), a smaller scale, half precision, or the CPU"
            ) from None
        raise


def infer(
    model: Any,
    image: np.ndarray,
    settings: InferenceSettings,
    *,
    flip: bool = False,
    scales: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    batch_windows: int | None = None,
    amp_dtype: str | torch.dtype | None = None,
    channels_last: bool | None = None,
    output_device: str | torch.device = "cpu",
    keep_scores: bool = True,
    confidence: bool = False,
    progress: Progress | None = None,
    max_memory: int | None = None,
) -> Inference:
    """Run the test pipeline on one HxWx3 uint8 RGB image; scores (or labels) come back at its size.

    ``model`` is a Segmentor-like module in eval mode, already on ``device`` (default: the
    device of its parameters): ``model(x)`` gives logits at x's size, and ``model.forward_lowres``
    the decode head's own output (used for ``resize_logits="direct"`` in whole mode).
    ``flip``/``scales`` ask for test-time augmentation (ratios of the test scale); several views
    give averaged probabilities, one view gives logits. ``batch_windows``: windows per forward
    in slide mode (None: measured from free GPU memory, ``CPU_BATCH_WINDOWS`` elsewhere).
    ``amp_dtype``: autocast dtype (see :func:`autocast_dtype`). ``channels_last``: input memory
    format (None: match the model's weights). ``keep_scores=False`` keeps only labels (and the top
    probability with ``confidence``), made band by band without the C x H x W map. ``progress`` is
    told ``(done, total)`` forwards. ``max_memory``: refuse above this many bytes (default: the
    memory available, when the model tells its class count; see :mod:`psegzoo.predictor.memory`).
    """
    t_start = time.perf_counter()
    _check_image(image)
    plan = _plan(model, settings, device, amp_dtype, channels_last, batch_windows)
    views = settings.views(flip, scales)
    h, w = image.shape[:2]
    sizes = _view_sizes((h, w), settings, views)
    out_dev = torch.device(output_device)
    _check_memory(model, (h, w), sizes, settings, plan, batch_windows=batch_windows, keep_scores=keep_scores,
                  confidence=confidence, output_device=out_dev, max_memory=max_memory)
    crop, stride = cast(Size2, settings.crop_size), cast(Size2, settings.stride)
    if settings.mode == "slide":
        total = sum(len(slide_windows(vh, vw, crop, stride)) for vh, vw in sizes)
    else:
        total = len(views)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    runner = Runner(model, plan.device, plan.amp_dtype, plan.normalize)
    done_views: list[View] = []
    lows: list[torch.Tensor] = []
    acc: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    labels = top = None
    prep = post = 0.0
    multi = len(views) > 1
    with torch.inference_mode():
        for ratio, flipped in views:
            t0 = time.perf_counter()
            scale = settings.scale if ratio == 1.0 else tta_scale(settings.scale, ratio)
            with stage("prepare"):
                resized = resize_image(image, scale)
                if flipped:
                    resized = np.ascontiguousarray(resized[:, ::-1])
            with stage("upload"):
                u8 = image_tensor(resized, plan.device)
            del resized
            done_views.append(View(ratio=ratio, flip=flipped, size=(int(u8.shape[2]), int(u8.shape[3]))))
            prep += time.perf_counter() - t0
            with stage("forward"):
                if settings.mode == "slide":
                    low = slide_logits(runner, u8, crop, stride, batch_windows, step)
                else:
                    low = _whole(runner, plan.normalize(u8), direct=plan.direct)[0]
                    step(1)
            del u8
            t1 = time.perf_counter()
            if flipped:
                low = low.flip(-1)
            with stage("outputs"):
                if not keep_scores:
                    lows.append(low)
                elif not multi:
                    scores = resize_scores(low, (h, w), align_corners=settings.align_corners, out_device=out_dev)
                else:
                    if acc is None:
                        acc = torch.zeros((low.shape[0], h, w), dtype=torch.float32, device=out_dev)
                    for r0, r1, band in resize_bands(low, (h, w), align_corners=settings.align_corners):
                        acc[:, r0:r1] += torch.softmax(band, dim=0).to(out_dev)
            del low
            post += time.perf_counter() - t1
        t1 = time.perf_counter()
        if acc is not None:
            acc /= len(views)
            scores = acc
        if scores is not None:
            scores = scores.contiguous()
        if not keep_scores:
            with stage("outputs"):
                labels, top = banded_labels(lows, (h, w), align_corners=settings.align_corners, average_probs=multi,
                                            confidence=confidence)
            del lows
        if plan.device.type == "cuda":
            with stage("wait"):
                torch.cuda.synchronize(plan.device)
        post += time.perf_counter() - t1
    seconds = {"preprocess": prep, "forward": runner.forward_seconds, "postprocess": post}
    seconds["total"] = time.perf_counter() - t_start
    return Inference(scores=scores, is_probs=multi, views=tuple(done_views), seconds=seconds, labels=labels,
                     confidence=top)


@dataclass(frozen=True, eq=False)
class Prepared:
    """An image made ready for a whole-mode forward away from the model's thread (:func:`prepare`).

    ``image_size`` is the original (h, w); ``tensor`` the image resized to the test scale, H x W x 3
    uint8 on the CPU, in pinned memory when it is bound for a GPU.
    """

    image_size: Size2
    tensor: torch.Tensor

    @property
    def size(self) -> Size2:
        """The resized (h, w): images of one resized size can share a forward."""
        return int(self.tensor.shape[0]), int(self.tensor.shape[1])


def prepare(image: np.ndarray, settings: InferenceSettings, device: str | torch.device) -> Prepared:
    """Resize ``image`` to the test scale (bit-exact, as :func:`infer` does) and pin it for a GPU.

    Thread-safe and model-free, so decoding threads can do it while the model runs on another.
    """
    _check_image(image)
    resized = resize_image(image, settings.scale)
    return Prepared((int(image.shape[0]), int(image.shape[1])), host_tensor(resized, device))


MAX_BATCH_IMAGES = 32
"""The most whole images per forward when the batch is sized from free GPU memory."""
SLIDE_BATCH_IMAGES = 4
"""Images whose sliding windows go through the model together when no ``batch_size`` is given."""


class _BatchSizes:
    """How many images go through each step of :func:`infer_batch`: ``batch_size``; or with None, in
    whole mode on CUDA as many as the free memory holds (measured on one image of each size, once per
    model: see :meth:`Runner.known_batch`; 1 elsewhere), and in slide mode ``SLIDE_BATCH_IMAGES``
    (their windows are batched by ``batch_windows``)."""

    def __init__(self, batch_size: int | None, device: torch.device, slide: bool):
        self.sized = batch_size is None and device.type == "cuda" and not slide
        self.default = batch_size if batch_size is not None else SLIDE_BATCH_IMAGES if slide else 1
        self.batch, self.measure = self.default, False

    def chunks(self, runner: Runner, members: Sequence[int], size: Size2, direct: bool) -> Iterator[Sequence[int]]:
        """``members`` (images resized to ``size``) in order, in forwards of the batch size in force
        when each one starts: a measured first forward sizes the later ones."""
        self.batch, self.measure = self.default, False
        if self.sized:
            known = runner.known_batch((3, *size), direct)
            self.batch, self.measure = (known, False) if known is not None else (1, True)
        k = 0
        while k < len(members):
            chunk = members[k:k + self.batch]
            yield chunk
            k += len(chunk)

    def forward(self, runner: Runner, x: torch.Tensor, direct: bool) -> torch.Tensor:
        """The chunk's logits; the first forward of a measured run sizes the later ones."""
        if not self.measure:
            return _whole(runner, x, direct=direct)
        lows, per_image = _whole(runner, x, direct=direct, measure=True)
        self.batch = fit_in_free_memory(runner.device, per_image, MAX_BATCH_IMAGES)
        runner.keep_batch(x.shape[1:], self.batch, direct)
        self.measure = False
        log.debug("whole: about %d bytes per image -> %d images per forward", per_image, self.batch)
        return lows


@dataclass(frozen=True)
class _Outputs:
    """What :func:`infer_batch` keeps of each image's logits, at its original size.

    Labels made on a GPU are copied back into pinned memory without waiting (:func:`to_host` with
    ``wait=False``): :func:`infer_batch` waits once, after its last forward, not once per forward.
    """

    settings: InferenceSettings
    keep_scores: bool
    confidence: bool
    device: torch.device

    def of(self, lows: torch.Tensor, originals: Sequence[Size2], size: Size2) -> list[tuple[Any, Any, Any]]:
        """(scores, labels, top probability) of each image of a chunk whose forward gave ``lows``."""
        if not self.keep_scores and not self.confidence and all(o == size for o in originals):
            # already at the images' size: one argmax and one copy for the whole chunk
            labels = torch.empty((lows.shape[0], *lows.shape[2:]), dtype=label_dtype(lows.shape[1]), device=lows.device)
            for low, out in zip(lows, labels):
                class_argmax(low, out)
            host = to_host(labels, wait=False)
            return [(None, host[j], None) for j in range(len(originals))]
        align = self.settings.align_corners
        if self.keep_scores:
            return [(resize_scores(low, original, align_corners=align, out_device=self.device).contiguous(), None, None)
                    for low, original in zip(lows, originals)]
        return [(None, *banded_labels([low], original, align_corners=align, average_probs=False,
                                      confidence=self.confidence, wait=False)) for low, original in zip(lows, originals)]


def _batch_sizes(images: Sequence[np.ndarray | Prepared], settings: InferenceSettings) -> tuple[list[Size2], list[Size2]]:
    """Each image's original size and the size it is resized to (checking the arrays)."""
    original, sizes = [], []
    for img in images:
        if isinstance(img, Prepared):
            original.append(img.image_size)
            sizes.append(img.size)
        else:
            _check_image(img)
            original.append((int(img.shape[0]), int(img.shape[1])))
            sizes.append(_view_sizes(original[-1], settings, [(1.0, False)])[0])
    return original, sizes


@dataclass(frozen=True)
class _BatchRun:
    """One :func:`infer_batch` call, its options checked: how a chunk of images of one resized size
    becomes their logits at that size (one whole-image forward, or their windows batched)."""

    settings: InferenceSettings
    plan: _Plan
    runner: Runner
    batches: _BatchSizes
    batch_windows: int | None

    def upload(self, img: np.ndarray | Prepared) -> torch.Tensor:
        """One image as 1 x 3 x h x w uint8 on the device (resized here unless it was prepared)."""
        if isinstance(img, Prepared):
            with stage("upload"):
                return upload(img.tensor, self.plan.device)
        with stage("prepare"):
            resized = resize_image(img, self.settings.scale)
        with stage("upload"):
            return image_tensor(resized, self.plan.device)

    def logits(self, u8: torch.Tensor) -> torch.Tensor:
        """N x C x h x w logits of N uint8 images of one size (low-resolution ones for ``direct``)."""
        with stage("forward"):
            if self.settings.mode == "slide":
                crop, stride = cast(Size2, self.settings.crop_size), cast(Size2, self.settings.stride)
                return slide_logits_batch(self.runner, u8, crop, stride, self.batch_windows)
            return self.batches.forward(self.runner, self.plan.normalize(u8), self.plan.direct)


def _check_memory_once(model: Any, original: Sequence[Size2], sizes: Sequence[Size2], settings: InferenceSettings,
                       plan: _Plan, **kwargs: Any) -> None:
    """:func:`_check_memory` for each distinct (original size, resized size) of a batch, once."""
    for size, view in dict.fromkeys(zip(original, sizes)):
        _check_memory(model, size, [view], settings, plan, **kwargs)


def infer_batch(
    model: Any,
    images: Sequence[np.ndarray | Prepared],
    settings: InferenceSettings,
    *,
    device: str | torch.device | None = None,
    amp_dtype: str | torch.dtype | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = 8,
    batch_windows: int | None = None,
    keep_scores: bool = False,
    confidence: bool = False,
    output_device: str | torch.device = "cpu",
    max_memory: int | None = None,
) -> list[Inference]:
    """One view per image, images that resize to the same size taken together: each result is what
    :func:`infer` gives for that image alone (up to the float rounding of a batched convolution).
    Meant for throughput.

    Whole mode: up to ``batch_size`` images share each forward; ``batch_size=None`` sizes the
    forwards from the free GPU memory, measured on the first image of each size (once per model
    and size; 1 elsewhere). Slide mode: the sliding windows of ``batch_size`` images (None:
    ``SLIDE_BATCH_IMAGES``) go through the model together, ``batch_windows`` per forward (None:
    measured from the free GPU memory, ``CPU_BATCH_WINDOWS`` elsewhere), so forwards stay full
    where one image has few windows.

    ``images`` are HxWx3 uint8 arrays or :class:`Prepared` images (resized, and pinned for a GPU,
    by other threads); prepared images are uploaded without blocking the host. On a GPU nothing
    waits for the device between forwards: labels are copied back as they are made, and the host
    waits once, at the end (the ``wait`` stage), so each result's ``seconds["total"]`` is the
    call's time shared out among its images.
    """
    t_start = time.perf_counter()
    check_count(batch_size, "batch_size", PredictionError, none=True)
    original, sizes = _batch_sizes(images, settings)
    plan = _plan(model, settings, device, amp_dtype, channels_last, batch_windows)
    outputs = _Outputs(settings, keep_scores, confidence, torch.device(output_device))
    _check_memory_once(model, original, sizes, settings, plan, batch_windows=batch_windows, keep_scores=keep_scores,
                       confidence=confidence, output_device=outputs.device, max_memory=max_memory)
    run = _BatchRun(settings, plan, Runner(model, plan.device, plan.amp_dtype, plan.normalize),
                    _BatchSizes(batch_size, plan.device, settings.mode == "slide"), batch_windows)
    groups: dict[Size2, list[int]] = {}  # by resized size: one forward can hold them
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    kept: dict[int, tuple[Any, Any, Any]] = {}
    with torch.inference_mode():
        for size, members in groups.items():
            for chunk in run.batches.chunks(run.runner, members, size, plan.direct):
                lows = run.logits(torch.cat([run.upload(images[i]) for i in chunk]))
                with stage("outputs"):
                    kept.update(zip(chunk, outputs.of(lows, [original[i] for i in chunk], size)))
                del lows
        if plan.device.type == "cuda":
            with stage("wait"):
                torch.cuda.synchronize(plan.device)
    seconds = {"total": (time.perf_counter() - t_start) / max(len(images), 1)}
    return [Inference(scores=kept[i][0], is_probs=False, views=(View(1.0, False, sizes[i]),), seconds=seconds,
                      labels=kept[i][1], confidence=kept[i][2]) for i in range(len(images))]


__all__ = ["MAX_BATCH_IMAGES", "SLIDE_BATCH_IMAGES", "Inference", "Prepared", "Progress", "View", "infer", "infer_batch",
           "prepare", "to_host"]
