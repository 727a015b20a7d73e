"""Converted weights through ``psegzoo.load()`` and ``psegzoo convert``: verified before use, never
unchecked, written cleanly or not at all. A synthetic mmseg checkpoint is served on 127.0.0.1."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import psegzoo
from psegzoo import convert, hub
from psegzoo.errors import CacheError, CheckpointError
from tests.support.http_server import FileServer
from tests.support.hub import REPO, child_env, scrub_environment
from tests.support.served import MMSEG_BASE, mmseg_spec, serve_clone, sha256_hex, write_index
from tests.support.synth import write_mmseg_checkpoint

NAME = "pspnet_r18-d8_convtest_cityscapes"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("converted")
    server = FileServer()
    try:
        data = write_mmseg_checkpoint(mmseg_spec(), tmp / "mm.pth").read_bytes()
        obj = serve_clone(server, MMSEG_BASE, NAME, data)
        yield {"server": server, "index": write_index(tmp / "index.json", [obj]), "file": obj["weights"]["file"],
               "sha": sha256_hex(data)}
    finally:
        server.close()


@pytest.fixture
def home(served, tmp_path, monkeypatch) -> Path:
    scrub_environment(monkeypatch)
    monkeypatch.setenv("PSEGZOO_INDEX", str(served["index"]))
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PSEGZOO_RETRIES", "0")
    return tmp_path / "home"


def gets(served) -> int:
    return len(served["server"].gets(f"/served/{served['file']}"))


PROBE = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))


def logits(seg) -> torch.Tensor:
    with torch.inference_mode():
        return seg.model(PROBE.contiguous(memory_format=torch.channels_last))


def record(home: Path, served) -> dict:
    return json.loads((home / "records" / (served["file"] + ".json")).read_text())


def test_converted_weights_are_verified_on_load_and_by_verify(served, home, caplog):
    first = psegzoo.load(NAME, device="cpu", progress=False)
    expected = logits(first)
    conv = hub.converted_path(first.entry)
    rec = record(home, served)["converted"]
    assert rec["sha256"] == hub.file_sha256(conv) and rec["source_sha256"] == served["sha"]
    downloads = gets(served)

    # Other weights under the same metadata (NaN everywhere): the header looks right, the bytes do not.
    state_dict, metadata = convert.load_converted(conv)
    convert.save_converted({k: torch.full_like(v, float("nan")) for k, v in state_dict.items()}, conv, metadata)
    assert convert.converted_metadata(conv) == metadata
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        again = psegzoo.load(NAME, device="cpu", progress=False)
    assert torch.equal(logits(again), expected)
    assert "are damaged" in caplog.text and gets(served) == downloads  # converted again from the cached download
    assert record(home, served)["converted"]["sha256"] == hub.file_sha256(conv)

    # One flipped bit in the tensor data: verify finds it, says so, removes the file.
    data = bytearray(conv.read_bytes())
    data[-5] ^= 0x10
    conv.write_bytes(bytes(data))
    (report,) = psegzoo.verify(first.entry)
    assert report.status == "ok" and report.converted_status == "corrupt" and not report.ok and not conv.exists()


def test_a_cached_checkpoint_changed_in_place_is_caught_when_converting(served, home, caplog):
    seg = psegzoo.load(NAME, device="cpu", progress=False)
    expected = logits(seg)
    ckpt = hub.checkpoint_path(seg.entry)
    hub.converted_path(seg.entry).unlink()
    st = ckpt.stat()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    ckpt.write_bytes(bytes(data))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same time: the change time still tells
    downloads = gets(served)
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        again = psegzoo.load(NAME, device="cpu", progress=False)
    assert "differs from its record" in caplog.text  # caught by the cache, before the converter reads it
    assert gets(served) == downloads + 1  # removed and fetched again, never converted as it was
    assert torch.equal(logits(again), expected)
    assert hub.file_sha256(ckpt) == served["sha"]


def test_converted_tensors_that_are_not_float32_are_refused(served, home, tmp_path, caplog):
    seg = psegzoo.load(NAME, device="cpu", progress=False)
    expected = logits(seg)
    state_dict, metadata = convert.load_converted(hub.converted_path(seg.entry))
    # A user's file: a clean error, not a traceback.
    as_int = tmp_path / "int.safetensors"
    convert.save_converted(dict(state_dict, **{"head.classifier.bias": state_dict["head.classifier.bias"].int()}),
                           as_int, metadata)
    with pytest.raises(CheckpointError, match=r"not float32 of the model's shape: head\.classifier\.bias \(int32"):
        psegzoo.load(weights=as_int, device="cpu")
    # In the cache, recorded as if psegzoo had written it: refused when loaded, converted again.
    half = {k: v.half() for k, v in state_dict.items()}
    hub.store_converted(seg.entry, record(home, served)["sha256"],
                        lambda tmp: convert.write_converted(half, tmp, metadata))
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        again = psegzoo.load(NAME, device="cpu", progress=False)
    assert "float16" in caplog.text and torch.equal(logits(again), expected)
    assert convert.load_converted(hub.converted_path(seg.entry))[0]["head.classifier.bias"].dtype == torch.float32


def test_converted_weights_that_cannot_be_written(served, home, caplog):
    seg = psegzoo.load(NAME, device="cpu", progress=False)
    expected = logits(seg)
    conv = hub.converted_path(seg.entry)
    conv.unlink()
    conv.mkdir()  # a folder in the way
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        again = psegzoo.load(NAME, device="cpu", progress=False)  # the model still loads
    assert torch.equal(logits(again), expected) and "cannot write the converted weights" in caplog.text
    with pytest.raises(CacheError, match=f"cannot write the converted weights {conv}"):
        psegzoo.convert_checkpoint(NAME, progress=False)  # writing it is the whole point: an error
    assert conv.is_dir() and list(conv.iterdir()) == []


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # records fit, converted weights do not
from psegzoo.cli import main
main(sys.argv[1:])
"""


def test_a_full_disk_while_converting_is_one_line(served, home):
    hub.fetch(NAME, hub.DownloadOptions(progress=False))
    out = subprocess.run([sys.executable, "-c", LIMITED, "convert", NAME], env=child_env(), capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: cannot write the converted weights") and "too large" in line
    assert list((home / "converted").iterdir()) == []  # no temporary file left


ALREADY = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
from psegzoo.cli import main
main(sys.argv[1:])
"""


def test_convert_of_an_already_converted_model_returns_at_once(served, home):
    psegzoo.convert_checkpoint(NAME, progress=False)
    out = subprocess.run([sys.executable, "-c", ALREADY, "convert", NAME], env=child_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(hub.converted_path(psegzoo.get_entry(NAME)))
    assert "torch imported: False" in out.stderr  # verified from the cache record and hash, no conversion started
