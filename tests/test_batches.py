"""More images per second on one device: images of one resized size share forwards (whole images, or their windows).

``psegzoo predict --batch-size N`` and ``Segmenter.predict_many(batch_size=N, workers=K)``: the
labels must be those of one image at a time (CPU, a synthetic R-18 PSPNet served from a loopback
mirror), with reading and resizing on background threads, results in input order, errors in place.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import psegzoo
from psegzoo import predictor
from psegzoo.api import Prediction
from tests.support.cli import cli
from tests.support.media import NAME, image, read_video, served, write_video  # noqa: F401
from tests.support.precision import assert_same_prediction

SIZES = [(40, 60), (40, 60), (33, 47), (40, 60), (40, 60), (40, 60), (64, 48)]  # (h, w); 40x60 five times


@pytest.fixture(scope="module")
def seg(served):  # noqa: F811
    return psegzoo.load(NAME, device="cpu", download=psegzoo.DownloadOptions(mirrors=[served.mirror], progress=False))


@pytest.fixture(scope="module")
def folder(served):  # noqa: F811
    """Seven images (five of one size, interleaved with others) and a 6-frame video, in one folder."""
    root = served.tmp / "batch_in"
    root.mkdir()
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(image(20 + i, h, w)).save(root / f"im{i}.png")
    write_video(root / "clip.mkv", frames=6, size=(48, 64), seed=3)
    return root


@pytest.fixture
def batches(monkeypatch):
    """The number of images of every infer_batch call (the batched path), as it happens."""
    calls: list[int] = []
    real = predictor.infer_batch

    def spy(model, images, settings, **kwargs):
        calls.append(len(images))
        return real(model, images, settings, **kwargs)

    monkeypatch.setattr(predictor, "infer_batch", spy)
    return calls


class VideoFrames:
    """Decoded frames that compare equal when there are as many and each differs by at most 3 levels on
    average: an encoder's threads may round a frame differently from one run to the next."""

    def __init__(self, frames):
        self.frames = [f.astype(np.float64) for f in frames]

    def __eq__(self, other):
        return len(self.frames) == len(other.frames) and all(
            a.shape == b.shape and np.abs(a - b).mean() <= 3 for a, b in zip(self.frames, other.frames))

    def __repr__(self):
        return f"VideoFrames({len(self.frames)} frames, means {[round(f.mean(), 2) for f in self.frames]})"


def outputs(folder):
    """Every output file's bytes (a JSON file's without its timings, a video's decoded frames)."""
    found = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix == ".json":
            content = {k: v for k, v in json.loads(path.read_text()).items() if k != "timings"}
        elif path.suffix == ".mp4":  # lossy, and not bit-reproducible: its frames, compared with a tolerance
            content = VideoFrames(read_video(path)[0])
        else:
            content = path.read_bytes()
        found[path.relative_to(folder).as_posix()] = content
    return found


def test_batched_and_unbatched_labels_are_equal_from_the_command_line(served, folder, batches, tmp_path):  # noqa: F811
    one = cli("predict", "-m", NAME, folder, "-o", tmp_path / "one", "--overlay", "--json", "--mirror", served.mirror)
    assert batches == []  # the default on a CPU: one image per forward
    many = cli("predict", "-m", NAME, folder, "-o", tmp_path / "many", "--overlay", "--json", "--batch-size", "4",
               "--workers", "2", "--mirror", served.mirror)
    # The five 40x60 images are taken together (4 + 1), the others alone; the video's frames 4 + 2.
    assert sorted(batches) == sorted([4, 1, 1, 1, 4, 2])
    written = outputs(tmp_path / "one")
    assert len([n for n in written if n.endswith(".png") and "overlay" not in n]) == 7 + 6  # folders give videos too
    assert outputs(tmp_path / "many") == written  # labels and overlays byte for byte, JSON, video frames
    # One JSON line per input, each once (images of one size come together, so the order may differ).
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert Counter(line["input"] for line in lines) == Counter(json.loads(line)["input"] for line in one.stdout.splitlines())
    assert len(lines) == 8 and {line["input"] for line in lines} == {str(p) for p in folder.iterdir()}


