"""PSANet's point-wise attention masks ("collect" and "distribute") in plain PyTorch.

The attention branch predicts, at every position ``p`` of an ``H x W`` map, an ``Hm x Wm`` mask
centred on ``p``. The mask op lays these local masks out over the whole map, giving an
``(N, H*W, H, W)`` tensor whose entries outside each local window are zero:

* collect:    ``out[n, q, p] = mask[n, q - p + c, p]``  (position ``p`` gathers from ``q``)
* distribute: ``out[n, p, q] = mask[n, q - p + c, p]``  (position ``p`` sends to ``q``)

where ``q`` and ``p`` are flattened positions, ``q - p + c`` indexes the ``Hm x Wm`` mask with its
centre ``c = ((Hm - 1) // 2, (Wm - 1) // 2)``, and offsets that fall outside the mask give 0. This is
the computation of mmcv's ``PSAMask`` op, done with one indexed gather (no loop over pixels), so it
runs on any device PyTorch supports.

While a model is exported, the same values are moved by padding and reshaping instead
(:func:`psa_mask_by_reshape`): no index tensors, so the graph holds no (H*W)^2-sized constants and
works with symbolic sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PSA_TYPES = ("collect", "distribute")


def _offsets(size: int, mask_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``idx[t, s] = t - s + half`` (clamped into the mask) and whether it lies inside the mask."""
    pos = torch.arange(size, device=device)
    idx = pos[:, None] - pos[None, :] + (mask_size - 1) // 2
    valid = (idx >= 0) & (idx < mask_size)
    return idx.clamp(0, mask_size - 1), valid


def psa_mask(x: torch.Tensor, psa_type: str, mask_size: tuple[int, int]) -> torch.Tensor:
    """Spread per-position local masks ``x`` of shape (N, Hm*Wm, H, W) to (N, H*W, H, W)."""
    if psa_type not in PSA_TYPES:
        raise ValueError(f"psa_type must be one of {PSA_TYPES}, got {psa_type!r}")
    n, c, h, w = x.shape
    hm, wm = int(mask_size[0]), int(mask_size[1])
    if c != hm * wm:
        raise ValueError(f"PSA mask input has {c} channels; mask size {hm}x{wm} needs {hm * wm}")
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return psa_mask_by_reshape(x, psa_type, (hm, wm))
    masks = x.unflatten(1, (hm, wm))  # (N, Hm, Wm, H, W)
    ih, vh = _offsets(h, hm, x.device)  # [t_h, s_h]
    iw, vw = _offsets(w, wm, x.device)  # [t_w, s_w]
    sh = torch.arange(h, device=x.device)
    sw = torch.arange(w, device=x.device)
    if psa_type == "collect":
        # result dims: (t_h, t_w, s_h, s_w): target position first, mask owner second
        i_h, i_w = ih[:, None, :, None], iw[None, :, None, :]
        s_h, s_w = sh[None, None, :, None], sw[None, None, None, :]
        valid = vh[:, None, :, None] & vw[None, :, None, :]
    else:
        # result dims: (s_h, s_w, t_h, t_w): mask owner first, target position second
        i_h, i_w = ih.t()[:, None, :, None], iw.t()[None, :, None, :]
        s_h, s_w = sh[:, None, None, None], sw[None, :, None, None]
        valid = vh.t()[:, None, :, None] & vw.t()[None, :, None, :]
    out = masks[:, i_h, i_w, s_h, s_w]  # (N, H, W, H, W), a fresh tensor
    out.masked_fill_(~valid, 0)
    return out.reshape(n, h * w, h, w)


def _spread(m: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """``out[..., s, t] = m[..., s, t - s + c]`` (0 where that leaves the mask): (..., S, K) -> (..., S, S).

    Each row is padded with ``S`` zeros to length ``L = K + S`` and the rows are read back with
    length ``L - 1``, which shifts row ``s`` left by ``s``; offsets before the mask read the previous
    row's zero tail. Columns ``c .. c + S`` are the result (``c = (K - 1) // 2``, the mask's centre).
    """
    c = (k - 1) // 2
    rows = F.pad(m, (0, size)).flatten(-2)[..., : size * (k + size - 1)]
    return rows.reshape(*m.shape[:-2], size, k + size - 1)[..., c : c + size]


def psa_mask_by_reshape(x: torch.Tensor, psa_type: str, mask_size: tuple[int, int]) -> torch.Tensor:
    """:func:`psa_mask` by padding and reshaping, one axis at a time (the same values, exactly)."""
    n, _, h, w = x.shape
    hm, wm = mask_size
    masks = x.unflatten(1, (hm, wm))  # [n, kh, kw, sh, sw]
    y = _spread(masks.permute(0, 2, 4, 3, 1), h, hm)  # [n, kw, sw, sh, th]
    y = _spread(y.permute(0, 3, 4, 2, 1), w, wm)  # [n, sh, th, sw, tw]
    if psa_type == "collect":
        y = y.permute(0, 2, 4, 1, 3)  # [n, th, tw, sh, sw]: target first
    else:
        y = y.permute(0, 1, 3, 2, 4)  # [n, sh, sw, th, tw]: mask owner first
    return y.reshape(n, h * w, h, w)
