"""Converting a state dict: every source key mapped or dropped on purpose, every model key filled,
every shape equal, every value finite; errors name the keys."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import CheckpointError
from ..manifest import Architecture
from .reading import _name
from .tables import DROPPED, FORMATS, SSSEG_TO_MMSEG, Rule, _listing, _rename, mapping_rules


def _check_ssseg_fusion(sd: Mapping[str, Any], source: str) -> None:
    new = any(k.startswith("ppm_net.bottleneck.") for k in sd)
    old = any(k.startswith("ppm_net.fuse_layer.") for k in sd)
    if new and old:
        raise CheckpointError(
            f"{source} holds both 'ppm_net.bottleneck.*' and 'ppm_net.fuse_layer.*' (the same layer under its "
            "new and old name); a genuine SSSegmentation checkpoint has exactly one of them"
        )
    if not new and not old:
        raise CheckpointError(
            f"{source} has no PPM fusion layer ('ppm_net.bottleneck.*' or 'ppm_net.fuse_layer.*'); "
            "it is not an SSSegmentation PSPNet checkpoint"
        )


class _Renaming:
    """A state dict's tensors under psegzoo's keys, where each came from, and what found no place."""

    def __init__(self) -> None:
        self.out: dict[str, torch.Tensor] = {}
        self.origin: dict[str, str] = {}  # psegzoo key -> the file's key
        self.unknown: list[str] = []
        self.duplicate: list[str] = []
        self.not_float: list[str] = []

    def add(self, key: str, value: Any, target: str | None) -> None:
        """Place the file's ``key`` under ``target`` (None: the model has no place for it)."""
        if target is None:
            self.unknown.append(key)
        elif target in self.origin:
            self.duplicate.append(f"{self.origin[target]} and {key} -> {target}")
        elif not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.layout != torch.strided:
            self.not_float.append(key)
        else:
            self.out[target] = value if value.dtype == torch.float32 else value.float()
            self.origin[target] = key

    def problems(self, arch: Architecture, expected: Mapping[str, torch.Size]) -> list[str]:
        """Every way the renamed tensors fail to fill the model exactly, one phrase each."""
        out, origin = self.out, self.origin
        wrong = [f"{origin[k]} {tuple(v.shape)} vs model {tuple(expected[k])}"
                 for k, v in out.items() if k in expected and tuple(v.shape) != tuple(expected[k])]
        found = [
            (self.unknown, f"keys the {arch.decode_head.type}/{arch.backbone.type} model has no place for"),
            (self.duplicate, "keys mapped twice"),
            (self.not_float, "keys that are not dense floating-point tensors"),
            ([f"{origin[t]} -> {t}" for t in out if t not in expected], "keys the model does not have"),
            ([k for k in expected if k not in out], "model keys with no weights in the file"),
            (wrong, "shape mismatches"),
        ]
        return [f"{len(keys)} {what}: {_listing(keys)}" for keys, what in found if keys]


def _target(key: str, fmt: str, rules: Sequence[Rule]) -> str | None:
    """psegzoo's key for one of the file's keys (SSSegmentation's renamed to mmseg's first); None if none."""
    name: str | None = _rename(SSSEG_TO_MMSEG, key) if fmt == "ssseg" else key
    return _rename(rules, name) if name is not None else None


def convert_state_dict(
    sd: Mapping[str, torch.Tensor],
    arch: Architecture,
    expected: Mapping[str, torch.Size],
    fmt: str,
    *,
    path: str | os.PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """Rename a published state dict to psegzoo's keys for ``arch``; pure (the input is untouched).

    ``expected`` holds the model's keys and shapes. Raises CheckpointError (naming ``path``) listing
    unknown source keys, model keys left unfilled, keys the model lacks and shape mismatches.
    Floating tensors come back as float32 (exact for half-precision ones).
    """
    source = _name(path)
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    rules = mapping_rules(arch)
    if fmt == "ssseg":
        _check_ssseg_fusion(sd, source)
    renaming = _Renaming()
    for key, value in sd.items():
        if _rename(DROPPED[fmt], key) is None:
            renaming.add(key, value, _target(key, fmt, rules))
    problems = renaming.problems(arch, expected)
    if problems:
        raise CheckpointError(
            f"{source} does not fit the architecture ({arch.backbone.type}-{arch.backbone.depth}, "
            f"{arch.decode_head.type}, {arch.num_classes} classes): " + "; ".join(problems)
            + ". Check that the file belongs to the chosen model."
        )
    check_values(renaming.out, source, renaming.origin)
    return renaming.out


def check_values(state_dict: Mapping[str, torch.Tensor], source: str, names: Mapping[str, str] | None = None) -> None:
    """Refuse weights that cannot be right: NaN or infinite values, negative running variances.

    Either gives a constant label map; the error names the keys (``names`` maps ours to the file's).
    """
    names = names or {}
    real = {k: v for k, v in state_dict.items() if v.device.type != "meta"}  # shapes only: nothing to check
    non_finite = [names.get(k, k) for k, v in real.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    negative = [names.get(k, k) for k, v in real.items() if k.endswith("running_var") and bool((v < 0).any())]
    problems = []
    if non_finite:
        problems.append(f"NaN or infinite values in {_listing(non_finite)}")
    if negative:
        problems.append(f"negative running variances in {_listing(negative)}")
    if problems:
        raise CheckpointError(
            f"{source} holds weights that cannot be right: " + "; ".join(problems)
            + ". The file is damaged or not a trained checkpoint; delete it and get it again."
        )


def check_converted(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], *,
                    path: str | os.PathLike | None = None) -> None:
    """Refuse converted weights that psegzoo did not write: every tensor must be a dense float32
    tensor of the model's shape, with finite values (keys are checked by :func:`load_into`)."""
    what = f"converted weights {str(path)!r}" if path is not None else "the converted weights"
    wrong = [
        f"{k} ({str(v.dtype).replace('torch.', '')}, {tuple(v.shape)})"
        for k, v in state_dict.items()
        if v.layout != torch.strided or v.dtype != torch.float32
        or (k in expected and tuple(v.shape) != tuple(expected[k]))
    ]
    if wrong:
        raise CheckpointError(
            f"{what} hold tensors that are not float32 of the model's shape: {_listing(wrong)}; "
            "convert the original checkpoint again"
        )
    check_values(state_dict, what[0].upper() + what[1:])


