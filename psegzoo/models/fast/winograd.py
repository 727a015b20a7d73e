"""Winograd's minimal filtering F(2x2, 3x3): big 3x3 convolutions with 16 products instead of 36.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 block of inputs ``d``. Winograd's
algorithm writes that block as ``A^T [(G g G^T) * (B^T d B)] A`` (``*`` elementwise): the same
bilinear function of the weights ``g`` and the inputs, with 16 multiplications per channel pair
instead of 36. ``A``, ``B`` and ``G`` hold only 0, 1, -1 and 1/2, so the transforms are sums and
exact halvings: the result equals the direct convolution up to float rounding (measured on
PSPNet's wide layers, its error against a float64 reference is no larger than the direct one's).

Across channels the 16 elementwise products become 16 matrix products (tiles x C_in) @ (C_in x
C_out), where the time goes. The transforms are memory passes; they are done one band of tile rows
at a time so that they stay in cache. It pays on the CPU for wide layers only (measured: 1.5x to
1.9x faster from 512 channels, no faster at 256, slower below), hence :func:`suits`; whether it pays
on the CPU at hand is measured (:mod:`psegzoo.models.fast.tuning`).

A dilated convolution (dilation ``t``) is the same computation on the ``t x t`` interleaved
sub-grids: a tile is then 2x2 outputs ``t`` apart, read from 4x4 inputs ``t`` apart.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import winograd_mm

MIN_CHANNELS = 512
"""Narrowest layer (in and out channels) run this way: below it the direct convolution is faster."""

MIN_CHANNELS_F4 = 256
"""Narrowest layer run with F(4x4, 3x3) (:mod:`.winograd_mm`), which pays from narrower layers."""

MAX_PADDED_AREA_F4 = 1.5
"""As ``MAX_PADDED_AREA`` for F(4x4, 3x3), whose tiles cover multiples of 4 x dilation; it does
2.25 products per output, so even a third of padding leaves it far below the direct convolution's 9."""

MAX_PADDED_AREA = 1.15
"""Largest (padded output area / output area) accepted: tiles cover multiples of 2 x dilation."""

BAND_BYTES = 4 << 20
"""Size of one band's transformed inputs (or products): small enough to stay in cache."""

# G (4x3): the weight transform; B^T and A^T are written out in _input_transform / _output_rows.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def min_channels(tile: int) -> int:
    """The narrowest layer run with tiles of ``tile`` x ``tile`` outputs (2 or 4)."""
    return MIN_CHANNELS_F4 if tile == 4 else MIN_CHANNELS


def eligible(conv: nn.Conv2d, tile: int = 2) -> bool:
    """Whether a layer can run as :func:`conv3x3` (3x3, stride 1, same size, zero padding) and is wide
    enough (:func:`min_channels`) for it to pay with tiles of ``tile`` x ``tile`` outputs."""
    return (
        tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1) and conv.groups == 1
        and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
        and tuple(conv.padding) == tuple(conv.dilation)
        and min(conv.in_channels, conv.out_channels) >= min_channels(tile)
    )


