"""``psegzoo.load()``: name -> entry -> verified file -> converted weights -> model -> Segmenter.

Converted weights are cached as safetensors beside the download, so every load after the first
reads no pickle at all.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from .. import __version__, convert, files, hub, predictor
from ..devices import DTYPES
from ..errors import CacheError, CheckpointError, OutputError, PsegzooError, VerificationError, option
from ..hub import DownloadOptions
from ..manifest import Entry, get_dataset, get_entry
from ..models import Segmentor, build_segmentor, state_shapes
from ..models.fast import RECORD_NAME
from .segmenter import Segmenter

log = logging.getLogger(__name__)

def _pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    chosen = predictor.torch_dtype(dtype) if isinstance(dtype, (str, torch.dtype)) else None
    if chosen is None:
        raise PsegzooError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}")
    return chosen


def _convert_file(path: Path, entry: Entry, model: Segmentor, *,
                  sha256: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Read and convert a checkpoint; with ``sha256`` its bytes are hashed in the same read and must match."""
    state_dict, meta, fmt = convert.read_checkpoint(path, sha256=sha256)
    convert.check_classes(meta, entry.architecture.num_classes, path=path)
    converted = convert.convert_state_dict(state_dict, entry.architecture, state_shapes(model), fmt, path=path)
    return converted, fmt


def _metadata(entry: Entry, source_name: str, source_sha256: str, fmt: str) -> dict[str, str]:
    return {"source_file": source_name, "source_sha256": source_sha256, "name": entry.name,
            "source_format": fmt, "psegzoo_version": __version__}


def _download_options(download: DownloadOptions | None, **shortcuts: Any) -> DownloadOptions:
    """``download`` (else the environment's options) with the keyword shortcuts that were given."""
    base = download if download is not None else DownloadOptions()
    changes = {k: v for k, v in shortcuts.items() if v is not None}
    return dataclasses.replace(base, **changes) if changes else base


def _verified_checkpoint(entry: Entry, model: Segmentor, opts: DownloadOptions,
                         fetched: hub.Fetched) -> tuple[hub.Fetched, dict[str, torch.Tensor], str]:
    """Convert ``entry``'s fetched checkpoint, hashing it in the conversion's read; a cached file
    changed since it was verified is removed and fetched again (once)."""
    try:
        state_dict, fmt = _convert_file(fetched.path, entry, model, sha256=fetched.sha256)
    except VerificationError as exc:
        log.warning("%s; removing it and getting it again", exc)
        hub.verify(entry, options=opts)
        again = hub.fetch(entry, opts)
        fetched = dataclasses.replace(again, newly_trusted=fetched.newly_trusted or again.newly_trusted)
        state_dict, fmt = _convert_file(fetched.path, entry, model, sha256=fetched.sha256)
    return fetched, state_dict, fmt


Status = Callable[[str | None], None]
"""Told what a slow step of loading is doing now (None: nothing to show, e.g. while a download draws its bar)."""


def _silent(_text: str | None) -> None:
    pass


def _cached_weights(entry: Entry, model: Segmentor, opts: DownloadOptions, *, must_cache: bool = False,
                    status: Status = _silent) -> tuple[dict[str, torch.Tensor], hub.Fetched, dict[str, str]]:
    """The converted weights of ``entry``'s verified checkpoint, with their metadata: from the cache
    when its converted file was made from that checkpoint and its bytes verify, else converted now
    and cached (a cache that cannot be written is a warning, or with ``must_cache`` the error)."""
    status(None)  # a download draws its own bar
    fetched = hub.fetch(entry, opts)
    status(f"reading the converted weights of {entry.name}")
    data = hub.read_converted(entry, fetched.sha256, opts)
    if data is not None:
        where = hub.converted_path(entry, opts)
        try:
            state_dict, metadata = convert.load_converted_bytes(data, path=where)
            convert.check_converted(state_dict, state_shapes(model), path=where)
            return state_dict, fetched, metadata
        except CheckpointError as exc:
            log.warning("%s", exc)
            hub.discard_converted(entry, opts)
    status(f"verifying and converting {fetched.path.name} (first use only)")
    fetched, state_dict, fmt = _verified_checkpoint(entry, model, opts, fetched)
    metadata = _metadata(entry, fetched.path.name, fetched.sha256, fmt)
    try:
        hub.store_converted(entry, fetched.sha256, lambda tmp: convert.write_converted(state_dict, tmp, metadata), opts)
    except CacheError as exc:
        if must_cache:
            raise
        log.warning("%s (the model is loaded, but will be converted again next time)", exc)
    return state_dict, fetched, metadata


def _entry_for_weights(name: str | None, weights: Path, index: Sequence[Path] | None) -> Entry:
    if name is not None:
        return get_entry(name, index=index)
    if weights.suffix == ".safetensors":
        metadata = convert.converted_metadata(weights)
        if metadata.get("name"):
            return get_entry(metadata["name"], index=index)
    try:
        return get_entry(weights.name, index=index)
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


