"""What ``eval`` keeps between runs, and what a resumed run trusts.

The run's state lives under the cache root unless a work folder is given, so nothing appears in the
user's folder; each image's saved counts are keyed by the contents of its image and label, checked
against that label and against the checksum the run recorded before they are used; a counts file
whose header claims a huge array is refused unread. Listing a split walks folders as ``predict``
does (no symlinked folder is entered), and ``--save-predictions`` never writes into or over an input.
All on the tiny Cityscapes folder of tests/support/datasets.py, copied as a generic folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import psegzoo
from psegzoo.errors import OutputError
from psegzoo.evaluation import generic_layout, list_split
from tests.support.cli import cli


@pytest.fixture(scope="module")
def data(eval_data, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    eval_data.setenv(mp)
    mp.setenv("PSEGZOO_HOME", str(tmp_path_factory.mktemp("eval_state_home")))
    yield eval_data
    mp.undo()


@pytest.fixture(scope="module")
def seg(data):
    return psegzoo.load(data.model("cityscapes"), weights=data.checkpoint("cityscapes"), device="cpu")


def generic_copy(data, dest: Path) -> tuple[Path, Path]:
    """The tiny cityscapes folder as a generic one: ``imgs/<name>.png`` and ``labs/<name>.png``."""
    built = data.folder("cityscapes")
    for name, image in built.images.items():
        for src, folder in ((image, "imgs"), (built.data_root / built.layout.label(name), "labs")):
            target = dest / folder / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    return dest / "imgs", dest / "labs"


def counts_files(work: Path) -> list[Path]:
    return sorted(p for p in work.glob("*/counts/*") if not p.name.startswith("."))


def cli_args(data, images: Path, labels: Path, *extra: object) -> list[object]:
    return ["eval", "-m", data.model("cityscapes"), "--weights", data.checkpoint("cityscapes"), "--images", images,
            "--labels", labels, "--device", "cpu", "--json", *extra]


# --------------------------------------------------------------------------------------------
# Where the state lives
# --------------------------------------------------------------------------------------------


def test_eval_leaves_the_working_directory_empty_and_resumes_from_the_cache(data, tmp_path, monkeypatch):
    images, labels = generic_copy(data, tmp_path / "data")
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    first = json.loads(cli(*cli_args(data, images, labels, "--limit", "2")).stdout)
    assert first["images"] == 2 and list(cwd.iterdir()) == []
    resumed = json.loads(cli(*cli_args(data, images, labels, "--resume")).stdout)
    assert resumed["images"] == 3 and resumed["resumed"] == 2
    assert list(cwd.iterdir()) == []
    assert len(counts_files(home / "eval")) == 3  # the state is in the cache root


# --------------------------------------------------------------------------------------------
# What a resumed run trusts
# --------------------------------------------------------------------------------------------


def test_resume_recomputes_the_images_whose_label_or_image_changed(data, seg, tmp_path):
    images, labels = generic_copy(data, tmp_path / "data")
    work = tmp_path / "work"
    before = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work)
    label = sorted(labels.rglob("*.png"))[0]
    with Image.open(label) as im:
        arr = np.asarray(im).copy()
    arr[:4, :4] = np.where(arr[:4, :4] == 1, 2, 1)  # another class in one corner (valid classes both)
    Image.fromarray(arr).save(label)
    fresh = psegzoo.evaluate(seg, images=images, labels=labels)
    assert fresh.counts != before.counts
    resumed = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work, resume=True)
    assert resumed.resumed == 2 and resumed.counts == fresh.counts
    # Same pixels, other bytes (a text chunk): the image is counted again, with the same counts.
    image = sorted(images.rglob("*.png"))[1]
    with Image.open(image) as im:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("note", "copied")
        im.save(image, pnginfo=info)
    again = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work, resume=True)
    assert again.resumed == 2 and again.counts == fresh.counts


def _forge_all(work: Path, make) -> int:
    files = counts_files(work)
    for path in files:
        arr = np.load(path)
        np.save(path, make(arr))
    return len(files)


def test_forged_counts_are_recomputed_with_a_warning(data, seg, tmp_path, caplog):
    images, labels = generic_copy(data, tmp_path / "data")
    work = tmp_path / "work"
    full = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work)
    assert _forge_all(work, lambda a: np.full_like(a, 10**9)) == 3
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        resumed = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work, resume=True)
    assert resumed.resumed == 0 and resumed.counts == full.counts and resumed.miou == full.miou
    assert len([r for r in caplog.records if "evaluated again" in r.getMessage()]) == 3
    # Counts that pass every consistency check (a perfect prediction of the real labels) but are not
    # the files the run wrote: the run record's checksums catch them.
    caplog.clear()

    def perfect(a: np.ndarray) -> np.ndarray:
        label = a[3]
        return np.stack([label, label, label, label])

    _forge_all(work, perfect)
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        again = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work, resume=True)
    assert again.resumed == 0 and again.counts == full.counts
    assert all("checksum" in r.getMessage() for r in caplog.records if "evaluated again" in r.getMessage())
    assert len([r for r in caplog.records if "evaluated again" in r.getMessage()]) == 3
    # Unchanged files are taken as they are.
    assert psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work, resume=True).resumed == 3


def test_a_counts_file_claiming_a_huge_array_is_refused_unread(data, seg, tmp_path, caplog):
    images, labels = generic_copy(data, tmp_path / "data")
    work = tmp_path / "work"
    full = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work)
    files = counts_files(work)
    header = {"descr": "<i8", "fortran_order": False, "shape": (4, 4_000_000_000)}
    for path in files:
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        resumed = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=work, resume=True)
    assert resumed.resumed == 0 and resumed.counts == full.counts
    assert any("4000000000" in r.getMessage() for r in caplog.records)


def test_cli_resume_over_forged_counts_prints_warnings_and_the_true_figures(data, tmp_path):
    images, labels = generic_copy(data, tmp_path / "data")
    work = tmp_path / "work"
    full = json.loads(cli(*cli_args(data, images, labels, "--work-dir", work)).stdout)
    _forge_all(work, lambda a: np.full_like(a, 10**9))
    result = cli(*cli_args(data, images, labels, "--work-dir", work, "--resume"))
    resumed = json.loads(result.stdout)
    assert resumed["metrics"] == full["metrics"] and resumed["resumed"] == 0
    warnings = [line for line in result.stderr.splitlines() if "evaluated again" in line]
    assert len(warnings) == 3, result.stderr


# --------------------------------------------------------------------------------------------
# Listing: symlinked folders are not entered
# --------------------------------------------------------------------------------------------


def test_symlinked_folders_are_not_walked(data, tmp_path):
    images, labels = generic_copy(data, tmp_path / "data")
    os.symlink(images, images / "loop")  # a link to its own folder
    os.symlink("/", images / "root")
    split = list_split(generic_layout(), None, images=images, labels=labels)
    assert [s.name for s in split.samples] == sorted(data.folder("cityscapes").images)


# --------------------------------------------------------------------------------------------
# --save-predictions never writes into or over an input
# --------------------------------------------------------------------------------------------


def _contents(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def test_save_predictions_onto_the_labels_or_images_folder_is_refused(data, tmp_path):
    images, labels = generic_copy(data, tmp_path / "data")
    before = _contents(images, labels)
    for target in (labels, images, labels / "aachen", tmp_path / "data"):
        result = cli(*cli_args(data, images, labels, "--save-predictions", target, "--work-dir", tmp_path / "w"),
                     code=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--save-predictions" in lines[0], result.stderr
        assert _contents(images, labels) == before


def test_save_predictions_over_a_link_to_an_input_is_refused(data, seg, tmp_path):
    images, labels = generic_copy(data, tmp_path / "data")
    name = sorted(data.folder("cityscapes").images)[0]
    before = _contents(images, labels)
    for kind in ("hard", "symbolic"):
        out = tmp_path / f"out-{kind}"
        target = out / f"{name}.png"
        target.parent.mkdir(parents=True)
        (os.link if kind == "hard" else os.symlink)(labels / f"{name}.png", target)
        with pytest.raises(OutputError, match="save_predictions"):
            psegzoo.evaluate(seg, images=images, labels=labels, save_predictions=out, work_dir=tmp_path / "w")
        assert _contents(images, labels) == before
        assert target.read_bytes() == before[str(labels / f"{name}.png")]
    # A folder beside the inputs is fine.
    psegzoo.evaluate(seg, images=images, labels=labels, save_predictions=tmp_path / "preds", work_dir=tmp_path / "w")
    assert len(list((tmp_path / "preds").rglob("*.png"))) == 3
