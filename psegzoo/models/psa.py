"""PSANet's decode head: point-wise spatial attention, "collect" and/or "distribute" branches."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Classifier, ConvBNReLU, resize
from .psa_mask import psa_mask


class AttentionBranch(nn.Module):
    """Reduce channels, shrink the map, predict a local mask per position and aggregate with it."""

    def __init__(self, in_ch: int, channels: int, mask_size: tuple[int, int]):
        super().__init__()
        self.reduce = ConvBNReLU(in_ch, channels, 1)
        self.attention = ConvBNReLU(channels, channels, 1)
        self.mask = nn.Conv2d(channels, mask_size[0] * mask_size[1], 1, bias=False)


class PSAHead(nn.Module):
    """mmseg's ``PSAHead``: attention at a shrunk resolution, projected back and fused with the input.

    ``compact`` masks are taken as already laid out over the map (mmseg transposes the "collect"
    one when it is the only branch and the "distribute" one in bi-direction mode; kept as is).
    """

    def __init__(self, in_ch: int, channels: int, num_classes: int, *, mask_size: tuple[int, int],
                 psa_type: str, compact: bool, shrink_factor: int, normalization_factor: float | None,
                 psa_softmax: bool, align_corners: bool):
        super().__init__()
        if psa_type not in ("bi-direction", "collect", "distribute"):
            raise ValueError(f"psa_type must be 'bi-direction', 'collect' or 'distribute', got {psa_type!r}")
        self.psa_type = psa_type
        self.mask_size = (int(mask_size[0]), int(mask_size[1]))
        self.compact = compact
        self.shrink_factor = shrink_factor
        if normalization_factor is None:
            normalization_factor = float(self.mask_size[0] * self.mask_size[1])
        self.normalization_factor = normalization_factor
        self.psa_softmax = psa_softmax
        self.align_corners = align_corners
        kinds = ("collect", "distribute") if psa_type == "bi-direction" else (psa_type,)
        self.kinds = kinds
        for kind in kinds:
            self.add_module(kind, AttentionBranch(in_ch, channels, self.mask_size))
        # mmseg gives this 1x1 conv padding 1: its output is 2 pixels larger, then resized back.
        self.project = ConvBNReLU(channels * len(kinds), in_ch, 1, padding=1)
        self.bottleneck = ConvBNReLU(in_ch * 2, channels, 3, padding=1)
        self.classifier = Classifier(channels, num_classes)

    def _shrunk_size(self, h: int, w: int) -> tuple[int, int, bool]:
        f = self.shrink_factor
        if f == 1:
            return h, w, self.align_corners
        if h % f and w % f:
            return (h - 1) // f + 1, (w - 1) // f + 1, True
        return h // f, w // f, False

    def _attend(self, kind: str, x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
        branch: AttentionBranch = getattr(self, kind)
        y = branch.reduce(x)
        if self.shrink_factor != 1:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=align_corners)
        n, c, h, w = y.shape
        mask = branch.mask(branch.attention(y))
        if self.compact:
            transpose = (kind == "collect") if self.psa_type != "bi-direction" else (kind == "distribute")
            if transpose:
                mask = mask.reshape(n, h * w, h * w).transpose(1, 2)
        else:
            mask = psa_mask(mask, kind, self.mask_size)
        mask = mask.reshape(n, h * w, h * w)
        if self.psa_softmax:
            mask = F.softmax(mask, dim=1)
        out = torch.bmm(y.reshape(n, c, h * w), mask).reshape(n, c, h, w)
        return out * (1.0 / self.normalization_factor)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The projected attention map at its own size (2 pixels larger than the shrunk map) and the
        ``align_corners`` that resizes it back to x's size."""
        h, w, align_corners = self._shrunk_size(x.shape[-2], x.shape[-1])
        outs = [self._attend(kind, x, (h, w), align_corners) for kind in self.kinds]
        return self.project(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), align_corners

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        out, align_corners = self.attention(x)
        out = resize(out, x.shape[-2:], align_corners)
        return self.classifier(self.bottleneck(torch.cat([x, out], dim=1)))
