"""Models against mmseg's and SSSegmentation's own outputs (goldens), the PSA mask op, backbone layout."""
from __future__ import annotations

import copy
import dataclasses
import json
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from psegzoo.convert import check_classes, convert_state_dict, load_into, read_checkpoint
from psegzoo.errors import CheckpointError, ManifestError
from psegzoo.models import FastPaths, build_segmentor, fast_paths_of, psa_mask, state_shapes, use_fast_paths
from psegzoo.models.fast import winograd
from psegzoo.models.fast.winograd import WinogradConv2d
from psegzoo.models.layers import BatchNorm2d
from tests.support.archs import mmseg_architecture
from tests.support.synth import load_specs, write_mmseg_checkpoint, write_ssseg_checkpoint
from tests.support.zoo import mmseg_arch, ssseg_arch

DATA = Path(__file__).parent / "data"
GOLDENS = sorted(p.relative_to(DATA).as_posix() for p in DATA.glob("*golden/*.model.safetensors"))
REL_TOL = 1e-4


def _read_golden(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(DATA / name), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


@pytest.fixture(scope="module", params=GOLDENS)
def golden_model(request, tmp_path_factory):
    """(model loaded from a synthetic checkpoint in the published format, golden tensors, metadata)."""
    tensors, meta = _read_golden(request.param)
    specs = load_specs()
    path = tmp_path_factory.mktemp("ckpt") / meta["checkpoint"]
    if "config" in meta:  # SSSegmentation
        arch = ssseg_arch(meta["config"])
        write_ssseg_checkpoint(specs.ssseg[meta["spec"]], path)
    else:
        arch = mmseg_arch(meta["checkpoint"])
        write_mmseg_checkpoint(specs.mmseg[specs.mmseg_index[meta["checkpoint"]]], path)
    sd, ckpt_meta, fmt = read_checkpoint(path)
    path.unlink()
    check_classes(ckpt_meta, arch.num_classes)
    model = build_segmentor(arch)
    load_into(model, convert_state_dict(sd, arch, state_shapes(model), fmt))
    del sd
    with torch.no_grad():
        tensors["ours"] = model(tensors["input"])  # computed once, checked by test_golden_logits
    return model, tensors, meta


def _assert_matches(out: torch.Tensor, tensors: dict, meta: dict, key: str = "logits") -> float:
    """Compare with the golden (whole or channel slice); returns the max error relative to max|golden|."""
    if key == "logits" and "logits_slice" in tensors:
        start, stop, step = (int(v) for v in meta["logits_channels"].split(":"))
        assert list(out.shape) == json.loads(meta["logits_shape"])
        ref, mine = tensors["logits_slice"], out[:, start:stop:step]
        labels = tensors["labels"].long()
        top2 = out.topk(2, dim=1).values
        tol = REL_TOL * ref.abs().max()
        sure = (top2[:, 0] - top2[:, 1]) > 2 * tol
        assert torch.equal(out.argmax(1)[sure], labels[sure])
        assert sure.float().mean() > 0.95
    else:
        ref, mine = tensors[key], out
    assert mine.shape == ref.shape
    err = ((mine - ref).abs().max() / ref.abs().max()).item()
    assert err < REL_TOL, f"max error {err:.2e} x max|logits|"
    return err


@torch.no_grad()
def test_golden_logits(golden_model):
    _, tensors, meta = golden_model
    _assert_matches(tensors["ours"], tensors, meta)


@torch.no_grad()
def test_golden_lowres_resized_as_the_source_does(golden_model):
    """mmseg resizes the head output once to the input (align_corners of the model); SSSeg too (False)."""
    model, tensors, meta = golden_model
    x = tensors["input"]
    low = model.forward_lowres(x)
    assert low.shape[-2:] != x.shape[-2:]
    if "logits_lowres" in tensors:  # SSSegmentation records it
        _assert_matches(low, tensors, meta, "logits_lowres")
        align = False
    else:
        align = "_769x769_" in meta["checkpoint"]  # mmseg's 769x769 configs set align_corners=True
    direct = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=align)
    _assert_matches(direct, tensors, meta, "logits")


