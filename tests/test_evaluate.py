"""``psegzoo.evaluate`` against figures the tests compute themselves from ``psegzoo predict`` outputs.

Tiny dataset folders of every layout are written by tests/support/datasets.py (a few images of tens
of pixels, labels made from the predictions and then changed: wrong blocks, a class never predicted,
ignored pixels), with a synthetic R-18 PSPNet per dataset. Expected counts and figures are computed
class by class with plain numpy from the label PNGs ``psegzoo predict`` wrote and the truth each label
was written from, independently of psegzoo's metric, layouts and label decoding.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import psegzoo
from psegzoo.errors import DatasetError, PredictionError
from psegzoo.evaluation import (
    LAYOUTS,
    MS_FLIP_RATIOS,
    Counts,
    EvalProgress,
    accumulate,
    count_image,
    plan,
    sum_counts,
    summarize,
)
from psegzoo.evaluation.labels import CITYSCAPES_LABEL_IDS, reduce_zero_table
from psegzoo.manifest import load_manifest
from psegzoo.prefetch import prefetch
from tests.support import datasets as D

ALL = list(D.LAYOUTS)


@pytest.fixture(scope="module")
def data(eval_data):
    mp = pytest.MonkeyPatch()
    eval_data.setenv(mp)
    yield eval_data
    mp.undo()


@pytest.fixture(scope="module")
def city_seg(data):
    """The cityscapes test model, loaded once."""
    return segmenter(data, "cityscapes")


_LOADED: dict[str, psegzoo.Segmenter] = {}


def segmenter(data, dataset: str) -> psegzoo.Segmenter:
    """The test model of ``dataset``, loaded once per module."""
    if dataset not in _LOADED:
        _LOADED[dataset] = psegzoo.load(D.model_name(dataset), weights=data.checkpoint(dataset), device="cpu")
    return _LOADED[dataset]


def evaluate_folder(data, key: str, *, by_name: bool = False, **kwargs):
    """Evaluate the tiny folder of ``key`` (by model name and --weights, or with the loaded model)."""
    built = data.folder(key)
    layout = built.layout
    if layout.name == "generic":
        kwargs = {"images": built.data_root / "imgs", "labels": built.data_root / "labs", "label_suffix": "_mask.png",
                  "reduce_zero_label": True, **kwargs}
        root = None
    else:
        root = built.root
    if by_name:
        return psegzoo.evaluate(data.model(key), root, weights=data.checkpoint(layout.dataset), device="cpu", **kwargs)
    return psegzoo.evaluate(segmenter(data, layout.dataset), root, **kwargs)


def copy_folder(data, key: str, dest: Path) -> Path:
    built = data.folder(key)
    shutil.copytree(built.root, dest)
    return dest / built.layout.subdir if built.layout.subdir else dest


# --------------------------------------------------------------------------------------------
# The metric alone
# --------------------------------------------------------------------------------------------


def test_count_image_matches_a_per_class_computation():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (13, 17)).astype(np.uint8) for _ in range(3)]
    truths = [rng.integers(-1, 4, (13, 17)) for _ in range(3)]  # class 4 is never labelled, -1 is ignored
    labels = [np.where(t >= 0, t, 255).astype(np.uint8) for t in truths]
    total = sum_counts((count_image(p, lab, 6) for p, lab in zip(preds, labels)), 6)
    exp = D.expected(preds, truths, 6)
    assert total.intersect.tolist() == exp["intersect"]
    assert total.union.tolist() == exp["union"]
    assert total.label.tolist() == exp["label"]
    assert total.pred.tolist() == [sum(int(((p == c) & (t >= 0)).sum()) for p, t in zip(preds, truths)) for c in range(6)]
    m = total.metrics()
    assert math.isnan(m.iou[5]) and math.isnan(m.acc[5])  # absent from predictions and labels: no value
    assert m.iou[4] == 0.0 and math.isnan(m.acc[4])  # predicted, never labelled
    assert np.round(m.miou * 100, 2) == exp["mIoU"]  # the nan-mean leaves class 5 out ...
    assert not np.isclose(m.miou, np.nan_to_num(np.array(m.iou)).mean())  # ... which a plain mean would not
    assert np.round(m.aacc * 100, 2) == exp["aAcc"] and np.round(m.macc * 100, 2) == exp["mAcc"]


def test_counts_of_shards_add_up_to_the_whole_and_travel_as_int64_tensors():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, 7, (9, 11)).astype(np.uint8), rng.integers(0, 7, (9, 11)).astype(np.uint8))
             for _ in range(5)]
    per_image = [count_image(p, lab, 7) for p, lab in pairs]
    whole = sum_counts(per_image, 7)
    shard_a, shard_b = sum_counts(per_image[::2], 7), sum_counts(per_image[1::2], 7)
    assert shard_a + shard_b == whole
    assert shard_a != whole  # a shard alone is not the whole
    tensor = shard_a.to_tensor() + shard_b.to_tensor()  # what an all-reduce (SUM) computes
    assert tensor.dtype == torch.int64 and tuple(tensor.shape) == (4, 7)
    assert Counts.from_tensor(tensor) == whole
    assert Counts.from_array(whole.to_array()) == whole
    with pytest.raises(ValueError):
        Counts.from_array(np.zeros((3, 7), dtype=np.int64))


def test_a_label_that_is_no_class_is_an_error_naming_the_file_and_value():
    pred = np.zeros((4, 4), dtype=np.uint8)
    label = np.zeros((4, 4), dtype=np.uint8)
    label[1, 1] = 19
    label[2, 2] = 255  # the ignore index is fine
    with pytest.raises(DatasetError, match=r"gt/x\.png: label value 19 is neither a class \(0\.\.18\) nor the ignore index 255"):
        count_image(pred, label, 19, source="gt/x.png")
    label[1, 1] = 18
    assert count_image(pred, label, 19).label.sum() == 15


def test_reduce_zero_label_and_the_cityscapes_id_table_follow_mmseg_and_cityscapes_scripts():
    table = reduce_zero_table()
    assert (table[0], table[1], table[150], table[254], table[255]) == (255, 0, 149, 253, 255)
    for label_id in range(256):
        assert CITYSCAPES_LABEL_IDS[label_id] == {v: k for k, v in D.CITYSCAPES_TRAIN_TO_ID.items()}.get(label_id, 255)


def test_every_manifest_dataset_has_a_layout():
    assert set(load_manifest(extra=[]).datasets) == set(LAYOUTS)


def test_psegzoo_evaluate_is_the_function_whatever_was_imported():
    import psegzoo.evaluation.metric  # binds the package psegzoo.evaluation, never psegzoo.evaluate

    assert psegzoo.evaluate is psegzoo.evaluation.evaluate and callable(psegzoo.evaluate)
    assert psegzoo.DatasetError is DatasetError


# --------------------------------------------------------------------------------------------
# Every layout against psegzoo predict
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ALL)
def test_layout_gives_the_figures_computed_from_predict_outputs(data, key):
    result = evaluate_folder(data, key, by_name=True, workers=2)  # decoding on 2 threads, as beside a GPU
    exp = data.expected(key)
    assert result.images == len(D.LAYOUTS[key].names)
    assert result.counts.intersect.tolist() == exp["intersect"]
    assert result.counts.union.tolist() == exp["union"]
    assert result.counts.label.tolist() == exp["label"]
    assert (result.aacc, result.miou, result.macc) == (exp["aAcc"], exp["mIoU"], exp["mAcc"])
    assert [c.iou for c in result.per_class] == exp["IoU"]
    assert [c.acc for c in result.per_class] == exp["Acc"]
    assert None in exp["IoU"]  # some classes are absent from both: left out of the mean
    assert any(c.iou == 0.0 and c.label_pixels > 0 for c in result.per_class)  # a class never predicted
    assert 0 < result.miou < 100
    assert result.settings.layout == D.LAYOUTS[key].name
    doc = json.loads(json.dumps(result.to_json()))  # plain JSON, nan written as null
    assert doc["metrics"] == {"aAcc": exp["aAcc"], "mIoU": exp["mIoU"], "mAcc": exp["mAcc"]}


def test_cityscapes_label_ids_are_mapped_to_train_ids(data, tmp_path):
    ids = evaluate_folder(data, "cityscapes_ids")
    assert ids.settings.labels_converted == 3
    assert evaluate_folder(data, "cityscapes").settings.labels_converted == 0
    # The same files under the train-id name are read unmapped: their ids are no classes.
    root = copy_folder(data, "cityscapes_ids", tmp_path / "city")
    for label in (root / "gtFine/val").rglob("*_gtFine_labelIds.png"):
        label.rename(label.with_name(label.name.replace("_labelIds", "_labelTrainIds")))
    with pytest.raises(DatasetError, match="is neither a class"):
        evaluate_folder_at(data, "cityscapes", root)


def test_generic_folder_needs_reduce_zero_label_where_labels_count_from_one(data):
    built = data.folder("ade20k")
    root = built.data_root
    seg = segmenter(data, "ade20k")
    layout = psegzoo.evaluate(seg, built.root)
    generic = psegzoo.evaluate(seg, images=root / "images/validation", labels=root / "annotations/validation",
                               reduce_zero_label=True)
    assert generic.counts == layout.counts
    assert generic.settings.layout == "generic" and not generic.comparable
    unreduced = psegzoo.evaluate(seg, images=root / "images/validation", labels=root / "annotations/validation")
    assert unreduced.counts != layout.counts


def test_split_list_decides_the_images(data):
    built = data.folder("voc12aug")
    assert len(list((built.data_root / "JPEGImages").iterdir())) == 4  # one image is not in val.txt
    result = evaluate_folder(data, "voc12aug")
    assert result.images == 3


def test_parent_of_the_dataset_root_is_accepted(data):
    built = data.folder("pascal_context")  # root holds VOC2010/
    assert not (built.root / "JPEGImages").exists() and (built.root / "VOC2010/JPEGImages").is_dir()
    assert evaluate_folder(data, "pascal_context").images == 3


def test_save_predictions_writes_what_predict_writes(data, tmp_path):
    key = "cityscapes"
    evaluate_folder(data, key, save_predictions=tmp_path / "preds")
    for name, pred in data.preds[key].items():
        with Image.open(tmp_path / "preds" / f"{name}.png") as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.asarray(im), pred)


def test_ms_flip_is_the_published_setting_and_matches_predict(data, tmp_path):
    from tests.support.cli import cli

    key = "cityscapes"
    built = data.folder(key)
    result = evaluate_folder(data, key, ms_flip=True)
    assert result.settings.tta == "ms+flip" and result.settings.scales == MS_FLIP_RATIOS and result.settings.flip
    assert result.settings.standard and result.comparable
    assert result.published == result.published_miou_ms_flip is not None
    assert result.difference == round(result.miou - result.published_miou_ms_flip, 2)
    cli("predict", "-m", data.model(key), "--weights", data.checkpoint("cityscapes"), "-o", tmp_path, "-q",
        "--flip", "--scales", ",".join(map(str, MS_FLIP_RATIOS)), *built.images.values())
    preds = []
    for name in built.layout.names:
        with Image.open(tmp_path / (built.images[name].stem + ".png")) as im:
            preds.append(np.asarray(im).copy())
    exp = D.expected(preds, [built.truths[n] for n in built.layout.names], 19)
    assert result.counts.intersect.tolist() == exp["intersect"] and result.miou == exp["mIoU"]
    assert result.counts != evaluate_folder(data, key).counts  # flips and scales changed some pixels


def test_overrides_mark_the_run_non_standard(data):
    plain = evaluate_folder(data, "cityscapes")
    assert plain.settings.standard and plain.comparable
    assert plain.published == plain.published_miou and plain.difference == round(plain.miou - plain.published, 2)
    scaled = evaluate_folder(data, "cityscapes", scale=(96, 48))
    assert not scaled.settings.standard and not scaled.comparable and scaled.difference is None
    assert scaled.settings.nonstandard == ("scale 96x48 (published: 64x32)",)
    slid = evaluate_folder(data, "cityscapes", mode="slide", crop_size=(32, 32), stride=(24, 24))
    assert slid.settings.mode == "slide" and slid.settings.crop_size == (32, 32)
    assert any(r.startswith("mode slide") for r in slid.settings.nonstandard)
    limited = evaluate_folder(data, "cityscapes", limit=2)
    assert limited.images == 2 and limited.settings.standard and not limited.comparable
    assert limited.settings.not_comparable == ("first 2 of 3 images",)


def test_a_loaded_segmenter_is_evaluated_as_it_is(data, city_seg):
    by_name = evaluate_folder(data, "cityscapes", by_name=True)
    loaded = psegzoo.evaluate(city_seg, data.folder("cityscapes").root)
    assert loaded.counts == by_name.counts
    with pytest.raises(PredictionError, match="apply when evaluate"):
        psegzoo.evaluate(city_seg, data.folder("cityscapes").root, device="cpu")


def test_accumulate_over_shards_then_summarize_equals_one_run(data, city_seg):
    job = plan(city_seg, data.folder("cityscapes").root)
    whole = psegzoo.evaluate(city_seg, data.folder("cityscapes").root)
    parts = [accumulate(city_seg, job, job.samples[rank::2], workers=rank) for rank in range(2)]
    assert [p.evaluated for p in parts] == [2, 1]
    merged = Counts.from_tensor(sum(p.counts.to_tensor() for p in parts))
    result = summarize(job, merged, images=len(job.samples), seconds=1.0)
    assert result.counts == whole.counts and result.miou == whole.miou
    assert parts[0].counts != whole.counts


# --------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------


def stop_after(k: int, seen: list[EvalProgress]):
    """An ``on_progress`` that presses Ctrl-C once ``k`` images are counted."""
    def on_progress(state: EvalProgress) -> None:
        seen.append(state)
        if state.done - state.resumed >= k:
            raise KeyboardInterrupt

    return on_progress


def doubled(data, dest: Path) -> tuple[Path, Path]:
    """A generic folder of 6 images: the cityscapes folder twice (a/ and b/), labels as trainIds.

    The b/ images have a.'s pixels in other bytes (a PNG text chunk): saved counts are found by the
    files' contents, and six different images make six counts files."""
    from PIL import PngImagePlugin

    built = data.folder("cityscapes")
    for copy in ("a", "b"):
        for name, image in built.images.items():
            target = dest / "imgs" / copy / f"{name}_leftImg8bit.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            info = PngImagePlugin.PngInfo()
            info.add_text("copy", copy)
            with Image.open(image) as im:
                im.save(target, pnginfo=info)
            label = dest / "labs" / copy / f"{name}_leftImg8bit.png"
            label.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(built.data_root / built.layout.label(name), label)
    return dest / "imgs", dest / "labs"


