"""The test pipeline: keep-ratio sizes, OpenCV's bilinear, sliding windows, TTA, memory and settings."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import load_file
from torch import nn

import psegzoo.predictor.scores
from psegzoo.errors import PredictionError
from psegzoo.manifest import TestSettings as EntryTest
from psegzoo.manifest import load_manifest
from psegzoo.predictor import (
    InferenceSettings,
    argmax_labels,
    default_stride,
    infer,
    infer_batch,
    probabilities,
    rescale_size,
    resize_bilinear_uint8,
    resize_image,
    resize_scores,
    select_device,
    slide_windows,
    to_input,
    tta_scale,
)
from psegzoo.predictor.scores import class_argmax
from tests.support.precision import assert_same_labels

GOLDEN = Path(__file__).parent / "data" / "golden"
PIPELINES = sorted(GOLDEN.glob("*.pipeline.safetensors"))
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


class TinySeg(nn.Module):
    """A real (small) segmentation net: stride-2 features, classifier, logits resized to the input."""

    def __init__(self, num_classes: int = 5, align_corners: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
        )
        self.cls = nn.Conv2d(8, num_classes, 1)
        self.align_corners = align_corners
        self.eval()

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.forward_lowres(x)
        return F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


class PixelSeg(nn.Module):
    """A 1x1 convolution: cheap on huge images, and its logits at x's size need no resize."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        torch.manual_seed(1)
        self.cls = nn.Conv2d(3, num_classes, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(x)


def _settings(mode="whole", scale=(64, 48), crop=None, stride=None, align_corners=False, resize_logits="via_input"):
    return InferenceSettings(scale=scale, mode=mode, crop_size=crop, stride=stride, mean=MEAN, std=STD,
                             align_corners=align_corners, resize_logits=resize_logits)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Keep-ratio sizes and OpenCV's bilinear
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "w, h, scale, expected",
    [
        (110, 75, (160, 96), (141, 96)),  # enlarge, short side decides: 75 * 1.28 = 96, 110 * 1.28 = 140.8
        (500, 375, (2048, 512), (683, 512)),  # VOC-like: 500 * 512/375 = 682.67
        (375, 500, (2048, 512), (512, 683)),  # portrait: same factor
        (110, 75, (128, 64), (94, 64)),  # shrink: 110 * 64/75 = 93.87
        (4000, 3000, (2048, 1024), (1365, 1024)),  # shrink: 4000 * 1024/3000 = 1365.33
        (4000, 1000, (2048, 1024), (2048, 512)),  # wide: long side decides
        (2048, 1024, (2048, 1024), (2048, 1024)),  # identity
        (2048, 1024, (1024, 2048), (2048, 1024)),  # (long, short) order does not matter
        (3, 2, (3, 3), (3, 2)),  # 2 * 1.0 = 2
        (5, 3, (2, 2), (2, 1)),  # 3 * 0.4 + 0.5 = 1.7 -> 1
    ],
)
def test_rescale_size(w, h, scale, expected):
    assert rescale_size(w, h, scale) == expected


def test_rescale_size_keeps_at_least_one_pixel():
    # 10000 x 1 to (16, 8): factor 16 / 10000, the height rounds to 0 (mmcv's 0 would fail OpenCV)
    assert rescale_size(10000, 1, (16, 8)) == (16, 1)
    assert rescale_size(1, 5000, (2048, 1024)) == (1, 2048)
    with pytest.raises(PredictionError, match="empty"):
        rescale_size(0, 10, (16, 8))


def test_tta_scales_are_ratios_of_the_test_scale():
    assert tta_scale((2048, 1024), 0.75) == (1536, 768)
    assert tta_scale((2048, 512), 1.75) == (3584, 896)
    assert tta_scale((512, 2048), 0.5) == (1024, 256)


def test_opencv_bilinear_by_hand():
    # 1x2 -> 1x4: source positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped); 11-bit weights;
    # 255 * 512 = 130560 -> (2048 * (130560 >> 4) >> 16 + 2) >> 2 = 64, likewise 191.
    img = np.array([[[0], [255]]], np.uint8)
    np.testing.assert_array_equal(resize_bilinear_uint8(img, 4, 1)[0, :, 0], [0, 64, 191, 255])
    # Halving averages 2x2 blocks with rounding: (a + b + c + d + 2) >> 2, no antialiasing beyond that.
    block = np.array([[1, 2, 10, 20], [3, 5, 30, 41]], np.uint8)[..., None]
    np.testing.assert_array_equal(resize_bilinear_uint8(block, 2, 1)[..., 0], [[3, 25]])
    flat = np.full((7, 9, 3), 77, np.uint8)
    for size in ((13, 5), (4, 3), (1, 1), (30, 2)):
        np.testing.assert_array_equal(resize_bilinear_uint8(flat, *size), np.full((size[1], size[0], 3), 77))
    same = _image(6, 5)
    out = resize_bilinear_uint8(same, 5, 6)
    np.testing.assert_array_equal(out, same)
    assert out is not same


