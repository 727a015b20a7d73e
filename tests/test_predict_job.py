"""``psegzoo.distributed.run_predict``: the predict job's orchestration, called from Python in one process.

A real (tiny, served) model, real image files of different sizes, a video and a damaged file: every
input's result must belong to that input (its label map has the input's size), whatever the order
the batches take them in, and a bad input fails alone.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import psegzoo
from psegzoo.distributed import Job, PredictJob, PredictView, Wanted, predict_tasks, run_predict
from tests.support.media import NAME, image, served, write_video  # noqa: F401  (served is a fixture)

SIZES = [(40, 60), (33, 47), (40, 60), (64, 48), (33, 47)]  # (h, w); repeated sizes batch together


class Recorder(PredictView):
    def __init__(self) -> None:
        self.total: int | None = None
        self.events: list = []
        self.completed: list[float] = []

    def started(self, total: int) -> None:
        self.total = total

    def advanced(self, completed: float) -> None:
        self.completed.append(completed)

    def result(self, event) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def inputs(served, tmp_path_factory) -> list[Path]:  # noqa: F811
    folder = tmp_path_factory.mktemp("job-inputs")
    paths = []
    for i, (h, w) in enumerate(SIZES):
        path = folder / f"img{i}.png"
        Image.fromarray(image(i, h, w)).save(path)
        paths.append(path)
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    clip = folder / "clip.mkv"
    write_video(clip, frames=3, size=(48, 64))
    # a video and a damaged file among the images: the stream of predictions must stay in step
    return [paths[0], paths[1], clip, paths[2], broken, paths[3], paths[4]]


@pytest.fixture(scope="module")
def segmenter(served):  # noqa: F811
    return psegzoo.load(NAME, device="cpu", progress=False, mirrors=[served.mirror])


def tasks_of(inputs: list[Path], out: Path, wanted: Wanted) -> list:
    found = psegzoo.find_images([str(p) for p in inputs], videos=True)
    names = psegzoo.unique_output_names([f.relative for f in found.images], out_dir=out,
                                        inputs=[f.path for f in found.images])
    return predict_tasks(found.images, names, wanted)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_each_input_gets_its_own_prediction_and_a_bad_one_fails_alone(inputs, segmenter, tmp_path, batch_size):
    out = tmp_path / "out"
    wanted = Wanted(json=True)
    tasks = tasks_of(inputs, out, wanted)
    assert len(tasks) == len(inputs)
    view = Recorder()
    loads = []

    def load():
        loads.append(1)
        return segmenter

    with Job.start() as job:
        totals = run_predict(job, tasks, PredictJob(out_dir=str(out), wanted=wanted, batch_size=batch_size), load,
                             view=view)
    assert (totals.done, totals.failed, totals.skipped) == (len(inputs) - 1, 1, 0)
    assert loads == [1] and view.total == len(inputs)
    assert sorted(str(e.task.path) for e in view.events) == sorted(str(p) for p in inputs)
    for event in view.events:
        path = Path(event.task.path)
        if path.name == "broken.png":
            assert not event.ok and "broken.png" in str(event.error)
            continue
        assert event.ok, event.error
        assert event.value["input"] == str(path)
        if path.suffix == ".mkv":
            assert Path(event.value["output"]).is_dir()  # its label frames
            continue
        with Image.open(path) as im:
            size = im.size
        with Image.open(event.value["output"]) as labels:
            assert labels.size == size  # the label map of this input, not of its neighbour in the stream
        assert (event.value["width"], event.value["height"]) == size
    # the bar ends at the whole job, having moved forward only
    assert view.completed[-1] == len(inputs)
    assert view.completed == sorted(view.completed)


def test_nothing_to_do_loads_no_model(inputs, segmenter, tmp_path):
    out = tmp_path / "out"
    wanted = Wanted()
    tasks = [t for t in tasks_of(inputs, out, wanted) if t.path.name != "broken.png"]
    settings = PredictJob(out_dir=str(out), wanted=wanted, skip_existing=True)
    with Job.start() as job:
        first = run_predict(job, tasks, settings, lambda: segmenter)
        assert (first.done, first.failed, first.skipped) == (len(tasks), 0, 0)

        def refuse():
            raise AssertionError("the model was loaded with nothing to predict")

        again = run_predict(job, tasks, settings, refuse)
    assert (again.done, again.failed, again.skipped) == (0, 0, len(tasks))