def load(name: str | None = None, *, weights: str | os.PathLike | None = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, fuse_bn: bool = True, channels_last: bool | None = None,
         download: DownloadOptions | None = None, offline: bool | None = None, mirrors: Sequence[str] | str | None = None,
         allow_unverified: bool | None = None, sha256: str | None = None, progress: bool | None = None,
         status: Status | None = None) -> Segmenter:
    """Resolve ``name``, fetch and verify its checkpoint, convert (cached), build and load strictly.

    ``weights`` may be a local mmseg/SSSegmentation checkpoint or one of our converted
    ``.safetensors`` files; then nothing is downloaded. ``device`` defaults to cuda, mps, then cpu.
    ``fuse_bn`` folds BatchNorm into the convolutions (exact up to float rounding, faster).
    How weights are got is ``download`` (a :class:`psegzoo.DownloadOptions`; default: from the
    environment); ``offline``, ``mirrors``, ``allow_unverified``, ``sha256`` and ``progress`` are
    shortcuts that override the same fields of it. ``status`` is told each slow step as it starts
    (the command line shows it as a transient line on a terminal).
    """
    t0 = time.perf_counter()
    say = status or _silent
    opts = _download_options(download, offline=offline, mirrors=mirrors, allow_unverified=allow_unverified,
                             sha256=sha256, progress=progress)
    if name is None and weights is None:
        raise PsegzooError(f"give a model name (see 'psegzoo list') or {option('weights=PATH', '--weights FILE')}")
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise CheckpointError(f"weights file {str(weights_path)!r} does not exist")
    entry = (_entry_for_weights(name, weights_path, opts.index) if weights_path is not None
             else get_entry(str(name), index=opts.index))
    dev = predictor.select_device(device)
    dt = _pick_dtype(dtype)
    model = _build(entry)
    if weights_path is not None:
        say(f"reading {weights_path.name}")
    if weights_path is not None and weights_path.suffix == ".safetensors":
        state_dict, metadata = convert.load_converted(weights_path)
        convert.check_converted(state_dict, state_shapes(model), path=weights_path)
        if metadata.get("name") and metadata["name"] != entry.name:
            log.warning("%s was converted for %s; loading it as %s", weights_path, metadata["name"], entry.name)
    elif weights_path is not None:
        state_dict, _ = _convert_file(weights_path, entry, model)
    else:
        state_dict, fetched, _ = _cached_weights(entry, model, opts, status=say)
        if fetched.newly_trusted:
            log.warning("%s publishes no hash; trusted on first use with SHA-256 %s (every later use must match it)",
                        entry.name, fetched.sha256)
    t1 = time.perf_counter()
    say(f"building {entry.name} on {dev}")
    convert.load_into(model, state_dict, path=weights_path, assign=True)
    model.eval()
    if fuse_bn:
        model.fuse_bn()
    prepared = predictor.prepare_model(model, dev, channels_last=channels_last)
    if dt != torch.float32:
        prepared = prepared.to(dtype=dt)
    t2 = time.perf_counter()
    timings = {"weights_s": t1 - t0, "build_s": t2 - t1, "total_s": t2 - t0}
    return Segmenter(cast(Segmentor, prepared), entry, dev, dt, get_dataset(entry.dataset, index=opts.index), timings,
                     channels_last=channels_last, tuning_record=tuning_record(opts))


def tuning_record(options: DownloadOptions | None = None) -> Path:
    """Where ``psegzoo tune`` records the CPU's fast paths: ``fast_paths.json`` in the cache root."""
    return (options if options is not None else DownloadOptions()).home / RECORD_NAME


def convert_checkpoint(source: str | os.PathLike, output: str | os.PathLike | None = None, *,
                       name: str | None = None, download: DownloadOptions | None = None, offline: bool | None = None,
                       mirrors: Sequence[str] | str | None = None, allow_unverified: bool | None = None,
                       sha256: str | None = None, progress: bool | None = None) -> Path:
    """Convert a model (by name, fetching it if needed) or a checkpoint file to our safetensors.

    Without ``output`` a model's converted weights go to the cache (where ``load`` finds them; when
    they are already there and verify, this returns at once) and a file's go beside it as
    ``<file stem>.safetensors``. Download options as for :func:`load`.
    """
    opts = _download_options(download, offline=offline, mirrors=mirrors, allow_unverified=allow_unverified,
                             sha256=sha256, progress=progress)
    src = Path(source)
    if src.is_file():
        out = Path(output) if output else src.with_suffix(".safetensors")
        refuse_writing_over(out, [src])
        entry = _entry_for_weights(name, src, opts.index)
        state_dict, fmt = _convert_file(src, entry, _build(entry))
        convert.save_converted(state_dict, out, _metadata(entry, src.name, hub.file_sha256(src), fmt))
        return out
    if name is not None:
        raise CheckpointError(f"checkpoint file {str(src)!r} does not exist")
    entry = get_entry(str(source), index=opts.index)
    if output is None:
        ready = hub.converted_file(entry, opts)
        if ready is not None:
            return ready
    if output is not None and entry.weights is not None:
        refuse_writing_over(output, [hub.checkpoint_path(entry, opts), hub.converted_path(entry, opts)])
    state_dict, _, metadata = _cached_weights(entry, _build(entry), opts, must_cache=output is None)
    if output is None:
        return hub.converted_path(entry, opts)
    out = Path(output)
    convert.save_converted(state_dict, out, metadata)
    return out


def refuse_writing_over(output: str | os.PathLike, sources: Sequence[str | os.PathLike]) -> None:
    """Raise OutputError when writing ``output`` would replace one of ``sources`` (the same file, a
    hard link of it or a symlink to it: :func:`psegzoo.files.overwrites_input`)."""
    source = files.overwrites_input(output, sources)
    if source is None:
        return
    if os.path.islink(output):
        how = "is a symbolic link to"
    elif os.path.normcase(os.path.abspath(output)) == os.path.normcase(os.path.abspath(source)):
        how = "is"
    else:
        how = "is the same file (a hard link) as"
    raise OutputError(f"output {str(output)!r} {how} the source {str(source)!r}, which would be replaced; "
                      "write the output under another name")


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
