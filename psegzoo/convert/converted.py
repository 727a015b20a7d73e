"""psegzoo's converted weights: safetensors (no pickle), written atomically, read back strictly,
and loaded into a model."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as serialize

from .. import files
from ..errors import CheckpointError, OutputError
from .reading import _first_line
from .tables import _listing


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

