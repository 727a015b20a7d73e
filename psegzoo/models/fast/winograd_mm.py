"""Winograd's F(4x4, 3x3) (and F(2x2, 3x3)) as a few large matrix products per layer.

F(4x4, 3x3) computes 4x4 outputs with 36 products per channel pair (direct: 144).

The same algorithm as :mod:`.winograd`'s F(2x2, 3x3) with 6x6 input tiles: the output tile is
``A^T [(G g G^T) * (B^T d B)] A`` with the interpolation points 0, 1, -1, 2, -2 and infinity
(Lavin & Gray). It does 2.25 products per output where F(2x2, 3x3) does 4 and the direct
convolution 9, but its transforms hold 4, 5 and 8 (and G thirds and 24ths): float32 rounding grows
with them. Measured against float64 on the zoo's ResNet-50 layers it stays within 2e-5 x max|output|
per layer, and the whole models within 1e-4 x max|logits| of the plain float32 ones (the goldens'
tolerance, checked by tests/test_models_fast_paths.py).

F(2x2, 3x3) (``tile=2``: 4x4 inputs, 16 products per 2x2 outputs) runs the same way here; its
transforms hold only 0, 1, -1 and 1/2.

All work is matrix products, a few per band of tile rows: the 6x6 input tiles of the band are
gathered (one strided copy), transformed by two small products with ``B^T`` (one per axis), multiplied
by the transformed weights in one batched product of 36 (tiles x C_in) @ (C_in x C_out) matrices
(where the time goes) and transformed back by two products with ``A^T``. A dilated convolution
(dilation ``t``) is ``t x t`` ordinary ones on the interleaved sub-grids of the map (its phases):
a tile is 4x4 outputs ``t`` apart, read from 6x6 inputs ``t`` apart, so the same code runs them.

Tiles cover a side in multiples of 4 x dilation outputs. Where a few outputs are left over (a
97-wide map at dilation 4: 96 and one), they are convolved directly as thin strips rather than
padding the tiles to 112, which would add a third to the products (:func:`tiled`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TILES = (2, 4)
"""Outputs per tile side, of F(2x2, 3x3) and F(4x4, 3x3); a tile reads tile + 2 inputs per side."""

BAND_BYTES = 128 << 20
"""Size of one band's transformed inputs. Larger bands make taller matrices for the batched product:
on PSPNet's 2048-channel head, 128 MB runs 10-15% faster than 32 MB (measured on a 2-core AMD EPYC),
and narrower layers are as fast either way."""

_BT = ((4.0, 0.0, -5.0, 0.0, 1.0, 0.0),
       (0.0, -4.0, -4.0, 1.0, 1.0, 0.0),
       (0.0, 4.0, -4.0, -1.0, 1.0, 0.0),
       (0.0, -2.0, -1.0, 2.0, 1.0, 0.0),
       (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
       (0.0, 4.0, 0.0, -5.0, 0.0, 1.0))
_G = ((1 / 4, 0.0, 0.0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0.0, 0.0, 1.0))
_AT = ((1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
       (0.0, 1.0, -1.0, 2.0, -2.0, 0.0),
       (0.0, 1.0, 1.0, 4.0, 4.0, 0.0),
       (0.0, 1.0, -1.0, 8.0, -8.0, 1.0))
_BT2 = ((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0))
_G2 = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT2 = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))
_MATRICES = {2: (_BT2, _G2, _AT2), 4: (_BT, _G, _AT)}


def padded(size: int, dilation: int, tile: int = 4) -> int:
    """The output size rounded up to whole tiles (tile x dilation outputs a side)."""
    return tile * dilation * -(-size // (tile * dilation))


def tiled(size: int, dilation: int, tile: int = 4) -> int:
    """How many outputs of a side the tiles cover: ``size`` rounded down to whole tiles when the few
    left over cost less convolved directly (9 products an output, against the 2.25 of the padding's
    F(4x4, 3x3) tiles: fewer than a fifth of a tile row left), else rounded up (padded with zeros).

    A dilated map's sides split into ``dilation`` interleaved sub-grids, all tiled alike, so the
    rounding is to multiples of tile x dilation: a 97-wide map at dilation 4 is 112 padded, or 96
    tiled and one column direct.
    """
    step = tile * dilation
    whole = size // step * step
    if whole and 5 * (size - whole) < step:
        return whole
    return padded(size, dilation, tile)


@torch.no_grad()
def transform_weight(weight: torch.Tensor, tile: int = 4) -> torch.Tensor:
    """``G g G^T`` for every (out, in) pair, as (tile + 2)^2 (in x out) matrices: (36, C_in, C_out)
    for F(4x4, 3x3). Computed in float64 and rounded once."""
    g = torch.tensor(_MATRICES[tile][1], dtype=torch.float64, device=weight.device)
    u = torch.einsum("ak,ockl,bl->abco", g, weight.double(), g)
    return u.reshape((tile + 2) ** 2, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _tile_input(x: torch.Tensor, th: int, tw: int, dilation: tuple[int, int]) -> torch.Tensor:
    """The NHWC map the tiles read: ``x`` with the convolution's zero padding (dilation) around the
    th x tw outputs the tiles cover; only the margins are zeroed, the rest is copied once."""
    n, c, h, w = x.shape
    dh, dw = dilation
    xp = x.new_empty((n, th + 2 * dh, tw + 2 * dw, c))
    rows, cols = min(h, th + dh), min(w, tw + dw)
    xp[:, dh:dh + rows, dw:dw + cols] = x[:, :, :rows, :cols].permute(0, 2, 3, 1)
    xp[:, :dh].zero_()
    xp[:, dh + rows:].zero_()
    xp[:, dh:dh + rows, :dw].zero_()
    xp[:, dh:dh + rows, dw + cols:].zero_()
    return xp


def _direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: tuple[int, int],
            rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """The convolution's outputs ``rows`` x ``cols`` (NHWC), convolved directly from the inputs they
    read: the strips of a map that its tiles leave out."""
    h, w = x.shape[-2:]
    dh, dw = dilation
    (r0, r1), (c0, c1) = rows, cols
    i0, i1, j0, j1 = max(r0 - dh, 0), min(r1 + dh, h), max(c0 - dw, 0), min(c1 + dw, w)
    part = F.pad(x[:, :, i0:i1, j0:j1], (j0 - c0 + dw, c1 + dw - j1, i0 - r0 + dh, r1 + dh - i1))
    part = part.contiguous(memory_format=torch.channels_last)
    return F.conv2d(part, weight, bias, dilation=dilation).permute(0, 2, 3, 1)


def conv3x3(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None,
            dilation: tuple[int, int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=dilation, dilation=dilation)`` for a 3x3 ``w``.

    ``weight_t`` is ``transform_weight(w, tile)`` (the tile is read from its size); ``x`` is
    channels-last and so is the result. Given ``w`` as ``weight``, the outputs that whole tiles
    leave over on a side (:func:`tiled`) are convolved directly instead of padding the tiles.
    """
    n, c, h, w = x.shape
    a = round(weight_t.shape[0] ** 0.5)  # inputs per tile side
    t = a - 2  # outputs per tile side
    o = weight_t.shape[2]
    dh, dw = dilation
    th, tw = (tiled(h, dh, t), tiled(w, dw, t)) if weight is not None else (padded(h, dh, t), padded(w, dw, t))
    qy, qx = th // (t * dh), tw // (t * dw)
    bt, _, at = (torch.tensor(m, dtype=x.dtype, device=x.device) for m in _MATRICES[t])
    xp = _tile_input(x, th, tw, dilation)
    y = torch.empty((n, max(th, h), max(tw, w), o), dtype=x.dtype, device=x.device)
    # y[b, q, i, e, p, j, f, :]: output row t*dh*q + dh*i + e, column t*dw*p + dw*j + f
    yt = y[:, :th, :tw].view(n, qy, t, dh, qx, t, dw, o)
    per_row = n * dh * qx * dw * max(c, o) * a * a * x.element_size()
    band = max(1, BAND_BYTES // per_row)
    sn, sr, sc, _ = xp.stride()
    for q0 in range(0, qy, band):
        nq = min(qy, q0 + band) - q0
        # input (ky, kx) of output tile (b, q, e, p, f) is row t*dh*q + e + ky*dh, column t*dw*p + f + kx*dw
        d = xp[:, t * dh * q0:].as_strided(
            (a, a, n, nq, dh, qx, dw, c),
            (dh * sr, dw * sc, sn, t * dh * sr, sr, t * dw * sc, sc, 1),
            xp.storage_offset() + t * dh * q0 * sr)
        tiles = n * nq * dh * qx * dw
        v = torch.matmul(bt, d.reshape(a, a * tiles * c))  # rows: B^T d
        v = torch.matmul(bt, v.view(a, a, tiles * c))  # columns: B^T d B, [row][column]
        m = torch.bmm(v.view(a * a, tiles, c), weight_t)
        del v
        if bias is not None:
            m[a + 1] += bias  # A^T's column 1 is all ones: m[1][1] enters every output once, with sign +
        r = torch.matmul(at, m.view(a, a * tiles * o))  # A^T m along rows
        r = torch.matmul(at, r.view(t, a, tiles * o))  # then columns: [i][j]
        del m
        yt[:, q0:q0 + nq].copy_(r.view(t, t, n, nq, dh, qx, dw, o).permute(2, 3, 0, 4, 5, 1, 6, 7))
    if th < h:
        y[:, th:, :w] = _direct(x, weight, bias, dilation, (th, h), (0, w))  # type: ignore[arg-type]
    if tw < w:
        y[:, :min(th, h), tw:] = _direct(x, weight, bias, dilation, (0, min(th, h)), (tw, w))  # type: ignore[arg-type]
    if y.shape[1:3] != (h, w):
        y = y[:, :h, :w].contiguous()
    return y.permute(0, 3, 1, 2)
