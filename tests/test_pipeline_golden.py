"""The whole test pipeline against mmseg's own (and SSSegmentation's final resize), on real models.

Weights are the synthetic ones of ``tests/support/synth.py`` converted by ``psegzoo.convert``; the
goldens in ``tests/data`` were computed by mmseg 1.2.2 / SSSegmentation 1.7.0 from the same tensors.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from psegzoo import convert
from psegzoo.manifest import load_manifest
from psegzoo.models import FastPaths, build_segmentor, fast_paths_of, use_fast_paths
from psegzoo.predictor import InferenceSettings, argmax_labels, infer, resize_image, resize_scores
from tests.support.synth import load_specs, synth_state_dict

DATA = Path(__file__).parent / "data"
PIPELINES = sorted((DATA / "golden").glob("*.pipeline.safetensors"))
SSS_MODELS = sorted((DATA / "sss_golden").glob("*.model.safetensors"))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


@functools.lru_cache(maxsize=4)
def _built(name: str, spec_id: str, fmt: str):
    entry = load_manifest().get(name)
    specs = load_specs()
    spec = (specs.mmseg if fmt == "mmseg" else specs.ssseg)[spec_id]
    model = build_segmentor(entry.architecture)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    convert.load_into(model, convert.convert_state_dict(synth_state_dict(spec), entry.architecture, expected, fmt))
    return model.eval()


def _model(entry, spec_id: str, fmt: str):
    """A fresh copy (fusing BatchNorm changes a model in place) of the cached built model."""
    return copy.deepcopy(_built(entry.name, spec_id, fmt))


def _golden_logits(golden: dict[str, torch.Tensor], meta: dict[str, str], scores: torch.Tensor):
    """The stored logits and ours on the same channels (big goldens keep every k-th channel)."""
    if "logits" in golden:
        return golden["logits"][0], scores
    start, stop, step = (int(v) for v in meta["logits_channels"].split(":"))
    assert tuple(json.loads(meta["logits_shape"]))[1] == scores.shape[0]
    return golden["logits_slice"][0], scores[start:stop:step]


@pytest.mark.parametrize("variant", ["plain", "fused-bn", "fast"])
@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name.split(".")[0] + "-" + p.name.split(".")[1])
def test_pipeline_matches_mmseg(path, variant):
    """The plain model, BatchNorm folded, and folded with every fast path (decomposed heads, Winograd,
    channels-last) on: each gives mmseg's logits."""
    golden, meta = _read(path)
    entry = load_manifest().get(meta["checkpoint"])
    model = _model(entry, load_specs().mmseg_index[meta["checkpoint"]], "mmseg")
    if variant != "plain":
        model.fuse_bn()
    use_fast_paths(model, variant == "fast")
    assert fast_paths_of(model) == (FastPaths.all() if variant == "fast" else FastPaths.none())
    crop, stride = json.loads(meta["crop_size"]), json.loads(meta["stride"])
    settings = InferenceSettings.from_entry(
        entry,
        mode=meta["mode"],
        scale=tuple(json.loads(meta["test_scale"])),
        crop_size=tuple(crop) if crop else None,
        stride=tuple(stride) if stride else None,
    )
    assert settings.align_corners == (meta["align_corners"] == "True")
    image = golden["image_rgb"].numpy()

    resized = resize_image(image, settings.scale)
    np.testing.assert_array_equal(resized, golden["resized_rgb"].numpy())

    out = infer(model, image, settings, batch_windows=3)
    assert not out.is_probs and out.views[0].size == tuple(golden["resized_rgb"].shape[:2])
    assert out.scores.shape[1:] == image.shape[:2]
    ref, ours = _golden_logits(golden, meta, out.scores)
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"max |logits diff| {err}"
    labels = argmax_labels(out.scores)
    agree = (torch.from_numpy(labels.astype(np.int64)) == golden["labels"][0].long()).float().mean().item()
    assert agree >= 0.999, f"{agree:.4%} of labels equal"


@pytest.mark.parametrize("path", SSS_MODELS, ids=lambda p: p.name.split(".")[0])
def test_ssseg_direct_resize_matches(path):
    """SSSegmentation sends the head's low-resolution logits straight to the image size."""
    golden, meta = _read(path)
    entry = load_manifest().get(meta["config"])
    settings = InferenceSettings.from_entry(entry)
    assert settings.resize_logits == "direct" and settings.mode == "whole"
    model = _model(entry, load_specs().ssseg_index[meta["config"]], "ssseg")
    for fast in (False, True):
        use_fast_paths(model, fast)
        with torch.inference_mode():
            low = model.forward_lowres(golden["input"])[0]
        assert low.shape == golden["logits_lowres"].shape[1:]
        out = resize_scores(low, tuple(golden["logits"].shape[2:]), align_corners=settings.align_corners)
        ref = golden["logits"][0]
        assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
