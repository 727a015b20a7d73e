"""``torchrun --standalone --nproc-per-node 2 -m psegzoo eval`` with gloo on the CPU.

The split (a generic folder of 15 tiny images of three sizes, labels made by tests/support/datasets.py)
is shared out between the processes and their per-class counts summed; the figures must be those of
the one-process run, to the last count. Two torchrun runs: a fresh run over a work folder holding
stale counts (rank 0 clears them before the other process opens the folder), then a resumed run
after some counts were lost.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.support.cli import cli
from tests.support.torchrun import OUR_TRACEBACK, run_job

COPIES = 5
FIGURES = ("metrics", "per_class", "counts", "images", "settings")


@pytest.fixture(scope="module")
def split(eval_data, tmp_path_factory):
    """A generic folder of 15 images (copies of the tiny Cityscapes ones, three sizes) and its labels."""
    tmp = tmp_path_factory.mktemp("dist_eval")
    built = eval_data.folder("cityscapes")
    images, labels = tmp / "imgs", tmp / "labs"
    images.mkdir()
    labels.mkdir()
    for copy in range(COPIES):
        for name, image in built.images.items():
            stem = f"{copy:02d}_{Path(name).name}"
            # The same pixels in other bytes (a PNG text chunk): 15 different files, each counted once.
            info = PngImagePlugin.PngInfo()
            info.add_text("copy", str(copy))
            with Image.open(image) as im:
                im.save(images / f"{stem}.png", pnginfo=info)
            shutil.copy(built.data_root / built.layout.label(name), labels / f"{stem}.png")
    env = {"PSEGZOO_INDEX": str(eval_data.index), "PSEGZOO_HOME": str(tmp / "home")}
    args = ["eval", "-m", eval_data.model("cityscapes"), "--weights", eval_data.checkpoint("cityscapes"),
            "--images", images, "--labels", labels, "--device", "cpu", "--json"]
    with pytest.MonkeyPatch.context() as mp:
        eval_data.setenv(mp)
        mp.setenv("PSEGZOO_HOME", env["PSEGZOO_HOME"])
        one = cli(*args, "--work-dir", tmp / "work-one", "--save-predictions", tmp / "pred-one")
    sizes = {Image.open(p).size for p in images.iterdir()}
    assert len(sizes) == 3  # shards are balanced by pixels, not by count
    return tmp, args, env, json.loads(one.stdout)


# Two processes run with other thread counts (and batches) than one, so sums add in another order and a
# pixel whose two best scores nearly tie may change label. Such pixels are a sliver: figures agree to 0.1%
# (relative, or 0.05 points), counts and saved label maps differ in at most 0.5% of their pixels.
FLIPPED = 0.005


def assert_close(a: object, b: object, where: str = "") -> None:
    """Nested figures equal in structure and text, numbers within the tolerance above."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, rel=1e-3, abs=0.05), where
    else:
        assert a == b, where


def assert_close_labels(mine: np.ndarray, theirs: np.ndarray) -> None:
    assert mine.shape == theirs.shape
    assert (mine != theirs).mean() <= FLIPPED


def counts_files(work: Path) -> list[Path]:
    return sorted(work.glob("*/counts/*"))


def test_two_processes_give_the_figures_of_one(split):
    tmp, args, env, one = split
    work = tmp / "work-two"
    shutil.copytree(tmp / "work-one", work)  # stale counts of an earlier run: a run without --resume clears them
    stale = counts_files(work)
    assert len(stale) == 15
    for path in stale:
        np.save(path, np.zeros_like(np.load(path)))  # wrong counts: kept, they would change the figures
    proc = run_job("-m", "psegzoo", *args, "--work-dir", work, "--save-predictions", tmp / "pred-two",
                   extra_env={**env, "TTY_COMPATIBLE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert not OUR_TRACEBACK.search(proc.stderr)
    two = json.loads(proc.stdout)  # exactly one JSON document: only rank 0 prints
    assert two["resumed"] == 0
    for key in FIGURES:
        assert_close(two[key], one[key], key)
    # Every image counted once, by one process, into the file its contents name; nothing temporary left.
    assert [p.name for p in counts_files(work)] == [p.name for p in counts_files(tmp / "work-one")]
    assert len(counts_files(work)) == 15 and all(re.fullmatch(r"[0-9a-f]{64}\.npy", p.name) for p in counts_files(work))
    for mine, theirs in zip(counts_files(work), counts_files(tmp / "work-one")):
        a, b = np.load(mine), np.load(theirs)
        assert a.sum() == b.sum() and np.abs(a - b).sum() <= 2 * FLIPPED * a.sum()
    assert sorted(p.name for p in (tmp / "pred-two").iterdir()) == sorted(p.name for p in (tmp / "pred-one").iterdir())
    for path in (tmp / "pred-one").iterdir():
        with Image.open(path) as im, Image.open(tmp / "pred-two" / path.name) as other:
            assert_close_labels(np.asarray(other), np.asarray(im))
    # One progress view of the whole job: rank 0 counts the other process's images too.
    assert "15/15" in proc.stderr and "mIoU" in proc.stderr


def test_resume_under_torchrun(split):
    tmp, args, env, one = split
    work = tmp / "work-resume"
    shutil.copytree(tmp / "work-one", work)
    (result,) = work.glob("*/result.json")
    result.unlink()
    lost = counts_files(work)[::2]  # an interrupted run: 8 of 15 counts never saved
    for path in lost:
        path.unlink()
    proc = run_job("-m", "psegzoo", *args, "--work-dir", work, "--resume", "-q", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    resumed = json.loads(proc.stdout)
    assert resumed["resumed"] == 7
    for key in FIGURES:
        assert_close(resumed[key], one[key], key)
    assert len(counts_files(work)) == 15
    assert_close(json.loads(result.read_text())["metrics"], one["metrics"], "metrics")
