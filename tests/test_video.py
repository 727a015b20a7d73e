"""``psegzoo predict`` on videos: label frames, overlay/colour videos, JSON, ``--every``, PyAV optional.

Videos are made here with PyAV: ``.mkv`` files are lossless (FFV1, RGB) so the labels can be
compared exactly with ``Segmenter.predict`` on the same frames; ``.mp4`` files are H.264 as users
have them. The model is a synthetic R-18 PSPNet served from a loopback mirror.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import psegzoo
from psegzoo import video
from tests.support.cli import cli
from tests.support.media import NAME, image, leftovers, read_video, served, write_video  # noqa: F401
from tests.support.precision import assert_same_prediction


@pytest.fixture(scope="module")
def seg(served):  # noqa: F811
    return psegzoo.load(NAME, device="cpu", download=psegzoo.DownloadOptions(mirrors=[served.mirror], progress=False))


@pytest.fixture(scope="module")
def lossless(served):  # noqa: F811
    """A 6-frame 64x48 lossless video at 10 frames per second, and its frames."""
    path = served.tmp / "clip.mkv"
    return path, write_video(path, frames=6, size=(48, 64), fps=10)


def predict(*args, code=0):
    return cli("predict", "-m", NAME, *args, "-q", code=code)


def frame_files(folder):
    """The frames in a video's folder (besides them: the record of the files psegzoo wrote there)."""
    names = sorted(p.name for p in folder.iterdir())
    assert video.FRAMES_RECORD in names
    return [n for n in names if n != video.FRAMES_RECORD]


def test_video_gives_label_frames_videos_and_json(served, seg, lossless, tmp_path):  # noqa: F811
    path, frames = lossless
    out = tmp_path / "out"
    predict(path, "-o", out, "--overlay", "--color", "--json", "--mirror", served.mirror)
    assert frame_files(out / "clip") == [f"{i:06d}.png" for i in range(6)]
    expected = [seg.predict(f) for f in frames]
    for i, want in enumerate(expected):
        with Image.open(out / "clip" / f"{i:06d}.png") as im:
            assert im.mode == "P"
            assert_same_prediction(np.asarray(im), want)  # frames may run in batches: near-ties may flip
    assert len({e.labels.tobytes() for e in expected}) > 1  # the frames differ, so the order is checked too

    for kind, render in (("overlay", lambda p: p.overlay(0.5)), ("color", lambda p: p.colorize())):
        decoded, fps = read_video(out / f"clip_{kind}.mp4")
        assert len(decoded) == 6 and fps == 10
        assert decoded[0].shape == (48, 64, 3)
        errors = [np.abs(d.astype(int) - render(e).astype(int)).mean() for d, e in zip(decoded, expected)]
        assert max(errors) < 6, errors  # H.264 at CRF 18: close to the rendered frames
        assert np.abs(decoded[0].astype(int) - render(expected[3]).astype(int)).mean() > max(errors)

    doc = json.loads((out / "clip.json").read_text())
    assert doc["input"] == str(path)  # named as the JSON lines on stdout name it
    assert doc["model"] == NAME and doc["fps"] == 10 and doc["every"] == 1
    assert (doc["width"], doc["height"]) == (64, 48)
    assert [f["index"] for f in doc["frames"]] == list(range(6))
    assert [f["time"] for f in doc["frames"]] == pytest.approx([i / 10 for i in range(6)])
    for record, want in zip(doc["frames"], expected):
        assert record["classes"] == want.class_areas()
        assert sum(c["pixels"] for c in record["classes"]) == 64 * 48
    assert leftovers(out) == []


def test_h264_input_and_every_k(served, seg, tmp_path):  # noqa: F811
    path = tmp_path / "street.mp4"
    write_video(path, frames=7, size=(48, 64), fps=12)
    out = tmp_path / "out"
    predict(path, "-o", out, "--overlay")
    assert frame_files(out / "street") == [f"{i:06d}.png" for i in range(7)]
    decoded, _ = read_video(path)
    for i in (0, 6):
        with Image.open(out / "street" / f"{i:06d}.png") as im:
            assert_same_prediction(np.asarray(im), seg.predict(decoded[i]))

    # Again with every 3rd frame into the same folder: frames from the first run are replaced, not mixed in.
    predict(path, "-o", out, "--overlay", "--every", "3")
    assert frame_files(out / "street") == ["000000.png", "000003.png", "000006.png"]
    kept, fps = read_video(out / "street_overlay.mp4")
    assert len(kept) == 3 and fps == 4  # 12 fps / 3: the video lasts as long as the input
    assert leftovers(out) == []


def test_odd_sizes_are_padded_in_videos_only(served, seg, tmp_path):  # noqa: F811
    path = tmp_path / "odd.mkv"
    frames = write_video(path, frames=2, size=(47, 63))
    out = tmp_path / "out"
    predict(path, "-o", out, "--color")
    with Image.open(out / "odd" / "000001.png") as im:
        assert im.size == (63, 47)
        assert_same_prediction(np.asarray(im), seg.predict(frames[1]))
    decoded, _ = read_video(out / "odd_color.mp4")
    assert len(decoded) == 2 and decoded[0].shape == (48, 64, 3)


def test_display_rotation_is_applied(served, seg, tmp_path):  # noqa: F811
    path = tmp_path / "phone.mkv"
    frames = write_video(path, frames=1, size=(48, 64), rotation=-90)  # shown turned 90 degrees clockwise
    out = tmp_path / "out"
    predict(path, "-o", out)
    with Image.open(out / "phone" / "000000.png") as im:
        labels = np.asarray(im)
    upright = np.ascontiguousarray(np.rot90(frames[0], -1))
    assert labels.shape == (64, 48)
    assert_same_prediction(labels, seg.predict(upright))


