"""ResNet backbones as mmsegmentation builds them.

``ResNetV1c`` has the deep stem (three 3x3 convs, 3 -> stem/2 -> stem/2 -> stem), ``ResNet`` the 7x7
one; both end in a 3x3 stride-2 max-pool. Stages follow mmseg's ``ResLayer``: the stride sits on the
3x3 conv ("pytorch" style), a stage's first block gets a 1x1 projection shortcut when its stride or
width changes, and a dilated stage starts with half its dilation when ``contract_dilation`` is set.
With ``multi_grid`` the last stage's blocks use the multi-grid rates themselves as dilations.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ManifestError
from ..manifest import BackboneSpec
from .layers import BatchNorm2d, conv

# depth -> (block kind, blocks per stage)
STAGE_BLOCKS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class Shortcut(nn.Module):
    """Projection shortcut: 1x1 conv (with the block's stride) then batch norm."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_ch: int, out_ch: int, stride: int, eps: float):
        super().__init__()
        self.conv = conv(in_ch, out_ch, 1, stride=stride)
        self.bn = BatchNorm2d(out_ch, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs; only the first one is strided and dilated (as in mmseg)."""

    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_ch: int, planes: int, stride: int, dilation: int, shortcut: Shortcut | None, eps: float):
        super().__init__()
        self.conv1 = conv(in_ch, planes, 3, stride=stride, padding=dilation, dilation=dilation)
        self.bn1 = BatchNorm2d(planes, eps)
        self.conv2 = conv(planes, planes, 3, padding=1)
        self.bn2 = BatchNorm2d(planes, eps)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out, inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, dilated), 1x1 expand by 4."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_ch: int, planes: int, stride: int, dilation: int, shortcut: Shortcut | None, eps: float):
        super().__init__()
        self.conv1 = conv(in_ch, planes, 1)
        self.bn1 = BatchNorm2d(planes, eps)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation)
        self.bn2 = BatchNorm2d(planes, eps)
        self.conv3 = conv(planes, planes * 4, 1)
        self.bn3 = BatchNorm2d(planes * 4, eps)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        out += identity
        return F.relu(out, inplace=True)


class DeepStem(nn.Module):
    """ResNetV1c stem: three 3x3 conv-BN-ReLU (the first with stride 2), then a 3x3/2 max-pool."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, stem_channels: int, eps: float, in_ch: int = 3):
        super().__init__()
        mid = stem_channels // 2
        self.conv1 = conv(in_ch, mid, 3, stride=2, padding=1)
        self.bn1 = BatchNorm2d(mid, eps)
        self.conv2 = conv(mid, mid, 3, padding=1)
        self.bn2 = BatchNorm2d(mid, eps)
        self.conv3 = conv(mid, stem_channels, 3, padding=1)
        self.bn3 = BatchNorm2d(stem_channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = F.relu(self.bn3(self.conv3(x)), inplace=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Stem7x7(nn.Module):
    """Original ResNet stem: 7x7/2 conv-BN-ReLU, then a 3x3/2 max-pool."""

    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, stem_channels: int, eps: float, in_ch: int = 3):
        super().__init__()
        self.conv1 = conv(in_ch, stem_channels, 7, stride=2, padding=3)
        self.bn1 = BatchNorm2d(stem_channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def block_dilations(num_blocks: int, dilation: int, multi_grid: Sequence[int] | None,
                    contract_dilation: bool) -> list[int]:
    """Dilation of each block of one stage, following mmseg's ``ResLayer``."""
    if multi_grid is not None:
        return [int(multi_grid[i]) for i in range(num_blocks)]
    first = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
    return [first] + [dilation] * (num_blocks - 1)


class ResNet(nn.Module):
    """Stem plus four stages ``layer1`` .. ``layer4``; returns the outputs of the requested stages."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        if spec.depth not in STAGE_BLOCKS:
            raise ManifestError(
                f"backbone depth {spec.depth} is not a ResNet depth; use one of {sorted(STAGE_BLOCKS)}"
            )
        if len(spec.strides) != 4 or len(spec.dilations) != 4:
            raise ManifestError(
                f"backbone needs 4 strides and 4 dilations, got {spec.strides} and {spec.dilations}"
            )
        kind, blocks = STAGE_BLOCKS[spec.depth]
        block_cls = Bottleneck if kind == "bottleneck" else BasicBlock
        if spec.multi_grid is not None and len(spec.multi_grid) < blocks[-1]:
            raise ManifestError(
                f"multi_grid {spec.multi_grid} has fewer rates than the {blocks[-1]} blocks of the last stage"
            )
        eps = spec.norm_eps
        if spec.type == "ResNetV1c":
            self.stem: nn.Module = DeepStem(spec.stem_channels, eps)
        elif spec.type == "ResNet":
            self.stem = Stem7x7(spec.stem_channels, eps)
        else:
            raise ManifestError(f"backbone type {spec.type!r} is not supported; use 'ResNetV1c' or 'ResNet'")

        in_ch = spec.stem_channels
        self.out_channels: list[int] = []
        for i in range(4):
            planes = spec.base_channels * 2**i
            stride = spec.strides[i]
            grid = spec.multi_grid if i == 3 else None
            dilations = block_dilations(blocks[i], spec.dilations[i], grid, spec.contract_dilation)
            layers = []
            for j, dilation in enumerate(dilations):
                s = stride if j == 0 else 1
                shortcut = None
                if j == 0 and (stride != 1 or in_ch != planes * block_cls.expansion):
                    shortcut = Shortcut(in_ch, planes * block_cls.expansion, stride, eps)
                layers.append(block_cls(in_ch, planes, s, dilation, shortcut, eps))
                in_ch = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(in_ch)
        self.out_indices: tuple[int, ...] = (0, 1, 2, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stages in ``self.out_indices``, in that order; later stages are not run."""
        x = self.stem(x)
        wanted = self.out_indices
        outs: dict[int, torch.Tensor] = {}
        last = max(wanted)
        for i in range(last + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in wanted:
                outs[i] = x
        return [outs[i] for i in wanted]
