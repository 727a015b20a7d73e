"""Tiny dataset folders in every layout ``psegzoo eval`` reads, and the figures they should give.

The folders are written the way mmseg's converters leave them. Labels are made from a prediction
(so that classes overlap) and then changed on purpose: a block of wrong classes, a stripe of a class
the model never predicts, ignored pixels. Each label is kept as *truth*: the class of every pixel,
-1 where it is ignored; each layout then writes it with its own raw encoding (``+1`` with 0 for
"other" where mmseg reduces zero labels, Cityscapes ``labelIds``, VOC palette PNGs, ...). The
encodings and the expected figures below are written from the dataset conventions alone, without
psegzoo's code, so that the tests compare two independent computations.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from psegzoo.manifest import load_manifest

from .served import MMSEG_BASE, builtin_entry
from .synth import write_mmseg_checkpoint

# cityscapesScripts helpers/labels.py: trainId -> id of the 19 evaluated classes.
CITYSCAPES_TRAIN_TO_ID = {0: 7, 1: 8, 2: 11, 3: 12, 4: 13, 5: 17, 6: 19, 7: 20, 8: 21, 9: 22, 10: 23, 11: 24,
                          12: 25, 13: 26, 14: 27, 15: 28, 16: 31, 17: 32, 18: 33}
# ids that are no evaluated class (unlabeled, ego vehicle, static, dynamic, ground, parking, caravan, ...)
CITYSCAPES_VOID_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)

SIZES = ((40, 60), (36, 52), (48, 40))  # (h, w) of the three images of each folder
EVAL_SCALE = (64, 32)  # (long, short) test scale of the test models: a 40x60 image runs at 32x48


def make_image(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 5, yy * 7, (xx * yy) % 256], axis=-1).astype(np.float64)
    img[h // 5: 4 * h // 5, w // 4: 3 * w // 4] = rng.integers(0, 256, 3)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def truth_from(pred: np.ndarray, num_classes: int, seed: int, absent: int) -> np.ndarray:
    """A label map made from ``pred``: some wrong blocks, a stripe of class ``absent``, ignored pixels (-1)."""
    rng = np.random.default_rng(seed)
    truth = pred.astype(np.int64)
    h, w = truth.shape
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    truth[y: y + h // 3, x: x + w // 3] = (truth[y: y + h // 3, x: x + w // 3] + 1) % num_classes
    truth[:, w - 4: w - 1] = absent
    truth[rng.random((h, w)) < 0.1] = -1
    truth[0, :] = -1
    return truth


# Raw encodings of a truth map (-1 = ignored), one per dataset convention.
def encode_255(truth: np.ndarray) -> np.ndarray:
    return np.where(truth >= 0, truth, 255).astype(np.uint8)


def encode_plus_one(truth: np.ndarray) -> np.ndarray:
    """Classes as 1..C; ignored pixels as 0 ("other"), every fifth one as 255 (ignored by mmseg too)."""
    raw = np.where(truth >= 0, truth + 1, 0).astype(np.uint8)
    ignored = np.flatnonzero(truth.ravel() < 0)
    raw.ravel()[ignored[::5]] = 255
    return raw


def encode_cityscapes_ids(truth: np.ndarray) -> np.ndarray:
    raw = np.zeros(truth.shape, dtype=np.uint8)
    for train_id, label_id in CITYSCAPES_TRAIN_TO_ID.items():
        raw[truth == train_id] = label_id
    ignored = np.flatnonzero(truth.ravel() < 0)
    raw.ravel()[ignored] = np.resize(np.array(CITYSCAPES_VOID_IDS, dtype=np.uint8), ignored.size)
    return raw


@dataclass(frozen=True)
class TinyLayout:
    """Where one layout puts image ``name`` and its label, and how labels are written."""

    name: str  # the --layout name
    dataset: str  # the manifest dataset whose class count the model has
    image: Callable[[str], str]
    label: Callable[[str], str]
    names: tuple[str, ...]
    encode: Callable[[np.ndarray], np.ndarray] = encode_255
    split_file: str | None = None
    palette: bool = False
    jpeg: bool = True
    subdir: str = ""  # the dataset root under the folder made (mmseg's data_root)
    extra_images: tuple[str, ...] = ()  # images present but not in the split


LAYOUTS: dict[str, TinyLayout] = {
    "cityscapes": TinyLayout(
        "cityscapes", "cityscapes",
        image=lambda n: f"leftImg8bit/val/{n}_leftImg8bit.png",
        label=lambda n: f"gtFine/val/{n}_gtFine_labelTrainIds.png",
        names=("aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bonn/bonn_000000_000019"),
        jpeg=False,
    ),
    "cityscapes_ids": TinyLayout(
        "cityscapes", "cityscapes",
        image=lambda n: f"leftImg8bit/val/{n}_leftImg8bit.png",
        label=lambda n: f"gtFine/val/{n}_gtFine_labelIds.png",
        names=("lindau/lindau_000000_000019", "lindau/lindau_000001_000019", "munster/munster_000000_000019"),
        encode=encode_cityscapes_ids, jpeg=False,
    ),
    "ade20k": TinyLayout(
        "ade20k", "ade20k",
        image=lambda n: f"images/validation/{n}.jpg",
        label=lambda n: f"annotations/validation/{n}.png",
        names=("ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"),
        encode=encode_plus_one, subdir="ADEChallengeData2016",
    ),
    "voc12aug": TinyLayout(
        "voc12aug", "voc12aug",
        image=lambda n: f"JPEGImages/{n}.jpg",
        label=lambda n: f"SegmentationClass/{n}.png",
        names=("2007_000033", "2007_000042", "2007_000061"),
        split_file="ImageSets/Segmentation/val.txt", palette=True, subdir="VOC2012",
        extra_images=("2007_000032",),
    ),
    "pascal_context": TinyLayout(
        "pascal_context", "pascal_context",
        image=lambda n: f"JPEGImages/{n}.jpg",
        label=lambda n: f"SegmentationClassContext/{n}.png",
        names=("2008_000002", "2008_000003", "2008_000007"),
        split_file="ImageSets/SegmentationContext/val.txt", subdir="VOC2010",
    ),
    "pascal_context_59": TinyLayout(
        "pascal_context_59", "pascal_context_59",
        image=lambda n: f"JPEGImages/{n}.jpg",
        label=lambda n: f"SegmentationClassContext/{n}.png",
        names=("2008_000002", "2008_000003", "2008_000007"),
        encode=encode_plus_one, split_file="ImageSets/SegmentationContext/val.txt", subdir="VOC2010",
    ),
    "coco-stuff164k": TinyLayout(
        "coco-stuff164k", "coco-stuff164k",
        image=lambda n: f"images/val2017/{n}.jpg",
        label=lambda n: f"annotations/val2017/{n}_labelTrainIds.png",
        names=("000000000139", "000000000285", "000000000632"),
    ),
    "coco-stuff10k": TinyLayout(
        "coco-stuff10k", "coco-stuff10k",
        image=lambda n: f"images/test2014/{n}.jpg",
        label=lambda n: f"annotations/test2014/{n}_labelTrainIds.png",
        names=("COCO_train2014_000000000077", "COCO_train2014_000000000078", "COCO_train2014_000000000110"),
        encode=encode_plus_one,
    ),
    "generic": TinyLayout(
        "generic", "cityscapes",
        image=lambda n: f"imgs/{n}.png",
        label=lambda n: f"labs/{n}_mask.png",
        names=("field/a", "field/b", "c"),
        encode=encode_plus_one, jpeg=False,
    ),
}


def model_name(dataset: str) -> str:
    return f"pspnet_r18-d8_evaltest_{dataset.replace('-', '_')}"


def model_entries(scale: Sequence[int] = EVAL_SCALE) -> list[dict]:
    """One R-18 PSPNet entry per dataset (the cityscapes entry with the dataset's class count)."""
    models = []
    datasets = load_manifest(extra=[]).datasets
    for dataset in sorted({layout.dataset for layout in LAYOUTS.values()}):
        obj = builtin_entry(MMSEG_BASE)
        obj["name"] = model_name(dataset)
        obj["dataset"] = dataset
        obj["architecture"]["num_classes"] = len(datasets[dataset].classes)
        obj["test"]["scale"] = list(scale)
        models.append(obj)
    return models


def write_checkpoint(spec: Sequence[Sequence], num_classes: int, path: Path) -> Path:
    """The synthetic R-18 checkpoint with classifiers of ``num_classes`` outputs."""
    patched = [[key, [num_classes, *shape[1:]] if "conv_seg" in key else shape, dtype] for key, shape, dtype in spec]
    return write_mmseg_checkpoint(patched, path)


@dataclass
class Built:
    """A tiny dataset folder: where it is, its images and the truth of each (class, -1 ignored)."""

    layout: TinyLayout
    root: Path  # what --data gets
    images: dict[str, Path] = field(default_factory=dict)
    truths: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def data_root(self) -> Path:
        return self.root / self.layout.subdir if self.layout.subdir else self.root


def write_images(layout: TinyLayout, root: Path, seed: int = 0) -> Built:
    built = Built(layout, root)
    for i, name in enumerate(layout.names + layout.extra_images):
        h, w = SIZES[i % len(SIZES)]
        path = built.data_root / layout.image(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_image(seed * 100 + i, h, w)).save(path, **({"quality": 95} if layout.jpeg else {}))
        if name in layout.names:
            built.images[name] = path
    if layout.split_file:
        split = built.data_root / layout.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(f"{n}\n" for n in layout.names))
    return built


