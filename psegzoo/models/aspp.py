"""DeepLabV3's decode head: ASPP (image pooling + parallel dilated convs), bottleneck, classifier."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import Classifier, ConvBNReLU, resize
from .pooling import adaptive_avg_pool2d


class ASPPHead(nn.Module):
    """Branches: global average pool -> 1x1 (resized back), then one conv per dilation (1x1 for rate 1,
    else 3x3); ``classifier(bottleneck(cat(branches)))``."""

    def __init__(self, in_ch: int, channels: int, num_classes: int, dilations: Sequence[int],
                 align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        self.image_pool = ConvBNReLU(in_ch, channels, 1)
        self.branches = nn.ModuleList(
            ConvBNReLU(in_ch, channels, 1) if d == 1 else ConvBNReLU(in_ch, channels, 3, padding=d, dilation=d)
            for d in dilations
        )
        self.bottleneck = ConvBNReLU((len(dilations) + 1) * channels, channels, 3, padding=1)
        self.classifier = Classifier(channels, num_classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The image-pooling branch at its own 1x1 size."""
        return self.image_pool(adaptive_avg_pool2d(x, 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        outs = [resize(self.pooled(x), x.shape[-2:], self.align_corners), *(branch(x) for branch in self.branches)]
        return self.classifier(self.bottleneck(torch.cat(outs, dim=1)))
