"""The predictor through the public API and the CLI: precision, compile, fast paths, scores, batches.

A tiny zoo entry (the R-18-D8 PSPNet with 8-channel widths and a 64 x 48 test scale) is added by an
extra manifest; its weights are our converted ``.safetensors`` with synthetic values (the rule of
``tests/support/synth.py`` applied to our keys), passed with ``weights=`` / ``--weights``: nothing is
downloaded, and forwards take milliseconds.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import psegzoo
from psegzoo import convert, predictor
from psegzoo.api import Prediction, Segmenter
from psegzoo.errors import ImageError, PredictionError
from psegzoo.models import FastPaths, build_segmentor
from psegzoo.models.fast import tuning, winograd
from tests.support.cli import cli
from tests.support.hub import scrub_environment
from tests.support.media import image as scene
from tests.support.precision import assert_same_prediction
from tests.support.served import MMSEG_BASE, builtin_entry, write_index
from tests.support.synth import synth_tensor

TINY = "pspnet_r18-d8_tiny_cityscapes"


def tiny_entry() -> dict:
    obj = builtin_entry(MMSEG_BASE)
    obj["name"] = TINY
    arch = obj["architecture"]
    arch["backbone"].update(stem_channels=8, base_channels=8)
    arch["decode_head"].update(in_channels=64, channels=8)
    arch["auxiliary_head"].update(in_channels=32, channels=8)
    obj["weights"]["file"] = f"{TINY}_20240101_000000-00000000.pth"
    obj["weights"]["sha256_prefix"] = None
    obj["test"]["scale"] = [64, 48]
    return obj


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny entry in an extra manifest, and its converted weights (returned)."""
    tmp = tmp_path_factory.mktemp("tiny")
    mp = pytest.MonkeyPatch()
    scrub_environment(mp)
    mp.setenv("PSEGZOO_INDEX", str(write_index(tmp / "index.json", [tiny_entry()])))
    mp.setenv("PSEGZOO_HOME", str(tmp / "home"))
    mp.setenv("COLUMNS", "80")
    try:
        model = build_segmentor(psegzoo.get_entry(TINY).architecture)
        state = {k: synth_tensor(k, v.shape) for k, v in model.state_dict().items()}
        path = tmp / "tiny.safetensors"
        convert.save_converted(state, path, {"name": TINY, "source_file": "tiny.pth", "source_sha256": "0" * 64,
                                             "source_format": "mmseg", "psegzoo_version": psegzoo.__version__})
        yield path
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def seg(tiny) -> Segmenter:
    return psegzoo.load(TINY, weights=tiny, device="cpu")


