"""The dataset folders mmsegmentation's dataset classes and converters produce, as data.

Settings come from mmsegmentation 1.2.2: ``configs/_base_/datasets/*.py`` (folders, split lists,
``reduce_zero_label``) and ``mmseg/datasets/*.py`` (image and label suffixes); the ignore index is
255 everywhere. A split is listed as mmseg lists it: from the split file, in its order, where the
dataset has one; otherwise every file under the image folder (recursively) whose name ends with the
image suffix, sorted by path.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError, PsegzooError, option
from ..manifest import normalize_dataset
from .labels import CITYSCAPES_LABEL_IDS

IGNORE_INDEX = 255


@dataclass(frozen=True, eq=False)
class LabelFallback:
    """Another label file to use where the usual one is missing, and the table that maps its values."""

    suffix: str
    ids: np.ndarray
    description: str


@dataclass(frozen=True)
class Layout:
    """Where the images and labels of a split live under a dataset root.

    ``image_dir``/``label_dir``/``split_file`` may hold ``{split}``, replaced by the folder name of the
    split asked for (``splits`` maps ``val`` to ``validation`` for ADE20K, for example). ``roots`` are
    subfolders tried when the root given is their parent (``VOCdevkit`` holding ``VOC2012``).
    """

    name: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_file: str | None = None
    reduce_zero_label: bool = False
    ignore_index: int = IGNORE_INDEX
    splits: Mapping[str, str] = field(default_factory=dict)
    published_split: str = "val"
    fallback: LabelFallback | None = None
    roots: tuple[str, ...] = ()

    def split_name(self, split: str) -> str:
        """The folder (or split-file) name of ``split``."""
        return self.splits.get(split, split)


CITYSCAPES = Layout(
    name="cityscapes",
    image_dir="leftImg8bit/{split}",
    label_dir="gtFine/{split}",
    image_suffix="_leftImg8bit.png",
    label_suffix="_gtFine_labelTrainIds.png",
    fallback=LabelFallback("_gtFine_labelIds.png", CITYSCAPES_LABEL_IDS,
                           "official labelIds mapped to trainIds (cityscapesScripts table)"),
)
ADE20K = Layout(
    name="ade20k",
    image_dir="images/{split}",
    label_dir="annotations/{split}",
    image_suffix=".jpg",
    label_suffix=".png",
    reduce_zero_label=True,
    splits={"val": "validation", "train": "training"},
    roots=("ADEChallengeData2016",),
)
VOC12AUG = Layout(
    name="voc12aug",
    image_dir="JPEGImages",
    label_dir="SegmentationClass",
    image_suffix=".jpg",
    label_suffix=".png",
    split_file="ImageSets/Segmentation/{split}.txt",
    roots=("VOC2012",),
)
PASCAL_CONTEXT = Layout(
    name="pascal_context",
    image_dir="JPEGImages",
    label_dir="SegmentationClassContext",
    image_suffix=".jpg",
    label_suffix=".png",
    split_file="ImageSets/SegmentationContext/{split}.txt",
    roots=("VOC2010",),
)
PASCAL_CONTEXT_59 = Layout(
    name="pascal_context_59",
    image_dir="JPEGImages",
    label_dir="SegmentationClassContext",
    image_suffix=".jpg",
    label_suffix=".png",
    split_file="ImageSets/SegmentationContext/{split}.txt",
    reduce_zero_label=True,
    roots=("VOC2010",),
)
COCO_STUFF164K = Layout(
    name="coco-stuff164k",
    image_dir="images/{split}",
    label_dir="annotations/{split}",
    image_suffix=".jpg",
    label_suffix="_labelTrainIds.png",
    splits={"val": "val2017", "train": "train2017"},
)
# The 10k release has no validation split: mmseg (and the published figures) evaluate on test2014, and
# its converter writes classes as 1..171 with 0 unlabelled, hence reduce_zero_label.
COCO_STUFF10K = Layout(
    name="coco-stuff10k",
    image_dir="images/{split}",
    label_dir="annotations/{split}",
    image_suffix=".jpg",
    label_suffix="_labelTrainIds.png",
    reduce_zero_label=True,
    splits={"val": "test2014", "test": "test2014", "train": "train2014"},
)

LAYOUTS: Mapping[str, Layout] = {
    layout.name: layout
    for layout in (CITYSCAPES, ADE20K, VOC12AUG, PASCAL_CONTEXT, PASCAL_CONTEXT_59, COCO_STUFF164K, COCO_STUFF10K)
}
GENERIC = "generic"
LAYOUT_NAMES = (*LAYOUTS, GENERIC)


def generic_layout(*, label_suffix: str = ".png", reduce_zero_label: bool = False,
                   ignore_index: int = IGNORE_INDEX) -> Layout:
    """A user's own folders: every image under the images folder, its label at the same relative path
    under the labels folder with ``label_suffix`` in place of the image's extension."""
    if not label_suffix:
        raise DatasetError("the label suffix must not be empty, e.g. " + option("label_suffix='.png'", "--label-suffix .png"))
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or ignore_index < 0:
        raise DatasetError(f"the ignore index must be a non-negative integer, got {ignore_index!r}")
    return Layout(name=GENERIC, image_dir="images", label_dir="labels", image_suffix="", label_suffix=label_suffix,
                  reduce_zero_label=reduce_zero_label, ignore_index=ignore_index, published_split="")


def layout_named(name: str) -> str:
    """A layout name from a user's spelling (dataset aliases such as ``ade`` or ``voc`` work)."""
    key = name.strip().lower()
    if key in LAYOUT_NAMES:
        return key
    try:
        return normalize_dataset(key, LAYOUTS)
    except PsegzooError:
        pass
    raise DatasetError(f"unknown layout {name!r}; choose one of: {', '.join(LAYOUT_NAMES)}")


def layout_for_dataset(dataset: str, model: str) -> Layout:
    """The built-in layout of a manifest dataset id, or a one-line error saying what to pass instead."""
    layout = LAYOUTS.get(dataset)
    if layout is None:
        raise DatasetError(
            f"{model} is a {dataset!r} model and psegzoo knows no folder layout for {dataset!r}; "
            f"evaluate it on your own folders with {option('images=DIR, labels=DIR', '--images DIR --labels DIR')} "
            f"or force a layout with {option('layout=NAME', '--layout NAME')} ({', '.join(LAYOUTS)})"
        )
    return layout
