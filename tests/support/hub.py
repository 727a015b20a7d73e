"""Shared pieces of the hub tests: small checkpoints, an empty cache, and a zoo served on 127.0.0.1.

Entries come from an extra manifest whose URLs point at the loopback server of
tests/support/http_server.py; the files served are small checkpoints in mmseg's format.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from psegzoo import hub
from psegzoo.manifest import Entry, load_manifest
from tests.support.http_server import FileServer

REPO = Path(__file__).resolve().parents[2]
URL_DIR = "/mmsegmentation/v0.5/pspnet/hubtest"

ARCHITECTURE = {
    "num_classes": 2,
    "align_corners": False,
    "backbone": {"type": "ResNetV1c", "depth": 50, "strides": [1, 2, 1, 1], "dilations": [1, 1, 2, 4]},
    "decode_head": {
        "type": "PSPHead", "in_channels": 2048, "in_index": 3, "channels": 512, "pool_scales": [1, 2, 3, 6],
    },
}
TEST = {
    "scale": [2048, 512],
    "mode": "whole",
    "crop_size": None,
    "stride": None,
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
}


def checkpoint_bytes(seed: int, numel: int = 500_000) -> bytes:
    """A small checkpoint in mmseg's published format (``meta`` + ``state_dict``), ~2 MB."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "backbone.stem.0.weight": torch.randn(32, 3, 3, 3, generator=g),
        "decode_head.bottleneck.conv.weight": torch.randn(numel // 512, 512, generator=g),
        "decode_head.conv_seg.weight": torch.randn(2, 512, 1, 1, generator=g),
        "decode_head.conv_seg.bias": torch.zeros(2),
    }
    buf = io.BytesIO()
    torch.save({"meta": {"CLASSES": ("background", "thing"), "seed": seed}, "state_dict": sd}, buf)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def opts(**fields: Any) -> hub.DownloadOptions:
    """Download options as the environment gives them, without a progress bar, plus ``fields``."""
    return hub.DownloadOptions(**{"progress": False, **fields})


def scrub_environment(monkeypatch) -> None:
    """Remove the machine's settings that would change what psegzoo does: PSEGZOO_*, HF_*, proxies, TORCH_HOME."""
    for name in list(os.environ):
        if name.startswith(("PSEGZOO_", "HF_")) or name.lower().endswith("_proxy") or name == "TORCH_HOME":
            monkeypatch.delenv(name)


def clean_env(monkeypatch, home: Path) -> Path:
    """No PSEGZOO_* or proxy variables of the machine; an empty cache at ``home``; fast retries."""
    scrub_environment(monkeypatch)
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home.parent / "torch-home"))  # no copies from the real machine
    monkeypatch.setenv("HOME", str(home.parent / "user-home"))  # nor from its ~/.cache/mim
    monkeypatch.setenv("PSEGZOO_BACKOFF", "0.01")
    monkeypatch.setenv("PSEGZOO_RETRIES", "3")
    monkeypatch.setenv("PSEGZOO_TIMEOUT", "5")
    monkeypatch.setenv("PSEGZOO_CONNECT_TIMEOUT", "2")
    return home


class Zoo:
    """Writes an extra manifest with entries served by a loopback server."""

    def __init__(self, tmp_path: Path, monkeypatch, server: FileServer):
        self.path = tmp_path / "extra_index.json"
        self.server = server
        self.monkeypatch = monkeypatch
        self.models: list[dict] = []

    def add(self, name: str, data: bytes, *, prefix: str | None = "auto", url: str | None = None,
            weights: dict | None = None, **behaviour: Any) -> Entry:
        """An entry named ``name`` whose file is served with ``behaviour`` (see FileServer.add).

        ``prefix`` is the published hash prefix (default: the true one; None: no published hash);
        ``url`` replaces the entry's URL (the file is still served at its usual path); ``weights``
        adds fields to the weights object (``urls``, ``sha256``, ``size``).
        """
        file = f"{name}_20240101_000000-{sha(data)[:8]}.pth"
        path = f"{URL_DIR}/{file}"
        self.server.add(path, data, **behaviour)
        if prefix == "auto":
            prefix = sha(data)[:8]
        self.models = [m for m in self.models if m["name"] != name]
        self.models.append({
            "name": name, "method": "PSPNet", "backbone": "R-50-D8", "dataset": "hubtest", "crop_size": [512, 512],
            "schedule": 20000, "mem_gb": None, "fps": None, "miou": 50.0, "miou_ms_flip": None,
            "source": "mmsegmentation",
            "weights": {"url": url or self.server.url(path), "file": file, "sha256_prefix": prefix, **(weights or {})},
            "architecture": ARCHITECTURE, "test": TEST,
        })
        self.write()
        return load_manifest().get(name)

    def write(self) -> None:
        doc = {
            "schema_version": 1,
            "datasets": {"hubtest": {"classes": ["background", "thing"], "palette": [[0, 0, 0], [255, 0, 0]]}},
            "models": self.models,
        }
        self.path.write_text(json.dumps(doc))
        # a new mtime and size for the manifest cache even within one clock tick
        os.utime(self.path, ns=(time.time_ns(), time.time_ns() + len(self.models)))
        self.monkeypatch.setenv("PSEGZOO_INDEX", str(self.path))


def url_path(entry: Entry) -> str:
    return f"{URL_DIR}/{entry.weights.file}"


def free_port() -> int:
    """A port nothing listens on (connections to it are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_python(code: str, *args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=child_env(**extra_env), capture_output=True,
                          text=True, timeout=timeout)


def cache_listing(home: Path) -> list[str]:
    """Every file under the cache root except lock files, as paths relative to it."""
    if not home.is_dir():
        return []
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and p.parent.name != "locks")


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    return clean_env(monkeypatch, tmp_path / "home")


@pytest.fixture
def zoo(tmp_path, monkeypatch, hub_env, http_server) -> Zoo:
    return Zoo(tmp_path, monkeypatch, http_server)


@pytest.fixture(scope="session")
def ckpt_bytes() -> bytes:
    return checkpoint_bytes(0)


@pytest.fixture(scope="session")
def other_bytes() -> bytes:
    return checkpoint_bytes(1)
