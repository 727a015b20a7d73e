"""``psegzoo eval`` as a user runs it, on the tiny dataset folders of tests/support/datasets.py.

Figures are checked against those the tests compute from ``psegzoo predict`` outputs. Most cases
run in-process (click's CliRunner); two run the installed console script: a download from a
loopback server, and a run stopped with Ctrl-C (SIGINT) and resumed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import psegzoo
from psegzoo.evaluation import LAYOUT_NAMES
from tests.support import datasets as D
from tests.support.cli import REPO, cli, psegzoo_command, run_script
from tests.support.http_server import FileServer
from tests.support.served import MMSEG_BASE, serve_clone, write_index

SERVED = "pspnet_r18-d8_evalserved_cityscapes"
ISSUE_FIELDS = {"model", "dataset", "split", "images", "metrics", "per_class", "published", "settings", "seconds"}


@pytest.fixture(scope="module")
def data(eval_data, tmp_path_factory):
    """The session's folders, with psegzoo pointed at their manifest and a cache of this module's own."""
    mp = pytest.MonkeyPatch()
    eval_data.setenv(mp)
    mp.setenv("PSEGZOO_HOME", str(tmp_path_factory.mktemp("cli_eval_home")))
    mp.setenv("COLUMNS", "80")  # error lines must stay whole even in a narrow pipe
    yield eval_data
    mp.undo()


@pytest.fixture(scope="module")
def served(data, tmp_path_factory):
    """The cityscapes test checkpoint served from 127.0.0.1 as the entry SERVED; yields (server, file name)."""
    server = FileServer()
    mp = pytest.MonkeyPatch()
    try:
        entry = serve_clone(server, MMSEG_BASE, SERVED, data.checkpoint("cityscapes").read_bytes(), scale=D.EVAL_SCALE)
        index = write_index(tmp_path_factory.mktemp("cli_eval_index") / "served.json", [entry])
        mp.setenv("PSEGZOO_INDEX", os.pathsep.join([str(data.index), str(index)]))
        yield server, entry["weights"]["file"]
    finally:
        mp.undo()
        server.close()


def eval_args(data, key: str, *extra: object) -> list[object]:
    built = data.folder(key)
    return ["eval", "-m", data.model(key), "--weights", data.checkpoint(built.layout.dataset), "--data", built.root,
            "--device", "cpu", *extra]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def only_error(result) -> str:
    (line,) = error_lines(result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return line


def test_json_is_one_object_with_the_figures(data, tmp_path):
    result = cli(*eval_args(data, "ade20k", "--json", "--work-dir", tmp_path))
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON object
    exp = data.expected("ade20k")
    assert set(doc) >= ISSUE_FIELDS
    assert (doc["model"], doc["dataset"], doc["split"], doc["images"]) == (data.model("ade20k"), "ade20k", "val", 3)
    assert doc["metrics"] == {"aAcc": exp["aAcc"], "mIoU": exp["mIoU"], "mAcc": exp["mAcc"]}
    classes = psegzoo.get_dataset("ade20k").classes
    assert doc["per_class"] == [{"class": c, "IoU": i, "Acc": a} for c, i, a in zip(classes, exp["IoU"], exp["Acc"])]
    entry = psegzoo.get_entry(data.model("ade20k"))
    assert doc["published"] == {"miou": entry.miou, "miou_ms_flip": entry.miou_ms_flip}
    assert doc["settings"]["scale"] == list(D.EVAL_SCALE) and doc["settings"]["reduce_zero_label"] is True
    assert doc["settings"]["tta"]["name"] == "none" and doc["settings"]["standard"] is True
    assert doc["counts"]["intersect"] == exp["intersect"]
    assert isinstance(doc["seconds"], float) and doc["seconds"] > 0
    assert result.stderr == ""  # no progress bar off a terminal


def test_table_shows_each_class_and_the_published_figure(data, tmp_path):
    result = cli(*eval_args(data, "cityscapes", "--work-dir", tmp_path))
    exp = data.expected("cityscapes")
    out = result.stdout
    published = psegzoo.get_entry(data.model("cityscapes")).miou
    for name, iou, acc in zip(psegzoo.get_dataset("cityscapes").classes, exp["IoU"], exp["Acc"]):
        row = next(line for line in out.splitlines() if line.strip("│ ").startswith(name + " "))
        assert (f"{iou:.2f}" if iou is not None else "-") in row and (f"{acc:.2f}" if acc is not None else "-") in row
    (miou_row,) = [line for line in out.splitlines() if "mIoU" in line]
    assert f"{exp['mIoU']:.2f}" in miou_row and f"{published:.2f}" in miou_row
    assert f"{round(exp['mIoU'] - published, 2):+.2f}" in miou_row
    assert "settings: scale 64x32, whole" in out and "non-standard" not in out


def test_progress_bar_on_a_terminal(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    result = cli(*eval_args(data, "cityscapes", "--json", "--work-dir", tmp_path))
    assert "img/s" in result.stderr and "mIoU" in result.stderr and "3/3" in result.stderr
    json.loads(result.stdout)  # still one JSON object on stdout
    quiet = cli(*eval_args(data, "cityscapes", "--json", "-q", "--work-dir", tmp_path))
    assert quiet.stderr == ""


def test_limit_and_save_predictions(data, tmp_path):
    doc = json.loads(cli(*eval_args(data, "voc12aug", "--json", "--limit", "2", "--save-predictions", tmp_path / "p",
                                    "--work-dir", tmp_path / "w")).stdout)
    names = D.LAYOUTS["voc12aug"].names
    assert doc["images"] == 2 and doc["settings"]["limit"] == 2 and doc["comparable"] is False
    assert doc["not_comparable"] == ["first 2 of 3 images"] and doc["difference"] is None
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [f"{n}.png" for n in names[:2]]
    for name in names[:2]:
        with Image.open(tmp_path / "p" / f"{name}.png") as im:
            np.testing.assert_array_equal(np.asarray(im), data.preds["voc12aug"][name])


def test_resume_continues_where_a_run_stopped(data, tmp_path):
    work = tmp_path / "work"
    first = json.loads(cli(*eval_args(data, "pascal_context_59", "--json", "--limit", "1", "--work-dir", work)).stdout)
    assert first["images"] == 1 and first["resumed"] == 0
    resumed = json.loads(cli(*eval_args(data, "pascal_context_59", "--json", "--resume", "--work-dir", work)).stdout)
    full = json.loads(cli(*eval_args(data, "pascal_context_59", "--json", "--work-dir", tmp_path / "other")).stdout)
    assert resumed["resumed"] == 1 and full["resumed"] == 0
    for key in ("metrics", "per_class", "counts", "images"):
        assert resumed[key] == full[key]


def test_ms_flip_and_overrides_are_reported(data, tmp_path):
    entry = psegzoo.get_entry(data.model("cityscapes"))
    ms = json.loads(cli(*eval_args(data, "cityscapes", "--json", "--ms-flip", "--work-dir", tmp_path)).stdout)
    assert ms["settings"]["tta"] == {"name": "ms+flip", "flip": True, "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]}
    assert ms["settings"]["standard"] is True and ms["comparable"] is True
    assert ms["difference"] == round(ms["metrics"]["mIoU"] - entry.miou_ms_flip, 2)
    over = json.loads(cli(*eval_args(data, "cityscapes", "--json", "--scale", "96x48", "--work-dir", tmp_path)).stdout)
    assert over["settings"]["standard"] is False and over["difference"] is None
    assert over["settings"]["nonstandard"] == ["scale 96x48 (published: 64x32)"]
    table = cli(*eval_args(data, "cityscapes", "--mode", "slide", "--crop-size", "32", "--work-dir", tmp_path)).stdout
    assert "(non-standard)" in table and "not comparable with the published" in table


def test_generic_folders_from_the_command_line(data, tmp_path):
    built = data.folder("generic")
    doc = json.loads(cli("eval", "-m", data.model("generic"), "--weights", data.checkpoint("cityscapes"),
                         "--images", built.root / "imgs", "--labels", built.root / "labs", "--label-suffix", "_mask.png",
                         "--reduce-zero-label", "--json", "--work-dir", tmp_path).stdout)
    exp = data.expected("generic")
    assert doc["counts"]["intersect"] == exp["intersect"] and doc["metrics"]["mIoU"] == exp["mIoU"]
    assert doc["split"] is None and doc["settings"]["layout"] == "generic" and doc["comparable"] is False


def test_cli_layout_names_are_the_library_s():
    from psegzoo.cli.evaluate import LAYOUTS

    assert LAYOUTS == LAYOUT_NAMES


def test_errors_are_one_line(data, tmp_path):
    line = only_error(cli(*eval_args(data, "cityscapes", "--split", "test", "--work-dir", tmp_path), code=1))
    assert "no image folder leftImg8bit/test; found: val" in line
    root = tmp_path / "city"
    shutil.copytree(data.folder("cityscapes").root, root)
    (root / "gtFine/val/aachen/aachen_000001_000019_gtFine_labelTrainIds.png").unlink()
    line = only_error(cli("eval", "-m", data.model("cityscapes"), "--data", root, "--work-dir", tmp_path, code=1))
    assert "aachen_000001_000019_leftImg8bit.png has no label: expected" in line
    line = only_error(cli("eval", "-m", data.model("cityscapes"), "--data", root, "--reduce-zero-label", code=1))
    assert "--reduce-zero-label applies to generic folders (--images DIR --labels DIR)" in line
    line = only_error(cli("eval", "-m", data.model("cityscapes"), "--images", root, code=1))
    assert "a generic dataset needs its folders: pass --images DIR --labels DIR" in line
    usage = cli("eval", "-m", data.model("cityscapes"), code=2)
    assert "--data ROOT" in usage.stderr


def test_a_dataset_without_a_layout_is_one_line(data, tmp_path, monkeypatch):
    obj = D.model_entries()[0]
    obj["name"], obj["dataset"] = "pspnet_r18-d8_evaltest_roads", "my_roads"
    obj["architecture"]["num_classes"] = 2
    index = D.write_extra_index(tmp_path / "roads.json", [obj],
                                {"my_roads": {"classes": ["road", "other"], "palette": [[1, 2, 3], [4, 5, 6]]}})
    monkeypatch.setenv("PSEGZOO_INDEX", f"{data.index}{os.pathsep}{index}")
    line = only_error(cli("eval", "-m", "pspnet_r18-d8_evaltest_roads", "--data", tmp_path, code=1))
    assert line.endswith("evaluate it on your own folders with --images DIR --labels DIR or force a layout with "
                         "--layout NAME (cityscapes, ade20k, voc12aug, pascal_context, pascal_context_59, "
                         "coco-stuff164k, coco-stuff10k)")


def test_console_script_downloads_and_evaluates(data, served, tmp_path):
    server, file = served
    before = len(server.gets(f"/served/{file}"))
    proc = run_script("eval", "-m", SERVED, "--data", data.folder("cityscapes").root, "--json", "--device", "cpu",
                      "--work-dir", tmp_path)
    doc = json.loads(proc.stdout)
    exp = data.expected("cityscapes")
    assert doc["model"] == SERVED and doc["metrics"]["mIoU"] == exp["mIoU"] and doc["counts"]["label"] == exp["label"]
    assert len(server.gets(f"/served/{file}")) == before + 1


def test_ctrl_c_stops_cleanly_and_resume_finishes_the_run(data, tmp_path):
    """SIGINT to the console script mid-run: one-line message, exit 130; --resume then gives the full result."""
    built = data.folder("cityscapes")
    images, labels = tmp_path / "imgs", tmp_path / "labs"
    for copy in range(5):
        for name, image in built.images.items():
            stem = f"{copy:02d}_{Path(name).name}"
            (images / stem).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, images / f"{stem}.png")
            (labels / stem).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(built.data_root / built.layout.label(name), labels / f"{stem}.png")
    args = ["eval", "-m", data.model("cityscapes"), "--weights", data.checkpoint("cityscapes"), "--images", images,
            "--labels", labels, "--scale", "192x128", "--device", "cpu", "--work-dir", tmp_path / "work", "--json"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([*psegzoo_command(), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    saved: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        saved = list((tmp_path / "work").glob("*/counts/*.npy"))
        if len(saved) >= 2:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, (out, err)
    assert out == "" and "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith("error: interrupted after ") and line.endswith(
        " of 15 images; the same command with --resume continues from there")
    assert int(line.split()[3]) >= 1
    assert not list((tmp_path / "work").glob("*/counts/.*"))  # no temporary file left
    resumed = json.loads(cli(*args, "--resume").stdout)
    full = json.loads(cli(*args[:-3], "--work-dir", tmp_path / "full", "--json").stdout)
    assert 2 <= resumed["resumed"] < 15  # at least the counts saved when Ctrl-C came
    for key in ("metrics", "per_class", "counts", "images"):
        assert resumed[key] == full[key]