def test_shrinking_does_not_antialias():
    # Quartering a width reads source x = 4 * dx + 1.5, i.e. columns 4dx+1 and 4dx+2 with weights
    # 1/2 each. A box/antialiasing filter would average all four columns (64 for one bright column
    # in four); the 2-tap formula gives 128 when the bright column is read and 0 when it is not.
    img = np.zeros((4, 16, 1), np.uint8)
    img[:, 1::4] = 255  # columns 1, 5, 9, 13
    np.testing.assert_array_equal(resize_bilinear_uint8(img, 4, 1)[0, :, 0], [128, 128, 128, 128])
    img2 = np.zeros((4, 16, 1), np.uint8)
    img2[:, 0::4] = 255  # columns 0, 4, 8, 12: never sampled when quartering
    np.testing.assert_array_equal(resize_bilinear_uint8(img2, 4, 1)[0, :, 0], [0, 0, 0, 0])


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name.split(".")[0])
def test_resize_matches_mmcv_goldens(path):
    data = load_file(path)
    with safe_open(path, "np") as f:
        scale = tuple(json.loads(f.metadata()["test_scale"]))
    out = resize_image(data["image_rgb"], scale)
    assert out.shape == data["resized_rgb"].shape
    np.testing.assert_array_equal(out, data["resized_rgb"])  # bit-exact, not just within a level


