"""``psegzoo.load()``: name -> entry -> verified file -> converted weights -> model -> Segmenter.

Converted weights are cached as safetensors beside the download, so every load after the first
reads no pickle at all.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__, convert, hub, outputs, predictor
from ..errors import CheckpointError, PsegzooError, option
from ..manifest import Entry, get_dataset, get_entry
from ..models import Segmentor, build_segmentor, state_shapes
from .segmenter import Segmenter

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise PsegzooError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}") from None


def _convert_file(path: Path, entry: Entry, model: Segmentor) -> tuple[dict[str, torch.Tensor], str]:
    state_dict, meta, fmt = convert.read_checkpoint(path)
    convert.check_classes(meta, entry.architecture.num_classes, path=path)
    converted = convert.convert_state_dict(state_dict, entry.architecture, state_shapes(model), fmt, path=path)
    return converted, fmt


def _save_converted(state_dict: Mapping[str, torch.Tensor], out: Path, *, source: Path, source_sha256: str,
                    entry: Entry, fmt: str) -> None:
    convert.save_converted(dict(state_dict), out, {
        "source_file": source.name, "source_sha256": source_sha256, "name": entry.name,
        "source_format": fmt, "psegzoo_version": __version__,
    })


def _converted_for(path: Path, source_sha256: str, entry: Entry, model: Segmentor,
                   out: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Converted weights of the verified checkpoint ``path`` and its format, from ``out`` when made from the same file."""
    if out.is_file():
        try:
            state_dict, metadata = convert.load_converted(out)
            if metadata.get("source_sha256") == source_sha256 and metadata.get("name") == entry.name:
                return state_dict, metadata.get("source_format", "mmseg")
            log.info("converted weights %s are stale; converting again", out)
        except CheckpointError as exc:
            log.warning("ignoring unreadable converted weights %s: %s", out, exc)
    state_dict, fmt = _convert_file(path, entry, model)
    _save_converted(state_dict, out, source=path, source_sha256=source_sha256, entry=entry, fmt=fmt)
    return state_dict, fmt


def _entry_for_weights(name: str | None, weights: Path) -> Entry:
    if name is not None:
        return get_entry(name)
    if weights.suffix == ".safetensors":
        metadata = convert.converted_metadata(weights)
        if metadata.get("name"):
            return get_entry(metadata["name"])
    try:
        return get_entry(weights.name)
    except PsegzooError:
        raise CheckpointError(
            f"cannot tell which model {weights.name!r} is; pass the model name too, e.g. "
            + option(f"psegzoo.load('pspnet_r50-d8_512x1024_40k_cityscapes', weights={str(weights)!r})",
                     "--model pspnet_r50-d8_512x1024_40k_cityscapes")
        ) from None


def _build(entry: Entry) -> Segmentor:
    """The architecture on the meta device: no time spent initialising weights we replace."""
    with torch.device("meta"):
        return build_segmentor(entry.architecture)


def _fetch(entry: Entry, download_kwargs: Mapping[str, Any]) -> tuple[Path, str]:
    fetched = hub.fetch(entry, **download_kwargs)
    if fetched.newly_trusted:  # hub has already warned, with the hash and where it is recorded
        log.debug("%s trusted on first use with SHA-256 %s", entry.name, fetched.sha256)
    return fetched.path, fetched.sha256


