"""UPerNet's decode head: pyramid pooling on the last stage plus an FPN over all four stages."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import Classifier, ConvBNReLU, resize
from .psp import PyramidPooling


class UPerHead(nn.Module):
    """Top-down FPN whose top level is PSP's pooled bottleneck; the levels are fused at stride 4."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, pool_scales: Sequence[int],
                 align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        top = in_channels[-1]
        self.pyramid = PyramidPooling(pool_scales, top, channels, align_corners)
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvBNReLU(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3, padding=1)
        self.classifier = Classifier(channels, num_classes)

    def top_down(self, laterals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each level plus the resized level above it, from the top; then the FPN convs (top kept)."""
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        return [fpn(lat) for fpn, lat in zip(self.fpn, laterals)] + [laterals[-1]]

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        laterals.append(self.bottleneck(torch.cat([top, *self.pyramid(top)], dim=1)))
        outs = self.top_down(laterals)
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0], *(resize(o, size, self.align_corners) for o in outs[1:])], dim=1))
        return self.classifier(fused)