def test_to_input_normalizes_in_rgb_order():
    img = np.array([[[123.675 + 58.395, 116.28, 0]]]).round().astype(np.uint8)
    x = to_input(img, MEAN, STD)
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    expected = (torch.tensor([182.0, 116.0, 0.0]) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(x.flatten(), expected)
    assert to_input(_image(4, 5), MEAN, STD, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    assert to_input(_image(4, 5), MEAN, STD).is_contiguous()


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_scores_equals_interpolate(align_corners):
    gen = torch.Generator().manual_seed(0)
    for c, h, w, H, W in [(5, 13, 17, 40, 33), (3, 40, 50, 9, 70), (2, 8, 8, 8, 21), (2, 9, 7, 31, 7), (1, 1, 1, 3, 4)]:
        x = torch.randn(c, h, w, generator=gen)
        ref = F.interpolate(x[None], size=(H, W), mode="bilinear", align_corners=align_corners)[0]
        out = resize_scores(x, (H, W), align_corners=align_corners)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Sliding windows
# --------------------------------------------------------------------------------------------


def test_slide_window_grid():
    # mmseg: h_grids = max(96 - 48 + 32 - 1, 0) // 32 + 1 = 3, w_grids = (141 - 64 + 39) // 40 + 1 = 3
    wins = slide_windows(96, 141, (48, 64), (32, 40))
    assert wins == [
        (0, 48, 0, 64), (0, 48, 40, 104), (0, 48, 77, 141),
        (32, 80, 0, 64), (32, 80, 40, 104), (32, 80, 77, 141),
        (48, 96, 0, 64), (48, 96, 40, 104), (48, 96, 77, 141),
    ]
    assert slide_windows(30, 20, (48, 64), (32, 40)) == [(0, 30, 0, 20)]  # smaller than the crop: no padding


def test_every_pixel_covered_for_random_grids():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        crop = tuple(int(v) for v in rng.integers(1, 120, 2))
        stride = tuple(int(rng.integers(1, c + 1)) for c in crop)
        cover = np.zeros((h, w), np.int32)
        wins = slide_windows(h, w, crop, stride)
        sizes = {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in wins}
        assert sizes == {(min(crop[0], h), min(crop[1], w))}
        for y1, y2, x1, x2 in wins:
            assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
            cover[y1:y2, x1:x2] += 1
        assert cover.min() >= 1


def _mmseg_slide_reference(model, x, crop, stride):
    """mmseg's slide_inference as its docs describe it: one window at a time, padded sums, counts."""
    _, _, h, w = x.shape
    preds, count = None, torch.zeros(1, 1, h, w)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        logit = model(x[:, :, y1:y2, x1:x2])
        padded = F.pad(logit, (x1, w - x2, y1, h - y2))
        preds = padded if preds is None else preds + padded
        count[:, :, y1:y2, x1:x2] += 1
    return (preds / count)[0]


@pytest.mark.parametrize("align_corners", [False, True])
def test_slide_matches_reference_and_batching_does_not_matter(align_corners):
    model = TinySeg(align_corners=align_corners)
    img = _image(50, 70)
    s = _settings("slide", scale=(70, 50), crop=(24, 32), stride=(16, 20), align_corners=align_corners)
    with torch.no_grad():
        ref = _mmseg_slide_reference(model, to_input(img, MEAN, STD), (24, 32), (16, 20))
    one = infer(model, img, s, batch_windows=1)
    assert not one.is_probs and one.views[0].size == (50, 70)
    torch.testing.assert_close(one.scores, ref, rtol=0, atol=1e-5)
    for batch in (2, 3, 7, 64):
        torch.testing.assert_close(infer(model, img, s, batch_windows=batch).scores, one.scores, rtol=0, atol=1e-5)


def test_slide_with_crop_covering_the_image_equals_whole():
    model = TinySeg()
    img = _image(30, 41)
    whole = infer(model, img, _settings("whole", scale=(82, 60)))
    slide = infer(model, img, _settings("slide", scale=(82, 60), crop=(60, 82), stride=(40, 50)))
    bigger = infer(model, img, _settings("slide", scale=(82, 60), crop=(100, 100), stride=(10, 10)))
    assert torch.equal(whole.scores, slide.scores) and torch.equal(whole.scores, bigger.scores)
    assert whole.scores.shape == (5, 30, 41)


def test_channels_last_gives_the_same_scores():
    model = TinySeg()
    img = _image(33, 47)
    s = _settings("slide", scale=(94, 66), crop=(32, 32), stride=(20, 20))
    a = infer(model, img, s, channels_last=False).scores
    model_cl = TinySeg().to(memory_format=torch.channels_last)
    b = infer(model_cl, img, s).scores  # follows the model's layout
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Whole mode, direct resize and test-time augmentation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
def test_whole_mode_resizes_logits_via_the_input(align_corners):
    model = TinySeg(align_corners=align_corners)
    img = _image(30, 40)
    s = _settings("whole", scale=(64, 48), align_corners=align_corners)  # enlarges to 64x48
    out = infer(model, img, s)
    with torch.no_grad():
        x = to_input(resize_bilinear_uint8(img, 64, 48), MEAN, STD)
        ref = F.interpolate(model(x), size=(30, 40), mode="bilinear", align_corners=align_corners)[0]
    assert out.views[0].size == (48, 64)
    torch.testing.assert_close(out.scores, ref, rtol=0, atol=1e-6)


def test_direct_mode_resizes_lowres_logits_once():
    model = TinySeg()
    img = _image(30, 40)
    out = infer(model, img, _settings("whole", scale=(64, 48), resize_logits="direct"))
    via = infer(model, img, _settings("whole", scale=(64, 48)))
    with torch.no_grad():
        low = model.forward_lowres(to_input(resize_bilinear_uint8(img, 64, 48), MEAN, STD))
        ref = F.interpolate(low, size=(30, 40), mode="bilinear", align_corners=False)[0]
    assert low.shape[-2:] == (24, 32)
    torch.testing.assert_close(out.scores, ref, rtol=0, atol=1e-6)
    assert (out.scores - via.scores).abs().max() > 1e-3  # the two orders really differ


def _view_probs(model, img, scale, flip, size):
    """One TTA view written out directly: resize, (flip), forward, (flip back), resize, softmax."""
    h, w = img.shape[:2]
    new_w, new_h = rescale_size(w, h, scale)
    resized = resize_bilinear_uint8(img, new_w, new_h)
    if flip:
        resized = resized[:, ::-1].copy()
    with torch.no_grad():
        logits = model(to_input(resized, MEAN, STD))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if flip:
            logits = logits.flip(-1)
    return logits.softmax(dim=1)[0], (new_h, new_w)


def test_tta_averages_softmax_over_scales_and_flips():
    model = TinySeg()
    img = _image(30, 40)
    s = _settings("whole", scale=(64, 48))
    out = infer(model, img, s, flip=True, scales=(0.5, 1.0, 1.25))
    assert out.is_probs and out.scores.shape == (5, 30, 40)
    torch.testing.assert_close(out.scores.sum(0), torch.ones(30, 40))
    views, sizes = [], []
    for r in (0.5, 1.0, 1.25):
        for flip in (False, True):
            p, size = _view_probs(model, img, tta_scale((64, 48), r), flip, (30, 40))
            views.append(p)
            sizes.append(size)
    assert [v.size for v in out.views] == sizes
    assert sizes[0] == (24, 32) and sizes[-1] == (60, 80)  # (32, 24) and (80, 60) keep-ratio targets
    torch.testing.assert_close(out.scores, torch.stack(views).mean(0), rtol=0, atol=1e-6)


def test_single_view_gives_logits_and_flip_alone_is_tta():
    model = TinySeg()
    img = _image(20, 28)
    s = _settings("whole", scale=(28, 20))
    plain = infer(model, img, s)
    half = infer(model, img, s, scales=(0.5,))
    assert not plain.is_probs and not half.is_probs
    assert half.views[0].size == (10, 14) and half.scores.shape == (5, 20, 28)
    flipped = infer(model, img, s, flip=True)
    assert flipped.is_probs and len(flipped.views) == 2


def test_class_argmax_is_argmax_with_ties_nans_and_bands(monkeypatch):
    """The compare-and-keep argmax gives argmax's answer exactly: the first of equal maxima, the first NaN
    (argmax takes NaN as the maximum), also when the map is labelled in bands of rows."""
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 4, (19, 37, 29), generator=g).float()  # few values: ties everywhere
    scores[3, 5, 7] = scores[11, 5, 7] = float("nan")
    scores[0, 9] = float("nan")  # a whole row whose first class is NaN
    scores[:, 20] = -float("inf")
    out = torch.empty(37, 29, dtype=torch.uint8)
    class_argmax(scores, out)
    assert torch.equal(out.long(), scores.argmax(dim=0))
    monkeypatch.setattr(psegzoo.predictor.scores, "BAND_BYTES", 19 * 29 * 4 * 3)  # bands of 3 rows
    np.testing.assert_array_equal(argmax_labels(scores), scores.argmax(dim=0).numpy())


def test_labels_probabilities_helpers():
    scores = torch.randn(7, 13, 11, generator=torch.Generator().manual_seed(3))
    labels = argmax_labels(scores)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, scores.argmax(0).numpy())
    many = torch.randn(300, 3, 4)
    assert argmax_labels(many).dtype == np.int32
    np.testing.assert_array_equal(argmax_labels(many), many.argmax(0).numpy())
    probs = probabilities(scores, is_probs=False)
    torch.testing.assert_close(probs, scores.softmax(0))
    assert probabilities(probs, is_probs=True) is not probs