def saved_count(work: Path) -> int:
    """How many images have saved counts (files named by the contents of their image and label)."""
    (run_dir,) = work.iterdir()
    names = sorted(p.name for p in (run_dir / "counts").iterdir())
    assert all(re.fullmatch(r"[0-9a-f]{64}\.npy", n) for n in names), names  # whole files only, no temporary ones
    return len(names)


def test_an_interrupted_run_resumes_to_the_same_result(data, tmp_path):
    images, labels = doubled(data, tmp_path)
    seg = segmenter(data, "cityscapes")
    full = psegzoo.evaluate(seg, images=images, labels=labels)
    assert full.counts.intersect.tolist() == [2 * v for v in data.expected("cityscapes")["intersect"]]
    seen: list[EvalProgress] = []
    with pytest.raises(KeyboardInterrupt):
        psegzoo.evaluate(seg, images=images, labels=labels, work_dir=tmp_path / "work", workers=1,
                         on_progress=stop_after(1, seen))
    saved = saved_count(tmp_path / "work")
    # the last report counts every image whose counts were saved, those still being saved at Ctrl-C included
    assert 1 <= saved < 6 and seen[-1].done == saved
    resumed_seen: list[EvalProgress] = []
    resumed = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=tmp_path / "work", resume=True,
                               on_progress=resumed_seen.append)
    # Saved counts are found as each image's files are read: the reports count them as they come.
    assert resumed.resumed == saved and resumed_seen[-1].resumed == saved and resumed_seen[-1].done == 6
    assert resumed.counts == full.counts
    assert resumed.to_json()["metrics"] == full.to_json()["metrics"]
    assert resumed.to_json()["per_class"] == full.to_json()["per_class"]
    (run_dir,) = (tmp_path / "work").iterdir()
    assert json.loads((run_dir / "result.json").read_text())["counts"] == full.to_json()["counts"]
    # Without resume the same folder starts over.
    again = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=tmp_path / "work")
    assert again.resumed == 0 and again.counts == full.counts