def test_batch_size_option_is_checked_before_loading(served, folder, tmp_path):  # noqa: F811
    before = served.gets()
    result = cli("predict", "-m", NAME, folder, "-o", tmp_path / "o", "--batch-size", "0", code=2)
    assert "--batch-size" in result.stderr and served.gets() == before


def test_predict_many_reads_ahead_batches_by_size_and_keeps_order(seg, batches):
    images = [image(i, h, w) for i, (h, w) in enumerate(SIZES)]
    inputs = [*images[:3], np.zeros((3, 3), np.float32), *images[3:]]  # an error in the middle of a run of one size
    alone = [seg.predict(img) for img in images]
    seen: list[tuple[int, int]] = []
    results = list(seg.predict_many(inputs, batch_size=3, workers=2, keep_scores=False, progress=lambda *a: seen.append(a)))
    assert [type(r).__name__ for r in results] == ["Prediction"] * 3 + ["ImageError"] + ["Prediction"] * 4
    predictions = [r for r in results if isinstance(r, Prediction)]
    for want, got in zip(alone, predictions):
        assert_same_prediction(got.labels, want)  # a batch of 3 rounds otherwise than one image: near-ties may flip
    assert sum(batches) == 7 and max(batches) == 3  # batched, never beyond batch_size
    assert seen == [(1, 1)] * 7  # each image's one forward is reported
    # Test-time augmentation is never batched: each image alone, same labels.
    batches.clear()
    flipped = list(seg.predict_many(images[:2], batch_size=4, workers=1, flip=True))
    assert batches == [] and np.array_equal(flipped[1].labels, seg.predict(images[1], flip=True).labels)
    # Slide mode batches the windows of images of one size.
    slide = dict(mode="slide", crop_size=(24, 24), stride=(16, 16), batch_windows=3)
    windowed = list(seg.predict_many(images, batch_size=4, workers=2, **slide))
    assert batches == [2, 1, 3, 1]  # runs of consecutive images of one size
    for img, got in zip(images, windowed):
        assert_same_prediction(got.labels, seg.predict(img, **slide))
    with pytest.raises(psegzoo.PredictionError, match="workers"):
        next(seg.predict_many(images, workers=-1))


def test_prepared_images_give_the_labels_of_infer(seg):
    settings = seg.settings()
    imgs = [image(5, 40, 60), image(6, 44, 66), image(7, 40, 60)]  # the first two resize to one size
    prepared = [predictor.prepare(img, settings, "cpu") for img in imgs]
    assert prepared[0].size == prepared[1].size and prepared[0].image_size != prepared[1].image_size
    out = predictor.infer_batch(seg.model, prepared, settings, batch_size=None)  # None: one at a time on a CPU
    for img, got in zip(imgs, out):
        np.testing.assert_array_equal(got.labels, seg.predict(img).labels)
        assert got.labels.shape == img.shape[:2]


def test_outputs_written_on_threads_fail_for_their_input_alone(served, tmp_path):  # noqa: F811
    """Outputs are encoded and written on the reading threads: one that cannot be written is reported
    for its own input, in order, and the others are written as they are one thread at a time."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        Image.fromarray(image(40 + i, 40, 60)).save(inputs / f"im{i}.png")
    cli("predict", "-m", NAME, inputs, "-o", tmp_path / "one", "--json", "--mirror", served.mirror)
    (tmp_path / "many" / "im1.png").mkdir(parents=True)  # where im1's labels go: a folder, not written over
    many = cli("predict", "-m", NAME, inputs, "-o", tmp_path / "many", "--json", "--workers", "3", "--mirror",
               served.mirror, code=1)
    errors = [line for line in many.stderr.splitlines() if "im1" in line]
    assert errors and "cannot write" in errors[0], many.stderr
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert [line["input"] for line in lines] == [str(inputs / f"im{i}.png") for i in range(4)]  # in input order
    assert ["error" in line for line in lines] == [False, True, False, False]
    written = outputs(tmp_path / "many")
    assert (tmp_path / "many" / "im1.png").is_dir() and not any(n.startswith("im1") for n in written)
    assert written == {n: v for n, v in outputs(tmp_path / "one").items() if not n.startswith("im1")}
