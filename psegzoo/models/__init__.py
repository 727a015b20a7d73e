"""Plain PyTorch models for the zoo's architectures, built from a manifest ``Architecture``.

Builders are explicit functions (no registry). Parameter names read well, e.g.
``backbone.stem.conv1``, ``backbone.layer3.4.conv2``, ``backbone.layer1.0.shortcut.conv``,
``head.pyramid.2.conv``, ``head.bottleneck.bn``, ``head.classifier``; the converter maps mmseg's
names onto these. Auxiliary heads are training-only and never built. Load weights with
``psegzoo.convert.load_into(model, state_dict)`` (strict, with errors naming the keys).

The models compute what the papers (and mmseg) write: heads concatenate upsampled maps and
convolve. Exact shortcuts (the same function up to float rounding) live in
:mod:`psegzoo.models.fast` and are installed with :func:`use_fast_paths`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ManifestError
from ..manifest import Architecture, HeadSpec
from .aspp import ASPPHead
from .fast import FastPaths, fast_paths_of, use_fast_paths
from .psa import PSAHead
from .psa_mask import psa_mask
from .psp import PSPHead
from .resnet import ResNet
from .segmentor import Segmentor
from .uper import UPerHead

__all__ = [
    "FastPaths",
    "Segmentor",
    "build_backbone",
    "build_head",
    "build_segmentor",
    "fast_paths_of",
    "psa_mask",
    "state_shapes",
    "use_fast_paths",
]

DECODE_HEADS = ("PSPHead", "ASPPHead", "PSAHead", "UPerHead")


def build_backbone(arch: Architecture) -> ResNet:
    """The ResNet of ``arch`` (deep or 7x7 stem, strides, dilations, multi-grid)."""
    return ResNet(arch.backbone)


def _single(value: int | tuple[int, ...], what: str, head: HeadSpec) -> int:
    if isinstance(value, int):
        return value
    if len(value) == 1:
        return int(value[0])
    raise ManifestError(f"{head.type} reads one backbone stage; {what} is {value!r}")


def _required(head: HeadSpec, name: str) -> Any:
    value = getattr(head, name)
    if value is None:
        raise ManifestError(f"{head.type} needs {name} in the architecture's decode_head")
    return value


def build_head(arch: Architecture) -> nn.Module:
    """The decode head named by ``arch.decode_head.type``."""
    head = arch.decode_head
    n, ac = arch.num_classes, arch.align_corners
    if head.type == "PSPHead":
        scales = _required(head, "pool_scales")
        return PSPHead(_single(head.in_channels, "in_channels", head), head.channels, n, scales, ac)
    if head.type == "ASPPHead":
        dilations = _required(head, "dilations")
        return ASPPHead(_single(head.in_channels, "in_channels", head), head.channels, n, dilations, ac)
    if head.type == "PSAHead":
        return PSAHead(
            _single(head.in_channels, "in_channels", head),
            head.channels,
            n,
            mask_size=_required(head, "mask_size"),
            psa_type=_required(head, "psa_type"),
            compact=bool(head.compact),
            shrink_factor=_required(head, "shrink_factor"),
            normalization_factor=head.normalization_factor,
            psa_softmax=True if head.psa_softmax is None else head.psa_softmax,
            align_corners=ac,
        )
    if head.type == "UPerHead":
        scales = _required(head, "pool_scales")
        if isinstance(head.in_channels, int) or isinstance(head.in_index, int):
            raise ManifestError("UPerHead reads several backbone stages: in_channels and in_index must be lists")
        return UPerHead(head.in_channels, head.channels, n, scales, ac)
    raise ManifestError(
        f"decode head type {head.type!r} is not supported as a decode head; use one of {', '.join(DECODE_HEADS)}"
    )


def build_segmentor(arch: Architecture) -> Segmentor:
    """Backbone plus decode head of ``arch``, in eval mode (weights still to be loaded)."""
    backbone = build_backbone(arch)
    head = build_head(arch)
    index = arch.decode_head.in_index
    in_index = (index,) if isinstance(index, int) else tuple(index)
    in_channels = arch.decode_head.in_channels
    in_channels = (in_channels,) if isinstance(in_channels, int) else tuple(in_channels)
    if len(in_channels) != len(in_index) or any(not 0 <= i < 4 for i in in_index):
        raise ManifestError(f"decode head in_index {index!r} does not fit in_channels {arch.decode_head.in_channels!r}")
    stage_channels = tuple(backbone.out_channels[i] for i in in_index)
    if stage_channels != in_channels:
        raise ManifestError(
            f"decode head expects {in_channels} input channels but backbone stages {in_index} give {stage_channels}"
        )
    return Segmentor(backbone, head, in_index, arch).eval()


def state_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Every state-dict key of ``model`` with its shape: what a converted checkpoint must provide."""
    return {k: v.shape for k, v in model.state_dict().items()}