def test_a_run_stopped_by_a_bad_label_resumes_once_it_is_fixed(data, tmp_path):
    images, labels = doubled(data, tmp_path)
    seg = segmenter(data, "cityscapes")
    full = psegzoo.evaluate(seg, images=images, labels=labels)
    bad = sorted(labels.rglob("*.png"))[3]  # the 4th image of the split
    good = bad.read_bytes()
    bad.write_bytes(good[:60])
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        psegzoo.evaluate(seg, images=images, labels=labels, work_dir=tmp_path / "work")
    assert saved_count(tmp_path / "work") == 3  # the images before the bad one are kept
    bad.write_bytes(good)
    resumed = psegzoo.evaluate(seg, images=images, labels=labels, work_dir=tmp_path / "work", resume=True)
    assert resumed.resumed == 3 and resumed.counts == full.counts


def test_resume_uses_only_counts_made_the_same_way(data, tmp_path):
    key = "cityscapes"
    evaluate_folder(data, key, work_dir=tmp_path)
    other = evaluate_folder(data, key, work_dir=tmp_path, resume=True, scale=(96, 48))
    assert other.resumed == 0  # another scale: another run folder
    assert len(list(tmp_path.iterdir())) == 2
    same = evaluate_folder(data, key, work_dir=tmp_path, resume=True)
    assert same.resumed == 3


