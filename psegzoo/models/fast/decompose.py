"""A convolution of concatenated, bilinearly upsampled maps, without building them.

Heads such as PSP's pyramid pooling concatenate a full-size map ``x`` with small maps ``p``
upsampled bilinearly to x's size, then convolve. Bilinear upsampling is separable and linear:
``U p = A p B^T`` with ``A`` (H x s) and ``B`` (W x t) the interpolation weights of each axis.
The convolution is linear in its input channels, so

    conv(cat[x, U p]) = conv(x, W_x) + sum over taps (i, j) of  A_i (W_p[:, :, i, j] p) B_j^T

where ``A_i`` is ``A`` shifted by the tap's row offset, with zero rows where the tap reads the
padding (``B_j`` likewise for columns). The small-map terms cost a few tiny matmuls; the
upsampled maps, their share of the convolution and the concatenation are never computed. For
PSPNet's bottleneck (2048 + 4 x 512 input channels) that is half of the head's largest convolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNReLU, resize
from .winograd import WinogradConv2d


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
    is a broadcast (:func:`psegzoo.models.layers.resize` does the same).
    """
    if in_size == 1:
        return torch.ones(out_size, 1, dtype=dtype, device=device)
    eye = torch.eye(in_size, dtype=torch.float32, device=device).reshape(1, in_size, in_size, 1)
    m = F.interpolate(eye, size=(out_size, 1), mode="bilinear", align_corners=align_corners)
    return m[0, :, :, 0].t().to(dtype)


def _tap_matrix(m: torch.Tensor, out_size: int, kernel: int, dilation: int, padding: int) -> torch.Tensor:
    """``R[o, (k, a)] = m[o + k * dilation - padding, a]`` (0 where that row is padding): (out, kernel * s)."""
    rows = torch.arange(out_size, device=m.device)[:, None] + torch.arange(kernel, device=m.device) * dilation - padding
    inside = (rows >= 0) & (rows < m.shape[0])
    taps = m[rows.clamp(0, m.shape[0] - 1)] * inside[..., None].to(m.dtype)
    return taps.reshape(out_size, kernel * m.shape[1])


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _convolve_channels(conv_layer: nn.Conv2d, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The convolution of ``x`` taken as the input channels [start, stop) of ``conv_layer`` (with its bias)."""
    if isinstance(conv_layer, WinogradConv2d):
        return conv_layer.convolve(x, (start, stop))
    weight = conv_layer.weight
    if (start, stop) != (0, weight.shape[1]):
        weight = weight[:, start:stop].contiguous(memory_format=_memory_format(x))
    return F.conv2d(x, weight, conv_layer.bias, 1, conv_layer.padding, conv_layer.dilation)


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
    ph, pw = cast("tuple[int, int]", conv_layer.padding)
    ho, wo = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + p.shape[1])
    if starts[-1] != weight.shape[1]:
        raise ValueError(f"the parts have {starts[-1]} channels in all; the convolution takes {weight.shape[1]}")
    full = [i for i, p in enumerate(parts) if tuple(p.shape[-2:]) == (h, w)]
    small = [i for i in range(len(parts)) if i not in full]

    adjacent = full == list(range(full[0], full[-1] + 1)) if full else False
    if adjacent:  # PSP's input, ASPP's branches: one slice of the weight
        x = parts[full[0]] if len(full) == 1 else torch.cat([parts[i] for i in full], dim=1)
        y = _convolve_channels(conv_layer, x, starts[full[0]], starts[full[-1] + 1])
    elif full:
        x = torch.cat([parts[i] for i in full], dim=1)
        w_full = torch.cat([weight[:, starts[i]:starts[i + 1]] for i in full], dim=1)
        y = F.conv2d(x, w_full.contiguous(memory_format=_memory_format(x)), conv_layer.bias, 1,
                     conv_layer.padding, conv_layer.dilation)
    else:
        p0 = parts[0]
        y = torch.zeros((n, ho, wo, weight.shape[0]), dtype=p0.dtype, device=p0.device).permute(0, 3, 1, 2)
        if conv_layer.bias is not None:
            y += conv_layer.bias.to(y.dtype).view(1, -1, 1, 1)
    if not small:
        return y

    rows, cols = [], []
    for i in small:
        p = parts[i]
        s, t = p.shape[-2:]
        w_p = weight[:, starts[i]:starts[i + 1]].to(p.dtype)
        # q[n, (i, a), (j, b), o] = sum_c W[o, c, i, j] p[n, c, a, b]: one matrix product
        q = torch.matmul(p.flatten(2).transpose(1, 2), w_p.permute(1, 2, 3, 0).reshape(p.shape[1], -1))
        q = q.view(n, s, t, kh, kw, -1).permute(0, 3, 1, 4, 2, 5).reshape(n, kh * s, kw * t, -1)
        a = _tap_matrix(interpolation_matrix(h, s, align_corners[i], dtype=q.dtype, device=q.device), ho, kh, dh, ph)
        b = _tap_matrix(interpolation_matrix(w, t, align_corners[i], dtype=q.dtype, device=q.device), wo, kw, dw, pw)
        rows.append(a)
        cols.append(torch.matmul(b, q))  # (n, kh * s, wo, out)
    c = torch.cat(cols, dim=1)
    r = torch.cat(rows, dim=1).to(c.dtype)  # (ho, sum of kh * s)
    c = c.reshape(n, r.shape[1], -1)  # (n, sum of kh * s, wo * out)
    yt = y.permute(0, 2, 3, 1)  # (n, ho, wo, out): a plain view of a channels-last y
    if yt.is_contiguous() and y.dtype == c.dtype:
        yt.view(n, ho, -1).baddbmm_(r.expand(n, -1, -1), c)
    else:
        y = y + torch.matmul(r, c).view(n, ho, wo, -1).permute(0, 3, 1, 2).to(y.dtype)
    return y


def conv_bn_relu_of_concat(block: ConvBNReLU, parts: Sequence[torch.Tensor], size: tuple[int, int] | torch.Size,
                           align_corners: bool | Sequence[bool]) -> torch.Tensor:
    """``block(cat([resize(p, size) for p in parts], 1))`` through :func:`conv_of_concat` where it applies."""
    flags = [align_corners] * len(parts) if isinstance(align_corners, bool) else [bool(a) for a in align_corners]
    if len(flags) != len(parts):
        raise ValueError(f"{len(flags)} align_corners flags for {len(parts)} parts")
    if decomposable(block.conv):
        y = conv_of_concat(block.conv, parts, size, flags)
    else:
        y = block.conv(torch.cat([resize(p, size, ac) for p, ac in zip(parts, flags)], dim=1))
    return F.relu(block.bn(y), inplace=True)
