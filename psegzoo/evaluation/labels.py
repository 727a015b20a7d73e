"""Reading ground-truth label maps the way mmsegmentation's ``LoadAnnotations`` does.

mmseg decodes a label file with Pillow, "unchanged": the array of a palette PNG is its indices, of a
grey PNG its values; no EXIF rotation, no colour conversion. Then, where the dataset asks for it,
``reduce_zero_label`` turns 0 (the "other" class of ADE20K, Pascal Context and COCO-Stuff 10k) into
the ignore value and shifts the rest down by one. Both steps are done here through one 256-entry
look-up table, together with the Cityscapes ``labelIds -> trainIds`` table for folders where only the
official ``*_gtFine_labelIds.png`` files exist.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

# mmseg writes 255 for "ignore" when it reduces zero labels, whatever the metric's ignore index.
REDUCED_ZERO = 255

# cityscapesScripts ``helpers/labels.py``: the ``id`` of each evaluated class -> its ``trainId``.
# Every other id (unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground,
# parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate) -> 255.
CITYSCAPES_ID_TO_TRAIN_ID: Mapping[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}

# Pillow modes whose array is one integer per pixel.
_INDEX_MODES = ("P", "L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I")


def id_table(mapping: Mapping[int, int], default: int = 255) -> np.ndarray:
    """A 256-entry uint8 table: ``mapping[v]`` where given, ``default`` elsewhere."""
    table = np.full(256, default, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


CITYSCAPES_LABEL_IDS = id_table(CITYSCAPES_ID_TO_TRAIN_ID)


def reduce_zero_table() -> np.ndarray:
    """mmseg's ``reduce_zero_label`` on uint8 labels: 0 -> 255, 255 stays 255, every other v -> v - 1."""
    table = np.arange(256, dtype=np.int64) - 1
    table[0] = REDUCED_ZERO
    table[255] = REDUCED_ZERO
    return table.astype(np.uint8)


def label_table(*, ids: np.ndarray | None = None, reduce_zero_label: bool = False) -> np.ndarray | None:
    """The one table that maps raw label values to evaluated ones (None: values are used as they are)."""
    table: np.ndarray | None = None if ids is None else ids.astype(np.uint8)
    if reduce_zero_label:
        reduce = reduce_zero_table()
        table = reduce if table is None else reduce[table]
    return table


def read_label(path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
    """The label map stored in ``path``: H x W integers (uint8 for 8-bit files), as mmseg decodes it.

    ``data``: the file's bytes, already read (and hashed) by the caller; ``path`` then names it.
    Colour (RGB) and alpha images are refused: a label file holds one class index per pixel.
    """
    name = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                if im.mode not in _INDEX_MODES:
                    raise DatasetError(
                        f"{name}: a {im.mode} image is not a label map; labels hold one class index per pixel "
                        "(a grey or palette PNG)"
                    )
                arr = np.array(im)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{name}: label file not found") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{name}: not an image (Pillow cannot read this label file)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DatasetError(f"{name}: cannot read this label file ({text})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def apply_table(label: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    """``table[label]`` for 8-bit values; wider values (16-bit files) above 255 are kept as they are,
    so that the metric reports them as values that are no class."""
    if table is None:
        return label
    if label.dtype == np.uint8:
        return table[label]
    wide = label.astype(np.int64)
    small = (wide >= 0) & (wide < 256)
    wide[small] = table[wide[small]]
    return wide


def load_label(path: str | os.PathLike, table: np.ndarray | None, data: bytes | None = None) -> np.ndarray:
    """Read ``path`` (or decode its bytes ``data``) and map its values through ``table`` (see :func:`label_table`)."""
    return apply_table(read_label(Path(path), data), table)
