"""DeepLabV3's decode head: ASPP (image pooling + parallel dilated convs), bottleneck, classifier."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import ConvBNReLU
from .pooling import adaptive_avg_pool2d


class ASPPHead(nn.Module):
    """Branches: global average pool -> 1x1, then one conv per dilation (1x1 for rate 1, else 3x3).

    With ``decompose`` (the default) the bottleneck takes the pooled 1x1 map as it is instead of
    its broadcast copy (:meth:`ConvBNReLU.of_concat`; the same result up to float rounding).
    """

    def __init__(self, in_ch: int, channels: int, num_classes: int, dilations: Sequence[int],
                 align_corners: bool, decompose: bool = True):
        super().__init__()
        self.align_corners = align_corners
        self.decompose = decompose
        self.image_pool = ConvBNReLU(in_ch, channels, 1)
        self.branches = nn.ModuleList(
            ConvBNReLU(in_ch, channels, 1) if d == 1 else ConvBNReLU(in_ch, channels, 3, padding=d, dilation=d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3, padding=1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        pooled = self.image_pool(adaptive_avg_pool2d(x, 1))
        outs = [pooled, *(branch(x) for branch in self.branches)]
        return self.classifier(self.bottleneck.of_concat(outs, x.shape[-2:], self.align_corners, self.decompose))
