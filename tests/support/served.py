"""Synthetic checkpoints served by a loopback HTTP server through an extra manifest.

An extra-manifest entry is a clone of a built-in one (same architecture, dataset and test
pipeline) with a new name, a ``weights.url`` on the loopback server, its own file name and hash,
and a small ``test.scale`` so that a forward takes milliseconds on the CPU::

    ckpt = write_mmseg_checkpoint(mmseg_spec(MMSEG_BASE), tmp / "x.pth")
    model = serve_clone(server, MMSEG_BASE, "pspnet_r18-d8_served_cityscapes", ckpt.read_bytes())
    write_index(tmp / "extra.json", [model])      # then PSEGZOO_INDEX=tmp/extra.json
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from psegzoo.manifest import load_manifest

from .http_server import FileServer
from .synth import Spec, load_specs

MMSEG_BASE = "pspnet_r18-d8_512x1024_80k_cityscapes"
SSSEG_BASE = "pspnet_resnet50os16_voc"
SMALL_SCALE = (128, 64)  # (long, short): a 40x60 image becomes 64x96


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def builtin_entry(name: str) -> dict[str, Any]:
    """The built-in manifest object of ``name`` (a fresh dict, free to change)."""
    return load_manifest(extra=[]).get(name).to_json()


def mmseg_spec(name: str = MMSEG_BASE) -> Spec:
    """The reference state-dict spec of the file the built-in entry ``name`` publishes."""
    specs = load_specs()
    file = builtin_entry(name)["weights"]["file"]
    return specs.mmseg[specs.mmseg_index[file]]


def ssseg_spec(name: str = SSSEG_BASE) -> Spec:
    specs = load_specs()
    return specs.ssseg[specs.ssseg_index[name]]


def serve_clone(server: FileServer, base: str, name: str, data: bytes, *, verified: bool = True,
                scale: Sequence[int] = SMALL_SCALE, file: str | None = None) -> dict[str, Any]:
    """Serve ``data`` and return a manifest object: ``base`` renamed, fetched from ``server``.

    ``verified``: publish the first 8 hex digits of the SHA-256 (else ``sha256_prefix`` is null).
    """
    obj = builtin_entry(base)
    file = file or f"{name}_20240101_000000-{sha256_hex(data)[:8]}.pth"
    path = f"/served/{file}"
    server.add(path, data)
    obj["name"] = name
    obj["weights"] = {"url": server.url(path), "file": file,
                      "sha256_prefix": sha256_hex(data)[:8] if verified else None}
    obj["test"]["scale"] = list(scale)
    return obj


def write_index(path: Path, models: Sequence[dict[str, Any]]) -> Path:
    """Write an extra manifest holding ``models`` (datasets come from the built-in manifest)."""
    path.write_text(json.dumps({"schema_version": 1, "models": list(models)}))
    now = time.time_ns()
    os.utime(path, ns=(now, now))  # a new stamp for the manifest cache even within one clock tick
    return path


class _RunsCode:
    """Pickles as a call to ``os.system``: what a hostile checkpoint does on a plain ``torch.load``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def hostile_checkpoint(marker: Path, spec: Spec) -> bytes:
    """A checkpoint in mmseg's layout (real tensors) whose ``meta`` runs ``touch marker`` when unpickled."""
    state_dict = {key: torch.zeros(tuple(shape)) for key, shape, _ in spec[:3]}
    buf = io.BytesIO()
    torch.save({"meta": {"hook": _RunsCode(f"touch {marker}")}, "state_dict": state_dict}, buf)
    return buf.getvalue()
