"""The predictor's CUDA-only paths, on a real GPU: free-memory batch sizing, out-of-memory halving,
autocast, pinned copies, batched whole images, the device's fast paths.

Marked ``cuda`` (``pytest -m cuda``; ``benchmarks/bench_gpu.py`` runs them first) and skipped, with the
reason, where ``torch.cuda.is_available()`` is False.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psegzoo.manifest import get_entry
from psegzoo.models import FastPaths, build_segmentor, fast_paths_of, use_fast_paths
from psegzoo.predictor import (
    InferenceSettings,
    argmax_labels,
    image_tensor,
    infer,
    infer_batch,
    prepare_model,
    replays_cuda_graphs,
    select_device,
    to_host,
)
from tests.support.precision import assert_low_precision_labels, assert_same_labels
from tests.support.synth import synth_tensor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _settings(mode="whole", scale=(256, 192), crop=None, stride=None):
    return InferenceSettings(scale=scale, mode=mode, crop_size=crop, stride=stride, mean=MEAN, std=STD,
                             align_corners=False)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1), (xx + yy) % 256], axis=-1).astype(np.float64)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _small_model(name: str = "pspnet_r18-d8_512x1024_80k_cityscapes") -> nn.Module:
    """A zoo architecture at its real widths (ResNet-18 PSPNet), synthetic weights (non-degenerate labels)."""
    model = build_segmentor(get_entry(name).architecture)
    model.load_state_dict({k: synth_tensor(k, v.shape) for k, v in model.state_dict().items()})
    return model.eval().fuse_bn()


class Recording(nn.Module):
    """A real convolutional net that records the batch size of every forward (and can fail above a size)."""

    def __init__(self, width: int = 64, fail_above: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 5, 1))
        self.batches: list[int] = []
        self.fail_above = fail_above
        self.num_classes = 5
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (the test's limit)")
        return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class Convs(Recording):
    """Recording without its record: a forward with no Python side effects, which compiles once per shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_auto_device_is_the_gpu():
    assert select_device("auto").type == "cuda"
    model = prepare_model(nn.Conv2d(3, 4, 1), "cuda")
    assert next(model.parameters()).is_cuda and torch.backends.cudnn.benchmark


def test_slide_batch_is_sized_from_free_memory():
    model = Recording().cuda()
    img = _image(300, 400)
    s = _settings("slide", scale=(400, 300), crop=(64, 64), stride=(32, 32))
    out = infer(model, img, s)  # batch_windows=None: measured
    assert model.batches[0] == 1 and max(model.batches[1:]) > 1  # one window measured, then batches
    model.batches.clear()
    one = infer(model, img, s, batch_windows=1)
    assert set(model.batches) == {1}
    torch.testing.assert_close(out.scores, one.scores, rtol=1e-4, atol=1e-4)


def test_out_of_memory_halves_the_batch():
    model = Recording(fail_above=3).cuda()
    img = _image(200, 260)
    s = _settings("slide", scale=(260, 200), crop=(64, 64), stride=(48, 48))
    out = infer(model, img, s, batch_windows=16)
    assert model.batches[:3] == [16, 8, 4] and set(model.batches[3:]) <= {1, 2, 3}
    ref = infer(Recording().cuda(), img, s, batch_windows=1)
    torch.testing.assert_close(out.scores, ref.scores, rtol=1e-4, atol=1e-4)