# --------------------------------------------------------------------------------------------
# Memory: a large image needs about one C x H x W buffer
# --------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch, torch.nn.functional as F
    from torch import nn
    from psegzoo.predictor import InferenceSettings, argmax_labels, infer, resize_bilinear_uint8, to_input
    torch.set_num_threads(2)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    torch.manual_seed(1)
    model = nn.Conv2d(3, 19, 1).eval()
    img = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    s = InferenceSettings(scale=(1024, 768), mode="slide", crop_size=(512, 512), stride=(341, 341),
                          mean=mean, std=std, align_corners=False)
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))
    base = rss()
    out = infer(model, img, s)
    labels = argmax_labels(out.scores)
    peak = rss() - base
    # the naive way, after the measurement: whole logits, one interpolate
    with torch.inference_mode():
        low = model(to_input(resize_bilinear_uint8(img, 1024, 768), mean, std))
        ref = F.interpolate(low, size=(3000, 4000), mode="bilinear", align_corners=False)[0]
    print(json.dumps({"peak": peak, "buffer": out.scores.numel() * 4,
                      "max_diff": (out.scores - ref).abs().max().item(),
                      "labels_equal": float((torch.from_numpy(labels).long() == ref.argmax(0)).float().mean())}))
    """
)


def test_large_image_memory_stays_near_one_buffer():
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # final buffer 19 x 3000 x 4000 float32 = 912 MB; logits at 768x1024 = 60 MB, image 36 MB
    assert res["peak"] < 1.25 * res["buffer"], res
    assert res["max_diff"] <= 1e-5 and res["labels_equal"] == 1.0, res


# --------------------------------------------------------------------------------------------
# Settings and argument checks
# --------------------------------------------------------------------------------------------

WHOLE_TEST = EntryTest(scale=(2048, 512), mode="whole", crop_size=None, stride=None, mean=MEAN, std=STD)
SLIDE_TEST = EntryTest(scale=(2049, 1025), mode="slide", crop_size=(769, 769), stride=(513, 513), mean=MEAN, std=STD)


def test_settings_from_entry_and_overrides():
    entry = load_manifest().get("pspnet_r50-d8_512x1024_40k_cityscapes")
    s = InferenceSettings.from_entry(entry)
    assert (s.mode, s.scale, s.crop_size, s.stride) == (entry.test.mode, tuple(entry.test.scale), None, None)
    assert s.align_corners == entry.architecture.align_corners and s.mean == tuple(entry.test.mean)
    slide = InferenceSettings.from_entry(entry, mode="slide")  # whole-mode entry: the training crop
    assert slide.crop_size == tuple(entry.crop_size) and slide.stride == default_stride(tuple(entry.crop_size))
    assert default_stride((512, 1024)) == (341, 683) and default_stride((769, 769)) == (513, 513)


def test_settings_from_test_overrides():
    s = InferenceSettings.from_test(SLIDE_TEST, True)
    assert (s.crop_size, s.stride, s.scale) == ((769, 769), (513, 513), (2049, 1025))
    s = InferenceSettings.from_test(SLIDE_TEST, True, crop_size=300)  # a new crop gets its own stride
    assert (s.crop_size, s.stride) == ((300, 300), (200, 200))
    s = InferenceSettings.from_test(SLIDE_TEST, True, stride=(100, 200), scale=(1000, 500))
    assert (s.crop_size, s.stride, s.scale) == ((769, 769), (100, 200), (1000, 500))
    assert InferenceSettings.from_test(SLIDE_TEST, True, mode="whole").crop_size is None
    s = InferenceSettings.from_test(WHOLE_TEST, False, mode="slide", train_crop=(512, 512))
    assert (s.crop_size, s.stride) == ((512, 512), (341, 341))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(mode="slide", crop_size=(64, 64), stride=(65, 32)), "stride 65x32 is larger than crop_size 64x64"),
        (dict(mode="slide", crop_size=(0, 64)), "positive"),
        (dict(mode="slide", crop_size=(64, 64), stride=-1), "positive"),
        (dict(mode="slide"), "needs a crop_size"),
        (dict(crop_size=(64, 64)), "slide mode only"),
        (dict(mode="tiles"), "mode must be one of"),
        (dict(scale=(2048,)), "scale"),
        (dict(scale=(0, 512)), "positive"),
    ],
)
def test_settings_refusals(kwargs, words):
    with pytest.raises(PredictionError, match=words):
        InferenceSettings.from_test(WHOLE_TEST, False, **kwargs)


def test_infer_refusals():
    model = TinySeg()
    img = _image(10, 12)
    s = _settings()
    with pytest.raises(PredictionError, match="HxWx3 uint8"):
        infer(model, img.astype(np.float32), s)
    with pytest.raises(PredictionError, match="float16 autocast .* is a GPU option"):
        infer(model, img, s, amp_dtype=torch.float16)
    with pytest.raises(PredictionError, match="amp_dtype must be"):
        infer(model, img, s, amp_dtype="float8")
    with pytest.raises(PredictionError, match="scale ratios"):
        infer(model, img, s, scales=(0.5, -1.0))
    with pytest.raises(PredictionError, match="batch_windows"):
        infer(model, img, s, batch_windows=0)
    with pytest.raises(PredictionError, match="forward_lowres"):
        infer(PixelSeg(), img, _settings(resize_logits="direct"))
    model.train()
    with pytest.raises(PredictionError, match="training mode"):
        infer(model, img, s)


def test_model_with_wrong_output_size_is_reported():
    class NoResize(TinySeg):
        def forward(self, x):
            return self.forward_lowres(x)

    with pytest.raises(PredictionError, match="resize them to the input size"):
        infer(NoResize(), _image(10, 12), _settings())


def test_bfloat16_model_runs_on_cpu():
    model = TinySeg()
    img = _image(20, 24)
    ref = infer(model, img, _settings()).scores
    low = infer(TinySeg().to(torch.bfloat16), img, _settings()).scores
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    mps = getattr(torch.backends, "mps", None)
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps is not None and mps.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device(None).type == expected
    with pytest.raises(PredictionError, match="unknown device|unsupported device"):
        select_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(PredictionError, match="no CUDA"):
            select_device("cuda")


# --------------------------------------------------------------------------------------------
# Labels without the C x H x W scores, progress, batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, flip, scales", [("whole", False, None), ("slide", False, None),
                                                ("whole", True, (0.5, 1.0)), ("slide", False, (0.75, 1.25))],
                         ids=["whole", "slide", "whole-tta", "slide-ms"])
def test_labels_without_scores_equal_the_argmax_of_the_scores(mode, flip, scales):
    model = TinySeg(num_classes=7)
    img = _image(37, 53, seed=4)
    s = _settings(mode, scale=(90, 60), crop=(32, 40) if mode == "slide" else None,
                  stride=(20, 24) if mode == "slide" else None)
    full = infer(model, img, s, flip=flip, scales=scales)
    banded = infer(model, img, s, flip=flip, scales=scales, keep_scores=False, confidence=True)
    assert banded.scores is None and banded.is_probs == full.is_probs
    assert banded.labels.dtype == np.uint8 and banded.labels.shape == (37, 53)
    # Bands of pixels are computed in other shapes (vectorized otherwise): near-ties may flip.
    assert_same_labels(banded.labels, argmax_labels(full.scores), full.scores)
    top = probabilities(full.scores, full.is_probs).amax(0).numpy()
    np.testing.assert_allclose(banded.confidence, top, rtol=1e-5, atol=1e-6)
    assert infer(model, img, s, flip=flip, scales=scales, keep_scores=False).confidence is None


def test_labels_in_bands_across_band_edges(monkeypatch):
    """Many small bands (several rows each, across views) give the labels one band gives."""
    import psegzoo.predictor.scores as scores_module

    model = TinySeg(num_classes=300)  # over 256 classes: int32 labels
    img = _image(41, 29, seed=5)
    s = _settings("whole", scale=(58, 40))
    one = infer(model, img, s, scales=(0.5, 1.0), keep_scores=False)
    monkeypatch.setattr(scores_module, "BAND_BYTES", 1)
    many = infer(model, img, s, scales=(0.5, 1.0), keep_scores=False)
    assert one.labels.dtype == np.int32
    full = infer(model, img, s, scales=(0.5, 1.0))
    assert_same_labels(many.labels, one.labels, full.scores)  # bands: near-ties may flip
    assert_same_labels(one.labels, full.scores.argmax(0).numpy(), full.scores)


def test_progress_counts_windows_of_every_view():
    model = TinySeg()
    img = _image(50, 70)
    s = _settings("slide", scale=(70, 50), crop=(24, 32), stride=(16, 20))
    seen: list[tuple[int, int]] = []
    infer(model, img, s, scales=(0.5, 1.0), batch_windows=2, progress=lambda done, total: seen.append((done, total)))
    per_view = [len(slide_windows(h, w, (24, 32), (16, 20))) for h, w in ((25, 35), (50, 70))]
    total = sum(per_view)
    assert total == 1 + 12  # 25x35 fits one 24x32 window row... (1 x 1) + (3 x 4)
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and len(seen) > 2  # steps, increasing
    whole: list[tuple[int, int]] = []
    infer(model, img, _settings(), flip=True, progress=lambda done, total: whole.append((done, total)))
    assert whole == [(1, 2), (2, 2)]


def test_batch_of_whole_images_equals_one_by_one():
    model = TinySeg(num_classes=6)
    s = _settings("whole", scale=(64, 48))
    images = [_image(30, 40, seed=i) for i in range(3)] + [_image(48, 64, seed=9), _image(30, 40, seed=7)]
    batched = infer_batch(model, images, s, batch_size=2)
    assert len(batched) == len(images)
    for img, out in zip(images, batched):
        alone = infer(model, img, s)
        assert_same_labels(out.labels, argmax_labels(alone.scores), alone.scores)  # batched: near-ties may flip
        assert out.views[0].size == alone.views[0].size
    kept = infer_batch(model, images, s, batch_size=4, keep_scores=True)
    torch.testing.assert_close(kept[3].scores, infer(model, images[3], s).scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(PredictionError, match="batch_size"):
        infer_batch(model, images, s, batch_size=0)


class Recorded(TinySeg):
    """TinySeg that records the batch of every forward."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        return super().forward(x)