def test_resume_evaluates_again_images_whose_saved_prediction_is_missing(data, tmp_path):
    key = "cityscapes"
    out = tmp_path / "preds"
    evaluate_folder(data, key, work_dir=tmp_path / "work", save_predictions=out)
    (out / f"{D.LAYOUTS[key].names[1]}.png").unlink()
    result = evaluate_folder(data, key, work_dir=tmp_path / "work", save_predictions=out, resume=True)
    assert result.resumed == 2 and (out / f"{D.LAYOUTS[key].names[1]}.png").is_file()


def test_resume_without_a_work_folder_continues_from_the_cache(data, tmp_path, monkeypatch):
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "home"))
    first = evaluate_folder(data, "cityscapes", limit=2)
    assert first.work_dir is not None and Path(first.work_dir).parent == tmp_path / "home" / "eval"
    resumed = evaluate_folder(data, "cityscapes", resume=True)
    assert resumed.resumed == 2 and resumed.work_dir == first.work_dir


# --------------------------------------------------------------------------------------------
# Errors, each one line
# --------------------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_missing_root_and_folders(data, tmp_path):
    with pytest.raises(DatasetError) as err:
        psegzoo.evaluate(data.model("cityscapes"), tmp_path / "nothing", weights=data.checkpoint("cityscapes"))
    assert "does not exist" in one_line(err.value)
    root = copy_folder(data, "cityscapes", tmp_path / "city")
    shutil.rmtree(root / "gtFine")
    with pytest.raises(DatasetError) as err:
        evaluate_folder_at(data, "cityscapes", root)
    assert "no label folder gtFine/val; found: " not in str(err.value)
    assert one_line(err.value).endswith("no label folder gtFine/val; a cityscapes dataset has leftImg8bit/val, gtFine/val "
                                        "under its root")
    with pytest.raises(DatasetError) as err:
        evaluate_folder_at(data, "cityscapes", root, split="test")
    assert "no image folder leftImg8bit/test; found: val" in one_line(err.value)


