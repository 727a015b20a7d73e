"""Small building blocks shared by the backbone and the heads.

Every convolution that is followed by a batch norm is declared as such (``conv_bn_pairs``), so that
:meth:`psegzoo.models.Segmentor.fuse_bn` can fold the norm into the convolution without knowing the
model's layout.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import winograd


class BatchNorm2d(nn.Module):
    """Batch norm with fixed statistics, as every published checkpoint is used at inference.

    It holds exactly the four tensors a checkpoint stores for a norm layer (``weight``, ``bias``,
    ``running_mean``, ``running_var``) and no batch counter, so state dicts stay minimal and strict.
    """

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


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs wide 3x3 layers with Winograd's algorithm where that is faster.

    Same parameters, state-dict keys and result (up to float rounding: see
    :mod:`psegzoo.models.winograd`); set ``winograd = False`` for the direct convolution. The
    transformed weights are kept beside the module (not in its state dict) and made again when the
    weights change.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, **kwargs: Any):
        super().__init__(in_ch, out_ch, kernel, **kwargs)
        self.winograd = True
        self._transformed: dict[tuple[int, int], tuple[tuple[int, int], torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x)

    def convolve(self, x: torch.Tensor, channels: tuple[int, int] | None = None) -> torch.Tensor:
        """The convolution of ``x``, or of ``x`` taken as input channels ``channels`` [start, stop)."""
        weight = self.weight if channels is None else self.weight[:, channels[0]:channels[1]]
        if self._use_winograd(x, weight):
            key = channels or (0, self.weight.shape[1])
            return winograd.conv3x3(x, self._winograd_weight(key), self.bias, self.dilation)
        if channels is not None:
            weight = weight.contiguous(memory_format=_memory_format(x))
        return self._conv_forward(x, weight, self.bias)

    def _use_winograd(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        # weights made under inference_mode have no version counter to tell when they change
        return (self.winograd and self.padding_mode == "zeros" and not self.weight.is_inference()
                and winograd.suits(x, weight, self.stride, self.padding, self.dilation, self.groups))

    def _winograd_weight(self, key: tuple[int, int]) -> torch.Tensor:
        stamp = (self.weight.data_ptr(), self.weight._version)
        cached = self._transformed.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, winograd.transform_weight(self.weight[:, key[0]:key[1]]))
            self._transformed[key] = cached
        return cached[1]


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1,
         bias: bool = False) -> Conv2d:
    return Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)


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

    def of_concat(self, parts: Sequence[torch.Tensor], size: tuple[int, int] | torch.Size,
                  align_corners: bool | Sequence[bool], decompose: bool = True) -> torch.Tensor:
        """``self(cat([resize(p, size) for p in parts], 1))``.

        With ``decompose`` the resized maps and their concatenation are never built (see
        :func:`conv_of_concat`); the result is the same up to float rounding.
        """
        flags = _per_part(align_corners, len(parts))
        if decompose and decomposable(self.conv):
            y = conv_of_concat(self.conv, parts, size, flags)
        else:
            y = self.conv(torch.cat([resize(p, size, ac) for p, ac in zip(parts, flags)], dim=1))
        return F.relu(self.bn(y), inplace=True)


def _per_part(align_corners: bool | Sequence[bool], n: int) -> list[bool]:
    if isinstance(align_corners, bool):
        return [align_corners] * n
    flags = [bool(a) for a in align_corners]
    if len(flags) != n:
        raise ValueError(f"{len(flags)} align_corners flags for {n} parts")
    return flags


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


# --------------------------------------------------------------------------------------------
# A convolution of concatenated, bilinearly upsampled maps, without building them
# --------------------------------------------------------------------------------------------
#
# Heads such as PSP's pyramid pooling concatenate a full-size map ``x`` with small maps ``p``
# upsampled bilinearly to x's size, then convolve. Bilinear upsampling is separable and linear:
# ``U p = A p B^T`` with ``A`` (H x s) and ``B`` (W x t) the interpolation weights of each axis.
# The convolution is linear in its input channels, so
#
#     conv(cat[x, U p]) = conv(x, W_x) + sum over taps (i, j) of  A_i (W_p[:, :, i, j] p) B_j^T
#
# where ``A_i`` is ``A`` shifted by the tap's row offset, with zero rows where the tap reads the
# padding (``B_j`` likewise for columns). The small-map terms cost a few tiny matmuls; the
# upsampled maps, their share of the convolution and the concatenation are never computed.


def decomposable(conv_layer: nn.Conv2d) -> bool:
    """Whether :func:`conv_of_concat` computes this convolution exactly (stride 1, zero padding)."""
    return (
        conv_layer.stride == (1, 1)
        and conv_layer.groups == 1
        and conv_layer.padding_mode == "zeros"
        and not isinstance(conv_layer.padding, str)
    )


def interpolation_matrix(out_size: int, in_size: int, align_corners: bool, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """``M`` (out x in) such that bilinear resizing along one axis is ``M @ v``: PyTorch's own weights.

    Made by resizing the identity with ``F.interpolate`` (the other axis kept at size 1, where the
    weight is exactly 1), so it holds exactly the weights of the resize it replaces. A size-1 axis
    is a broadcast (:func:`resize` does the same).
    """
    if in_size == 1:
        return torch.ones(out_size, 1, dtype=dtype, device=device)
    eye = torch.eye(in_size, dtype=dtype, device=device).reshape(1, in_size, in_size, 1)
    m = F.interpolate(eye, size=(out_size, 1), mode="bilinear", align_corners=align_corners)
    return m[0, :, :, 0].t()


def _tap_matrix(m: torch.Tensor, out_size: int, kernel: int, dilation: int, padding: int) -> torch.Tensor:
    """``R[o, (k, a)] = m[o + k * dilation - padding, a]`` (0 where that row is padding): (out, kernel * s)."""
    rows = torch.arange(out_size, device=m.device)[:, None] + torch.arange(kernel, device=m.device) * dilation - padding
    inside = (rows >= 0) & (rows < m.shape[0])
    taps = m[rows.clamp(0, m.shape[0] - 1)] * inside[..., None].to(m.dtype)
    return taps.reshape(out_size, kernel * m.shape[1])


def conv_of_concat(conv_layer: nn.Conv2d, parts: Sequence[torch.Tensor], size: tuple[int, int] | torch.Size,
                   align_corners: Sequence[bool]) -> torch.Tensor:
    """``conv_layer(cat([resize(p, size, ac) for p, ac in zip(parts, align_corners)], 1))``.

    Parts of ``size`` are convolved directly (with their slice of the weight); every other part is
    convolved at its own size and upsampled through interpolation matrices, as explained above.
    Needs :func:`decomposable`; exact up to float rounding.
    """
    weight = conv_layer.weight
    h, w = int(size[0]), int(size[1])
    n = parts[0].shape[0]
    kh, kw = weight.shape[-2:]
    dh, dw = conv_layer.dilation
    ph, pw = conv_layer.padding
    ho, wo = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + p.shape[1])
    if starts[-1] != weight.shape[1]:
        raise ValueError(f"the parts have {starts[-1]} channels in all; the convolution takes {weight.shape[1]}")
    full = [i for i, p in enumerate(parts) if tuple(p.shape[-2:]) == (h, w)]
    small = [i for i in range(len(parts)) if i not in full]

    adjacent = full == list(range(full[0], full[-1] + 1)) if full else False
    if full:
        x = parts[full[0]] if len(full) == 1 else torch.cat([parts[i] for i in full], dim=1)
    if adjacent and isinstance(conv_layer, Conv2d):  # ASPP's branches, PSP's input: one weight slice
        y = conv_layer.convolve(x, (starts[full[0]], starts[full[-1] + 1]))
    elif full:
        w_full = torch.cat([weight[:, starts[i]:starts[i + 1]] for i in full], dim=1)
        y = F.conv2d(x, w_full.contiguous(memory_format=_memory_format(x)), conv_layer.bias, 1,
                     conv_layer.padding, conv_layer.dilation)
    else:
        p0 = parts[0]
        y = torch.zeros((n, weight.shape[0], ho, wo), dtype=p0.dtype, device=p0.device,
                        memory_format=torch.channels_last)
        if conv_layer.bias is not None:
            y += conv_layer.bias.to(y.dtype).view(1, -1, 1, 1)
    if not small:
        return y

    rows, cols = [], []
    for i in small:
        p = parts[i]
        s, t = p.shape[-2:]
        w_p = weight[:, starts[i]:starts[i + 1]].to(p.dtype)
        # q[n, (i, a), (j, b), o] = sum_c W[o, c, i, j] p[n, c, a, b]
        q = torch.einsum("ocij,ncab->niajbo", w_p, p).reshape(n, kh * s, kw * t, -1)
        a = _tap_matrix(interpolation_matrix(h, s, align_corners[i], dtype=q.dtype, device=q.device), ho, kh, dh, ph)
        b = _tap_matrix(interpolation_matrix(w, t, align_corners[i], dtype=q.dtype, device=q.device), wo, kw, dw, pw)
        rows.append(a)
        cols.append(torch.matmul(b, q))  # (n, kh * s, wo, out)
    r = torch.cat(rows, dim=1)  # (ho, sum of kh * s)
    c = torch.cat(cols, dim=1).reshape(n, r.shape[1], -1)  # (n, sum of kh * s, wo * out)
    yt = y.permute(0, 2, 3, 1)  # (n, ho, wo, out): a plain view of a channels-last y
    if yt.is_contiguous() and y.dtype == c.dtype:
        yt.view(n, ho, -1).baddbmm_(r.expand(n, -1, -1), c)
    else:
        yt.add_(torch.matmul(r, c).view(n, ho, wo, -1).to(y.dtype))
    return y