def test_batch_of_slide_images_equals_one_by_one():
    # at scale (60, 40) 40x60 and 20x60 images keep their size; 24x32 windows at stride 16x20 make
    # a 2 x 3 grid on 40x60 and a 1 x 3 one on 20x60
    model = Recorded(num_classes=6)
    s = _settings("slide", scale=(60, 40), crop=(24, 32), stride=(16, 20))
    images = [_image(40, 60, seed=i) for i in range(3)] + [_image(20, 60, seed=9), _image(40, 60, seed=7)]
    batched = infer_batch(model, images, s, batch_size=3, batch_windows=4, keep_scores=True)
    # 40x60 images 3 + 1 (18 windows in forwards of 4, then 6), then the 20x60 one: windows of
    # different images share forwards
    assert model.batches == [4, 4, 4, 4, 2, 4, 2, 3]
    for img, out in zip(images, batched):
        alone = infer(model, img, s, batch_windows=1)
        # one window per forward against four: a batched convolution may round otherwise (1e-5 covers it)
        torch.testing.assert_close(out.scores, alone.scores, rtol=1e-5, atol=1e-5)
        assert out.views == alone.views
    labels = infer_batch(model, images, s, batch_size=None)  # None: SLIDE_BATCH_IMAGES images at a time
    for img, out in zip(images, labels):
        alone = infer(model, img, s)
        assert_same_labels(out.labels, argmax_labels(alone.scores), alone.scores)  # near-ties may flip
        assert out.labels.shape == img.shape[:2]


