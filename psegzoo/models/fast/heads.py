"""Decode heads whose convolutions of concatenated maps take the small maps at their own sizes.

Each class is its plain head with another ``forward`` (same parameters, same state-dict keys, same
result up to float rounding; see :mod:`psegzoo.models.fast.decompose`).
:func:`psegzoo.models.fast.use_fast_paths` switches a head between the two classes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..aspp import ASPPHead
from ..psa import PSAHead
from ..psp import PSPHead
from ..uper import UPerHead
from .decompose import conv_bn_relu_of_concat


class DecomposedPSPHead(PSPHead):
    """PSP's bottleneck without the upsampled pyramid: about half of the head's largest convolution."""

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        y = conv_bn_relu_of_concat(self.bottleneck, [x, *self.pyramid.pooled(x)], x.shape[-2:], self.align_corners)
        return self.classifier(y)


class DecomposedASPPHead(ASPPHead):
    """ASPP's bottleneck taking the pooled 1x1 map as it is instead of its broadcast copy."""

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        outs = [self.pooled(x), *(branch(x) for branch in self.branches)]
        return self.classifier(conv_bn_relu_of_concat(self.bottleneck, outs, x.shape[-2:], self.align_corners))


class DecomposedPSAHead(PSAHead):
    """PSANet's bottleneck taking the projected attention map at its own size."""

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        out, align_corners = self.attention(x)
        y = conv_bn_relu_of_concat(self.bottleneck, [x, out], x.shape[-2:], [False, align_corners])
        return self.classifier(y)


class DecomposedUPerHead(UPerHead):
    """UPerNet's pooled bottleneck and its fusion, both without upsampled copies."""

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        pooled = [top, *self.pyramid.pooled(top)]
        laterals.append(conv_bn_relu_of_concat(self.bottleneck, pooled, top.shape[-2:], self.align_corners))
        outs = self.top_down(laterals)
        return self.classifier(conv_bn_relu_of_concat(self.fuse, outs, outs[0].shape[-2:], self.align_corners))


# plain head -> its decomposed form
DECOMPOSED: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    PSPHead: DecomposedPSPHead,
    ASPPHead: DecomposedASPPHead,
    PSAHead: DecomposedPSAHead,
    UPerHead: DecomposedUPerHead,
}
