"""The models' exact speed-ups (``psegzoo.models.fast``) against the plain computations they replace.

* Convolutions of concatenated upsampled maps (``conv_of_concat``) against
  ``conv(cat([F.interpolate(p), ...]))`` written out with PyTorch's own ops.
* Winograd's F(2x2, 3x3) and F(4x4, 3x3) against ``F.conv2d`` in float64, and where ``WinogradConv2d``
  uses them.
* Each decode head decomposed and plain, a whole model with every fast path on, switching back.
* The plain model (and the decomposed heads) trace with ``torch._dynamo`` in one graph, no breaks.
"""
from __future__ import annotations

import copy
import dataclasses
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psegzoo.models import FastPaths, build_segmentor, fast_paths_of, use_fast_paths
from psegzoo.models.fast import winograd, winograd_mm
from psegzoo.models.fast.decompose import conv_bn_relu_of_concat, conv_of_concat, decomposable, interpolation_matrix
from psegzoo.models.fast.heads import DECOMPOSED
from psegzoo.models.fast.winograd import WinogradConv2d
from psegzoo.models.layers import ConvBNReLU
from tests.support.archs import mmseg_architecture

REL = 1e-5


def _gen(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _plain(conv: torch.nn.Conv2d, parts, size, flags) -> torch.Tensor:
    """What the heads computed before: every part interpolated to ``size``, concatenated, convolved."""
    ups = [p if tuple(p.shape[-2:]) == tuple(size) else
           F.interpolate(p, size=size, mode="bilinear", align_corners=ac) for p, ac in zip(parts, flags)]
    return F.conv2d(torch.cat(ups, dim=1), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)


@pytest.mark.parametrize("out_size, in_size", [(7, 3), (13, 6), (5, 6), (4, 4), (9, 1), (1, 3)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolation_matrix_is_the_resize(out_size, in_size, align_corners):
    v = torch.randn(2, 3, in_size, 5, generator=_gen(out_size, in_size, align_corners))
    m = interpolation_matrix(out_size, in_size, align_corners)
    ref = F.interpolate(v, size=(out_size, 5), mode="bilinear", align_corners=align_corners)
    assert m.shape == (out_size, in_size)
    torch.testing.assert_close(torch.einsum("ha,ncaw->nchw", m, v), ref, rtol=1e-6, atol=1e-6)


# (x size, pooled sizes, kernel, padding, dilation): odd sizes, pooled maps larger than x, 1x1 maps
CASES = [
    ((13, 17), [(1, 1), (2, 2), (3, 3), (6, 6)], 3, 1, 1),
    ((4, 5), [(1, 1), (2, 2), (3, 3), (6, 6)], 3, 1, 1),
    ((2, 3), [(6, 6), (1, 1)], 3, 1, 1),
    ((9, 8), [(1, 1)], 1, 0, 1),
    ((11, 10), [(5, 4), (3, 7)], 3, 2, 2),
    ((7, 9), [(2, 2)], 3, 0, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-k{c[2]}p{c[3]}d{c[4]}")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_of_concat_matches_concatenation(case, align_corners, channels_last, bias):
    size, pooled, k, pad, dil = case
    g = _gen(case, align_corners, channels_last, bias)
    widths = [5] + [3] * len(pooled)
    conv = nn.Conv2d(sum(widths), 4, k, padding=pad, dilation=dil, bias=bias).requires_grad_(False)
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    if bias:
        conv.bias.copy_(torch.randn(4, generator=g))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    parts = [torch.randn(2, widths[0], *size, generator=g).contiguous(memory_format=fmt)]
    parts += [torch.randn(2, c, *s, generator=g) for c, s in zip(widths[1:], pooled)]
    flags = [align_corners] * len(parts)
    assert decomposable(conv)
    with torch.no_grad():
        out = conv_of_concat(conv, parts, size, flags)
        ref = _plain(conv, parts, size, flags)
    assert out.shape == ref.shape
    assert _rel_err(out, ref) < REL


def test_conv_of_concat_takes_parts_in_any_order_and_mixed_corners():
    g = _gen("order")
    conv = nn.Conv2d(12, 3, 3, padding=1, bias=True).requires_grad_(False)
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    conv.bias.copy_(torch.randn(3, generator=g))
    # ASPP puts the pooled 1x1 map first; PSANet mixes align_corners; two parts at full size
    parts = [torch.randn(1, 2, 1, 1, generator=g), torch.randn(1, 4, 9, 7, generator=g),
             torch.randn(1, 3, 4, 3, generator=g), torch.randn(1, 3, 9, 7, generator=g)]
    flags = [False, False, True, False]
    with torch.no_grad():
        assert _rel_err(conv_of_concat(conv, parts, (9, 7), flags), _plain(conv, parts, (9, 7), flags)) < REL


def test_strided_convolution_is_not_decomposed():
    assert not decomposable(nn.Conv2d(4, 4, 3, stride=2, padding=1))
    block = ConvBNReLU(6, 4, 3, padding=1)
    block.conv.stride = (2, 2)
    parts = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 2, 2)]
    with torch.no_grad():
        out = conv_bn_relu_of_concat(block, parts, (8, 8), False)
        ref = block(torch.cat([parts[0], F.interpolate(parts[1], size=(8, 8), mode="bilinear")], dim=1))
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------------------------------------
# Winograd F(2x2, 3x3)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 6, 5, 7), (2, 8, 6, 9, 10), (1, 4, 5, 1, 1), (1, 4, 5, 2, 13),
                                   (1, 16, 8, 16, 16), (1, 3, 2, 8, 6)], ids=str)
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_winograd_matches_direct_convolution(shape, dilation, bias):
    n, c, o, h, w = shape
    g = _gen(shape, dilation, bias)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 3, 3, generator=g)
    b = torch.randn(o, generator=g) if bias else None
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=dilation,
                   dilation=dilation)
    out = winograd.conv3x3(x, winograd.transform_weight(weight), b, (dilation, dilation))
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert _rel_err(out, ref) < REL


