"""Downloads and the cache, over real HTTP on 127.0.0.1 (tests/support/http_server.py).

Entries come from an extra manifest (PSEGZOO_INDEX) whose URLs point at the loopback server;
the files served are small checkpoints in mmseg's format written with torch.save.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from psegzoo import hub
from psegzoo.errors import (
    CacheError,
    DownloadError,
    NoWeightsError,
    OfflineError,
    UnknownModelError,
    UnverifiedWeightsError,
    VerificationError,
)
from psegzoo.manifest import load_manifest
from tests.support.http_server import FileServer

REPO = Path(__file__).resolve().parents[1]
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


def _checkpoint_bytes(seed: int, numel: int = 500_000) -> bytes:
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


@pytest.fixture(scope="session")
def ckpt_bytes() -> bytes:
    return _checkpoint_bytes(0)


@pytest.fixture(scope="session")
def other_bytes() -> bytes:
    return _checkpoint_bytes(1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache and download settings that keep the tests fast."""
    for name in list(os.environ):
        if name.startswith("PSEGZOO_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
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

    def add(self, name: str, data: bytes, *, prefix: str | None = "auto", url: str | None = None, **behaviour):
        """An entry named ``name`` whose file is served with ``behaviour`` (see FileServer.add).

        ``prefix`` is the published hash prefix (default: the true one; None: no published hash);
        ``url`` replaces the entry's URL (the file is still served at its usual path).
        """
        file = f"{name}_20240101_000000-{sha(data)[:8]}.pth"
        path = f"{URL_DIR}/{file}"
        self.server.add(path, data, **behaviour)
        if prefix == "auto":
            prefix = sha(data)[:8]
        self.models.append(
            {
                "name": name,
                "method": "PSPNet",
                "backbone": "R-50-D8",
                "dataset": "hubtest",
                "crop_size": [512, 512],
                "schedule": 20000,
                "mem_gb": None,
                "fps": None,
                "miou": 50.0,
                "miou_ms_flip": None,
                "source": "mmsegmentation",
                "weights": {"url": url or self.server.url(path), "file": file, "sha256_prefix": prefix},
                "architecture": ARCHITECTURE,
                "test": TEST,
            }
        )
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


@pytest.fixture
def zoo(tmp_path, monkeypatch, env, http_server):
    return Zoo(tmp_path, monkeypatch, http_server)


def url_path(entry) -> str:
    return f"{URL_DIR}/{entry.weights.file}"


def leftovers(entry) -> list[str]:
    d = hub.checkpoint_path(entry).parent
    if not d.is_dir():
        return []
    return sorted(n for n in os.listdir(d) if n not in (entry.weights.file, entry.weights.file + ".json"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Success, records, layout
# --------------------------------------------------------------------------------------------


def test_download_success_record_and_cache_hit(zoo, http_server, ckpt_bytes, env):
    entry = zoo.add("m_ok", ckpt_bytes, etag='"v1"')
    path = hub.download(entry, progress=False)
    assert path == env / "checkpoints" / entry.weights.file == hub.checkpoint_path(entry)
    assert path.read_bytes() == ckpt_bytes and hub.file_sha256(path) == sha(ckpt_bytes)
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["sha256"] == sha(ckpt_bytes) and record["size"] == len(ckpt_bytes)
    assert record["name"] == "m_ok" and record["url"] == entry.weights.url and record["source"] == "download"
    assert leftovers(entry) == []  # no .part, .part.json or .lock left behind
    (get,) = http_server.gets(url_path(entry))
    assert get.header("Accept-Encoding") == "identity" and get.header("Range") is None
    # A second call uses the cache: no request.
    again = hub.fetch(entry, progress=False)
    assert again.path == path and not again.downloaded and again.sha256 == sha(ckpt_bytes)
    assert len(http_server.gets(url_path(entry))) == 1
    assert hub.converted_path(entry) == path.with_name(entry.weights.file[: -len(".pth")] + ".safetensors")


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("PSEGZOO_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "psegzoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert hub.cache_root() == tmp_path / "user" / ".cache" / "psegzoo"
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "explicit"))
    assert hub.cache_root() == tmp_path / "explicit"


def test_progress_bar_does_not_break_download(zoo, ckpt_bytes, capfd):
    entry = zoo.add("m_bar", ckpt_bytes)
    assert hub.download(entry, progress=True).read_bytes() == ckpt_bytes
    err = capfd.readouterr().err
    assert entry.weights.file in err  # the bar names the file it downloads


# --------------------------------------------------------------------------------------------
# Verification of downloads
# --------------------------------------------------------------------------------------------


def test_wrong_published_hash_is_refused(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_wrong", ckpt_bytes, prefix="00000000" if not sha(ckpt_bytes).startswith("0") else "ffffffff")
    with pytest.raises(DownloadError) as err:
        hub.download(entry, progress=False)
    msg = str(err.value)
    assert entry.weights.url in msg and "published hash prefix" in msg and sha(ckpt_bytes) in msg
    assert not hub.checkpoint_path(entry).exists() and leftovers(entry) == []
    assert len(http_server.gets(url_path(entry))) == 1  # a complete but wrong file is not retried


def test_one_flipped_byte_is_refused(zoo, ckpt_bytes):
    flipped = bytearray(ckpt_bytes)
    flipped[len(flipped) // 2] ^= 0x01
    entry = zoo.add("m_flip", ckpt_bytes)
    zoo.server.add(url_path(entry), bytes(flipped))
    with pytest.raises(DownloadError, match="does not match the published hash prefix"):
        hub.download(entry, progress=False)
    assert not hub.checkpoint_path(entry).exists() and leftovers(entry) == []


def test_truncated_answers_are_never_accepted(zoo, http_server, ckpt_bytes):
    n = len(ckpt_bytes)
    cut = [{"drop_after": n // 3}] * 10
    entry = zoo.add("m_trunc", ckpt_bytes, ignore_range=True, plan=cut)
    with pytest.raises(DownloadError) as err:
        hub.download(entry, progress=False, retries=2)
    assert f"of {n} bytes" in str(err.value) and "gave up after 3 attempts" in str(err.value)
    assert not hub.checkpoint_path(entry).exists()
    assert len(http_server.gets(url_path(entry))) == 3


def test_html_error_page_with_200_is_never_cached(zoo, ckpt_bytes):
    entry = zoo.add("m_html", ckpt_bytes, html=True)
    with pytest.raises(DownloadError, match="HTML page"):
        hub.download(entry, progress=False)
    assert not hub.checkpoint_path(entry).exists() and leftovers(entry) == []


# --------------------------------------------------------------------------------------------
# Resume, retries, timeouts
# --------------------------------------------------------------------------------------------


def test_dropped_at_40_percent_resumes_with_range_and_if_range(zoo, http_server, ckpt_bytes):
    n = len(ckpt_bytes)
    cut = int(n * 0.4)
    entry = zoo.add("m_resume", ckpt_bytes, etag='"abc123"', plan=[{"drop_after": cut}])
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    first, second = http_server.gets(url_path(entry))
    assert first.header("Range") is None
    assert second.header("Range") == f"bytes={cut}-" and second.header("If-Range") == '"abc123"'


def test_resume_uses_last_modified_when_there_is_no_etag(zoo, http_server, ckpt_bytes):
    lm = "Wed, 01 Jan 2020 00:00:00 GMT"
    cut = len(ckpt_bytes) // 2
    entry = zoo.add("m_lm", ckpt_bytes, last_modified=lm, plan=[{"drop_after": cut}])
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert http_server.gets(url_path(entry))[1].header("If-Range") == lm


def test_server_ignoring_range_restarts_from_zero(zoo, http_server, ckpt_bytes):
    cut = int(len(ckpt_bytes) * 0.4)
    entry = zoo.add("m_norange", ckpt_bytes, ignore_range=True, plan=[{"drop_after": cut}])
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    gets = http_server.gets(url_path(entry))
    assert len(gets) == 2 and gets[1].header("Range") == f"bytes={cut}-"  # asked, got a 200, restarted


def test_206_at_wrong_offset_restarts_from_zero(zoo, http_server, ckpt_bytes):
    cut = int(len(ckpt_bytes) * 0.4)
    entry = zoo.add("m_offset", ckpt_bytes, plan=[{"drop_after": cut}, {"wrong_offset": 7}])
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    gets = http_server.gets(url_path(entry))
    assert [g.header("Range") for g in gets] == [None, f"bytes={cut}-", None]


def test_changed_file_behind_if_range_restarts(zoo, http_server, ckpt_bytes, other_bytes):
    """A part from an older version of the file is discarded (If-Range mismatch -> 200)."""
    cut = len(other_bytes) // 2
    entry = zoo.add("m_changed", ckpt_bytes, etag='"new"')
    served = zoo.server.add(url_path(entry), other_bytes, etag='"old"', plan=[{"drop_after": cut}])
    with pytest.raises(DownloadError):
        hub.download(entry, progress=False, retries=0)
    assert hub.checkpoint_path(entry).with_name(entry.weights.file + ".part").stat().st_size == cut
    served.data, served.etag = ckpt_bytes, '"new"'
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    last = http_server.gets(url_path(entry))[-1]
    assert last.header("Range") == f"bytes={cut}-" and last.header("If-Range") == '"old"'


def test_resumed_file_failing_verification_is_downloaded_again_from_zero(zoo, http_server, ckpt_bytes, other_bytes):
    cut = len(other_bytes) // 2
    entry = zoo.add("m_mixed", ckpt_bytes)
    served = zoo.server.add(url_path(entry), other_bytes, plan=[{"drop_after": cut}])
    with pytest.raises(DownloadError):
        hub.download(entry, progress=False, retries=0)
    served.data = ckpt_bytes  # no validator: the resume appends bytes of another version
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert [g.header("Range") for g in http_server.gets(url_path(entry))[1:]] == [f"bytes={cut}-", None]


def test_503_503_200(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_503", ckpt_bytes, plan=[{"status": 503}, {"status": 503}])
    t0 = time.monotonic()
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 3
    assert time.monotonic() - t0 < 5


def test_429_with_retry_after_is_retried(zoo, http_server, ckpt_bytes, monkeypatch):
    monkeypatch.setenv("PSEGZOO_BACKOFF_MAX", "0.05")  # Retry-After is honoured up to this cap
    entry = zoo.add("m_429", ckpt_bytes, plan=[{"status": 429, "retry_after": 120}])
    t0 = time.monotonic()
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 2 and time.monotonic() - t0 < 5


def test_retries_are_bounded(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_5xx", ckpt_bytes, status=502)
    with pytest.raises(DownloadError, match=r"HTTP 502 .*gave up after 3 attempts"):
        hub.download(entry, progress=False, retries=2)
    assert len(http_server.gets(url_path(entry))) == 3


def test_retries_from_environment(zoo, http_server, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_env_retries", ckpt_bytes, status=503)
    monkeypatch.setenv("PSEGZOO_RETRIES", "0")
    with pytest.raises(DownloadError):
        hub.download(entry, progress=False)
    assert len(http_server.gets(url_path(entry))) == 1
    monkeypatch.setenv("PSEGZOO_RETRIES", "many")
    with pytest.raises(DownloadError, match="PSEGZOO_RETRIES"):
        hub.download(entry, progress=False)


@pytest.mark.parametrize("status", [404, 403])
def test_404_and_403_are_not_retried(zoo, http_server, ckpt_bytes, status):
    entry = zoo.add(f"m_{status}", ckpt_bytes, status=status)
    with pytest.raises(DownloadError, match=f"HTTP {status}") as err:
        hub.download(entry, progress=False)
    assert "psegzoo import" in str(err.value)
    assert len(http_server.gets(url_path(entry))) == 1


def test_stall_fails_within_read_timeout_then_resumes(zoo, http_server, ckpt_bytes):
    # 100 kB then silence; then silence right after the headers (no progress: counts as a failure)
    stalls = [{"stall_after": 100_000, "stall": 30}, {"stall_after": 0, "stall": 30}]
    entry = zoo.add("m_stall", ckpt_bytes, etag='"s"', plan=stalls)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="read timeout"):
        hub.download(entry, progress=False, timeout=0.5, retries=1)
    assert time.monotonic() - t0 < 5  # two attempts of ~0.5 s each, not 30 s
    # The next attempt resumes what arrived before the stall.
    assert hub.download(entry, progress=False, timeout=0.5).read_bytes() == ckpt_bytes
    assert [g.header("Range") for g in http_server.gets(url_path(entry))] == [None, "bytes=100000-", "bytes=100000-"]


def test_connection_refused_names_the_url(zoo, ckpt_bytes):
    url = f"http://127.0.0.1:{free_port()}{URL_DIR}/x.pth"
    entry = zoo.add("m_refused", ckpt_bytes, url=url)
    with pytest.raises(DownloadError, match="connection refused") as err:
        hub.download(entry, progress=False, retries=1)
    assert url in str(err.value)


# --------------------------------------------------------------------------------------------
# Odd answers
# --------------------------------------------------------------------------------------------


def test_gzip_label_on_raw_bytes_hashes_raw_bytes(zoo, http_server, ckpt_bytes):
    """A server labels the file gzip: psegzoo asks for identity and keeps the raw bytes."""
    entry = zoo.add("m_gz_label", ckpt_bytes, gzip="label")
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert http_server.gets(url_path(entry))[0].header("Accept-Encoding") == "identity"


def test_gzip_compressed_despite_identity_is_decoded_and_verified(zoo, ckpt_bytes):
    entry = zoo.add("m_gz_real", ckpt_bytes, gzip="compress")
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert leftovers(entry) == []


def test_redirects_are_followed_and_bounded(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_redirect", ckpt_bytes, url=http_server.url("/moved.pth"))
    http_server.add("/moved.pth", b"", redirect_to=http_server.url(url_path(entry)))
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert len(http_server.gets("/moved.pth")) == 1 and len(http_server.gets(url_path(entry))) == 1
    looping = zoo.add("m_loop", ckpt_bytes, url=http_server.url("/loop.pth"))
    http_server.add("/loop.pth", b"", redirect_to=http_server.url("/loop.pth"))
    with pytest.raises(DownloadError, match="more than 10 redirects"):
        hub.download(looping, progress=False)
    assert len(http_server.gets("/loop.pth")) == 11  # the request and 10 redirects, never retried


# --------------------------------------------------------------------------------------------
# Concurrency and locks
# --------------------------------------------------------------------------------------------

CHILD = """
import sys, time
from psegzoo import hub, manifest
entry = manifest.get_entry(sys.argv[1])
started = time.time()
f = hub.fetch(entry, progress=False)
print(f.sha256, f.downloaded, started)
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_eight_processes_download_one_verified_file(zoo, http_server, ckpt_bytes):
    # The first answer is slowed down (~3 s) so that the eight processes overlap.
    entry = zoo.add("m_concurrent", ckpt_bytes, plan=[{"throttle": 0.1}])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, entry.name],
            env=_child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    lines = [o[0].split() for o in outs]
    assert {line[0] for line in lines} == {sha(ckpt_bytes)}
    assert sum(line[1] == "True" for line in lines) == 1  # exactly one process downloaded
    assert len(http_server.gets(url_path(entry))) == 1
    path = hub.checkpoint_path(entry)
    assert path.read_bytes() == ckpt_bytes and leftovers(entry) == []
    # They really competed: most asked while the download was still running and waited on the lock.
    assert sum(float(line[2]) < path.stat().st_mtime for line in lines) >= 4


def test_threads_in_one_process_share_one_download(zoo, http_server, ckpt_bytes):
    from concurrent.futures import ThreadPoolExecutor

    entry = zoo.add("m_threads", ckpt_bytes, plan=[{"throttle": 0.01}])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: hub.fetch(entry, progress=False), range(4)))
    assert {r.sha256 for r in results} == {sha(ckpt_bytes)} and sum(r.downloaded for r in results) == 1
    assert len(http_server.gets(url_path(entry))) == 1


def test_killed_lock_holder_does_not_block_and_its_part_is_resumed(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_killed", ckpt_bytes, etag='"k"', plan=[{"throttle": 0.2}])
    part = hub.checkpoint_path(entry).with_name(entry.weights.file + ".part")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, entry.name], env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 2 * 65536):
            assert child.poll() is None and time.monotonic() < deadline, "the child never started downloading"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    got = part.stat().st_size
    t0 = time.monotonic()
    assert hub.download(entry, progress=False, lock_timeout=10).read_bytes() == ckpt_bytes
    assert time.monotonic() - t0 < 5
    last = http_server.gets(url_path(entry))[-1]
    assert last.header("Range") == f"bytes={got}-" and last.header("If-Range") == '"k"'


def test_lock_held_without_progress_times_out_clearly(zoo, ckpt_bytes):
    entry = zoo.add("m_locked", ckpt_bytes)
    lock = hub.checkpoint_path(entry).with_name(entry.weights.file + ".lock")
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another holder that never progresses
    try:
        with pytest.raises(CacheError, match="PSEGZOO_LOCK_TIMEOUT"):
            hub.download(entry, progress=False, lock_timeout=0.3)
    finally:
        os.close(fd)
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes


# --------------------------------------------------------------------------------------------
# Offline and mirrors
# --------------------------------------------------------------------------------------------


def test_offline_uses_cache_and_never_the_network(zoo, http_server, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_offline", ckpt_bytes)
    path = hub.download(entry, progress=False)
    monkeypatch.setenv("PSEGZOO_OFFLINE", "1")
    path.with_name(path.name + ".json").unlink()  # a missing record is rebuilt by hashing, offline
    assert hub.download(entry, progress=False) == path
    assert json.loads(path.with_name(path.name + ".json").read_text())["sha256"] == sha(ckpt_bytes)
    assert len(http_server.gets(url_path(entry))) == 1


def test_offline_without_cache_says_how_to_import(zoo, http_server, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_offline_missing", ckpt_bytes)
    monkeypatch.setenv("PSEGZOO_OFFLINE", "yes")
    with pytest.raises(OfflineError) as err:
        hub.download(entry, progress=False, mirrors=http_server.base)
    assert "psegzoo import" in str(err.value) and entry.weights.url in str(err.value)
    assert http_server.requests == []
    with pytest.raises(OfflineError):
        hub.download(entry, progress=False, offline=True)
    assert hub.download(entry, progress=False, offline=False).read_bytes() == ckpt_bytes  # argument wins


def test_mirrors_tried_in_order_before_the_original(zoo, http_server, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_mirror", ckpt_bytes)
    with FileServer() as first, FileServer() as second:
        second.add(url_path(entry), ckpt_bytes)  # the first mirror lacks the file (404)
        monkeypatch.setenv("PSEGZOO_MIRROR", f"{first.base}/, {second.base}")
        assert hub.candidate_urls(entry) == [first.url(url_path(entry)), second.url(url_path(entry)), entry.weights.url]
        f = hub.fetch(entry, progress=False)
        assert f.url == second.url(url_path(entry)) and f.path.read_bytes() == ckpt_bytes
        assert [r.path for r in first.requests] == [url_path(entry)]
        assert len(second.gets(url_path(entry))) == 1
    assert http_server.requests == []  # the original URL was not needed


def test_mirror_fallback_reaches_the_original_and_errors_name_every_url(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_fallback", ckpt_bytes)
    dead = f"http://127.0.0.1:{free_port()}"
    with FileServer() as broken:
        broken.add(url_path(entry), ckpt_bytes, status=500)
        f = hub.fetch(entry, progress=False, mirrors=[dead, broken.base], retries=1)
        assert f.url == entry.weights.url and f.path.read_bytes() == ckpt_bytes
        assert len(broken.gets(url_path(entry))) == 2
        hub.remove(entry)
        http_server.add(url_path(entry), ckpt_bytes, status=404)
        with pytest.raises(DownloadError) as err:
            hub.download(entry, progress=False, mirrors=f"{dead},{broken.base}", retries=1)
    msg = str(err.value)
    assert f"{dead}{url_path(entry)}: connection refused" in msg
    assert f"{broken.base}{url_path(entry)}: HTTP 500" in msg
    assert f"{entry.weights.url}: HTTP 404" in msg
    assert msg.index(dead) < msg.index(broken.base) < msg.index(entry.weights.url)


def test_file_mirror_works_offline(zoo, http_server, ckpt_bytes, tmp_path):
    entry = zoo.add("m_filemirror", ckpt_bytes)
    local = tmp_path / "mirror" / url_path(entry).lstrip("/")
    local.parent.mkdir(parents=True)
    local.write_bytes(ckpt_bytes)
    f = hub.fetch(entry, progress=False, offline=True, mirrors=(tmp_path / "mirror").as_uri())
    assert f.downloaded and f.path.read_bytes() == ckpt_bytes and http_server.requests == []


def test_bad_mirror_value_is_a_clear_error(zoo, ckpt_bytes):
    entry = zoo.add("m_badmirror", ckpt_bytes)
    with pytest.raises(DownloadError, match="not an http"):
        hub.download(entry, progress=False, mirrors="ftp.example.org")


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def test_import_accepted_by_file_name_and_by_name(zoo, http_server, ckpt_bytes, tmp_path, monkeypatch):
    entry = zoo.add("m_import", ckpt_bytes)
    src = tmp_path / "downloads" / entry.weights.file
    src.parent.mkdir()
    src.write_bytes(ckpt_bytes)
    got_entry, path = hub.import_checkpoint(src)
    assert got_entry.name == entry.name and path == hub.checkpoint_path(entry)
    assert path.read_bytes() == ckpt_bytes and src.read_bytes() == ckpt_bytes  # copied, not moved
    assert json.loads(path.with_name(path.name + ".json").read_text())["source"] == "import"
    monkeypatch.setenv("PSEGZOO_OFFLINE", "1")
    assert hub.download(entry, progress=False) == path
    assert http_server.requests == []
    hub.remove(entry)
    odd = tmp_path / "downloads" / "model (1).pth"
    odd.write_bytes(ckpt_bytes)
    with pytest.raises(UnknownModelError, match="--name"):
        hub.import_checkpoint(odd)
    assert hub.import_checkpoint(odd, name="m_import")[1].read_bytes() == ckpt_bytes
    assert hub.import_checkpoint(tmp_path / "downloads" / entry.weights.file, name=entry.name)[1] == path


def test_import_refused_on_hash_mismatch(zoo, ckpt_bytes, other_bytes, tmp_path):
    entry = zoo.add("m_import_bad", ckpt_bytes)
    src = tmp_path / f"{entry.name}.pth"
    src.write_bytes(other_bytes)
    with pytest.raises(VerificationError) as err:
        hub.import_checkpoint(src)
    assert entry.name in str(err.value) and sha(other_bytes) in str(err.value)
    assert not hub.checkpoint_path(entry).exists() and leftovers(entry) == []
    assert src.read_bytes() == other_bytes
    with pytest.raises(CacheError, match="no such file"):
        hub.import_checkpoint(tmp_path / "missing.pth", name=entry.name)
    unpublished = zoo.add("m_import_html", ckpt_bytes, prefix=None)
    page = tmp_path / "m_import_html.pth"
    page.write_bytes(b"\n<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(VerificationError, match="HTML page"):
        hub.import_checkpoint(page)
    assert hub.trusted_sha256(unpublished) is None and not hub.checkpoint_path(unpublished).exists()


# --------------------------------------------------------------------------------------------
# The cached file
# --------------------------------------------------------------------------------------------


def test_truncated_cached_file_is_detected_and_downloaded_again(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_cached_trunc", ckpt_bytes)
    path = hub.download(entry, progress=False)
    with open(path, "r+b") as f:
        f.truncate(len(ckpt_bytes) - 10)
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 2


def test_missing_record_with_bad_file_is_replaced(zoo, http_server, ckpt_bytes, other_bytes):
    entry = zoo.add("m_no_record", ckpt_bytes)
    path = hub.download(entry, progress=False)
    path.with_name(path.name + ".json").unlink()
    path.write_bytes(other_bytes)
    assert hub.download(entry, progress=False).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 2


def test_verify_detects_flipped_byte_and_truncation(zoo, ckpt_bytes):
    a = zoo.add("m_verify_a", ckpt_bytes)
    b = zoo.add("m_verify_b", ckpt_bytes[:-1] + b"\x00")
    pa, pb = hub.download(a, progress=False), hub.download(b, progress=False)
    hub.converted_path(a).write_bytes(b"converted")
    assert [r.status for r in hub.verify()] == ["ok", "ok"]
    data = bytearray(pa.read_bytes())
    data[100] ^= 0xFF
    pa.write_bytes(bytes(data))  # same size: only the full hash can see it
    assert hub.verify(a, full=False)[0].ok
    (res,) = hub.verify(a)
    assert res.status == "corrupt" and "differs from the recorded" in res.problem
    assert not pa.exists() and not hub.converted_path(a).exists() and pa in res.removed
    with open(pb, "r+b") as f:
        f.truncate(10)
    (res,) = hub.verify("m_verify_b", full=False)
    assert res.status == "corrupt" and "size is 10 bytes" in res.problem and not pb.exists()
    assert hub.verify(a)[0].status == "missing"


def test_permissions_follow_the_umask(zoo, ckpt_bytes):
    entry = zoo.add("m_perm", ckpt_bytes)
    old = os.umask(0o022)
    try:
        path = hub.download(entry, progress=False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(path.with_name(path.name + ".json").stat().st_mode) == 0o644
        hub.remove(entry)
        os.umask(0o027)
        src = path.parent.parent / "src.pth"
        src.write_bytes(ckpt_bytes)
        hub.import_checkpoint(src, name=entry.name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_full_disk_is_a_clear_error_leaving_nothing(zoo, http_server, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_full", ckpt_bytes)

    def tiny_disk(path):
        return hub.shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)

    monkeypatch.setattr(hub.shutil, "disk_usage", tiny_disk)
    with pytest.raises(CacheError, match="not enough disk space") as err:
        hub.download(entry, progress=False)
    assert "PSEGZOO_HOME" in str(err.value)
    assert os.listdir(hub.checkpoint_path(entry).parent) == []
    assert len(http_server.gets(url_path(entry))) == 1  # not retried, no other URL tried


def test_no_name_can_leave_the_cache(zoo, ckpt_bytes, env):
    entry = zoo.add("m_escape", ckpt_bytes)
    for bad in ("../evil.pth", "/tmp/evil.pth", ".hidden.pth", "a/b.pth"):
        evil = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, file=bad))
        with pytest.raises(CacheError, match="not a plain file name"):
            hub.download(evil, progress=False)
    bad_name = dataclasses.replace(entry, name="../x", weights=dataclasses.replace(entry.weights, sha256_prefix=None))
    with pytest.raises(CacheError):
        hub.download(bad_name, progress=False, allow_unverified=True)
    assert not (env.parent / "evil.pth").exists() and not (env / "evil.pth").exists()


def test_entry_without_weights(zoo, ckpt_bytes):
    entry = dataclasses.replace(zoo.add("m_noweights", ckpt_bytes), weights=None)
    with pytest.raises(NoWeightsError, match="no weights are published for m_noweights yet"):
        hub.download(entry)


def test_cached_listing_and_remove(zoo, ckpt_bytes, other_bytes):
    a = zoo.add("m_list_a", ckpt_bytes)
    b = zoo.add("m_list_b", other_bytes)
    hub.download(a, progress=False)
    hub.download(b, progress=False)
    hub.converted_path(b).write_bytes(b"x" * 10)
    listed = hub.cached()
    assert [(c.name, c.file, c.size, c.sha256, c.converted) for c in listed] == [
        ("m_list_a", a.weights.file, len(ckpt_bytes), sha(ckpt_bytes), False),
        ("m_list_b", b.weights.file, len(other_bytes), sha(other_bytes), True),
    ]
    assert listed[1].converted_size == 10
    removed = hub.remove("m_list_b")
    path_b = hub.checkpoint_path(b)
    assert set(removed) == {path_b, hub.converted_path(b), path_b.with_name(b.weights.file + ".json")}
    assert [c.name for c in hub.cached()] == ["m_list_a"]
    hub.checkpoint_path(a).with_name(a.weights.file + ".part").write_bytes(b"partial")
    hub.remove(all=True)
    assert hub.cached() == [] and os.listdir(hub.checkpoint_path(a).parent) == []
    with pytest.raises(CacheError):
        hub.remove()


def test_force_downloads_again(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_force", ckpt_bytes)
    hub.download(entry, progress=False)
    assert hub.fetch(entry, progress=False, force=True).downloaded
    assert len(http_server.gets(url_path(entry))) == 2


# --------------------------------------------------------------------------------------------
# Entries with no published hash: trust on first use, pinned hashes
# --------------------------------------------------------------------------------------------


def test_unpublished_hash_is_refused_by_default(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_tofu_refused", ckpt_bytes, prefix=None)
    with pytest.raises(UnverifiedWeightsError) as err:
        hub.download(entry, progress=False)
    msg = str(err.value)
    hints = ("--allow-unverified", "PSEGZOO_ALLOW_UNVERIFIED=1", "allow_unverified=True", "--sha256", "psegzoo import")
    for hint in hints:
        assert hint in msg
    assert http_server.requests == []
    assert hub.trusted_sha256(entry) is None


def test_trust_on_first_use_then_verified_then_tamper_refused(zoo, http_server, ckpt_bytes, other_bytes, env, caplog):
    entry = zoo.add("m_tofu", ckpt_bytes, prefix=None)
    with caplog.at_level("WARNING", logger="psegzoo.hub"):
        first = hub.fetch(entry, progress=False, allow_unverified=True)
    assert first.newly_trusted and first.sha256 == sha(ckpt_bytes)
    assert sha(ckpt_bytes) in caplog.text  # the hash is reported to the user
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)
    assert (env / "trusted" / "m_tofu.sha256").read_text().split()[0] == sha(ckpt_bytes)
    # Later uses need no flag and verify against the record.
    later = hub.fetch(entry, progress=False)
    assert not later.newly_trusted and "trusted on first use" in later.verified_by
    # The cached file is tampered with (and its record dropped): it is re-checked, removed, and the
    # host now serving another file is refused.
    first.path.with_name(first.path.name + ".json").unlink()
    first.path.write_bytes(other_bytes)
    http_server.add(url_path(entry), other_bytes)
    with pytest.raises(DownloadError, match="hash trusted on first use"):
        hub.download(entry, progress=False, allow_unverified=True)
    assert not first.path.exists()
    # Removing the file keeps the trust; forgetting it allows a new first use.
    hub.remove(entry)
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)
    hub.remove(entry, forget_trust=True)
    assert hub.trusted_sha256(entry) is None


def test_allow_unverified_from_environment(zoo, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_tofu_env", ckpt_bytes, prefix=None)
    monkeypatch.setenv("PSEGZOO_ALLOW_UNVERIFIED", "1")
    assert hub.fetch(entry, progress=False).newly_trusted
    with pytest.raises(UnverifiedWeightsError):
        hub.download(zoo.add("m_tofu_env2", ckpt_bytes, prefix=None), progress=False, allow_unverified=False)


def test_pinned_sha256(zoo, http_server, ckpt_bytes, other_bytes):
    entry = zoo.add("m_pin", ckpt_bytes, prefix=None)
    with pytest.raises(DownloadError, match="pinned hash"):
        hub.download(entry, progress=False, sha256=sha(other_bytes))
    assert not hub.checkpoint_path(entry).exists()
    f = hub.fetch(entry, progress=False, sha256=sha(ckpt_bytes).upper())
    assert f.downloaded and "pinned hash" in f.verified_by
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)  # later uses need no flag
    assert hub.download(entry, progress=False) == f.path
    for bad in ("xyz", "abc", "0" * 65):
        with pytest.raises(VerificationError, match="not a SHA-256"):
            hub.download(entry, progress=False, sha256=bad)
    published = zoo.add("m_pin_published", ckpt_bytes)
    wrong = ("1" if sha(ckpt_bytes)[0] != "1" else "2") + sha(ckpt_bytes)[1:]
    with pytest.raises(VerificationError, match="contradicts the published hash prefix"):
        hub.download(published, progress=False, sha256=wrong)
    assert http_server.gets(url_path(published)) == []


def test_import_of_unpublished_hash_records_trust(zoo, ckpt_bytes, other_bytes, tmp_path):
    entry = zoo.add("m_tofu_import", ckpt_bytes, prefix=None)
    src = tmp_path / "m_tofu_import.pth"
    src.write_bytes(ckpt_bytes)
    hub.import_checkpoint(src)
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)
    assert hub.download(entry, progress=False, offline=True).read_bytes() == ckpt_bytes
    src.write_bytes(other_bytes)
    with pytest.raises(VerificationError, match="trusted on first use"):
        hub.import_checkpoint(src)
    assert hub.checkpoint_path(entry).read_bytes() == ckpt_bytes  # the cached file is untouched


def test_first_use_never_trusts_an_html_page(zoo, ckpt_bytes):
    entry = zoo.add("m_tofu_html", ckpt_bytes, prefix=None, html=True)
    with pytest.raises(DownloadError, match="HTML page"):
        hub.download(entry, progress=False, allow_unverified=True)
    assert hub.trusted_sha256(entry) is None and not hub.checkpoint_path(entry).exists()


def test_first_use_trusts_the_decoded_file_when_the_server_gzips_it(zoo, ckpt_bytes):
    entry = zoo.add("m_tofu_gzip", ckpt_bytes, prefix=None, gzip="compress")
    f = hub.fetch(entry, progress=False, allow_unverified=True)
    assert f.path.read_bytes() == ckpt_bytes and hub.trusted_sha256(entry) == sha(ckpt_bytes)


def test_force_while_offline_keeps_the_cached_file(zoo, ckpt_bytes):
    entry = zoo.add("m_force_offline", ckpt_bytes)
    path = hub.download(entry, progress=False)
    with pytest.raises(OfflineError):
        hub.download(entry, progress=False, offline=True, force=True)
    assert path.read_bytes() == ckpt_bytes


def test_hub_never_imports_torch():
    code = "import sys, psegzoo.hub; print('torch' in sys.modules, 'psegzoo.convert' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
