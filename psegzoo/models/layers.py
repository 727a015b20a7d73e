"""Small building blocks shared by the backbone and the heads.

Every convolution that is followed by a batch norm is declared as such (``conv_bn_pairs``), so that
:meth:`psegzoo.models.Segmentor.fuse_bn` can fold the norm into the convolution without knowing the
model's layout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true


class BatchNorm2d(nn.Module):
    """Batch norm with fixed statistics, as every published checkpoint is used at inference.

    It holds exactly the four tensors a checkpoint stores for a norm layer (``weight``, ``bias``,
    ``running_mean``, ``running_var``) and no batch counter, so state dicts stay minimal and strict.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1,
         bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)


class Classifier(nn.Conv2d):
    """The 1x1 convolution from features to class scores (mmseg's ``conv_seg``), in float32 even under autocast.

    Scores rounded to bfloat16 keep 8 significant bits: two classes within about 0.5% of each other
    would tie and the label flip at random. The features may be half precision; the product is not.
    """

    def __init__(self, in_ch: int, num_classes: int):
        super().__init__(in_ch, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.to(self.weight.dtype))
        return super().forward(x)


class ConvBNReLU(nn.Module):
    """conv -> batch norm -> ReLU (mmcv's ConvModule with its default order and no conv bias)."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, padding: int = 0, dilation: int = 1,
                 eps: float = 1e-5):
        super().__init__()
        self.conv = conv(in_ch, out_ch, kernel, padding=padding, dilation=dilation)
        self.bn = BatchNorm2d(out_ch, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize; a 1x1 map is broadcast instead (bilinear resize of 1x1 is exactly that).

    Sizes may be symbolic (during export): the shortcuts are taken only where they are known to apply.
    """
    size = (size[0], size[1])
    if statically_known_true(x.shape[-2] == size[0]) and statically_known_true(x.shape[-1] == size[1]):
        return x
    if statically_known_true(x.shape[-2] == 1) and statically_known_true(x.shape[-1] == 1):
        return x.expand(-1, -1, *size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


@torch.no_grad()
def fold_bn_into_conv(conv_layer: nn.Conv2d, bn: BatchNorm2d) -> None:
    """Make ``conv_layer`` compute ``bn(conv_layer(x))`` (exact up to float rounding; done in float64)."""
    dtype = conv_layer.weight.dtype
    scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
    weight = conv_layer.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = conv_layer.bias.double() if conv_layer.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    conv_layer.weight.copy_(weight.to(dtype))
    if conv_layer.bias is None:
        conv_layer.bias = nn.Parameter(bias.to(dtype), requires_grad=conv_layer.weight.requires_grad)
    else:
        conv_layer.bias.copy_(bias.to(dtype))
