"""Deterministic synthetic weights and checkpoints in the published mmseg / SSSegmentation formats.

The real checkpoints cannot be downloaded in tests, so tests write checkpoints whose tensors are a
pure function of (key, shape, dtype); mmseg and SSSegmentation computed reference logits from the
same tensors (``tests/data/golden``). The rule:

    generator seed = zlib.crc32(key.encode("utf-8"))   (torch.Generator on the CPU)
    int64 tensors (*.num_batches_tracked)  -> zeros
    *.running_mean                         -> 0.1 * randn
    *.running_var                          -> 0.5 + rand
    other 1-D tensors                      -> (1 if the key ends in .weight else 0) + 0.1 * randn
    N-D tensors (conv / linear weights)    -> randn * sqrt(1 / fan_in), fan_in = prod(shape[1:])

A *spec* is a list of ``[key, shape, dtype]`` triples in checkpoint order, as stored in
``tests/data/state_dict_specs.json.gz`` (see :func:`load_specs`).

    from tests.support.synth import load_specs, write_mmseg_checkpoint
    specs = load_specs()
    spec = specs.mmseg[specs.mmseg_index["pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth"]]
    write_mmseg_checkpoint(spec, tmp_path / "pspnet.pth")
"""
from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

DATA = Path(__file__).resolve().parent.parent / "data"
SPECS_FILE = DATA / "state_dict_specs.json.gz"

Spec = Sequence[Sequence[Any]]  # [[key, shape, dtype], ...]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "int64": torch.int64}


def synth_tensor(key: str, shape: Sequence[int], dtype: str = "float32") -> torch.Tensor:
    """The synthetic value of one state-dict entry."""
    shape = tuple(int(s) for s in shape)
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        t = 0.1 * torch.randn(shape, generator=g)
    elif leaf == "running_var":
        t = 0.5 + torch.rand(shape, generator=g)
    elif len(shape) == 1:
        t = (1.0 if leaf == "weight" else 0.0) + 0.1 * torch.randn(shape, generator=g)
    else:
        t = torch.randn(shape, generator=g) * math.sqrt(1.0 / math.prod(shape[1:]))
    return t.to(_DTYPES[dtype])


def synth_state_dict(spec: Spec) -> dict[str, torch.Tensor]:
    """Every entry of ``spec`` with its synthetic value, in spec order."""
    return {key: synth_tensor(key, shape, dtype) for key, shape, dtype in spec}


def meta_state_dict(spec: Spec) -> dict[str, torch.Tensor]:
    """Shape-only (``meta`` device) tensors for ``spec``: free to make, for key/shape checks."""
    return {key: torch.empty(tuple(shape), dtype=_DTYPES[dtype], device="meta") for key, shape, dtype in spec}


def num_classes_of(spec: Spec) -> int:
    """Class count of a spec, read from its classifier's bias."""
    for key, shape, _ in spec:
        if key in ("decode_head.conv_seg.bias", "decoder.1.bias"):
            return int(shape[0])
    raise KeyError("spec has no classifier bias")


def write_mmseg_checkpoint(spec: Spec, path: str | Path, *, classes: Iterable[str] | None = None,
                           legacy_format: bool = False) -> Path:
    """``torch.save({"meta": ..., "state_dict": synthetic weights}, path)``, mmseg's published layout.

    ``meta["CLASSES"]`` holds ``classes`` (default: ``class0`` .. ``classN-1``, N from the spec).
    ``legacy_format`` writes torch's pre-1.6 (non-zip) serialization.
    """
    path = Path(path)
    names = tuple(classes) if classes is not None else tuple(f"class{i}" for i in range(num_classes_of(spec)))
    meta = {"CLASSES": names, "mmseg_version": "0.x (synthetic)", "iter": 1, "epoch": 1}
    torch.save({"meta": meta, "state_dict": synth_state_dict(spec)}, path,
               _use_new_zipfile_serialization=not legacy_format)
    return path


def ssseg_legacy_key(key: str) -> str:
    """The 2020 SSSegmentation name of a key: the PPM fusion conv was ``fuse_layer``, not ``bottleneck``."""
    prefix = "ppm_net.bottleneck."
    return "ppm_net.fuse_layer." + key[len(prefix):] if key.startswith(prefix) else key


def write_ssseg_checkpoint(spec: Spec, path: str | Path, legacy: bool = False) -> Path:
    """``torch.save({"epoch": 60, "model": weights, "optimizer": ...}, path)``, SSSegmentation's layout.

    The weights follow the synthetic rule for ``spec`` (1.7.0 key names). With ``legacy`` the same
    tensors are stored under the 2020 names (``ppm_net.fuse_layer.*``), so the goldens still apply.
    """
    path = Path(path)
    sd = synth_state_dict(spec)
    if legacy:
        sd = {ssseg_legacy_key(k): v for k, v in sd.items()}
    torch.save({"epoch": 60, "model": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


@dataclass(frozen=True)
class Specs:
    """The reference state-dict specs.

    ``mmseg``: spec id -> spec (40); ``mmseg_index``: published file name -> spec id (111).
    ``ssseg``: spec id -> spec (6, 1.7.0 names); ``ssseg_legacy``: the same ids in the 2020 layout;
    ``ssseg_index``: SSSegmentation config name -> spec id (12).
    """

    mmseg: dict[str, list]
    mmseg_index: dict[str, str]
    ssseg: dict[str, list]
    ssseg_legacy: dict[str, list]
    ssseg_index: dict[str, str]


@lru_cache(maxsize=1)
def load_specs() -> Specs:
    with gzip.open(SPECS_FILE, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return Specs(
        mmseg=data["mmseg"]["specs"],
        mmseg_index=data["mmseg"]["index"],
        ssseg=data["ssseg"]["specs"],
        ssseg_legacy=data["ssseg"]["legacy_specs"],
        ssseg_index=data["ssseg"]["index"],
    )
