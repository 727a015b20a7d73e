"""``psegzoo serve`` under test: synthetic models on a loopback zoo, servers in a process or a thread.

:func:`serve_zoo` clones a built-in entry under new names with a synthetic checkpoint served by a
loopback :class:`FileServer` (tests/support/served.py), so a server loads its models through the
hub as users' servers do. :func:`start_process` runs the real ``psegzoo serve`` console script on
a free port and waits for the URL it prints; :func:`in_thread` runs
:func:`psegzoo.serve.make_server` in a thread of the test process around already-loaded models.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image

import psegzoo
from tests.support.cli import psegzoo_command
from tests.support.http_server import FileServer
from tests.support.hub import free_port
from tests.support.served import MMSEG_BASE, mmseg_spec, serve_clone, write_index
from tests.support.synth import write_mmseg_checkpoint

REPO = Path(__file__).resolve().parents[2]
MODEL = "pspnet_r18-d8_servetest_cityscapes"
OTHER = "pspnet_r18-d8_servetest2_cityscapes"  # the same weights under another name
EXTRA = "pspnet_r18-d8_servetest3_cityscapes"  # in the index, never served at start


@dataclass
class ServeZoo:
    server: FileServer
    env: dict[str, str]  # PSEGZOO_INDEX, PSEGZOO_HOME, ... for a child process or monkeypatch

    def gets(self, name: str) -> int:
        return sum(1 for r in self.server.requests if name in r.path)


def serve_zoo(tmp: Path) -> ServeZoo:
    """Three clones of the synthetic PSPNet R-18 (MODEL, OTHER, EXTRA) on a loopback server; call ``.server.close()``."""
    server = FileServer()
    data = write_mmseg_checkpoint(mmseg_spec(), tmp / "mm.pth").read_bytes()
    index = write_index(tmp / "serve_index.json",
                        [serve_clone(server, MMSEG_BASE, name, data) for name in (MODEL, OTHER, EXTRA)])
    env = {"PSEGZOO_INDEX": str(index), "PSEGZOO_HOME": str(tmp / "home"), "PSEGZOO_BACKOFF": "0.01",
           "PSEGZOO_RETRIES": "1", "PSEGZOO_TIMEOUT": "10"}
    return ServeZoo(server, env)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def random_image(seed: int, size: tuple[int, int] = (40, 60)) -> np.ndarray:
    """A seeded random RGB image, ``size`` = (h, w): the same each run."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def decode_png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def assert_labels_agree(labels: np.ndarray, ref_labels: np.ndarray, ref_scores: np.ndarray) -> None:
    """Two runs of one model on one image (another batch, another process) may round differently, so
    they may disagree on near-ties only: where the two best scores are more than 1% of the score
    range apart, the labels are equal; over all pixels at least 99% are."""
    scores = torch.from_numpy(ref_scores)
    top2 = scores.topk(2, dim=0).values
    clear = ((top2[0] - top2[1]) > 0.01 * float(scores.amax() - scores.amin())).numpy()
    assert labels.shape == ref_labels.shape
    assert clear.mean() > 0.5  # the rule judges most of the image
    assert (labels[clear] == ref_labels[clear]).all()
    assert (labels == ref_labels).mean() >= 0.99


@dataclass
class Process:
    proc: subprocess.Popen
    url: str
    lines: list[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(env: Mapping[str, str], *args: str, timeout: float = 120) -> Process:
    """``psegzoo serve ARGS --port FREE`` in a child process, once it prints that it listens."""
    child_env = dict(os.environ, **env)
    child_env["PYTHONPATH"] = str(REPO) + os.pathsep + child_env.get("PYTHONPATH", "")
    port = free_port()
    proc = subprocess.Popen([*psegzoo_command(), "serve", *args, "--port", str(port)], env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "listening on" in line:
            threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
            return Process(proc, f"http://127.0.0.1:{port}", lines)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"psegzoo serve did not start: {''.join(lines)}")


@contextlib.contextmanager
def in_thread(loaded: Mapping[str, Any], **settings: Any) -> Iterator[str]:
    """A server for ``loaded`` (Segmenters by name) in a thread; yields its base URL."""
    port = free_port()
    config = psegzoo.serve.ServeSettings.from_args(port=port, environ={}, **settings)
    server = psegzoo.serve.make_server(config, loaded)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server thread did not start"
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def healthy(url: str) -> bool:
    return requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
