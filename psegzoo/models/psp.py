"""PSPNet's decode head: pyramid pooling on the last stage, a 3x3 bottleneck, a 1x1 classifier."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BatchNorm2d, Classifier, ConvBNReLU, conv, resize
from .pooling import adaptive_avg_pool2d


class PoolingBranch(nn.Module):
    """Adaptive average pool to ``scale`` x ``scale``, then 1x1 conv-BN-ReLU."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, scale: int, in_ch: int, out_ch: int):
        super().__init__()
        self.scale = scale
        self.conv = conv(in_ch, out_ch, 1)
        self.bn = BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = adaptive_avg_pool2d(x, self.scale)
        return F.relu(self.bn(self.conv(y)), inplace=True)


class PyramidPooling(nn.ModuleList):
    """mmseg's PPM: one pooling branch per scale, each resized back to the input's size."""

    def __init__(self, scales: Sequence[int], in_ch: int, out_ch: int, align_corners: bool):
        super().__init__(PoolingBranch(s, in_ch, out_ch) for s in scales)
        self.align_corners = align_corners

    def pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The branches' outputs at their pooled sizes."""
        return [branch(x) for branch in self]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(p, x.shape[-2:], self.align_corners) for p in self.pooled(x)]


class PSPHead(nn.Module):
    """``classifier(bottleneck(cat[x, pyramid(x)...]))`` on the selected backbone stage."""

    def __init__(self, in_ch: int, channels: int, num_classes: int, pool_scales: Sequence[int],
                 align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        self.pyramid = PyramidPooling(pool_scales, in_ch, channels, align_corners)
        self.bottleneck = ConvBNReLU(in_ch + len(pool_scales) * channels, channels, 3, padding=1)
        self.classifier = Classifier(channels, num_classes)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        return self.classifier(self.bottleneck(torch.cat([x, *self.pyramid(x)], dim=1)))