@torch.no_grad()
def test_fused_bn_matches(golden_model):
    model, tensors, meta = golden_model
    fused = copy.deepcopy(model).fuse_bn()
    assert not any(isinstance(m, BatchNorm2d) for m in fused.modules())
    x = tensors["input"]
    ref = tensors["ours"]
    out = fused(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < REL_TOL
    _assert_matches(out, tensors, meta)


@pytest.mark.parametrize("paths", [FastPaths.all(), FastPaths(decompose=True), FastPaths(winograd=True,
                                   channels_last=True), FastPaths(winograd=True, winograd_f4=True, channels_last=True)],
                         ids=str)
def test_optimized_model_matches(golden_model, paths):
    """BatchNorm folded with the fast paths (decomposed heads, Winograd's 3x3, channels-last) on."""
    model, tensors, meta = golden_model
    fast = use_fast_paths(copy.deepcopy(model).fuse_bn(), paths)
    assert fast_paths_of(fast) == paths
    x = tensors["input"].contiguous(memory_format=torch.channels_last if paths.channels_last else torch.contiguous_format)
    with torch.no_grad():
        out = fast(x)
        if paths.winograd:  # it really ran: without it the same model rounds differently
            assert not torch.equal(out, use_fast_paths(fast, dataclasses.replace(paths, winograd=False))(x))
        if paths.winograd_f4:  # and F(4x4, 3x3) too: F(2x2, 3x3) rounds differently again
            assert not torch.equal(out, use_fast_paths(fast, dataclasses.replace(paths, winograd_f4=False))(x))
        use_fast_paths(fast, paths)
    _assert_matches(out, tensors, meta)
    assert fast_paths_of(use_fast_paths(fast, False)) == FastPaths.none()
    with torch.no_grad():
        _assert_matches(fast(tensors["input"]), tensors, meta)  # and the plain paths once more


@torch.no_grad()
def test_winograd_f4_on_every_layer_matches(golden_model, monkeypatch):
    """F(4x4, 3x3) on every 3x3 convolution from MIN_CHANNELS_F4 channels (the stride-8 maps of the
    goldens' 64x96 inputs are smaller than its tiles like, so that limit is lifted): its float32
    rounding stays within the goldens' tolerance."""
    monkeypatch.setattr(winograd, "MAX_PADDED_AREA_F4", float("inf"))
    model, tensors, meta = golden_model
    paths = FastPaths.all()
    fast = use_fast_paths(copy.deepcopy(model).fuse_bn(), paths)
    x = tensors["input"].contiguous(memory_format=torch.channels_last)
    out = fast(x)
    assert sum(isinstance(m, WinogradConv2d) and m.tile == 4 for m in fast.modules()) > 0
    _assert_matches(out, tensors, meta)
    ref = tensors["ours"]
    assert ((out - ref).abs().max() / ref.abs().max()).item() < REL_TOL


@torch.no_grad()
def test_channels_last_input_matches(golden_model):
    model, tensors, meta = golden_model
    x = tensors["input"].contiguous(memory_format=torch.channels_last)
    _assert_matches(model(x), tensors, meta)


# ---------------------------------------------------------------------------------------------
# PSA mask op
# ---------------------------------------------------------------------------------------------


def loop_psa_mask(x: torch.Tensor, psa_type: str, mask_size: tuple[int, int]) -> torch.Tensor:
    """mmcv's PSAMask written as plain loops over positions and mask cells."""
    n, _, h, w = x.shape
    hm, wm = mask_size
    ch, cw = (hm - 1) // 2, (wm - 1) // 2
    out = torch.zeros(n, h * w, h, w, dtype=x.dtype)
    for b in range(n):
        for ph in range(h):
            for pw in range(w):
                for i in range(hm):
                    for j in range(wm):
                        qh, qw = ph + i - ch, pw + j - cw
                        if not (0 <= qh < h and 0 <= qw < w):
                            continue
                        value = x[b, i * wm + j, ph, pw]
                        if psa_type == "collect":
                            out[b, qh * w + qw, ph, pw] = value
                        else:
                            out[b, ph * w + pw, qh, qw] = value
    return out


@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
@pytest.mark.parametrize("mask_size", [(3, 3), (5, 5), (4, 4), (6, 3), (1, 1)])
@pytest.mark.parametrize("feature", [(1, 1), (2, 3), (5, 4), (9, 11)])
def test_psa_mask_matches_loop_reference(psa_type, mask_size, feature):
    g = torch.Generator().manual_seed(zlib.crc32(repr((psa_type, mask_size, feature)).encode()))
    x = torch.randn(2, mask_size[0] * mask_size[1], *feature, generator=g)
    expected = loop_psa_mask(x, psa_type, mask_size)
    assert torch.equal(psa_mask(x, psa_type, mask_size), expected)
    # same result from a channels_last input
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(psa_mask(xc, psa_type, mask_size), expected)


def test_psa_mask_collect_and_distribute_are_transposes():
    x = torch.randn(1, 25, 6, 7)
    c = psa_mask(x, "collect", (5, 5)).reshape(1, 42, 42)
    d = psa_mask(x, "distribute", (5, 5)).reshape(1, 42, 42)
    assert torch.equal(c, d.transpose(1, 2))


def test_psa_mask_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="channels"):
        psa_mask(torch.zeros(1, 8, 3, 3), "collect", (3, 3))
    with pytest.raises(ValueError, match="psa_type"):
        psa_mask(torch.zeros(1, 9, 3, 3), "gather", (3, 3))