def test_writer_falls_back_to_mpeg4(tmp_path):
    target = tmp_path / "v.mp4"
    with video.VideoWriter(target, Fraction(8), codec="mpeg4") as writer:
        for i in range(3):
            writer.write(image(i, 30, 40))
        writer.commit()
    decoded, fps = read_video(target)
    assert len(decoded) == 3 and fps == 8 and decoded[0].shape == (30, 40, 3)
    with video.VideoWriter(tmp_path / "never.mp4", Fraction(8)) as writer:
        writer.write(image(0, 30, 40))  # not committed: nothing appears
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


class FailsAtFrame:
    """The real segmenter, whose prediction of one frame fails (as a full disk or a bad frame would)."""

    def __init__(self, seg, at):
        self.seg, self.at, self.calls = seg, at, 0
        self.palette, self.entry = seg.palette, seg.entry

    def predict_many(self, frames, **kwargs):
        for result in self.seg.predict_many(frames, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                raise psegzoo.OutputError("disk full")
            yield result


def test_a_failure_mid_video_leaves_no_output(seg, lossless, tmp_path):
    path, _ = lossless
    out = tmp_path / "out"
    failing = FailsAtFrame(seg, at=4)
    with pytest.raises(psegzoo.OutputError, match="disk full"):
        video.predict_video(failing, path, out, "clip", overlay=True, color=True, summary=True)
    assert failing.calls == 4
    assert list(out.iterdir()) == []  # no frames, videos, JSON or temporary files
    result = video.predict_video(FailsAtFrame(seg, at=0), path, out, "clip", overlay=True)
    assert result.paths == (out / "clip", out / "clip_overlay.mp4") and result.frames == 6


def test_damaged_video_fails_alone(served, seg, lossless, tmp_path):  # noqa: F811
    good, _ = lossless
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = tmp_path / "out"
    result = predict(bad, good, "-o", out, "--overlay", code=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "not a video" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clip_overlay.mp4"]


def test_videos_are_recognised_by_extension_or_probe(lossless, tmp_path):
    path, _ = lossless
    renamed = tmp_path / "clip.bin"
    shutil.copy(path, renamed)
    picture = tmp_path / "picture.bin"
    Image.fromarray(image(0, 10, 10)).save(picture, format="PNG")
    text = tmp_path / "notes.bin"
    text.write_text("not media")
    assert video.is_video(path) and video.is_video(renamed)
    assert not video.is_video(picture) and not video.is_video(text)
    assert not video.is_video(tmp_path / "missing.bin")


def test_folders_give_videos_when_asked(lossless, tmp_path):
    path, _ = lossless
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(path, folder / "sub" / "clip.mkv")
    shutil.copy(path, folder / "clip.bin")  # a video only by probing: never picked up from a folder
    Image.fromarray(image(0, 10, 10)).save(folder / "a.png")
    assert [f.relative for f in psegzoo.find_images([folder]).images] == ["a"]  # the library's default: images
    found = psegzoo.find_images([folder], videos=True)
    assert [f.relative for f in found.images] == ["a", "sub/clip"]
    assert [f.relative for f in psegzoo.find_images([f"{folder}/**/*"], videos=True).images] == ["a", "sub/clip"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (problem,) = psegzoo.find_images([empty], videos=True).errors
    assert "no image or video files in this directory" in str(problem) and ".mkv" in str(problem)


def test_confidences_are_refused_for_videos_before_loading(served, lossless, tmp_path):  # noqa: F811
    path, _ = lossless
    before = served.gets()
    result = cli("predict", "-m", NAME, path, "-o", tmp_path / "out", "--probs", "--mirror", served.mirror, code=1)
    assert "error: " in result.stderr and "--probs and --logits are written for images only" in result.stderr
    assert served.gets() == before


def test_skip_existing_checks_every_video_output(served, lossless, tmp_path):  # noqa: F811
    path, _ = lossless
    out = tmp_path / "out"
    predict(path, "-o", out, "--overlay", "--json")
    result = cli("predict", "-m", NAME, path, "-o", out, "--overlay", "--json", "--skip-existing")
    assert "nothing to do" in result.stderr
    (out / "clip_overlay.mp4").unlink()
    result = cli("predict", "-m", NAME, path, "-o", out, "--overlay", "--json", "--skip-existing")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["input"], line["output"], line["frames"]) for line in lines] == [(str(path), str(out / "clip"), 6)]
    assert lines[0]["files"] == [str(out / "clip"), str(out / "clip_overlay.mp4"), str(out / "clip.json")]
    assert (out / "clip_overlay.mp4").is_file()
    assert "1 image(s) written" in result.stderr


SHIM = "import sys; sys.modules['av'] = None; from psegzoo.cli import main; main()"


def test_without_pyav_a_video_is_a_one_line_error(served, lossless, tmp_path):  # noqa: F811
    path, _ = lossless
    before = served.gets()
    proc = subprocess.run([sys.executable, "-c", SHIM, "predict", "-m", NAME, str(path), "-o", str(tmp_path / "o"),
                           "--mirror", served.mirror], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: {path}: reading videos needs PyAV, which is not installed; install it with "
                     "pip install 'psegzoo[video]'"]
    assert served.gets() == before  # refused before any download
    # Images alone still work without PyAV (the negative control: the shim only hides PyAV).
    img = tmp_path / "x.png"
    Image.fromarray(image(1, 20, 30)).save(img)
    proc = subprocess.run([sys.executable, "-c", SHIM, "predict", "-m", NAME, str(img), "-o", str(tmp_path / "o"),
                           "-q", "--mirror", served.mirror], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "x.png").is_file()
