"""Exact speed-ups of the plain models, kept apart from them and switchable.

* ``decompose``: decode heads convolve pooled maps at their own sizes instead of concatenating
  upsampled copies (:mod:`.decompose`, :mod:`.heads`);
* ``winograd``: wide 3x3 convolutions on channels-last float32 CPU tensors use Winograd's
  F(2x2, 3x3) (:mod:`.winograd`), dilated ones on their phase sub-grids;
* ``winograd_f4``: with ``winograd``, F(4x4, 3x3) instead (:mod:`.winograd_mm`), from narrower layers
  (``MIN_CHANNELS_F4``): fewer products, float32 error within the goldens' 1e-4 x max|logits|;
* ``channels_last``: the model's weights (and so its activations) in NHWC memory order.

Each computes the same function up to float rounding. :func:`use_fast_paths` installs them by
switching modules between their plain class and a fast subclass with the same parameters and
state-dict keys (the plain classes' own ``forward`` never looks at them); :func:`fast_paths_of` tells
what is installed. Which ones pay depends on the device: :mod:`.tuning` measures them on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from .heads import DECOMPOSED
from .winograd import WinogradConv2d, eligible

__all__ = ["RECORD_NAME", "FastPaths", "fast_paths_of", "use_fast_paths"]

RECORD_NAME = "fast_paths.json"
"""The file, in the cache root, where :func:`.tuning.tune` records the CPU's choice (here so that
naming it does not import the measuring code)."""

_PLAIN = {fast: plain for plain, fast in DECOMPOSED.items()}


@dataclass(frozen=True)
class FastPaths:
    """Which exact speed-ups a model runs with."""

    decompose: bool = False
    winograd: bool = False
    channels_last: bool = False
    winograd_f4: bool = False

    @classmethod
    def all(cls) -> FastPaths:
        return cls(decompose=True, winograd=True, channels_last=True, winograd_f4=True)

    @classmethod
    def none(cls) -> FastPaths:
        return cls()

    def names(self) -> tuple[str, ...]:
        """The names of the paths that are on, e.g. ``("decompose", "channels_last")``."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name))

    def __str__(self) -> str:
        return ", ".join(self.names()) or "none"


def use_fast_paths(model: nn.Module, paths: bool | FastPaths = True) -> nn.Module:
    """Install ``paths`` on ``model`` (True: all, False: none) and remove the others; returns ``model``.

    Install them once the weights are final (loaded, BatchNorm folded): a change of weights through
    ``load_state_dict``, ``Segmentor.fuse_bn`` or ``.to()`` is followed, an in-place edit of a
    parameter is not.
    """
    if isinstance(paths, bool):
        paths = FastPaths.all() if paths else FastPaths.none()
    tile = 4 if paths.winograd_f4 else 2
    for module in model.modules():
        kind = type(module)
        if paths.decompose and kind in DECOMPOSED:
            module.__class__ = DECOMPOSED[kind]
        elif not paths.decompose and kind in _PLAIN:
            module.__class__ = _PLAIN[kind]
        elif kind in (nn.Conv2d, WinogradConv2d):
            _set_winograd(module, paths.winograd and eligible(module, tile), tile)  # type: ignore[arg-type]
    model.to(memory_format=torch.channels_last if paths.channels_last else torch.contiguous_format)  # type: ignore[call-overload]
    return model


def _set_winograd(conv: nn.Conv2d, on: bool, tile: int) -> None:
    """Make ``conv`` a :class:`WinogradConv2d` with ``tile`` (``on``) or a plain ``nn.Conv2d``."""
    if on:
        conv.__class__ = WinogradConv2d
        conv.__dict__["tile"] = tile
        conv.refresh()  # type: ignore[operator]
    elif isinstance(conv, WinogradConv2d):
        conv.refresh()
        conv.__dict__.pop("tile", None)
        conv.__class__ = nn.Conv2d  # type: ignore[assignment]


def fast_paths_of(model: nn.Module) -> FastPaths:
    """The fast paths installed on ``model``."""
    modules = list(model.modules())
    channels_last = False
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:  # strides that tell the layout
            channels_last = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            break
    return FastPaths(
        decompose=any(type(m) in _PLAIN for m in modules),
        winograd=any(isinstance(m, WinogradConv2d) for m in modules),
        channels_last=channels_last,
        winograd_f4=any(isinstance(m, WinogradConv2d) and m.tile == 4 for m in modules),
    )