def suits(x: torch.Tensor, weight: torch.Tensor, dilation: tuple[int, ...], tile: int = 2) -> bool:
    """Whether this input runs faster with Winograd (tiles of ``tile`` x ``tile`` outputs): float32
    channels-last on the CPU, no autocast, no gradient, and tiles that do not pad the map by much."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() != 4:
        return False
    if min(weight.shape[0], weight.shape[1]) < min_channels(tile) or torch.is_autocast_enabled("cpu"):
        return False
    if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    h, w = x.shape[-2:]
    if tile == 4:
        area = winograd_mm.tiled(h, dilation[0]) * winograd_mm.tiled(w, dilation[1])
        return area <= MAX_PADDED_AREA_F4 * h * w
    return winograd_mm.padded(h, dilation[0], 2) * winograd_mm.padded(w, dilation[1], 2) <= MAX_PADDED_AREA * h * w


@torch.no_grad()
def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` for every (out, in) pair, as 16 (in x out) matrices: (16, C_in, C_out).

    Computed in float64 and rounded once.
    """
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ak,ockl,bl->abco", g, weight.double(), g)  # (4, 4, in, out)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _input_transform(d: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """Rows of ``B^T d`` from the four input rows (or columns) of a tile: d0-d2, d1+d2, d2-d1, d1-d3."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _output_rows(m: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """Rows of ``A^T m`` from four rows (or columns) of products: m0+m1+m2 and m1-m2-m3."""
    torch.add(m[0], m[1], out=out[0])
    out[0] += m[2]
    torch.sub(m[1], m[2], out=out[1])
    out[1] -= m[3]


def conv3x3(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None,
            dilation: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=dilation, dilation=dilation)`` for a 3x3 ``w``.

    ``weight_t`` is ``transform_weight(w)``; ``x`` is channels-last and so is the result.
    """
    n, c, h, w = x.shape
    o = weight_t.shape[2]
    dh, dw = dilation
    hp, wp = winograd_mm.padded(h, dh, 2), winograd_mm.padded(w, dw, 2)
    qy, qx = hp // (2 * dh), wp // (2 * dw)
    xh = x.permute(0, 2, 3, 1)
    y = torch.empty((n, qy, 2, dh, qx, 2, dw, o), dtype=x.dtype, device=x.device)
    band = max(1, BAND_BYTES // (16 * dh * dw * qx * max(c, o) * x.element_size()))
    # One band of input rows, zero-padded: the convolution's own padding (dilation) plus the
    # tiles' (up to hp, wp) plus one more dilation, so that every band is viewed the same way.
    # Only the image's columns are ever written; the padding columns stay zero.
    wpp = wp + 3 * dw
    padded = x.new_zeros((n, 2 * dh * band + 3 * dh, wpp, c))
    for q0 in range(0, qy, band):
        nq = min(qy, q0 + band) - q0
        rows = padded[:, :2 * dh * nq + 3 * dh]
        top = 2 * dh * q0 - dh  # the image row of the band's first row
        lo, hi = max(0, top), min(h, top + rows.shape[1])
        rows[:, :lo - top, dw:dw + w].zero_()
        rows[:, max(hi - top, 0):, dw:dw + w].zero_()
        if hi > lo:
            rows[:, lo - top:hi - top, dw:dw + w] = xh[:, lo:hi]
        # the 4 input rows of every tile of the band: row k of the tiles at (q, e) is 2dq + e + kd
        d = [rows[:, k * dh:k * dh + 2 * dh * nq].reshape(n, nq, 2 * dh, wpp, c)[:, :, :dh] for k in range(4)]
        u = torch.empty((4, n, nq, dh, wpp, c), dtype=x.dtype, device=x.device)
        _input_transform(d, list(u))
        tiles = n * nq * dh * qx * dw
        v = torch.empty((16, tiles, c), dtype=x.dtype, device=x.device)
        for i in range(4):
            cols = [u[i, :, :, :, k * dw:k * dw + 2 * dw * qx].reshape(n, nq, dh, qx, 2 * dw, c)[..., :dw, :]
                    for k in range(4)]
            _input_transform(cols, [v[4 * i + j].view(n, nq, dh, qx, dw, c) for j in range(4)])
        del u
        m = torch.bmm(v, weight_t)  # (16, tiles, out)
        del v
        if bias is not None:
            m[5] += bias  # m[1][1] enters each of the 4 outputs once, with sign +
        m4 = m.view(4, 4, tiles, o)
        r = torch.empty((2, 4, tiles, o), dtype=x.dtype, device=x.device)
        _output_rows(list(m4), list(r))
        del m, m4
        yb = y[:, q0:q0 + nq]
        for i in range(2):
            ri = [t.view(n, nq, dh, qx, dw, o) for t in r[i]]
            _output_rows(ri, [yb[:, :, i, :, :, 0], yb[:, :, i, :, :, 1]])
    y = y.view(n, hp, wp, o)
    if (hp, wp) != (h, w):
        y = y[:, :h, :w].contiguous()
    return y.permute(0, 3, 1, 2)


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state-dict keys) that runs suitable inputs as :func:`conv3x3`
    (``tile`` 2) or :func:`.winograd_mm.conv3x3` (``tile`` 4, F(4x4, 3x3)).

    :func:`psegzoo.models.fast.use_fast_paths` turns eligible layers into this class and back. The
    transformed weights (of the whole layer, or of a slice of its input channels for decomposed
    heads) are made on first use and dropped when the weights are loaded, folded or moved
    (:meth:`refresh`); they are not part of the state dict.
    """

    _transforms: dict[tuple[int, int], torch.Tensor]
    tile: int = 2

    def refresh(self) -> None:
        """Forget the transformed weights (they are made again from the current weights when used)."""
        self._transforms = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x)

    def convolve(self, x: torch.Tensor, channels: tuple[int, int] | None = None) -> torch.Tensor:
        """The convolution of ``x``, or of ``x`` taken as input channels ``channels`` [start, stop)."""
        key = channels or (0, self.in_channels)
        weight = self.weight if key == (0, self.in_channels) else self.weight[:, key[0]:key[1]]
        if suits(x, weight, self.dilation, self.tile):
            f4 = self.tile == 4
            transformed = self._transforms.get(key)
            if transformed is None:
                transformed = winograd_mm.transform_weight(weight, 4) if f4 else transform_weight(weight)
                self._transforms[key] = transformed
            if f4:
                return winograd_mm.conv3x3(x, transformed, self.bias, self.dilation, weight)  # type: ignore[arg-type]
            return conv3x3(x, transformed, self.bias, self.dilation)  # type: ignore[arg-type]
        if channels is not None and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh()

    def _apply(self, fn: Any, recurse: bool = True) -> WinogradConv2d:
        self.refresh()
        return super()._apply(fn, recurse)