def load(name: str | None = None, *, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, fuse_bn: bool = True, channels_last: bool | None = None,
         mirrors: Sequence[str] | None = None, offline: bool | None = None, allow_unverified: bool | None = None,
         sha256: str | None = None, progress: bool | None = None, retries: int | None = None,
         timeout: float | tuple[float, float] | None = None) -> Segmenter:
    """Resolve ``name``, fetch and verify its checkpoint, convert (cached), build and load strictly.

    ``weights`` may be a local mmseg/SSSegmentation checkpoint or one of our converted
    ``.safetensors`` files; then nothing is downloaded. ``device`` defaults to cuda, mps, then cpu.
    ``fuse_bn`` folds BatchNorm into the convolutions (exact up to float rounding, faster).
    The download options (``mirrors`` ... ``timeout``) are those of :func:`psegzoo.download`.
    """
    t0 = time.perf_counter()
    if name is None and weights is None:
        raise PsegzooError("give a model name (see 'psegzoo list') or weights=PATH")
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise CheckpointError(f"weights file {str(weights_path)!r} does not exist")
    entry = _entry_for_weights(name, weights_path) if weights_path is not None else get_entry(name)
    dev = predictor.select_device(device)
    dt = _pick_dtype(dtype)
    model = _build(entry)
    if weights_path is not None and weights_path.suffix == ".safetensors":
        state_dict, metadata = convert.load_converted(weights_path)
        if metadata.get("name") and metadata["name"] != entry.name:
            log.warning("%s was converted for %s; loading it as %s", weights_path, metadata["name"], entry.name)
    elif weights_path is not None:
        state_dict, _ = _convert_file(weights_path, entry, model)
    else:
        path, sha = _fetch(entry, dict(mirrors=mirrors, offline=offline, allow_unverified=allow_unverified,
                                       sha256=sha256, progress=progress, retries=retries, timeout=timeout))
        state_dict, _ = _converted_for(path, sha, entry, model, hub.converted_path(entry))
    t1 = time.perf_counter()
    convert.load_into(model, state_dict, path=weights_path, assign=True)
    model.eval()
    if fuse_bn:
        model.fuse_bn()
    model = predictor.prepare_model(model, dev, channels_last=channels_last)
    if dt != torch.float32:
        model = model.to(dtype=dt)
    t2 = time.perf_counter()
    timings = {"weights_s": t1 - t0, "build_s": t2 - t1, "total_s": t2 - t0}
    return Segmenter(model, entry, dev, dt, get_dataset(entry.dataset), timings, channels_last=channels_last)


def convert_checkpoint(source: str | os.PathLike, output: str | os.PathLike | None = None, *,
                       name: str | None = None, **download_kwargs: Any) -> Path:
    """Convert a model (by name, downloading if needed) or a checkpoint file to our safetensors.

    Without ``output`` a model's converted weights go to the cache (where ``load`` finds them) and a
    file's go beside it as ``<file stem>.safetensors``.
    """
    src = Path(source)
    if src.is_file():
        entry = _entry_for_weights(name, src)
        state_dict, fmt = _convert_file(src, entry, _build(entry))
        out = Path(output) if output else src.with_suffix(".safetensors")
        _save_converted(state_dict, out, source=src, source_sha256=hub.file_sha256(src), entry=entry, fmt=fmt)
        return out
    if name is not None:
        raise CheckpointError(f"checkpoint file {str(src)!r} does not exist")
    entry = get_entry(str(source))
    path, sha = _fetch(entry, download_kwargs)
    cached_out = hub.converted_path(entry)
    state_dict, fmt = _converted_for(path, sha, entry, _build(entry), cached_out)
    if output is None:
        return cached_out
    out = Path(output)
    _save_converted(state_dict, out, source=path, source_sha256=sha, entry=entry, fmt=fmt)
    return out


def inference_settings(entry: Entry | str, *, mode: str | None = None, crop_size: Any = None, stride: Any = None,
                       scale: Any = None, flip: bool = False,
                       scales: Sequence[float] | None = None) -> predictor.InferenceSettings:
    """The test settings ``predict`` would use for ``entry`` with these overrides (validated, with the
    test-time augmentation ``flip``/``scales`` they would run)."""
    if isinstance(entry, str):
        entry = get_entry(entry)
    settings = predictor.InferenceSettings.from_entry(entry, mode=mode, crop_size=crop_size, stride=stride, scale=scale)
    settings.views(flip, scales)
    return settings


def unique_output_names(names: Sequence[str]) -> list[str]:
    """Output names with ``_2``, ``_3``, ... added where two images would write the same files."""
    return outputs.unique_names(names)
