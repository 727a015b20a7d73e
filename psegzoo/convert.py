"""Published checkpoints -> psegzoo state dicts: safe reading, explicit key mapping, safetensors cache.

Reading never unpickles code: ``torch.load(..., weights_only=True)`` with a short allowlist of numpy
scalar types that old ``meta`` dicts may hold. The key mapping is one table of anchored regular
expressions per architecture part (stem, residual blocks, each head); every source key must be
mapped or deliberately dropped, every model key filled, every shape equal, or the conversion fails
naming the keys. This module does not import the models: callers pass the model's expected keys
and shapes (``psegzoo.models.state_shapes(model)``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as serialize

from . import files
from .errors import CheckpointError, OutputError, VerificationError
from .manifest import Architecture

log = logging.getLogger(__name__)

FORMATS = ("mmseg", "ssseg")
MIN_TORCH = (2, 6)  # weights_only loading has known escapes before 2.6

__all__ = [
    "FORMATS",
    "check_classes",
    "check_converted",
    "check_values",
    "convert_state_dict",
    "load_converted",
    "load_converted_bytes",
    "load_into",
    "mapping_rules",
    "read_checkpoint",
    "save_converted",
    "write_converted",
]


# --------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars/arrays may appear in old checkpoints' ``meta`` (e.g. a best score).

    Exactly the callables that rebuild them are allowlisted, under the names numpy 1.x and 2.x
    pickle them with; they only rebuild numbers and plain arrays. Anything else is still refused.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(np, "_core", None) or getattr(np, "core")  # noqa: B009  (numpy 2.x, else 1.x)
    multiarray = core.multiarray
    allowed: list[Any] = [np.dtype, np.ndarray]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((multiarray.scalar, f"{module}.scalar"))
        allowed.append((multiarray._reconstruct, f"{module}._reconstruct"))
    # numpy >= 1.25 rebuilds a dtype as an instance of its numeric dtype class
    dtypes = getattr(np, "dtypes", None)
    for name in _NUMPY_DTYPE_CLASSES:
        if dtypes is not None and hasattr(dtypes, name):
            allowed.append(getattr(dtypes, name))
    return allowed


_NUMPY_DTYPE_CLASSES = (
    "BoolDType", "Int8DType", "UInt8DType", "Int16DType", "UInt16DType", "Int32DType", "UInt32DType",
    "Int64DType", "UInt64DType", "LongLongDType", "ULongLongDType", "Float16DType", "Float32DType",
    "Float64DType", "LongDoubleDType",
)


def _require_safe_torch() -> None:
    version = torch.torch_version.TorchVersion(torch.__version__)
    if version < f"{MIN_TORCH[0]}.{MIN_TORCH[1]}":
        raise CheckpointError(
            f"torch {torch.__version__} cannot load checkpoints safely (its weights_only loader has known "
            f"escapes); install torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}"
        )


def _torch_load(path: Path, data: bytes | None = None) -> Any:
    _require_safe_torch()
    try:
        # sparse tensors are checked while they are rebuilt: a malformed one is an error, not a crash
        with torch.serialization.safe_globals(_numpy_safe_globals()), torch.sparse.check_sparse_tensor_invariants(True):
            return torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        wanted = re.search(r"GLOBAL\s+([\w.]+)", text)
        if wanted:
            raise CheckpointError(
                f"refused to load {str(path)!r}: it asks to import {wanted.group(1)}, which is not weights data, "
                "and loading it could run code (nothing was executed). Use the original file from the model's "
                "publisher; for a checkpoint of your own that you trust, save just its weights first: "
                "torch.save({'state_dict': ckpt['state_dict']}, 'weights.pth')"
            ) from None
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint that can be read safely ({_unpickler_detail(text)}); "
            "check that it is the published .pth file"
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError, ... for damaged files
        raise CheckpointError(
            f"{str(path)!r} cannot be read as a PyTorch checkpoint; it may be truncated or damaged "
            f"({type(exc).__name__}: {_first_line(str(exc))}). Delete it and download it again."
        ) from None


def _unpickler_detail(text: str) -> str:
    """The line of torch's weights-only error that says what was refused."""
    found = re.search(r"WeightsUnpickler error:\s*\n*\s*([^\n]+)", text)
    return found.group(1).strip()[:200] if found else _first_line(text)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:200]