def test_winograd_runs_in_bands(monkeypatch):
    """Several bands of tile rows give the result of one (the band size only moves work)."""
    g = _gen("bands")
    x = torch.randn(1, 8, 21, 10, generator=g).contiguous(memory_format=torch.channels_last)
    weight_t = winograd.transform_weight(torch.randn(4, 8, 3, 3, generator=g))
    whole = winograd.conv3x3(x, weight_t, None, (2, 2))
    monkeypatch.setattr(winograd, "BAND_BYTES", 1)
    banded = winograd.conv3x3(x, weight_t, None, (2, 2))
    # Not bit for bit: each band's matrix products have other shapes, which the BLAS blocks (and, on AVX-512,
    # vectorizes) differently, so sums are added in another order (3.8e-6 apart on an AVX-512 Xeon). A band
    # that is lost, doubled or shifted is off by the size of the values, far beyond REL.
    assert banded.shape == whole.shape and _rel_err(banded, whole) < REL


# F(4x4, 3x3)'s transforms hold 4, 5, 8 and 1/24: float32 rounding grows with them. On these random
# layers (unscaled weights, any CPU and blocking) it stays below 1e-5 x max|output|; 3e-5 leaves room.
REL_F4 = 3e-5


@pytest.mark.parametrize("shape", [(1, 8, 6, 5, 7), (2, 8, 6, 9, 10), (1, 4, 5, 1, 1), (1, 4, 5, 2, 13),
                                   (1, 16, 8, 17, 23), (1, 3, 2, 8, 6), (2, 4, 6, 33, 49), (1, 4, 4, 97, 18)],
                         ids=str)
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("strips", [False, True])
def test_winograd_as_matrix_products_matches_direct_convolution(shape, dilation, bias, tile, strips):
    """F(4x4, 3x3) and F(2x2, 3x3) with their transforms as matrix products (``winograd_mm``), the
    outputs left over by whole tiles padded (no weight given) or convolved directly (``strips``)."""
    n, c, o, h, w = shape
    g = _gen("f4", shape, dilation, bias, tile)
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(o, c, 3, 3, generator=g)
    b = torch.randn(o, generator=g) if bias else None
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=dilation,
                   dilation=dilation)
    out = winograd_mm.conv3x3(x, winograd_mm.transform_weight(weight, tile), b, (dilation, dilation),
                              weight if strips else None)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert _rel_err(out, ref) < (REL_F4 if tile == 4 else REL)


