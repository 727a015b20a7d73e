"""A predict job from its tasks to its files: plan, load, predict, write, report; alone or under torchrun.

:func:`run_predict` is the one orchestration of ``psegzoo predict``: it plans this process's share
(leaving out inputs whose outputs exist, with ``skip_existing``), loads the model only when there is
work, predicts the images of each run of consecutive image tasks as one stream (batches and reading
threads) and each video on its own, writes every input's outputs and tells the caller what happened
through a :class:`PredictView`. Each image task is paired with its prediction by iterating both in
one ``zip``: the stream gives one result per file, in order. Images' outputs are encoded and written
on the ``workers`` threads too, in order, while the model goes on; a video is predicted and written
on the job's own thread, in its turn.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from .. import video
from ..api import Prediction, Segmenter
from ..errors import ImageError, OutputError, PsegzooError
from ..predictor import default_workers
from ..prefetch import prefetch
from .job import Event, Job
from .tasks import PredictTask, Wanted


@dataclass(frozen=True)
class PredictJob:
    """What a predict job writes and how it predicts, settled once before the job starts.

    ``options`` are :meth:`Segmenter.predict`'s (``flip``, ``scales``, ``batch_windows``,
    ``amp_dtype``, ``mode``, ``crop_size``, ``stride``, ``scale``). ``batch_size`` None sizes whole-mode
    batches from free GPU memory on CUDA and takes one image at a time elsewhere.
    """

    out_dir: str
    wanted: Wanted = field(default_factory=Wanted)
    opacity: float = 0.5
    every: int = 1
    skip_existing: bool = False
    batch_size: int | None = None
    workers: int | None = None
    max_pixels: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictTotals:
    """Inputs written and failed over the whole job, and those left out because their outputs exist."""

    done: int
    failed: int
    skipped: int

    @property
    def planned(self) -> int:
        return self.done + self.failed


class PredictView:
    """What a job tells its caller as it goes; each method does nothing here (override what you show)."""

    def started(self, total: int) -> None:
        """The model is loaded and ``total`` inputs of the whole job are to be predicted."""

    def advanced(self, completed: float) -> None:
        """Inputs done so far (rank 0), with the fraction of the one in hand (windows, views, frames)."""

    def result(self, event: Event[PredictTask, dict[str, Any]]) -> None:
        """An input of the job is done (rank 0): its JSON document (see :func:`run_predict`), or its error."""


def run_predict(job: Job, tasks: Sequence[PredictTask], settings: PredictJob, load: Callable[[], Segmenter], *,
                view: PredictView | None = None) -> PredictTotals:
    """Predict ``tasks`` (the same list on every process, from :func:`predict_tasks`) and write their outputs.

    ``load()`` gives the model; it is called only when some input needs predicting. An input that
    fails in an expected way (:class:`~psegzoo.PsegzooError`, naming it) is reported and the others go
    on; anything else stops the job. The result of each input (``view.result``) is a small document
    that travels to rank 0: ``input``, ``output`` (the label map), ``files`` and the summary of
    :meth:`Prediction.summary` (class areas, model, timings).
    """
    view = view if view is not None else PredictView()
    plan = job.plan(tasks, weigh=lambda t: t.pixels(settings.every),
                    skip=(lambda t: t.complete(settings.out_dir, settings.wanted)) if settings.skip_existing else None)
    if not plan.total:
        return PredictTotals(0, 0, plan.skipped)
    segmenter = load()
    workers = settings.workers if settings.workers is not None else default_workers(segmenter.device, job.cpu_threads)
    run = _Run(settings, segmenter, view, progress=job.is_main, workers=workers)
    view.started(plan.total)
    pairs = run.paired(plan.tasks)
    written = run.written(pairs)
    try:
        totals = job.run_each(written, run.finish, show=run.show, failed=(PsegzooError,))
    finally:
        written.close()  # waits for the writes under way
        pairs.close()  # stops the reading threads
    return PredictTotals(totals.done, totals.failed, plan.skipped)


@dataclass(frozen=True)
class _Written:
    """What writing an image's outputs gave on a writing thread: its document, or the exception, raised
    again on the job's thread when the job reaches that input."""

    doc: dict[str, Any] | None = None
    error: Exception | None = None

    def value(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return cast(dict[str, Any], self.doc)


class _Run:
    """One process's predicting and writing, and the count of inputs shown (for the progress view)."""

    def __init__(self, settings: PredictJob, segmenter: Segmenter, view: PredictView, *, progress: bool,
                 workers: int):
        self.settings = settings
        self.segmenter = segmenter
        self.view = view
        self.workers = workers
        self.shown = 0
        # Images of one size share forwards when batched (whole images, or their windows).
        given = settings.batch_size
        self.batch = given if given is not None else None if segmenter.device.type == "cuda" else 1
        self.options = dict(settings.options, progress=self.within if progress else None)

    def within(self, done: int, total: int) -> None:
        """Forwards (or frames) of the input in hand, on rank 0."""
        self.view.advanced(self.shown + done / max(total, 1))

    def show(self, event: Event[PredictTask, dict[str, Any]]) -> None:
        """Every input of the job, on rank 0."""
        self.shown += 1
        self.view.result(event)
        self.view.advanced(self.shown)

    def paired(self, tasks: Sequence[PredictTask]) -> Generator[tuple[PredictTask, Prediction | PsegzooError | None]]:
        """Each task with its image's prediction (None for a video, predicted as it is written).

        Batched, this process takes its images grouped by size (videos last); each run of
        consecutive images is one prediction stream, zipped with its tasks.
        """
        mine = sorted(tasks, key=lambda t: (t.is_video, t.size)) if self.batch != 1 else list(tasks)
        for is_video, group in itertools.groupby(mine, key=lambda t: t.is_video):
            run = list(group)
            if is_video:
                yield from ((task, None) for task in run)
                continue
            s = self.settings
            # only logits need the C x H x W scores; labels (and confidence) are made without them
            predictions = cast(Generator[Prediction | PsegzooError], self.segmenter.predict_many(
                [t.path for t in run], batch_size=self.batch, workers=self.workers, max_pixels=s.max_pixels,
                keep_scores=s.wanted.logits, confidence=s.wanted.probs is not None, **self.options))
            with contextlib.closing(predictions):  # a generator: closing it stops its reading threads
                yield from zip(run, predictions, strict=True)  # one result per file, in order

    def written(self, pairs: Iterable[tuple[PredictTask, Prediction | PsegzooError | None]],
                ) -> Generator[tuple[PredictTask, _Written | None]]:
        """Each task with its image's outputs written on ``workers`` threads (None for a video, written
        by :meth:`finish`); at most ``workers`` images are written ahead of the job."""

        def write(pair: tuple[PredictTask, Prediction | PsegzooError | None]) -> _Written | None:
            task, made = pair
            if made is None:
                return None
            try:
                return _Written(doc=self.write(task, made))
            except Exception as exc:  # raised again, in order, by finish()
                return _Written(error=exc)

        stream = prefetch(pairs, write, workers=self.workers, depth=self.workers)
        try:
            for (task, _), outcome in stream:
                yield task, outcome
        finally:
            stream.close()

    def finish(self, task: PredictTask, outcome: _Written | None) -> dict[str, Any]:
        """The input's JSON document: a video predicted and written now, an image's from its writing thread."""
        return self.write(task, None) if outcome is None else outcome.value()

    def write(self, task: PredictTask, made: Prediction | PsegzooError | None) -> dict[str, Any]:
        """The input's outputs, and what its JSON line says; errors name the input."""
        try:
            return self._video(task) if made is None else self._image(task, made)
        except PsegzooError as exc:  # reported with the input's name; the others go on
            if isinstance(exc, (ImageError, OutputError)) or str(task.path) in str(exc):
                raise
            raise type(exc)(f"{task.path}: {exc.args[0] if exc.args else exc}") from None

    def _video(self, task: PredictTask) -> dict[str, Any]:
        s = self.settings
        result = video.predict_video(
            self.segmenter, task.path, s.out_dir, task.name, every=s.every, overlay=s.wanted.overlay, opacity=s.opacity,
            color=s.wanted.color, summary=s.wanted.json, batch_size=self.batch, workers=s.workers,
            max_pixels=s.max_pixels, **self.options)
        return {"input": str(task.path), "output": str(result.paths[0]), "files": [str(p) for p in result.paths],
                **result.summary()}

    def _image(self, task: PredictTask, prediction: Prediction | PsegzooError) -> dict[str, Any]:
        if isinstance(prediction, PsegzooError):
            raise prediction
        s = self.settings
        paths = prediction.write(s.out_dir, task.name, overlay=s.wanted.overlay, opacity=s.opacity,
                                 color=s.wanted.color, probs=s.wanted.probs, logits=s.wanted.logits,
                                 summary=s.wanted.json)
        doc = {k: v for k, v in prediction.summary().items() if k != "input"}
        return {"input": str(task.path), "output": str(paths[0]), "files": [str(p) for p in paths], **doc}
