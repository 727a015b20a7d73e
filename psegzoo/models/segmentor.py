"""The segmentor: a backbone and a decode head, computing what mmseg's ``encode_decode`` returns."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..manifest import Architecture
from .fast.winograd import WinogradConv2d
from .layers import fold_bn_into_conv
from .resnet import ResNet


class Segmentor(nn.Module):
    """``forward(x)``: logits at x's size; ``forward_lowres(x)``: the head's output at its own stride.

    ``x`` is a normalized float batch (N, 3, H, W), in either memory format.
    """

    outputs_reused = False
    """True once compiled to replay CUDA graphs (:meth:`psegzoo.Segmenter.compile`): a forward's output is
    then overwritten by the next forward, and the predictor copies the logits it keeps."""

    def __init__(self, backbone: ResNet, head: nn.Module, in_index: Sequence[int], arch: Architecture):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_index = tuple(int(i) for i in in_index)
        self.arch = arch
        self.num_classes = arch.num_classes
        self.align_corners = arch.align_corners
        # The backbone returns only the stages the head reads, so earlier ones are freed early.
        self.backbone.out_indices = tuple(sorted(set(self.in_index)))
        self._feature_pos = [self.backbone.out_indices.index(i) for i in self.in_index]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone stages the decode head reads, in its order."""
        feats = self.backbone(x)
        return [feats[p] for p in self._feature_pos]

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def working_bytes(self, batch: int, pixels: int) -> int:
        """An estimate of the memory one float32 forward of ``batch`` inputs of ``pixels`` pixels needs.

        Per input pixel: three maps of the widest stage (a block's input, its middle, its output),
        the stages kept for the head, the head's widest concatenation, and the logits at input size;
        each map counted at its stage's stride. An estimate for refusing hopeless predictions early,
        not a bound.
        """
        spec = self.arch.backbone
        strides, stride = [], 4  # the stem halves twice
        for s in spec.strides:
            stride *= s
            strides.append(stride)
        widths = self.backbone.out_channels
        per_px = max(3 * c / s**2 for c, s in zip(widths, strides))
        per_px += sum(widths[i] / strides[i] ** 2 for i in self.backbone.out_indices)
        head_stride = min(strides[i] for i in self.in_index)
        head_in = max((m.in_channels for m in self.head.modules() if isinstance(m, nn.Conv2d)), default=0)
        per_px += 2 * head_in / head_stride**2 + self.num_classes
        return int(4 * batch * pixels * per_px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Few channels: resizing them in NCHW is faster, and gives the caller contiguous logits.
        logits = self.forward_lowres(x).contiguous()
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    @torch.no_grad()
    def fuse_bn(self) -> Segmentor:
        """Fold every batch norm into the conv before it, in place; returns self.

        Exact up to float rounding and faster at inference. Do it after loading weights: the
        state dict no longer has the norm layers' keys afterwards.
        """
        for module in list(self.modules()):
            for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
                bn = getattr(module, bn_name)
                if isinstance(bn, nn.Identity):
                    continue
                conv = getattr(module, conv_name)
                fold_bn_into_conv(conv, bn)
                if isinstance(conv, WinogradConv2d):  # its transformed weights were made from the old ones
                    conv.refresh()
                setattr(module, bn_name, nn.Identity())
        return self