class OneBuffer(TinySeg):
    """TinySeg whose every forward writes its logits into the same memory, as a model compiled to
    replay CUDA graphs does (``torch.compile(mode="reduce-overhead")``); ``outputs_reused`` says so."""

    def __init__(self, outputs_reused: bool):
        super().__init__(seed=3)
        self.outputs_reused = outputs_reused
        self.memory = torch.empty(0)

    def forward(self, x):
        y = super().forward(x)
        if self.memory.numel() < y.numel():
            self.memory = torch.empty(y.numel())
        return self.memory[: y.numel()].view(y.shape).copy_(y)


def test_logits_of_a_model_that_reuses_its_outputs_are_kept_right():
    """The logits kept across forwards (flipped and rescaled views, a batch's earlier chunks, an earlier
    prediction's scores) are copied when the model overwrites them; unflagged, the same model gives
    wrong results, so the test model does overwrite. Same model and arithmetic as the reference on this
    machine, the copy is exact: equal results."""
    s = _settings("whole", scale=(64, 48))
    img, other = _image(48, 64, seed=4), _image(48, 64, seed=5)
    reference = infer(TinySeg(seed=3), img, s, flip=True, scales=(0.75, 1.0), keep_scores=False)
    for model in (OneBuffer(True), OneBuffer(False)):
        views = infer(model, img, s, flip=True, scales=(0.75, 1.0), keep_scores=False)
        assert np.array_equal(views.labels, reference.labels) == model.outputs_reused
        first = infer(model, img, s)
        expected = first.scores.clone()
        infer(model, other, s)
        assert torch.equal(first.scores, expected) == model.outputs_reused
        batch = infer_batch(model, [img, other], s, batch_size=1, keep_scores=True)
        assert torch.equal(batch[0].scores, expected) == model.outputs_reused


# --------------------------------------------------------------------------------------------
# Elongated images, absurd settings, memory
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, resized", [((1, 5000), (1, 2048)), ((5000, 1), (2048, 1)), ((3, 4000), (2, 2048))],
                         ids=str)
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_elongated_images_are_predicted(shape, resized, mode):
    model = TinySeg()
    img = _image(*shape)
    s = _settings(mode, scale=(2048, 1024), crop=(64, 64) if mode == "slide" else None,
                  stride=(48, 48) if mode == "slide" else None)
    out = infer(model, img, s, keep_scores=False)
    assert out.labels.shape == shape
    assert out.views[0].size == resized  # 0.41 x 1 rounds to 0 in mmcv: kept at one pixel
    full = infer(model, img, s)
    assert_same_labels(out.labels, argmax_labels(full.scores), full.scores)  # in bands: near-ties may flip


@pytest.mark.parametrize("kwargs, words", [
    (dict(scale=(200000, 200000)), "scale 200000x200000 is too large"),
    (dict(mode="slide", crop_size=(100000, 512)), "crop_size 100000x512 is too large"),
    (dict(mode="slide", crop_size=(256, 256), stride=(1, 1)), "460801 windows of 256x256 per image"),
])
def test_absurd_settings_are_refused_in_one_line(kwargs, words):
    with pytest.raises(PredictionError, match=words) as info:
        InferenceSettings.from_test(WHOLE_TEST, False, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scales, words", [((500,), "ratio 500 makes the test scale 1024000x256000"),
                                           ((1e-5,), "ratio 1e-05 makes the test scale 0x0"),
                                           (tuple(0.5 + i / 100 for i in range(40)), "40 scale ratios"),
                                           ((0.5, float("nan")), "positive numbers")])
