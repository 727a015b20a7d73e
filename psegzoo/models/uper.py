"""UPerNet's decode head: pyramid pooling on the last stage plus an FPN over all four stages."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvBNReLU, resize
from .psp import PyramidPooling


class UPerHead(nn.Module):
    """Top-down FPN whose top level is PSP's pooled bottleneck; the levels are fused at stride 4.

    With ``decompose`` (the default) the two convolutions of concatenated maps (the pooled
    bottleneck and the fusion) take the smaller maps at their own sizes instead of upsampled
    copies (:meth:`ConvBNReLU.of_concat`; the same result up to float rounding).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, pool_scales: Sequence[int],
                 align_corners: bool, decompose: bool = True):
        super().__init__()
        self.align_corners = align_corners
        self.decompose = decompose
        top = in_channels[-1]
        self.pyramid = PyramidPooling(pool_scales, top, channels, align_corners)
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvBNReLU(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3, padding=1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        pooled = [top, *self.pyramid.pooled(top)]
        laterals.append(self.bottleneck.of_concat(pooled, top.shape[-2:], self.align_corners, self.decompose))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        outs = [fpn(lat) for fpn, lat in zip(self.fpn, laterals)]
        outs.append(laterals[-1])
        fused = self.fuse.of_concat(outs, outs[0].shape[-2:], self.align_corners, self.decompose)
        return self.classifier(fused)