def evaluate_folder_at(data, key: str, root: Path, **kwargs):
    return psegzoo.evaluate(segmenter(data, D.LAYOUTS[key].dataset), root, **kwargs)


def test_missing_and_empty_split_list(data, tmp_path):
    root = copy_folder(data, "voc12aug", tmp_path / "voc")
    split = root / "ImageSets/Segmentation/val.txt"
    split.rename(split.with_name("train.txt"))
    with pytest.raises(DatasetError) as err:
        evaluate_folder_at(data, "voc12aug", root)
    assert "split list ImageSets/Segmentation/val.txt not found; found: train" in one_line(err.value)
    split.write_text("\n\n")
    with pytest.raises(DatasetError, match="split list is empty"):
        evaluate_folder_at(data, "voc12aug", root)
    split.write_text("2007_000033\n2099_999999\n")
    with pytest.raises(DatasetError, match=r"JPEGImages/2099_999999\.jpg: image not found \(listed in"):
        evaluate_folder_at(data, "voc12aug", root)


def test_empty_split_folder(data, tmp_path):
    root = tmp_path / "coco"
    (root / "images/val2017").mkdir(parents=True)
    (root / "annotations/val2017").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        evaluate_folder_at(data, "coco-stuff164k", root)
    assert "images/val2017: no *.jpg images in the val split" in one_line(err.value)