def test_real_out_of_memory_is_recovered_or_reported():
    """Fill the GPU until about 2 GB are free; 16 windows of 512 x 512 x 256 floats (4 GB) do not fit."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(0, free - 2 * 2**30), dtype=torch.uint8, device="cuda")
    try:
        model = Recording(width=256).cuda()
        img = _image(1024, 1024)
        s = _settings("slide", scale=(1024, 1024), crop=(512, 512), stride=(256, 256))
        out = infer(model, img, s, batch_windows=9, keep_scores=False)
        assert model.batches[0] == 9 and min(model.batches) < 9  # halved after a real out-of-memory
        assert out.labels.shape == (1024, 1024)
    finally:
        del hog
        torch.cuda.empty_cache()


@pytest.mark.parametrize("amp", ["float16", "half", torch.float16, "bf16", torch.bfloat16])
def test_autocast_keeps_the_labels(amp):
    model = _small_model().cuda().to(memory_format=torch.channels_last)
    img = _image(240, 320, seed=3)
    s = _settings(scale=(320, 240))
    full = infer(model, img, s).scores
    ref = argmax_labels(full)
    out = infer(model, img, s, amp_dtype=amp)
    assert out.scores.dtype == torch.float32
    assert len(np.unique(ref)) > 1
    assert_low_precision_labels(argmax_labels(out.scores), ref, full)



def test_pinned_copies_and_labels_on_the_gpu():
    t = torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8, device="cuda")
    np.testing.assert_array_equal(to_host(t), t.cpu().numpy())
    img = _image(33, 47)
    np.testing.assert_array_equal(image_tensor(img, "cuda")[0].permute(1, 2, 0).cpu().numpy(), img)
    model = _small_model().cuda()
    s = _settings(scale=(128, 96))
    full = infer(model, _image(150, 200), s, scales=(0.75, 1.0))
    labels = infer(model, _image(150, 200), s, scales=(0.75, 1.0), keep_scores=False, confidence=True)
    assert full.scores.device.type == "cpu"
    np.testing.assert_array_equal(labels.labels, argmax_labels(full.scores))
    np.testing.assert_allclose(labels.confidence, full.scores.amax(0).numpy(), rtol=1e-5, atol=1e-6)


def test_batched_whole_images_on_the_gpu():
    model = _small_model().cuda().to(memory_format=torch.channels_last)
    s = _settings(scale=(256, 128))
    images = [_image(128, 256, seed=i) for i in range(5)] + [_image(100, 150, seed=7)]
    out = infer_batch(model, images, s, batch_size=4, amp_dtype="bf16")
    for img, res in zip(images, out):
        alone = argmax_labels(infer(model, img, s, amp_dtype="bf16").scores)
        assert (res.labels == alone).mean() >= 0.995


def test_prepared_pinned_images_in_batches_sized_from_free_memory(exact_float32):
    """predict_many's GPU path: images resized and pinned on reader threads (prepare), uploaded without
    blocking, and as many per forward as the free memory allows (batch_size=None)."""
    from psegzoo.predictor import MAX_BATCH_IMAGES, prepare

    model = Recording(width=16)
    prepared_model = prepare_model(model, "cuda")
    s = _settings(scale=(96, 64))
    images = [_image(48, 72, seed=i) for i in range(6)]
    ready = [prepare(img, s, "cuda") for img in images]
    assert all(p.tensor.is_pinned() and p.tensor.device.type == "cpu" for p in ready)
    out = infer_batch(prepared_model, ready, s, batch_size=None)
    assert model.batches[0] == 1 and max(model.batches) <= min(MAX_BATCH_IMAGES, len(images))
    assert sum(model.batches) == len(images) and len(model.batches) <= 2  # measured on one, the rest together
    for img, res in zip(images, out):
        alone = argmax_labels(infer(prepared_model, img, s).scores)
        np.testing.assert_array_equal(res.labels, alone)


def test_batch_sizes_are_measured_once_per_model_and_shape(monkeypatch, exact_float32):
    """Later predictions of an input shape take the batch sized on the first: no forward of one item to
    measure, no free-memory query (which the profiler counts among the calls that wait)."""
    model = Recording(width=16)
    prepared = prepare_model(model, "cuda")
    s = _settings(scale=(96, 64))
    images = [_image(48, 72, seed=i) for i in range(6)]
    infer_batch(prepared, images, s, batch_size=None)
    assert model.batches[0] == 1
    slide = _settings("slide", scale=(256, 256), crop=(64, 64), stride=(48, 48))  # 5 x 5 windows
    infer(prepared, _image(256, 256), slide)
    model.batches.clear()

    def no_query(*args, **kwargs):
        raise AssertionError("free memory queried again")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_query)
    again = infer_batch(prepared, images, s, batch_size=None)
    assert model.batches == [6]  # all together at once
    model.batches.clear()
    infer(prepared, _image(256, 256, seed=1), slide)
    assert model.batches[0] > 1 and sum(model.batches) == 25
    for img, res in zip(images, again):
        np.testing.assert_array_equal(res.labels, argmax_labels(infer(prepared, img, s).scores))


def test_windows_of_several_images_share_forwards_on_the_gpu(exact_float32):
    """Slide mode through infer_batch: labels copied back without a wait per forward, equal to one image
    at a time (fp32 without TF32: a batched convolution rounds alike within 1e-4)."""
    model = Recording(width=16)
    prepared = prepare_model(model, "cuda")
    s = _settings("slide", scale=(160, 120), crop=(64, 64), stride=(48, 48))
    images = [_image(120, 160, seed=i) for i in range(5)]
    out = infer_batch(prepared, images, s, batch_size=4, batch_windows=7, keep_scores=True)
    assert model.batches == [7, 7, 7, 7, 7, 1, 7, 2]  # 4 images x 9 windows in forwards of 7, then 1 x 9
    batched = infer_batch(prepared, images, s, batch_size=4, batch_windows=7)
    for img, res, lab in zip(images, out, batched):
        alone = infer(prepared, img, s, batch_windows=1)
        torch.testing.assert_close(res.scores, alone.scores, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(lab.labels, argmax_labels(res.scores))


@pytest.fixture
def exact_float32():
    """fp32 convolutions as fp32, not TF32 (cuDNN's default): the comparisons below are of exact rewrites."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_pooling_on_channels_last_maps_is_the_same_average(size, exact_float32):
    from psegzoo.models.pooling import adaptive_avg_pool2d

    x = torch.randn(2, 64, 37, 53, device="cuda")
    expected = F.adaptive_avg_pool2d(x, size)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(adaptive_avg_pool2d(nhwc, size), expected, rtol=1e-5, atol=1e-6)
    compiled = torch.compile(adaptive_avg_pool2d, dynamic=False)
    torch.testing.assert_close(compiled(nhwc, size), expected, rtol=1e-5, atol=1e-6)


def test_classifier_scores_stay_float32_under_autocast():
    model = _small_model().cuda()
    x = torch.randn(1, 3, 64, 96, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert model(x).dtype == torch.float32


def test_fast_paths_on_the_gpu_keep_the_labels(exact_float32):
    plain = _small_model().cuda()
    fast = use_fast_paths(_small_model().cuda(), FastPaths(decompose=True, channels_last=True))
    assert fast_paths_of(fast) == FastPaths(decompose=True, channels_last=True)
    img = _image(256, 512, seed=5)
    s = _settings(scale=(512, 256))
    a = argmax_labels(infer(plain, img, s).scores)
    b = argmax_labels(infer(fast, img, s).scores)
    assert (a == b).mean() >= 0.999


def test_views_of_a_model_replaying_cuda_graphs_are_kept(exact_float32):
    """A model compiled with ``mode="reduce-overhead"`` writes each forward's logits over the last ones;
    flagged (as ``Segmenter.compile`` flags it), the flipped and rescaled views kept across forwards
    are copies: the third call (graphs recorded, then replayed) gives the eager labels."""
    eager = prepare_model(Convs(), "cuda")
    s = _settings("whole", scale=(160, 120))
    img = _image(120, 160, seed=3)
    reference = infer(eager, img, s, flip=True, scales=(0.75, 1.0))
    compiled = prepare_model(Convs(), "cuda")
    compiled.compile(mode="reduce-overhead")
    compiled.outputs_reused = replays_cuda_graphs("cuda", {"mode": "reduce-overhead"})
    assert compiled.outputs_reused
    for _ in range(3):
        out = infer(compiled, img, s, flip=True, scales=(0.75, 1.0), keep_scores=False)
    assert_same_labels(out.labels, argmax_labels(reference.scores), reference.scores)