@pytest.mark.parametrize("dilation", [(1, 1), (2, 4)], ids=str)
def test_winograd_f4_on_resnet_layer_widths(dilation):
    """At a real layer's width (256 channels, weights scaled as trained ones are) and dilation, the
    float32 error is within a few 1e-6 x max|output|, as the direct float32 convolution's is."""
    g = _gen("f4-wide", dilation)
    x = torch.relu(torch.randn(1, 256, 19, 26, generator=g)).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(256, 256, 3, 3, generator=g) / 48
    ref = F.conv2d(x.double(), weight.double(), padding=dilation, dilation=dilation)
    out = winograd_mm.conv3x3(x, winograd_mm.transform_weight(weight), None, dilation)
    assert _rel_err(out, ref) < 2e-5


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_as_matrix_products_runs_in_bands(monkeypatch, tile):
    """Several bands of tile rows give the same result as one (the band size only moves work)."""
    g = _gen("f4-bands", tile)
    x = torch.randn(2, 8, 37, 10, generator=g).contiguous(memory_format=torch.channels_last)
    weight_t = winograd_mm.transform_weight(torch.randn(4, 8, 3, 3, generator=g), tile)
    whole = winograd_mm.conv3x3(x, weight_t, None, (2, 3))
    monkeypatch.setattr(winograd_mm, "BAND_BYTES", 1)
    banded = winograd_mm.conv3x3(x, weight_t, None, (2, 3))
    # Not bit for bit on every CPU: bands give the products fewer rows, which a BLAS may block (and
    # vectorize) otherwise, adding in another order (about 1e-7 of the values). A band that is lost,
    # doubled or shifted is off by the size of the values, far beyond REL_F4.
    assert banded.shape == whole.shape and _rel_err(banded, whole) < REL_F4


def test_winograd_f4_is_installed_from_its_own_width(monkeypatch):
    """F(4x4, 3x3) layers start at MIN_CHANNELS_F4; switching it off goes back to F(2x2, 3x3) where
    that is eligible and to the plain convolution where not; a map that its tiles would pad by much
    runs the direct convolution."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    monkeypatch.setattr(winograd, "MIN_CHANNELS_F4", 4)
    g = _gen("f4-dispatch")
    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=2, dilation=2),
                          nn.Conv2d(8, 8, 3, padding=1)).eval()
    ref_model = copy.deepcopy(model)
    paths = FastPaths(winograd=True, winograd_f4=True, channels_last=True)
    use_fast_paths(model, paths)
    assert [getattr(m, "tile", None) for m in model] == [4, 4, 4] and fast_paths_of(model) == paths
    x = torch.randn(1, 6, 16, 20, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = ref_model(x)
        out = model(x)
        assert not torch.equal(out, ref) and _rel_err(out, ref) < REL_F4
        use_fast_paths(model, FastPaths(winograd=True, channels_last=True))
        assert [type(m) for m in model] == [nn.Conv2d, nn.Conv2d, WinogradConv2d] and model[2].tile == 2
        assert not fast_paths_of(model).winograd_f4
        assert _rel_err(model(x), ref) < REL
        # a 5x5 map at dilation 2 pads to 8x8 tiles (2.56 x its area): not worth F(4x4, 3x3)
        layer = use_fast_paths(nn.Sequential(nn.Conv2d(6, 8, 3, padding=2, dilation=2)), paths)[0]
        small = torch.randn(1, 6, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
        assert not winograd.suits(small, layer.weight, layer.dilation, 4)
        assert torch.equal(layer(small), F.conv2d(small, layer.weight, layer.bias, padding=2, dilation=2))


def _winograd_layer(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with Winograd installed as a model gets it (``use_fast_paths``)."""
    return use_fast_paths(nn.Sequential(conv), FastPaths(winograd=True))[0]