def street(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    return scene(seed, h, w)


def read_labels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


# --------------------------------------------------------------------------------------------
# Prediction: scores, is_probs, the deprecated logits, repr
# --------------------------------------------------------------------------------------------


def test_one_view_scores_are_logits(seg):
    pred = seg.predict(street())
    assert not pred.is_probs and pred.scores.shape == (19, 40, 60) and pred.scores.dtype == np.float32
    assert len(np.unique(pred.labels)) > 1  # a real label map
    np.testing.assert_array_equal(pred.labels, pred.scores.argmax(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # logits of one view are logits: no warning
        assert pred.logits is pred.scores
    np.testing.assert_allclose(pred.probs(), torch.softmax(torch.from_numpy(pred.scores), 0).numpy(), atol=1e-6)


def test_test_time_augmentation_gives_probabilities(seg):
    pred = seg.predict(street(), flip=True, scales=(0.5, 1.0))
    assert pred.is_probs
    np.testing.assert_allclose(pred.scores.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, pred.scores.argmax(0))
    np.testing.assert_allclose(pred.probs(), pred.scores, atol=1e-7)
    np.testing.assert_allclose(pred.confidence(), pred.scores.max(0), atol=1e-7)
    with pytest.warns(DeprecationWarning, match="log-probabilities; read Prediction.scores"):
        old = pred.logits
    np.testing.assert_allclose(np.exp(old), pred.scores, rtol=1e-5, atol=1e-7)  # what .logits always held


def test_repr_shows_the_entry_and_shapes_not_arrays(seg):
    pred = seg.predict(street())
    text = repr(pred)
    assert text == (f"Prediction('{TINY}', labels=40x60 uint8, scores=19x40x60 float32 (logits), "
                    "image=40x60x3 uint8, source=None)")
    labels_only = seg.predict(street(), keep_scores=False)
    assert "scores=None (not kept)" in repr(labels_only)
    assert "(probabilities)" in repr(seg.predict(street(), flip=True))


def test_labels_only_equal_the_full_prediction(seg, tmp_path):
    image = street(seed=3)
    full = seg.predict(image)
    only = seg.predict(image, keep_scores=False, confidence=True)
    assert only.scores is None
    assert_same_prediction(only.labels, full)  # made in bands: near-ties may flip
    np.testing.assert_allclose(only.confidence(), full.confidence(), atol=1e-6)
    written = only.write(tmp_path, "x", overlay=True, probs="npy", summary=True)
    assert [p.name for p in written] == ["x.png", "x_overlay.png", "x_probs.npy", "x.json"]
    with pytest.raises(PredictionError, match="kept only labels; predict with keep_scores=True"):
        only.probs()
    with pytest.raises(PredictionError, match="keep_scores=True"):
        only.write(tmp_path, "y", logits=True)


def test_progress_reaches_the_total(seg):
    seen = []
    seg.predict(street(), mode="slide", crop_size=(24, 32), stride=(16, 20), progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] > 1


# --------------------------------------------------------------------------------------------
# predict_many: a bad image never stops the batch; batches on the model
# --------------------------------------------------------------------------------------------


def test_predict_many_reports_each_failure_and_goes_on(seg, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(street()).save(folder / "a.png")
    Image.fromarray(street(1, 5000)).save(folder / "b_tall.png")  # elongated: predicted
    (folder / "c.png").write_bytes(b"not a png")
    Image.fromarray(street(seed=5)).save(folder / "d.png")
    huge = np.zeros((6000, 9000, 3), np.uint8)  # needs 4 GB of scores: over the limit given below
    inputs = [folder, huge, street(5000, 1), np.zeros((4, 4), np.float32), street()]
    results = list(seg.predict_many(inputs, max_memory=10**9))
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Prediction", "Prediction", "ImageError", "Prediction", "PredictionError", "Prediction",
                     "ImageError", "Prediction"]
    assert results[1].labels.shape == (1, 5000) and results[5].labels.shape == (5000, 1)
    assert "c.png" in str(results[2])
    assert str(results[4]).startswith("input 1: predicting this 9000x6000 image needs about")
    assert_same_prediction(results[7].labels, seg.predict(street()))
    with pytest.raises(PredictionError, match="larger than crop_size"):  # wrong for every image: at once
        next(seg.predict_many([street()], mode="slide", crop_size=32, stride=64))
    with pytest.raises(PredictionError, match="unknown option"):
        next(seg.predict_many([street()], flipp=True))


def test_predict_many_in_batches_gives_the_same_labels(seg):
    images = [street(seed=i) for i in range(5)] + [street(30, 80, seed=9), np.zeros((2, 2), np.int64)]
    one = list(seg.predict_many(images))
    batched = list(seg.predict_many(images, batch_size=3, keep_scores=False))
    assert [type(r) for r in batched] == [type(r) for r in one] == [Prediction] * 6 + [ImageError]
    for a, b in zip(one[:6], batched[:6]):
        assert_same_prediction(b.labels, a)  # batches of 3 round otherwise: near-ties may flip
        assert b.scores is None


# --------------------------------------------------------------------------------------------
# Precision, fast paths, compile
# --------------------------------------------------------------------------------------------


def test_amp_dtype_names(seg):
    image = street(seed=2)
    ref = seg.predict(image)
    for name in ("bf16", "bfloat16", torch.bfloat16):
        low = seg.predict(image, amp_dtype=name)
        assert (low.labels == ref.labels).mean() >= 0.99
        assert not np.array_equal(low.scores, ref.scores)
    with pytest.raises(PredictionError, match="GPU option"):
        seg.predict(Path("/nonexistent.png"), amp_dtype="fp16")  # refused before the image is read


def test_fast_paths_do_not_change_labels(tiny):
    seg = psegzoo.load(TINY, weights=tiny, device="cpu")
    assert seg.fast_path_choice.paths == tuning.default_fast_paths()  # no tune record in this cache: the rule
    image = street(seed=4)
    plain = seg.use_fast_paths(False).predict(image)
    assert seg.fast_paths == FastPaths.none()
    fast = seg.use_fast_paths(True).predict(image)
    assert seg.fast_paths == FastPaths(decompose=True, winograd=False, channels_last=True)  # 8 channels: no Winograd
    assert_same_prediction(fast.labels, plain)  # another computation, other rounding
    np.testing.assert_allclose(plain.scores, fast.scores, rtol=1e-4, atol=1e-4 * np.abs(plain.scores).max())
    with pytest.raises(PredictionError, match="fast_paths must be"):
        seg.use_fast_paths("fastest")


def test_channels_last_choice_keeps_winograd_f4(tiny, monkeypatch):
    """``load(channels_last=True)`` with every fast path asked keeps F(4x4, 3x3) (``winograd_f4``) too."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)  # let the tiny model's layers use Winograd
    monkeypatch.setattr(winograd, "MIN_CHANNELS_F4", 8)
    seg = psegzoo.load(TINY, weights=tiny, device="cpu", channels_last=True).use_fast_paths(True)
    assert seg.fast_paths == FastPaths.all()
    seg = psegzoo.load(TINY, weights=tiny, device="cpu", channels_last=False).use_fast_paths(True)
    assert seg.fast_paths == FastPaths(decompose=True)  # Winograd needs channels-last


def test_compile_keeps_the_fast_paths_that_trace(tiny):
    """``compile()`` drops Winograd (it breaks graphs) and compiles in place; the traced model (dynamo
    with the eager backend: inductor's own run is the CLI test below) gives the eager labels."""
    seg = psegzoo.load(TINY, weights=tiny, device="cpu").use_fast_paths(True)
    image = street(seed=6)
    eager = seg.predict(image)
    assert seg.compile(backend="eager") is seg and isinstance(seg.model, psegzoo.models.Segmentor)
    assert seg.fast_paths == FastPaths(decompose=True, winograd=False, channels_last=True)
    compiled = seg.predict(image)
    assert_same_prediction(compiled.labels, eager)
    np.testing.assert_allclose(compiled.scores, eager.scores, rtol=1e-4, atol=1e-4 * np.abs(eager.scores).max())
    assert seg.model.outputs_reused is False  # no CUDA graphs: its outputs are its own


@pytest.mark.parametrize("kwargs, says", [
    ({"mode": "fastest"}, "compile(mode='fastest'): Unrecognized mode=fastest"),
    ({"backend": "nope"}, "compile(backend='nope'): Invalid backend: 'nope'"),
    ({"mode": "reduce-overhead", "options": {"max_autotune": True}}, "Either mode or options"),
    ({"fullgraph": True, "bogus": 1}, "unexpected keyword argument 'bogus'"),
])
def test_compile_arguments_torch_refuses_are_one_line_and_change_nothing(tiny, kwargs, says):
    seg = psegzoo.load(TINY, weights=tiny, device="cpu").use_fast_paths(True)
    before, forward = seg.fast_paths, seg.model.forward
    with pytest.raises(PredictionError) as caught:
        seg.compile(**kwargs)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert seg.fast_paths == before and seg.model.forward == forward and seg.model._compiled_call_impl is None


@pytest.mark.parametrize("kwargs, replays", [
    ({}, False), ({"mode": "default"}, False), ({"mode": "reduce-overhead"}, True), ({"mode": "max-autotune"}, True),
    ({"mode": "max-autotune-no-cudagraphs"}, False), ({"options": {"triton.cudagraphs": True}}, True),
    ({"options": {"max_autotune": True}}, False), ({"backend": "cudagraphs"}, True), ({"backend": "eager"}, False),
    ({"backend": "aot_eager"}, False), ({"backend": lambda gm, inputs: gm}, True),
])
def test_compiled_models_that_replay_cuda_graphs_are_known(kwargs, replays):
    """Which ``compile()`` arguments make a model overwrite its outputs on its next forward (the
    predictor then copies the logits it keeps): CUDA graphs only, on CUDA only; an unknown backend
    counts as replaying. ``torch.device("cuda")`` is only a name here: no GPU is needed."""
    assert predictor.replays_cuda_graphs(torch.device("cuda", 0), kwargs) is replays
    assert predictor.replays_cuda_graphs("cpu", kwargs) is False


# --------------------------------------------------------------------------------------------
# The command line: --half, --bf16, --compile, bad images
# --------------------------------------------------------------------------------------------


def test_half_on_the_cpu_is_one_line_before_loading(tiny, tmp_path):
    Image.fromarray(street()).save(tmp_path / "a.png")
    result = cli("predict", "-m", TINY, "--weights", tmp_path / "absent.safetensors", tmp_path / "a.png",
                 "-o", tmp_path / "out", "--device", "cpu", "--half", code=1)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--half" in lines[0] and "is a GPU option" in lines[0] and "--bf16" in lines[0]
    assert "absent" not in result.stderr  # the weights were never looked at


def test_bf16_on_the_cpu_keeps_the_labels(tiny, tmp_path):
    Image.fromarray(street(seed=8)).save(tmp_path / "a.png")
    cli("predict", "-m", TINY, "--weights", tiny, tmp_path / "a.png", "-o", tmp_path / "fp32", "-q", "--device", "cpu")
    cli("predict", "-m", TINY, "--weights", tiny, tmp_path / "a.png", "-o", tmp_path / "bf16", "-q", "--device", "cpu",
        "--bf16", "--logits")
    ref, low = read_labels(tmp_path / "fp32" / "a.png"), read_labels(tmp_path / "bf16" / "a.png")
    assert (ref == low).mean() >= 0.99
    logits = np.load(tmp_path / "bf16" / "a_logits.npy")
    assert logits.shape == (19, 40, 60)


def test_compile_on_the_cpu_keeps_the_labels(tiny, tmp_path):
    Image.fromarray(street(seed=9)).save(tmp_path / "a.png")
    cli("predict", "-m", TINY, "--weights", tiny, tmp_path / "a.png", "-o", tmp_path / "eager", "-q", "--device", "cpu")
    cli("predict", "-m", TINY, "--weights", tiny, tmp_path / "a.png", "-o", tmp_path / "compiled", "-q", "--device",
        "cpu", "--compile")
    # inductor generates its own kernels, which add in another order: near-ties may flip.
    expected = psegzoo.load(TINY, weights=tiny, device="cpu").predict(street(seed=9))
    assert_same_prediction(read_labels(tmp_path / "eager" / "a.png"), expected)
    assert_same_prediction(read_labels(tmp_path / "compiled" / "a.png"), expected)


def test_cli_goes_on_after_an_image_the_model_cannot_take(tiny, tmp_path):
    Image.fromarray(street()).save(tmp_path / "a.png")
    Image.fromarray(street(1, 5000)).save(tmp_path / "b.png")
    Image.fromarray(street(5000, 1)).save(tmp_path / "c.png")
    result = cli("predict", "-m", TINY, "--weights", tiny, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png",
                 "-o", tmp_path / "out", "--device", "cpu", "-q")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]
    assert read_labels(tmp_path / "out" / "b.png").shape == (1, 5000)
    assert result.stderr == ""


@pytest.mark.parametrize("batch", ["1", "2"])
def test_cli_goes_on_after_the_model_fails_on_one_image(tiny, tmp_path, monkeypatch, batch):
    """A model error (here a RuntimeError on 37-pixel-high images, as an out-of-memory error would be)
    is that image's one line; the images before and after it are written, and the exit code is 1."""
    for name, h in (("a", 48), ("b", 37), ("c", 48)):
        Image.fromarray(street(h, 64)).save(tmp_path / f"{name}.png")
    real_infer, real_batch = predictor.infer, predictor.infer_batch

    def failing(model, image, settings, **kwargs):
        if image.shape[0] == 37:
            raise RuntimeError("out of memory (simulated)\nsecond line of the torch message")
        return real_infer(model, image, settings, **kwargs)

    def failing_batch(model, images, settings, **kwargs):
        if any(img.image_size[0] == 37 for img in images):
            raise RuntimeError("out of memory (simulated)")
        return real_batch(model, images, settings, **kwargs)

    monkeypatch.setattr(predictor, "infer", failing)
    monkeypatch.setattr(predictor, "infer_batch", failing_batch)
    result = cli("predict", "-m", TINY, "--weights", tiny, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png",
                 "-o", tmp_path / "out", "--device", "cpu", "--batch-size", batch, "--scale", "64x48", "-q", code=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # the image's one line (-q: no summary)
    assert "b.png" in lines[0] and "out of memory (simulated)" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, words", [
    (["--scale", "200000x200000"], "scale 200000x200000 is too large"),
    (["--scales", "1000"], "scale ratio 1000 makes the test scale 64000x48000"),
    (["--mode", "slide", "--scale", "2048x1024", "--crop-size", "64", "--stride", "1"], "windows of 64x64 per image"),
])
def test_absurd_settings_fail_in_one_line_before_loading(tiny, tmp_path, args, words):
    Image.fromarray(street()).save(tmp_path / "a.png")
    result = cli("predict", "-m", TINY, "--weights", tmp_path / "absent.safetensors", tmp_path / "a.png",
                 "-o", tmp_path / "out", *args, code=1)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_bench_runs_at_the_size_asked(tiny):
    report = json.loads(cli("bench", TINY, "--weights", tiny, "--size", "40x72", "--mode", "whole", "--mode",
                            "slide", "--json").stdout)
    rows = {(r["mode"], r["variant"]): r for r in report["runs"]}
    assert rows[("whole", "optimized")]["forward_size"] == [40, 72]  # not the 64 x 48 test scale
    assert rows[("slide", "optimized")]["forward_size"] == [40, 72]  # one window: the image is smaller than the crop
    assert rows[("whole", "optimized")]["labels_equal"] == 1.0
    assert set(report["fast_paths"]) == {"decompose", "winograd", "channels_last", "winograd_f4"}
    assert report["fast_paths_source"] == "rule" and report["fast_path_measurement"] is None  # nothing measured
    big = json.loads(cli("bench", TINY, "--weights", tiny, "--size", "96x128", "--mode", "whole", "--no-baseline",
                         "--json").stdout)
    assert big["runs"][0]["forward_size"] == [96, 128]