def _strip_module_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Weights saved from a DataParallel wrapper carry ``module.`` on every key."""
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _looks_ssseg(sd: Mapping[str, Any]) -> bool:
    return any(isinstance(k, str) and k.startswith("backbone_net.") for k in sd)


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint(path: str | os.PathLike, *, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Read a published checkpoint safely: ``(state_dict, meta, fmt)`` with fmt ``mmseg`` or ``ssseg``.

    Accepted layouts (detected from the content, not the file name): mmseg's
    ``{"state_dict": ..., "meta": ...}``, a bare state dict, SSSegmentation's
    ``{"model": ..., "epoch" | "cur_epoch"/"cur_iter": ..., "optimizer": ...}``; a ``module.`` prefix
    on every key is removed. Both torch's zip format and the legacy (pre-1.6) format load.

    With ``sha256`` (the verified hash of a cached file) the bytes are hashed in the same read that
    loads them, and a file changed since it was verified is refused (VerificationError) unread.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist or is not a file")
    data = None
    if sha256 is not None:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise VerificationError(
                f"{str(p)!r} changed since it was verified: its SHA-256 is {actual}, the record says {sha256}"
            )
    obj = _torch_load(p, data)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(p)!r} holds a {type(obj).__name__}, not a checkpoint dict; it is not an mmseg or SSSegmentation checkpoint"
        )
    meta: dict[str, Any] = {}
    if isinstance(obj.get("state_dict"), Mapping):
        fmt = "mmseg"
        sd = _strip_module_prefix(obj["state_dict"])
        meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
        if _looks_ssseg(sd):
            fmt = "ssseg"
    elif isinstance(obj.get("model"), Mapping):
        sd = _strip_module_prefix(obj["model"])
        if not _looks_ssseg(sd):
            raise CheckpointError(
                f"{str(p)!r} keeps its weights under 'model' but they are not SSSegmentation's "
                "(no 'backbone_net.' keys); psegzoo reads mmseg and SSSegmentation checkpoints only"
            )
        fmt = "ssseg"
        meta = {k: obj[k] for k in ("epoch", "cur_epoch", "cur_iter") if k in obj}
    elif _is_tensor_dict(obj):
        sd = _strip_module_prefix(obj)
        fmt = "ssseg" if _looks_ssseg(sd) else "mmseg"
    else:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"{str(p)!r} is a dict with keys {keys} but no 'state_dict' or 'model' weights; "
            "it is not an mmseg or SSSegmentation checkpoint"
        )
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{str(p)!r}: state dict entries that are not tensors: {_listing([str(k) for k in bad])}")
    odd = [f"{k} ({v.layout})" for k, v in sd.items() if v.layout != torch.strided or v.is_quantized]
    if odd:
        raise CheckpointError(
            f"{str(p)!r} holds tensors that are not dense ({_listing(odd)}); published checkpoints hold dense tensors "
            "only: check that the file is the original one"
        )
    if not sd:
        raise CheckpointError(f"{str(p)!r} holds an empty state dict")
    log.debug("read %s: %d tensors, format %s", p, len(sd), fmt)
    return sd, meta, fmt


def _name(path: str | os.PathLike | None) -> str:
    """How errors name the file: "Checkpoint '/path/x.pth'" or "The checkpoint"."""
    return f"Checkpoint {str(path)!r}" if path is not None else "The checkpoint"


def check_classes(meta: Mapping[str, Any] | None, entry_num_classes: int, *,
                  path: str | os.PathLike | None = None) -> None:
    """Refuse a checkpoint whose recorded classes (``meta["CLASSES"]``) differ in number from the entry's.

    ``path`` names the file in the error. Checkpoints without recorded classes pass.
    """
    source = _name(path)
    if not meta:
        return
    classes = meta.get("CLASSES")
    if classes is None and isinstance(meta.get("dataset_meta"), Mapping):
        classes = meta["dataset_meta"].get("classes")
    if classes is None or isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__"):
        return
    if len(classes) != entry_num_classes:
        raise CheckpointError(
            f"{source} was trained on {len(classes)} classes (its meta lists them) but the model entry has "
            f"{entry_num_classes}; the file belongs to another model or dataset: pick the entry that matches it"
        )


# --------------------------------------------------------------------------------------------
# Key mapping tables (source name -> psegzoo name), one per architecture part
# --------------------------------------------------------------------------------------------

Rule = tuple["re.Pattern[str]", str]

_BN = r"(?P<p>weight|bias|running_mean|running_var)"
_CONV_OR_BN = r"(?P<leaf>conv\.weight|bn\.(?:weight|bias|running_mean|running_var))"


def _table(*pairs: tuple[str, str]) -> tuple[Rule, ...]:
    """Compile (pattern, replacement) pairs; patterns always match the whole key."""
    return tuple((re.compile(p), r) for p, r in pairs)


STEM_V1C = _table(
    (r"backbone\.stem\.0\.weight", "backbone.stem.conv1.weight"),
    (rf"backbone\.stem\.1\.{_BN}", r"backbone.stem.bn1.\g<p>"),
    (r"backbone\.stem\.3\.weight", "backbone.stem.conv2.weight"),
    (rf"backbone\.stem\.4\.{_BN}", r"backbone.stem.bn2.\g<p>"),
    (r"backbone\.stem\.6\.weight", "backbone.stem.conv3.weight"),
    (rf"backbone\.stem\.7\.{_BN}", r"backbone.stem.bn3.\g<p>"),
)

STEM_7X7 = _table(
    (r"backbone\.conv1\.weight", "backbone.stem.conv1.weight"),
    (rf"backbone\.bn1\.{_BN}", r"backbone.stem.bn1.\g<p>"),
)

RES_BLOCKS = _table(
    (r"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.(?P<c>conv[1-3])\.weight", r"backbone.layer\g<s>.\g<b>.\g<c>.weight"),
    (rf"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.(?P<n>bn[1-3])\.{_BN}", r"backbone.layer\g<s>.\g<b>.\g<n>.\g<p>"),
    (r"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.downsample\.0\.weight", r"backbone.layer\g<s>.\g<b>.shortcut.conv.weight"),
    (rf"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.downsample\.1\.{_BN}", r"backbone.layer\g<s>.\g<b>.shortcut.bn.\g<p>"),
)

_CLASSIFIER = (r"decode_head\.conv_seg\.(?P<p>weight|bias)", r"head.classifier.\g<p>")

PSP_HEAD = _table(
    (rf"decode_head\.psp_modules\.(?P<i>\d+)\.1\.{_CONV_OR_BN}", r"head.pyramid.\g<i>.\g<leaf>"),
    (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
    _CLASSIFIER,
)

ASPP_HEAD = _table(
    (rf"decode_head\.image_pool\.1\.{_CONV_OR_BN}", r"head.image_pool.\g<leaf>"),
    (rf"decode_head\.aspp_modules\.(?P<i>\d+)\.{_CONV_OR_BN}", r"head.branches.\g<i>.\g<leaf>"),
    (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
    _CLASSIFIER,
)


def _psa_head(psa_type: str) -> tuple[Rule, ...]:
    # mmseg's first branch (reduce/attention) is the collect one unless the head only distributes;
    # the *_p modules exist in bi-direction mode and distribute.
    first = "distribute" if psa_type == "distribute" else "collect"
    pairs = [
        (rf"decode_head\.reduce\.{_CONV_OR_BN}", rf"head.{first}.reduce.\g<leaf>"),
        (rf"decode_head\.attention\.0\.{_CONV_OR_BN}", rf"head.{first}.attention.\g<leaf>"),
        (r"decode_head\.attention\.1\.weight", f"head.{first}.mask.weight"),
    ]
    if psa_type == "bi-direction":
        pairs += [
            (rf"decode_head\.reduce_p\.{_CONV_OR_BN}", r"head.distribute.reduce.\g<leaf>"),
            (rf"decode_head\.attention_p\.0\.{_CONV_OR_BN}", r"head.distribute.attention.\g<leaf>"),
            (r"decode_head\.attention_p\.1\.weight", "head.distribute.mask.weight"),
        ]
    pairs += [
        (rf"decode_head\.proj\.{_CONV_OR_BN}", r"head.project.\g<leaf>"),
        (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
        _CLASSIFIER,
    ]
    return _table(*pairs)


UPER_HEAD = _table(
    (rf"decode_head\.psp_modules\.(?P<i>\d+)\.1\.{_CONV_OR_BN}", r"head.pyramid.\g<i>.\g<leaf>"),
    (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
    (rf"decode_head\.lateral_convs\.(?P<i>\d+)\.{_CONV_OR_BN}", r"head.lateral.\g<i>.\g<leaf>"),
    (rf"decode_head\.fpn_convs\.(?P<i>\d+)\.{_CONV_OR_BN}", r"head.fpn.\g<i>.\g<leaf>"),
    (rf"decode_head\.fpn_bottleneck\.{_CONV_OR_BN}", r"head.fuse.\g<leaf>"),
    _CLASSIFIER,
)

# Keys present in published files that inference does not use.
DROPPED = {
    "mmseg": _table((r"auxiliary_head\..+", ""), (r".+\.num_batches_tracked", "")),
    "ssseg": _table((r"auxiliary_decoder\..+", ""), (r".+\.num_batches_tracked", "")),
}

# SSSegmentation's PSPNet names -> mmseg's names (SSSEG layout documented by the reference data);
# the PPM fusion conv is ``bottleneck`` since 2020-12, ``fuse_layer`` before.
SSSEG_TO_MMSEG = _table(
    (r"backbone_net\.(?P<rest>(?:stem|layer[1-4])\..+)", r"backbone.\g<rest>"),
    (r"ppm_net\.branches\.(?P<i>\d+)\.1\.weight", r"decode_head.psp_modules.\g<i>.1.conv.weight"),
    (rf"ppm_net\.branches\.(?P<i>\d+)\.2\.{_BN}", r"decode_head.psp_modules.\g<i>.1.bn.\g<p>"),
    (r"ppm_net\.(?:bottleneck|fuse_layer)\.0\.weight", "decode_head.bottleneck.conv.weight"),
    (rf"ppm_net\.(?:bottleneck|fuse_layer)\.1\.{_BN}", r"decode_head.bottleneck.bn.\g<p>"),
    (r"decoder\.1\.(?P<p>weight|bias)", r"decode_head.conv_seg.\g<p>"),
)


def mapping_rules(arch: Architecture) -> tuple[Rule, ...]:
    """The mmseg-name -> psegzoo-name rules for ``arch``: its stem, residual blocks and head."""
    stems = {"ResNetV1c": STEM_V1C, "ResNet": STEM_7X7}
    if arch.backbone.type not in stems:
        raise CheckpointError(f"no key mapping for backbone type {arch.backbone.type!r}")
    head = arch.decode_head
    if head.type == "PSPHead":
        head_rules = PSP_HEAD
    elif head.type == "ASPPHead":
        head_rules = ASPP_HEAD
    elif head.type == "PSAHead":
        head_rules = _psa_head(head.psa_type or "bi-direction")
    elif head.type == "UPerHead":
        head_rules = UPER_HEAD
    else:
        raise CheckpointError(f"no key mapping for decode head type {head.type!r}")
    return stems[arch.backbone.type] + RES_BLOCKS + head_rules


def _rename(rules: Sequence[Rule], key: str) -> str | None:
    for pattern, replacement in rules:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(replacement)
    return None


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = f" ... ({len(items)} in all)" if len(items) > limit else ""
    return f"{shown}{more}"


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
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    duplicate: list[str] = []
    not_float: list[str] = []
    for key, value in sd.items():
        if _rename(DROPPED[fmt], key) is not None:
            continue
        name: str | None = key
        if fmt == "ssseg":
            name = _rename(SSSEG_TO_MMSEG, key)
        target = _rename(rules, name) if name is not None else None
        if target is None:
            unknown.append(key)
            continue
        if target in origin:
            duplicate.append(f"{origin[target]} and {key} -> {target}")
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.layout != torch.strided:
            not_float.append(key)
            continue
        out[target] = value if value.dtype == torch.float32 else value.float()
        origin[target] = key

    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys the {arch.decode_head.type}/{arch.backbone.type} model has no place for: {_listing(unknown)}")
    if duplicate:
        problems.append(f"{len(duplicate)} keys mapped twice: {_listing(duplicate)}")
    if not_float:
        problems.append(f"{len(not_float)} keys that are not dense floating-point tensors: {_listing(not_float)}")
    extra = [f"{origin[t]} -> {t}" for t in out if t not in expected]
    if extra:
        problems.append(f"{len(extra)} keys the model does not have: {_listing(extra)}")
    missing = [k for k in expected if k not in out]
    if missing:
        problems.append(f"{len(missing)} model keys with no weights in the file: {_listing(missing)}")
    wrong = [
        f"{origin[k]} {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in out.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {_listing(wrong)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the architecture ({arch.backbone.type}-{arch.backbone.depth}, "
            f"{arch.decode_head.type}, {arch.num_classes} classes): " + "; ".join(problems)
            + ". Check that the file belongs to the chosen model."
        )
    check_values(out, source, {t: origin[t] for t in out})
    return out


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


# --------------------------------------------------------------------------------------------
# Converted weights: safetensors only
# --------------------------------------------------------------------------------------------


def write_converted(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Write ``state_dict`` as safetensors into the existing file ``path`` (its mode is kept).

    The low-level writer: :func:`save_converted` and the cache call it on their temporary file.
    The bytes are made in memory and written here (safetensors' own ``save_file`` would leave a
    temporary file of its own behind if killed). A write that fails (full disk, file too large) is
    an ``OSError``.
    """
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; bad entries: {bad}")
    data = serialize({k: v.detach().contiguous() for k, v in state_dict.items()}, metadata=dict(metadata))
    with open(path, "wb") as f:
        f.write(data)