def test_absurd_test_time_scales_are_refused_before_any_work(scales, words):
    settings = InferenceSettings.from_test(WHOLE_TEST, False)
    with pytest.raises(PredictionError, match=words):
        settings.views(False, scales)
    calls = []

    class Counting(TinySeg):
        def forward(self, x):
            calls.append(x.shape)
            return super().forward(x)

    with pytest.raises(PredictionError, match=words):
        infer(Counting(), _image(20, 30), settings, scales=scales)
    assert calls == []
    assert len(settings.views(True, (0.5, 1.0, 1.75))) == 6  # the published ms+flip ratios are fine


class ManyClasses(PixelSeg):
    """A 1x1 convolution to many classes that says how many (as psegzoo's models do)."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.num_classes = num_classes


def test_memory_estimate_counts_the_buffers():
    from psegzoo.predictor import estimate_memory

    model = ManyClasses(150)
    full = estimate_memory(model, (7000, 7000), [(512, 512)], 150)
    assert full.scores == 4 * 150 * 7000 * 7000  # the C x H x W float32 scores: 29.4 GB
    assert full.views == 4 * 150 * 512 * 512 and full.labels == 0
    labels = estimate_memory(model, (7000, 7000), [(512, 512)], 150, keep_scores=False, confidence=True)
    assert labels.labels == 7000 * 7000 * (1 + 4) and labels.scores < 1e9 and labels.total < full.total / 40
    tta = estimate_memory(model, (700, 700), [(256, 256), (512, 512)], 150, keep_scores=False)
    assert tta.views == 4 * 150 * (256 * 256 + 512 * 512)  # every view kept for the average
    slide = estimate_memory(model, (700, 700), [(1024, 2048)], 150, crop_size=(512, 512), batch_windows=3)
    assert slide.forward == 4 * 3 * 512 * 512 * (3 + 150)  # an unknown model: input and logits of one batch


def test_prediction_over_the_memory_limit_is_refused_before_running():
    model = ManyClasses(150)
    img = np.zeros((3000, 4000, 3), np.uint8)
    s = _settings("whole", scale=(256, 192))
    with pytest.raises(PredictionError) as info:
        infer(model, img, s, max_memory=2 * 10**9)
    message = info.value.cli_message()
    assert "this 4000x3000 image needs about 7.3 GB" in message and "7.2 GB for its 150 class scores" in message
    assert "no --logits" in message and "--scale LONGxSHORT" in message and "--max-pixels N" in message
    assert "keep_scores=False" in str(info.value) and "--" not in str(info.value)
    out = infer(model, img, s, max_memory=2 * 10**9, keep_scores=False)  # labels only: well under the limit
    assert out.labels.shape == (3000, 4000)


def test_prediction_beyond_the_memory_available_is_refused():
    """Against the memory the system really has now: an image whose scores need twice that."""
    from psegzoo.predictor import available_memory

    avail = available_memory()
    assert avail is not None  # Linux: /proc/meminfo
    pixels = 2 * avail // (4 * 150) + 1
    h = 4096
    img = np.zeros((h, pixels // h + 1, 3), np.uint8)  # untouched zero pages: no memory used
    with pytest.raises(PredictionError, match="is available"):
        infer(ManyClasses(150), img, _settings("whole", scale=(64, 48)))


_LABELS_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource
    import numpy as np, torch
    from torch import nn
    from psegzoo.predictor import InferenceSettings, infer
    torch.set_num_threads(2)
    torch.manual_seed(1)
    model = nn.Conv2d(3, 150, 1).eval()
    model.num_classes = 150
    img = np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    s = InferenceSettings(scale=(384, 256), mode="whole", crop_size=None, stride=None,
                          mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), align_corners=False)
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = infer(model, img, s, keep_scores=False, confidence=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak": peak, "scores": 4 * 150 * 2000 * 3000, "labels": out.labels.nbytes,
                      "classes": int(len(np.unique(out.labels))), "conf_max": float(out.confidence.max())}))
    """
)


def test_labels_of_a_large_image_need_no_score_buffer():
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", _LABELS_MEMORY_SCRIPT], capture_output=True, text=True, cwd=root,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # the scores would be 150 x 2000 x 3000 float32 = 3.6 GB; labels 6 MB, confidence 24 MB, bands ~100 MB
    assert res["peak"] < res["scores"] / 10, res
    assert res["classes"] > 1 and 0 < res["conf_max"] <= 1.0, res


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


def test_autocast_names_and_devices():
    from psegzoo.predictor import autocast_dtype

    for name in ("bfloat16", "bf16", "BF16", torch.bfloat16):
        assert autocast_dtype(name, "cpu") == torch.bfloat16
    for name in ("float16", "fp16", "half"):
        assert autocast_dtype(name, "cuda") == torch.float16
    assert autocast_dtype(None, "cpu") is None and autocast_dtype("float32", "cpu") is None
    with pytest.raises(PredictionError) as info:
        autocast_dtype("half", "cpu")
    assert "is a GPU option" in str(info.value) and "amp_dtype=torch.bfloat16" in str(info.value)
    assert "--half" in info.value.cli_message() and "--bf16" in info.value.cli_message()
    with pytest.raises(PredictionError, match="amp_dtype must be"):
        autocast_dtype(torch.int8, "cpu")