def test_winograd_is_installed_only_where_it_suits(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    g = _gen("dispatch")
    conv = nn.Conv2d(6, 5, 3, padding=2, dilation=2, bias=True)
    direct = copy.deepcopy(conv)
    conv = _winograd_layer(conv)
    assert isinstance(conv, WinogradConv2d) and set(conv.state_dict()) == set(direct.state_dict())
    x = torch.randn(1, 6, 12, 8, generator=g)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = direct(x)
        assert torch.equal(conv(x), ref)  # NCHW input: the direct convolution
        out = conv(xc)  # channels-last input: Winograd, which rounds differently
        assert not torch.equal(out, direct(xc)) and _rel_err(out, ref) < REL
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the direct (autocast) convolution
            assert torch.equal(conv(xc), direct(xc))
    with torch.enable_grad():  # training keeps the direct convolution
        assert torch.equal(conv(xc), direct(xc))
    # too few channels, strides, padding other than the dilation and 1x1 kernels are never swapped
    for layer in (nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(6, 5, 3, stride=2, padding=1),
                  nn.Conv2d(6, 5, 3, padding=0), nn.Conv2d(6, 5, 1)):
        assert type(_winograd_layer(layer)) is nn.Conv2d
    assert type(use_fast_paths(nn.Sequential(conv), False)[0]) is nn.Conv2d


def test_winograd_transforms_its_weights_again_when_they_change(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    g = _gen("cache")
    conv = _winograd_layer(nn.Conv2d(6, 5, 3, padding=1))
    x = torch.randn(1, 6, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)
    conv.load_state_dict({"weight": torch.randn(5, 6, 3, 3, generator=g), "bias": torch.zeros(5)})
    with torch.no_grad():
        assert _rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < REL
        conv.double()
        out = conv(x.double())  # float64: the direct convolution, on the moved weights
        assert out.dtype == torch.float64 and torch.equal(out, F.conv2d(x.double(), conv.weight, conv.bias, padding=1))


def test_fusing_batch_norm_after_installing_winograd(monkeypatch):
    """Folding BatchNorm changes the weights in place; the transformed ones follow."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 16)
    model = _small(HEADS[0])
    x = torch.randn(1, 3, 48, 64, generator=_gen("fuse-after"))
    with torch.no_grad():
        ref = model(x)
        use_fast_paths(model, True)
        model(x.contiguous(memory_format=torch.channels_last))  # transforms made from the unfused weights
        out = model.fuse_bn()(x.contiguous(memory_format=torch.channels_last))
    assert fast_paths_of(model).winograd
    assert _rel_err(out, ref) < REL


# ---------------------------------------------------------------------------------------------
# Heads and a whole model
# ---------------------------------------------------------------------------------------------


def _small(file_name: str, **head):
    """A real zoo architecture made small (ResNet-18, narrow head), with random weights and norms."""
    arch = mmseg_architecture(file_name)
    backbone = dataclasses.replace(arch.backbone, depth=18)
    top = 512
    in_channels = (64, 128, 256, 512) if arch.decode_head.type == "UPerHead" else top
    head = dataclasses.replace(arch.decode_head, in_channels=in_channels, channels=16, **head)
    model = build_segmentor(dataclasses.replace(arch, backbone=backbone, decode_head=head))
    g = _gen(file_name, repr(head))
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() == 1:
                t.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
    return model.eval()


HEADS = [
    "pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth",
    "pspnet_r50-d8_769x769_40k_cityscapes_20200606_112725-86638686.pth",
    "deeplabv3_r50-d8_512x1024_40k_cityscapes_20200605_022449-acadc2f8.pth",
    "deeplabv3_r50-d8_769x769_40k_cityscapes_20200606_113723-7eda553c.pth",
    "upernet_r50_512x1024_40k_cityscapes_20200605_094827-aa54cb54.pth",
    "psanet_r50-d8_512x1024_40k_cityscapes_20200606_103117-99fac37c.pth",
    "psanet_r50-d8_769x769_40k_cityscapes_20200530_033717-d5365506.pth",
]


@pytest.mark.parametrize("file_name", HEADS, ids=lambda f: f.split("_2020")[0])
@pytest.mark.parametrize("size", [(64, 96), (41, 57)], ids=str)
def test_decomposed_heads_match_concatenation(file_name, size):
    model = _small(file_name)
    plain_type = type(model.head)
    feats = model.features(torch.randn(1, 3, *size, generator=_gen(file_name, size)))
    with torch.no_grad():
        plain = model.head(feats)
        use_fast_paths(model, FastPaths(decompose=True))
        assert type(model.head) is DECOMPOSED[plain_type]
        fast = model.head(feats)
    assert _rel_err(fast, plain) < REL
    assert not torch.equal(fast, plain)  # another computation (rounding differs), not the same one
    use_fast_paths(model, False)
    assert type(model.head) is plain_type


@pytest.mark.parametrize("file_name", HEADS[:1] + HEADS[3:5], ids=lambda f: f.split("_2020")[0])
def test_optimized_model_matches_the_plain_one(file_name, monkeypatch):
    """BatchNorm folded, channels-last, decomposed heads and Winograd together, against none of them."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 16)  # let the small model's layers use it
    monkeypatch.setattr(winograd, "MIN_CHANNELS_F4", 16)
    plain = _small(file_name)
    fast = use_fast_paths(copy.deepcopy(plain).fuse_bn(), True)
    assert fast_paths_of(fast) == FastPaths.all() and fast_paths_of(plain) == FastPaths.none()
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) > 0
    x = torch.randn(2, 3, 75, 99, generator=_gen("whole", file_name))
    with torch.no_grad():
        ref = plain(x)
        out = fast(x.contiguous(memory_format=torch.channels_last))
    assert _rel_err(out, ref) < REL


# ---------------------------------------------------------------------------------------------
# torch.compile: one graph
# ---------------------------------------------------------------------------------------------

ONE_PER_HEAD = [HEADS[0], HEADS[3], HEADS[4], HEADS[5]]  # PSP, ASPP, UPer, PSA


def _tiny(file_name: str):
    """A zoo architecture with tiny widths (ResNet-18 at 8 channels): traced in about a second."""
    arch = mmseg_architecture(file_name)
    backbone = dataclasses.replace(arch.backbone, depth=18, base_channels=8, stem_channels=8)
    in_channels = (8, 16, 32, 64) if arch.decode_head.type == "UPerHead" else 64
    extra = {"mask_size": (9, 9)} if arch.decode_head.type == "PSAHead" else {}
    head = dataclasses.replace(arch.decode_head, in_channels=in_channels, channels=8, **extra)
    return build_segmentor(dataclasses.replace(arch, backbone=backbone, decode_head=head)).eval()


@pytest.mark.parametrize("file_name", ONE_PER_HEAD, ids=lambda f: f.split("_")[0])
@pytest.mark.parametrize("paths", [FastPaths.none(), FastPaths(decompose=True, channels_last=True)], ids=str)
def test_model_traces_in_one_graph(file_name, paths):
    model = use_fast_paths(_tiny(file_name).fuse_bn(), paths)
    x = torch.randn(1, 3, 64, 80).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_graph_breaks_are_counted():
    """The negative control: a forward that reads a tensor's data breaks the graph, and is counted."""

    class Reads(nn.Module):
        def forward(self, x):
            return x * 2 if bool((x > 0).any()) else x

    torch._dynamo.reset()
    explained = torch._dynamo.explain(Reads())(torch.randn(4))
    assert explained.graph_break_count >= 1
