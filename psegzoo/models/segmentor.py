"""The segmentor: a backbone and a decode head, computing what mmseg's ``encode_decode`` returns."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..manifest import Architecture
from .layers import fold_bn_into_conv


class Segmentor(nn.Module):
    """``forward(x)``: logits at x's size; ``forward_lowres(x)``: the head's output at its own stride.

    ``x`` is a normalized float batch (N, 3, H, W), in either memory format.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, in_index: Sequence[int], arch: Architecture):
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

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head([feats[p] for p in self._feature_pos])

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
                fold_bn_into_conv(getattr(module, conv_name), bn)
                setattr(module, bn_name, nn.Identity())
        return self
