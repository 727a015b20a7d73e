"""The README's main command, as a new user types it, end to end on the sample image.

The weights come from a loopback mirror (``--mirror``: base URL + the original URL's path), as
they would from any mirror of download.openmmlab.com. The served checkpoint is synthetic (mmseg's
exact layout, random values), so an extra manifest gives the entry that file's hash and a small
test scale; the name, the file name, the URL and the command line are the README's.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

import psegzoo
from tests.support.cli import run_script
from tests.support.http_server import FileServer
from tests.support.precision import assert_same_prediction
from tests.support.served import builtin_entry, mmseg_spec, sha256_hex, write_index
from tests.support.synth import write_mmseg_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAIN_COMMAND = "psegzoo predict --model pspnet_r18-d8_512x1024_cityscapes --sample --overlay"
CANONICAL = "pspnet_r18-d8_512x1024_80k_cityscapes"


def test_the_readme_shows_this_command():
    setup = (REPO / "README.md").read_text(encoding="utf-8").split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert f"pip install . && {MAIN_COMMAND}\n" in setup


@pytest.mark.timeout(600)
def test_main_command_end_to_end_from_a_loopback_mirror(tmp_path, monkeypatch):
    for name in ("PSEGZOO_INDEX", "PSEGZOO_MIRROR", "PSEGZOO_OFFLINE", "PSEGZOO_ALLOW_UNVERIFIED"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    assert psegzoo.get_entry(MAIN_COMMAND.split()[3]).name == CANONICAL
    data = write_mmseg_checkpoint(mmseg_spec(CANONICAL), tmp_path / "ckpt.pth").read_bytes()
    entry = builtin_entry(CANONICAL)
    original = urlparse(entry["weights"]["url"])
    assert original.hostname == "download.openmmlab.com"
    entry["weights"]["sha256_prefix"] = sha256_hex(data)[:8]  # the synthetic file's hash, not the published one
    entry["test"]["scale"] = [256, 128]  # milliseconds per forward on a CPU
    index = write_index(tmp_path / "index.json", [entry])
    work = tmp_path / "work"
    work.mkdir()
    with FileServer({original.path: data}) as server:
        proc = run_script(*shlex.split(MAIN_COMMAND)[1:], "--mirror", server.base, cwd=work,
                          extra_env={"PSEGZOO_INDEX": str(index), "PSEGZOO_HOME": str(home)})
        assert len(server.gets(original.path)) == 1  # fetched once, from the mirror, at the original path
    out = work / "psegzoo_out"
    assert sorted(p.name for p in out.iterdir()) == ["street.png", "street_overlay.png"]
    assert proc.stdout.splitlines() == [str(Path("psegzoo_out") / "street.png")]
    assert "1 image(s) written to psegzoo_out" in proc.stderr
    monkeypatch.setenv("PSEGZOO_INDEX", str(index))
    expected = psegzoo.load(CANONICAL, device="cpu", offline=True, progress=False).predict(psegzoo.sample_image())
    with Image.open(out / "street.png") as im:
        labels = np.asarray(im)
        assert im.mode == "P" and labels.shape == (256, 512)
    assert_same_prediction(labels, expected)  # another process: near-ties may flip
    assert len(np.unique(labels)) > 1