@torch.no_grad()
@pytest.mark.parametrize("psa_type", ["collect", "distribute", "bi-direction"])
@pytest.mark.parametrize("compact", [False, True])
def test_psa_head_variants_run(psa_type, compact):
    arch = mmseg_architecture("psanet_r50-d8_512x1024_40k_cityscapes_20200606_103117-99fac37c.pth")
    # compact masks hold one value per position pair, so the mask size must equal the shrunk map
    mask = (4, 6) if compact else (7, 7)
    head = dataclasses.replace(arch.decode_head, psa_type=psa_type, compact=compact, mask_size=mask)
    small = dataclasses.replace(arch.backbone, depth=18)
    head = dataclasses.replace(head, in_channels=512, channels=32)
    model = build_segmentor(dataclasses.replace(arch, backbone=small, decode_head=head))
    out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 19, 64, 96)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Backbone layout (mmseg's ResLayer rules, written out per configuration)
# ---------------------------------------------------------------------------------------------


def _block_settings(model, stage: int) -> list[tuple[int, int]]:
    """(stride, dilation) of the strided/dilated conv of each block of a stage."""
    layer = getattr(model.backbone, f"layer{stage}")
    out = []
    for block in layer:
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1
        assert conv.padding == conv.dilation
        out.append((conv.stride[0], conv.dilation[0]))
    return out


def _meta_model(file_name: str):
    with torch.device("meta"):
        return build_segmentor(mmseg_architecture(file_name))


def test_resnet_output_stride_8_contracts_first_dilation():
    m = _meta_model("pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth")
    assert _block_settings(m, 1) == [(1, 1)] * 3
    assert _block_settings(m, 2) == [(2, 1)] + [(1, 1)] * 3
    assert _block_settings(m, 3) == [(1, 1)] + [(1, 2)] * 5
    assert _block_settings(m, 4) == [(1, 2)] + [(1, 4)] * 2
    assert m.backbone.layer1[0].shortcut is not None and m.backbone.layer1[1].shortcut is None
    assert sum(isinstance(c, torch.nn.Conv2d) for c in m.backbone.stem.children()) == 3


def test_resnet_multi_grid_sets_last_stage_dilations():
    m = _meta_model("deeplabv3_r101-d16-mg124_512x1024_40k_cityscapes_20200908_005644-67b0c992.pth")
    assert _block_settings(m, 3) == [(2, 1)] + [(1, 1)] * 22
    assert _block_settings(m, 4) == [(1, 1), (1, 2), (1, 4)]


def test_basic_block_dilates_only_its_first_conv():
    m = _meta_model("pspnet_r18b-d8_512x1024_80k_cityscapes_20201226_063116-26928a60.pth")
    assert _block_settings(m, 3) == [(1, 1), (1, 2)]
    assert _block_settings(m, 4) == [(1, 2), (1, 4)]
    assert all(b.conv2.dilation == (1, 1) for b in m.backbone.layer4)
    assert m.backbone.layer1[0].shortcut is None and m.backbone.layer2[0].shortcut is not None
    assert m.backbone.stem.conv1.kernel_size == (7, 7)


@torch.no_grad()
@pytest.mark.parametrize(
    "file_name, stride",
    [
        ("pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth", 8),
        ("deeplabv3_r18b-d8_512x1024_80k_cityscapes_20201225_094144-46040cef.pth", 8),
    ],
)
def test_lowres_output_stride(file_name, stride):
    model = build_segmentor(mmseg_architecture(file_name))
    assert model.forward_lowres(torch.randn(1, 3, 64, 96)).shape == (1, 19, 64 // stride, 96 // stride)
    assert model(torch.randn(1, 3, 50, 70)).shape == (1, 19, 50, 70)


def test_upernet_reads_all_stages_at_stride_4():
    arch = mmseg_architecture("upernet_r50_512x1024_40k_cityscapes_20200605_094827-aa54cb54.pth")
    arch = dataclasses.replace(
        arch,
        backbone=dataclasses.replace(arch.backbone, depth=18),
        decode_head=dataclasses.replace(arch.decode_head, in_channels=(64, 128, 256, 512), channels=16),
    )
    model = build_segmentor(arch)
    with torch.no_grad():
        assert model.forward_lowres(torch.randn(1, 3, 64, 96)).shape == (1, 19, 16, 24)


def test_builder_refuses_unsupported_parts():
    arch = mmseg_architecture("pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth")
    fcn = dataclasses.replace(arch.decode_head, type="FCNHead", num_convs=1, concat_input=False)
    with pytest.raises(ManifestError, match="FCNHead"):
        build_segmentor(dataclasses.replace(arch, decode_head=fcn))
    with pytest.raises(ManifestError, match="depth 42"):
        build_segmentor(dataclasses.replace(arch, backbone=dataclasses.replace(arch.backbone, depth=42)))
    with pytest.raises(ManifestError, match="input channels"):
        build_segmentor(dataclasses.replace(arch, decode_head=dataclasses.replace(arch.decode_head, in_channels=1024)))


def test_load_into_names_bad_keys():
    arch = mmseg_architecture("pspnet_r18b-d8_512x1024_80k_cityscapes_20201226_063116-26928a60.pth")
    model = build_segmentor(arch)
    sd = dict(model.state_dict())
    sd.pop("head.classifier.bias")
    sd["head.extra.weight"] = torch.zeros(1)
    sd["backbone.stem.conv1.weight"] = torch.zeros(1, 2, 3, 4)
    with pytest.raises(CheckpointError) as info:
        load_into(model, sd)
    message = str(info.value)
    assert "head.classifier.bias" in message and "head.extra.weight" in message
    assert "backbone.stem.conv1.weight (1, 2, 3, 4) != (64, 3, 7, 7)" in message


def test_model_keys_read_well():
    with torch.device("meta"):
        model = build_segmentor(mmseg_architecture("pspnet_r101-d8_512x1024_40k_cityscapes_20200604_232751-467e7cf4.pth"))
    keys = set(model.state_dict())
    for key in (
        "backbone.stem.conv1.weight",
        "backbone.stem.bn1.running_var",
        "backbone.layer3.4.conv2.weight",
        "backbone.layer1.0.shortcut.conv.weight",
        "head.pyramid.2.conv.weight",
        "head.bottleneck.bn.weight",
        "head.classifier.bias",
    ):
        assert key in keys
    assert not any(k.endswith("num_batches_tracked") for k in keys)


def test_classifier_scores_are_float32_under_autocast():
    """bf16 scores would tie classes within 0.5% of each other; the classifier computes in float32."""
    from psegzoo.models.layers import Classifier

    torch.manual_seed(0)
    clf = Classifier(16, 5).eval()
    x = torch.randn(1, 16, 7, 9)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        inside = torch.nn.functional.relu(x)  # a bf16 op first, as a head's features would be
        out = clf(inside.to(torch.bfloat16))
    assert out.dtype == torch.float32
    expected = F.conv2d(x.relu().to(torch.bfloat16).float(), clf.weight, clf.bias)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    plain = torch.nn.Conv2d(16, 5, 1)
    plain.load_state_dict(clf.state_dict())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert plain(x).dtype == torch.bfloat16  # the control: a plain conv rounds its output


@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_adaptive_pooling_forms_are_the_same_average(size):
    from psegzoo.models.pooling import adaptive_avg_pool2d, adaptive_avg_pool2d_windows

    x = torch.randn(2, 8, 37, 53, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(x, size)
    torch.testing.assert_close(adaptive_avg_pool2d(x, size), expected, rtol=1e-12, atol=1e-12)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(adaptive_avg_pool2d(nhwc, size), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adaptive_avg_pool2d_windows(x, size), expected, rtol=1e-12, atol=1e-12)