def save_converted(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Write ``state_dict`` as safetensors to ``path`` atomically (mode 0666 & ~umask; temporary
    file beside it, fsync, rename). Raises OutputError naming the file when it cannot be written."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(target, tag="convert") as tmp:
            write_converted(state_dict, tmp, metadata)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _open_converted(path: str | os.PathLike) -> Iterator[Any]:
    """``safe_open`` of our converted weights, with a CheckpointError saying what to do when it fails."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"converted weights {str(p)!r} do not exist or are not a file")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            yield f
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{str(p)!r} is not a readable safetensors file ({_first_line(str(exc))}); delete it to convert again"
        ) from None


def load_converted(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read weights written by :func:`save_converted` (no pickle involved): ``(state_dict, metadata)``."""
    with _open_converted(path) as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def load_converted_bytes(data: bytes, *, path: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights from the bytes of a converted file (read and verified once by the cache): ``(state_dict, metadata)``."""
    try:
        state_dict = load_safetensors_bytes(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except (SafetensorError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({_first_line(str(exc))})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return state_dict, {str(k): str(v) for k, v in (meta or {}).items()}


def converted_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the metadata of converted weights (reads the header, not the tensors)."""
    with _open_converted(path) as f:
        return dict(f.metadata() or {})


# --------------------------------------------------------------------------------------------
# Loading into a module
# --------------------------------------------------------------------------------------------


def load_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    path: str | os.PathLike | None = None,
    assign: bool = False,
) -> None:
    """Load ``state_dict`` into ``model`` strictly, first checking keys and shapes so errors name them.

    ``assign=True`` makes the given tensors the model's parameters instead of copying them, which
    also works for a model built on the ``meta`` device (no memory spent on initial weights).
    Load before ``fuse_bn()``: fusing removes the norm layers' keys.
    """
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (file != model): {_listing(wrong)}")
    if problems:
        what = f"weights {str(path)!r}" if path is not None else "the weights"
        raise CheckpointError(
            f"{what} do not fit the model: " + "; ".join(problems)
            + ". Check that they belong to this model, or convert the original checkpoint again."
        )
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)
