"""What a predict job works on: one task per input (image or video), its work, and whether it is done.

A task's work is its pixel count, read from the file header without decoding (Pillow for images,
the container for videos), so shards balance by what inference time grows with. A task is
complete when every output the command asks for exists, decodes in full and has the input's size
(a truncated overlay or a label map of another size is done again).
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from .. import outputs, video
from ..errors import VideoError, option


@dataclass(frozen=True)
class Wanted:
    """The outputs a predict command writes besides the label maps (what ``--skip-existing`` checks)."""

    overlay: bool = False
    color: bool = False
    probs: str | None = None  # "png" or "npy"
    logits: bool = False
    json: bool = False


class _Found(Protocol):
    path: Path
    relative: str


@dataclass(frozen=True)
class PredictTask:
    """One input of a predict job and the output name it writes under (unique over the whole job)."""

    path: Path
    name: str
    is_video: bool = False

    def __str__(self) -> str:
        return str(self.path)

    def pixels(self, every: int = 1) -> int:
        """Pixels to segment, from the header (a video: frame size times kept frames); 1 when unreadable."""
        try:
            if self.is_video:
                info = video.probe(self.path)
                return info.width * info.height * max(1, math.ceil(info.frames / every))
        except Exception:  # the owner of the task reports the real error when it reads the file
            return 1
        w, h = self.size
        return max(1, w * h)

    @functools.cached_property
    def size(self) -> tuple[int, int]:
        """An image's (width, height) from its header ((0, 0) for a video or an unreadable file); read
        once, as both the shards (by pixels) and the batches (by size) need it."""
        return image_size(self.path) if not self.is_video else (0, 0)

    def complete(self, out_dir: str | os.PathLike, wanted: Wanted) -> bool:
        """Whether every requested output exists, decodes in full and has the input's size (else it is redone)."""
        if self.is_video:
            return video.outputs_intact(self.path, out_dir, self.name, overlay=wanted.overlay, color=wanted.color,
                                        summary=wanted.json)
        size = image_size(self.path, upright=True)
        if size == (0, 0):
            return False
        image = outputs.output_paths(out_dir, self.name)
        kinds = {"labels": True, "color": wanted.color, "overlay": wanted.overlay, "probs_png": wanted.probs == "png",
                 "probs_npy": wanted.probs == "npy", "logits": wanted.logits, "json": wanted.json}
        return all(outputs.output_intact(getattr(image, kind), kind, size) for kind, on in kinds.items() if on)


_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_size(path: str | os.PathLike, *, upright: bool = False) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding; (0, 0) when it cannot be read.
    ``upright``: as the image is predicted, its EXIF orientation applied."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                if upright and im.getexif().get(0x0112) in _TURNED:
                    return h, w
                return w, h
    except Exception:  # the reader of the file reports the real error
        return 0, 0


def predict_tasks(found: Iterable[_Found], names: Sequence[str], wanted: Wanted = Wanted()) -> list[PredictTask]:
    """The tasks of ``found`` inputs named ``names`` (from ``unique_output_names`` over the full list).

    Videos need PyAV, and write label frames, overlay/colour videos and JSON only: asking for
    confidences or logits with a video among the inputs is refused here, before any work.
    """
    tasks = [PredictTask(Path(f.path), name, video.is_video(f.path)) for f, name in zip(found, names)]
    videos = [t.path for t in tasks if t.is_video]
    if videos:
        video.require(videos)
        if wanted.probs is not None or wanted.logits:
            flags = option("probs=... and logits=True", "--probs and --logits")
            raise VideoError(f"{videos[0]}: {flags} are written for images only; a video gets label frames, "
                             "overlay and colour videos and JSON")
    return tasks
