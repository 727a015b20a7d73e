"""Reading a published checkpoint without running code: ``torch.load(weights_only=True)`` with a
short allowlist of numpy types old ``meta`` dicts hold, hashed in the same read."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, VerificationError
from .tables import _listing

log = logging.getLogger(__name__)



MIN_TORCH = (2, 6)  # weights_only loading has known escapes before 2.6




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


def _verified_bytes(p: Path, sha256: str | None) -> bytes | None:
    """The file's bytes when its verified hash is known (hashed in the read that loads them), else None."""
    if sha256 is None:
        return None
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise VerificationError(
            f"{str(p)!r} changed since it was verified: its SHA-256 is {actual}, the record says {sha256}"
        )
    return data


def _unpack(obj: Any, p: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(state_dict, meta, fmt)`` from whichever checkpoint layout ``obj`` has (see :func:`read_checkpoint`)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(p)!r} holds a {type(obj).__name__}, not a checkpoint dict; it is not an mmseg or SSSegmentation checkpoint"
        )
    if isinstance(obj.get("state_dict"), Mapping):  # mmseg's, or SSSegmentation weights saved mmseg's way
        sd = _strip_module_prefix(obj["state_dict"])
        meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
        return sd, meta, "ssseg" if _looks_ssseg(sd) else "mmseg"
    if isinstance(obj.get("model"), Mapping):
        sd = _strip_module_prefix(obj["model"])
        if not _looks_ssseg(sd):
            raise CheckpointError(
                f"{str(p)!r} keeps its weights under 'model' but they are not SSSegmentation's "
                "(no 'backbone_net.' keys); psegzoo reads mmseg and SSSegmentation checkpoints only"
            )
        return sd, {k: obj[k] for k in ("epoch", "cur_epoch", "cur_iter") if k in obj}, "ssseg"
    if _is_tensor_dict(obj):
        sd = _strip_module_prefix(obj)
        return sd, {}, "ssseg" if _looks_ssseg(sd) else "mmseg"
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(
        f"{str(p)!r} is a dict with keys {keys} but no 'state_dict' or 'model' weights; "
        "it is not an mmseg or SSSegmentation checkpoint"
    )


def _check_dense_tensors(sd: Mapping[Any, Any], p: Path) -> None:
    """A state dict of named dense tensors, at least one: what every published checkpoint holds."""
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
    sd, meta, fmt = _unpack(_torch_load(p, _verified_bytes(p, sha256)), p)
    _check_dense_tensors(sd, p)
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