def write_labels(built: Built, preds: dict[str, np.ndarray], num_classes: int, palette: Sequence[Sequence[int]]) -> None:
    """Labels made from the predictions (see the module docstring), in the layout's encoding."""
    predicted = set().union(*(np.unique(p).tolist() for p in preds.values()))
    absent = next(c for c in range(num_classes) if c not in predicted)
    for i, name in enumerate(built.layout.names):
        truth = truth_from(preds[name], num_classes, seed=i, absent=absent)
        built.truths[name] = truth
        raw = built.layout.encode(truth)
        path = built.data_root / built.layout.label(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(raw)
        if built.layout.palette:  # a palette PNG whose indices are the raw values (putpalette makes L a P image)
            flat = [v for colour in palette for v in colour]
            im.putpalette(flat + [224, 224, 192] * (256 - len(palette)))
            assert im.mode == "P"
        im.save(path)


def expected(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int) -> dict:
    """mmseg's figures computed class by class with plain numpy: areas summed over the images."""
    inter = np.zeros(num_classes, dtype=np.int64)
    union = np.zeros(num_classes, dtype=np.int64)
    label = np.zeros(num_classes, dtype=np.int64)
    for pred, truth in zip(preds, truths):
        valid = truth >= 0
        for c in range(num_classes):
            p, t = (pred == c) & valid, (truth == c) & valid
            inter[c] += int((p & t).sum())
            union[c] += int((p | t).sum())
            label[c] += int(t.sum())
    iou = [inter[c] / union[c] if union[c] else math.nan for c in range(num_classes)]
    acc = [inter[c] / label[c] if label[c] else math.nan for c in range(num_classes)]
    defined_iou = [v for v in iou if not math.isnan(v)]
    defined_acc = [v for v in acc if not math.isnan(v)]
    def pct(v: float) -> float:  # mmseg rounds with numpy: np.round(x * 100, 2)
        return float(np.round(v * 100, 2))

    return {
        "aAcc": pct(inter.sum() / label.sum()),
        "mIoU": pct(sum(defined_iou) / len(defined_iou)),
        "mAcc": pct(sum(defined_acc) / len(defined_acc)),
        "IoU": [None if math.isnan(v) else pct(v) for v in iou],
        "Acc": [None if math.isnan(v) else pct(v) for v in acc],
        "intersect": inter.tolist(), "union": union.tolist(), "label": label.tolist(),
    }


def write_extra_index(path: Path, models: Sequence[dict], datasets: dict | None = None) -> Path:
    doc: dict = {"schema_version": 1, "models": list(models)}
    if datasets:
        doc["datasets"] = datasets
    path.write_text(json.dumps(doc))
    return path