def test_an_image_without_its_label_is_named(data, tmp_path):
    root = copy_folder(data, "cityscapes", tmp_path / "city")
    (root / "gtFine/val/bonn/bonn_000000_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError) as err:
        evaluate_folder_at(data, "cityscapes", root)
    assert one_line(err.value) == (
        "leftImg8bit/val/bonn/bonn_000000_000019_leftImg8bit.png has no label: expected "
        "gtFine/val/bonn/bonn_000000_000019_gtFine_labelTrainIds.png or "
        "gtFine/val/bonn/bonn_000000_000019_gtFine_labelIds.png"
    )


def test_a_label_of_another_size_names_both_sizes(data, tmp_path):
    root = copy_folder(data, "ade20k", tmp_path / "ade")
    label = root / "annotations/validation/ADE_val_00000002.png"
    Image.fromarray(np.ones((30, 50), dtype=np.uint8)).save(label)
    with pytest.raises(DatasetError) as err:
        evaluate_folder_at(data, "ade20k", tmp_path / "ade")
    text = one_line(err.value)
    assert "ADE_val_00000002.png: the label is 50x30 but its image ADE_val_00000002.jpg is 52x36" in text


def test_a_label_value_that_is_no_class_names_file_and_value(data, tmp_path):
    root = copy_folder(data, "voc12aug", tmp_path / "voc")
    label = root / "SegmentationClass/2007_000042.png"
    with Image.open(label) as im:
        arr = np.asarray(im).copy()
        palette = im.getpalette()
    arr[5, 5] = 21
    im = Image.fromarray(arr)
    im.putpalette(palette)
    im.save(label)
    with pytest.raises(DatasetError) as err:
        evaluate_folder_at(data, "voc12aug", root)
    assert f"{label}: label value 21 is neither a class (0..20) nor the ignore index 255" in one_line(err.value)


def test_colour_labels_are_refused(data, tmp_path):
    root = copy_folder(data, "coco-stuff164k", tmp_path / "coco")
    label = root / "annotations/val2017/000000000285_labelTrainIds.png"
    with Image.open(label) as im:
        im.convert("RGB").save(label)
    with pytest.raises(DatasetError, match=r"a RGB image is not a label map"):
        evaluate_folder_at(data, "coco-stuff164k", root)


def test_a_dataset_without_a_layout(data, tmp_path, monkeypatch):
    obj = D.model_entries()[0]
    obj["name"], obj["dataset"] = "pspnet_r18-d8_evaltest_roads", "my_roads"
    obj["architecture"]["num_classes"] = 2
    index = D.write_extra_index(tmp_path / "roads.json", [obj],
                                {"my_roads": {"classes": ["road", "other"], "palette": [[1, 2, 3], [4, 5, 6]]}})
    monkeypatch.setenv("PSEGZOO_INDEX", f"{data.index}:{index}")
    with pytest.raises(DatasetError) as err:
        psegzoo.evaluate("pspnet_r18-d8_evaltest_roads", tmp_path)
    assert one_line(err.value).startswith("pspnet_r18-d8_evaltest_roads is a 'my_roads' model and psegzoo knows no "
                                          "folder layout for 'my_roads'; evaluate it on your own folders with "
                                          "images=DIR, labels=DIR or force a layout with layout=NAME")


def test_a_layout_of_another_class_count_and_misplaced_options(data):
    root = data.folder("ade20k").root
    with pytest.raises(DatasetError, match="predicts 19 classes but a ade20k dataset has 150"):
        psegzoo.evaluate(data.model("cityscapes"), root, layout="ade20k")
    with pytest.raises(DatasetError, match="applies to generic folders"):
        psegzoo.evaluate(data.model("ade20k"), root, reduce_zero_label=True)
    with pytest.raises(DatasetError, match="a generic folder is evaluated whole"):
        psegzoo.evaluate(data.model("ade20k"), root, layout="generic", split="val")


def test_nothing_labelled_is_an_error(data, tmp_path):
    root = copy_folder(data, "coco-stuff164k", tmp_path / "coco")
    for label in (root / "annotations/val2017").iterdir():
        Image.fromarray(np.full(Image.open(label).size[::-1], 255, dtype=np.uint8)).save(label)
    with pytest.raises(DatasetError, match="no labelled pixel in the 3 image"):
        evaluate_folder_at(data, "coco-stuff164k", root)


# --------------------------------------------------------------------------------------------
# The prefetch queue
# --------------------------------------------------------------------------------------------


def test_prefetch_keeps_order_bounds_the_queue_and_overlaps():
    started: list[int] = []
    lock = threading.Lock()
    consumed = []

    def load(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.02 * ((7 * i) % 3))
        return i * i

    for item, value in prefetch(range(12), load, workers=3, depth=4):
        with lock:
            ahead = max(started) - item
        assert ahead <= 4  # never more than ``depth`` loads ahead of the consumer
        consumed.append((item, value))
    assert consumed == [(i, i * i) for i in range(12)]
    assert [(i, v) for i, v in prefetch(range(5), load, workers=0, depth=4)] == [(i, i * i) for i in range(5)]


def test_prefetch_raises_a_load_error_in_order_and_stops():
    def load(i: int) -> int:
        if i == 3:
            raise DatasetError("bad 3")
        return i

    got = []
    with pytest.raises(DatasetError, match="bad 3"):
        for item, _ in prefetch(range(100), load, workers=2, depth=3):
            got.append(item)
    assert got == [0, 1, 2]