def test_bfloat16_autocast_on_cpu_keeps_the_labels():
    model = TinySeg(num_classes=5)
    img = _image(40, 56, seed=2)
    s = _settings("whole", scale=(112, 80))
    ref = infer(model, img, s)
    low = infer(model, img, s, amp_dtype="bf16")
    assert low.scores.dtype == torch.float32
    assert not torch.equal(low.scores, ref.scores)  # it really ran in bfloat16
    agree = (argmax_labels(low.scores) == argmax_labels(ref.scores)).mean()
    assert agree >= 0.99, agree


def test_bfloat16_autocast_flips_only_near_ties_on_a_zoo_model():
    """A real architecture (ResNet-18 PSPNet, synthetic weights): bf16 keeps every clear decision."""
    from psegzoo.manifest import get_entry
    from psegzoo.models import build_segmentor
    from tests.support.precision import assert_low_precision_labels
    from tests.support.synth import synth_tensor

    model = build_segmentor(get_entry("pspnet_r18-d8_512x1024_80k_cityscapes").architecture)
    model.load_state_dict({k: synth_tensor(k, v.shape) for k, v in model.state_dict().items()})
    model.eval().fuse_bn()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:120, 0:160]
    img = np.stack([xx * 255 // 160, yy * 255 // 120, (xx + yy) % 256], axis=-1) + rng.normal(0, 20, (120, 160, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    s = _settings("whole", scale=(160, 120))
    full = infer(model, img, s).scores
    low = infer(model, img, s, amp_dtype="bf16").scores
    assert not torch.equal(low, full)
    assert_low_precision_labels(argmax_labels(low), argmax_labels(full), full)


def test_out_of_memory_halves_the_window_batch():
    """An out-of-memory error (the real exception type) on a batch of windows halves the batch and retries."""

    class FailsAbove(TinySeg):
        def __init__(self, limit: int):
            super().__init__()
            self.limit, self.batches = limit, []

        def forward(self, x):
            self.batches.append(x.shape[0])
            if x.shape[0] > self.limit:
                raise torch.OutOfMemoryError("out of memory (the test's limit)")
            return super().forward(x)

    img = _image(50, 70)
    s = _settings("slide", scale=(70, 50), crop=(24, 32), stride=(16, 20))
    model = FailsAbove(3)
    out = infer(model, img, s, batch_windows=8)
    assert model.batches[:3] == [8, 4, 2] and model.batches[2:] == [2, 2, 2, 2, 1]  # 9 windows
    torch.testing.assert_close(out.scores, infer(TinySeg(), img, s, batch_windows=1).scores, rtol=0, atol=1e-5)
    with pytest.raises(PredictionError, match="out of memory running one 24x32 window on cpu") as info:
        infer(FailsAbove(0), img, s, batch_windows=2)
    assert "--crop-size HxW" in info.value.cli_message() and "--bf16" in info.value.cli_message()


# --------------------------------------------------------------------------------------------
# Stages named for torch.profiler
# --------------------------------------------------------------------------------------------


def _profiled(fn) -> list:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return list(prof.events())


def _stage_of(event) -> str | None:
    """The innermost psegzoo stage around a profiler event."""
    node = event.cpu_parent
    while node is not None:
        if node.name.startswith("psegzoo."):
            return node.name
        node = node.cpu_parent
    return None


@pytest.mark.parametrize("mode", ["whole", "slide", "batch"])
def test_profiler_sees_each_stage_and_the_model_inside_forward(mode):
    """Every convolution of the model runs inside ``psegzoo.forward``; resizing the image inside ``prepare``; the
    scores' resize inside ``outputs``; each stage appears as often as its work is done."""
    model = TinySeg()
    images = [_image(30, 40, seed) for seed in range(2)]
    if mode == "batch":
        run = lambda: infer_batch(model, images, _settings("whole", scale=(64, 48)), batch_size=2)  # noqa: E731
    else:
        settings = _settings(mode, scale=(64, 48), crop=(24, 24), stride=(16, 16)) if mode == "slide" else _settings()
        run = lambda: infer(model, images[0], settings, keep_scores=False)  # noqa: E731
    events = _profiled(run)
    counts = {name: sum(e.name == f"psegzoo.{name}" for e in events) for name in psegzoo.predictor.STAGES}
    n = 2 if mode == "batch" else 1
    outputs = 1 if mode == "batch" else 2  # infer(): once for the view, once for its labels
    assert counts == {"prepare": n, "upload": n, "forward": 1, "outputs": outputs, "wait": 0}  # no wait on the CPU
    convs = [e for e in events if e.name == "aten::convolution"]
    assert convs and {_stage_of(e) for e in convs} == {"psegzoo.forward"}
    assert {_stage_of(e) for e in events if e.name == "aten::upsample_bilinear2d" and _stage_of(e) != "psegzoo.forward"} \
        <= {"psegzoo.outputs"}
