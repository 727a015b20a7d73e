"""Listing the images of a split and their labels under a dataset root, with one-line errors.

Everything is checked before any model work: the folders and the split list exist, every image has
its label, and each label has its image's size (read from the file headers, EXIF rotation included,
so no pixel is decoded).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .. import images as image_io
from ..errors import DatasetError, option
from ..images import IMAGE_EXTENSIONS
from .layouts import GENERIC, LAYOUTS, Layout

log = logging.getLogger(__name__)

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_MISSING_SHOWN = 1


@dataclass(frozen=True)
class Sample:
    """One image of a split: its name (relative path without suffix), its files, and whether its label
    is the layout's fallback file (Cityscapes ``labelIds``), whose values are mapped by a table."""

    index: int
    name: str
    image: Path
    label: Path
    fallback: bool = False


@dataclass(frozen=True)
class Split:
    """The images of one split, in mmseg's order."""

    layout: Layout
    root: Path | None
    split: str | None
    image_dir: Path
    label_dir: Path
    samples: tuple[Sample, ...]

    @property
    def fallback_labels(self) -> int:
        """How many labels are the layout's fallback files."""
        return sum(1 for s in self.samples if s.fallback)

    def fingerprint(self) -> str:
        """A hash of the listing (names and label kinds): a saved run resumes only on the same list."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.name}\x00{int(s.fallback)}\x01".encode())
        return h.hexdigest()

    def head(self, limit: int | None) -> Split:
        """The first ``limit`` images (all for None)."""
        if limit is None or limit >= len(self.samples):
            return self
        return Split(self.layout, self.root, self.split, self.image_dir, self.label_dir, self.samples[:limit])


def _show(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def looks_like(root: Path) -> list[str]:
    """Layouts whose image and label folders exist under ``root`` for some split (for hints)."""
    found = []
    for layout in LAYOUTS.values():
        for base in (root, *(root / r for r in layout.roots)):
            image_parent = (base / layout.image_dir.format(split="x")).parent
            label_parent = (base / layout.label_dir.format(split="x")).parent
            if image_parent.is_dir() and label_parent.is_dir() and (
                layout.split_file is None or (base / layout.split_file.format(split="x")).parent.is_dir()
            ):
                found.append(layout.name)
                break
    return found


def _resolve_root(layout: Layout, root: Path) -> Path:
    if not root.is_dir():
        raise DatasetError(f"data root {str(root)!r} does not exist or is not a folder")
    probe = layout.image_dir.split("/")[0]
    if not (root / probe).is_dir():
        for sub in layout.roots:
            if (root / sub / probe).is_dir():
                return root / sub
    return root


def _available(folder: Path, suffix: str = "") -> str:
    if not folder.is_dir():
        return ""
    names = sorted(p.name[: len(p.name) - len(suffix)] if suffix else p.name
                   for p in folder.iterdir() if not p.name.startswith(".")
                   and (p.is_file() if suffix else p.is_dir()) and p.name.endswith(suffix))
    return f"; found: {', '.join(names[:10])}" if names else ""


def _missing_folder(layout: Layout, root: Path, what: str, folder: Path, split: str) -> DatasetError:
    needs = [p.format(split=split) for p in (layout.image_dir, layout.label_dir, layout.split_file) if p]
    hint = ""
    others = [n for n in looks_like(root) if n != layout.name]
    if others:
        hint = f"; this folder looks like a {' or '.join(others)} dataset ({option('layout=NAME', '--layout NAME')} forces one)"
    sibling = _available(folder.parent) if "{split}" in (layout.image_dir + layout.label_dir) else ""
    return DatasetError(
        f"{root}: no {what} folder {_show(folder, root)}{sibling}; a {layout.name} dataset has "
        f"{', '.join(needs)} under its root{hint}"
    )


def _walk(folder: Path, suffix: str = "") -> list[Path]:
    """Image files under ``folder`` whose names end with ``suffix``, sorted by path, as ``predict``
    finds them: hidden names skipped, symlinked folders not entered (a link to ``/`` or to a parent
    would walk forever), each file once; a folder that cannot be read is named in a warning."""
    paths, errors = image_io.walk_images(folder)
    for error in errors:
        log.warning("%s", error)
    return sorted((p for p in paths if p.name.endswith(suffix)), key=lambda p: p.as_posix())


def list_split(layout: Layout, root: str | os.PathLike | None, split: str | None = "val", *,
               images: str | os.PathLike | None = None, labels: str | os.PathLike | None = None) -> Split:
    """The samples of ``split`` under ``root`` in ``layout`` (every check but image sizes).

    For the generic layout ``images`` and ``labels`` name the folders (relative to ``root`` when it is
    given; default ``root/images`` and ``root/labels``) and ``split`` is not used.
    """
    if layout.name == GENERIC:
        return _list_generic(layout, root, images, labels)
    if root is None:
        raise DatasetError(f"a {layout.name} dataset needs its root folder: pass {option('data_root=DIR', '--data DIR')}")
    base = _resolve_root(layout, Path(root))
    split = split or "val"
    folder = layout.split_name(split)
    image_dir = base / layout.image_dir.format(split=folder)
    label_dir = base / layout.label_dir.format(split=folder)
    if not image_dir.is_dir():
        raise _missing_folder(layout, base, "image", image_dir, folder)
    if not label_dir.is_dir():
        raise _missing_folder(layout, base, "label", label_dir, folder)
    if layout.split_file is not None:
        names = _read_split_file(layout, base, folder)
        image_paths = [image_dir / (n + layout.image_suffix) for n in names]
        for name, path in zip(names, image_paths):
            if not path.is_file():
                raise DatasetError(
                    f"{_show(path, base)}: image not found (listed in {layout.split_file.format(split=folder)} as {name!r})"
                )
    else:
        suffix = layout.image_suffix
        image_paths = _walk(image_dir, suffix)
        names = [p.relative_to(image_dir).as_posix()[: -len(suffix)] for p in image_paths]
        if not names:
            raise DatasetError(f"{_show(image_dir, base)}: no *{suffix} images in the {split} split")
    samples = _pair_labels(layout, base, names, image_paths, label_dir)
    return Split(layout, base, split, image_dir, label_dir, tuple(samples))


def _read_split_file(layout: Layout, base: Path, folder: str) -> list[str]:
    assert layout.split_file is not None
    path = base / layout.split_file.format(split=folder)
    if not path.is_file():
        raise DatasetError(
            f"{base}: split list {layout.split_file.format(split=folder)} not found"
            f"{_available(path.parent, '.txt')}; a {layout.name} dataset lists each split's images there"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read this split list ({exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: the split list is empty; it names one image (without extension) a line")
    return names


def _pair_labels(layout: Layout, base: Path | None, names: list[str], image_paths: list[Path],
                 label_dir: Path) -> list[Sample]:
    samples: list[Sample] = []
    missing: list[tuple[Path, Path]] = []
    for i, (name, image) in enumerate(zip(names, image_paths)):
        label = label_dir / (name + layout.label_suffix)
        fallback = False
        if not label.is_file() and layout.fallback is not None:
            other = label_dir / (name + layout.fallback.suffix)
            if other.is_file():
                label, fallback = other, True
        if not label.is_file():
            missing.append((image, label))
            continue
        samples.append(Sample(i, name, image, label, fallback))
    if missing:
        image, label = missing[0]
        more = f" (and {len(missing) - 1} more image(s) without labels)" if len(missing) > 1 else ""
        also = f" or {_show(label.with_name(label.name[: -len(layout.label_suffix)] + layout.fallback.suffix), base)}" \
            if layout.fallback is not None else ""
        raise DatasetError(f"{_show(image, base)} has no label: expected {_show(label, base)}{also}{more}")
    return samples


def _list_generic(layout: Layout, root: str | os.PathLike | None, images: str | os.PathLike | None,
                  labels: str | os.PathLike | None) -> Split:
    base = Path(root) if root is not None else None
    if base is not None and not base.is_dir():
        raise DatasetError(f"data root {str(base)!r} does not exist or is not a folder")
    if base is None and (images is None or labels is None):
        raise DatasetError(
            f"a generic dataset needs its folders: pass {option('images=DIR, labels=DIR', '--images DIR --labels DIR')}"
        )
    image_dir = _folder(base, images, "images")
    label_dir = _folder(base, labels, "labels")
    for what, folder in (("image", image_dir), ("label", label_dir)):
        if not folder.is_dir():
            raise DatasetError(
                f"no {what} folder {str(folder)!r}; pass {option('images=DIR, labels=DIR', '--images DIR --labels DIR')}"
            )
    found = _walk(image_dir)
    # A label file of the image folder itself (same folder for both, suffix .png) is no image to evaluate.
    if image_dir.resolve() == label_dir.resolve():
        found = [p for p in found if not p.name.endswith(layout.label_suffix)]
    if not found:
        raise DatasetError(f"{image_dir}: no image files in this folder ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    names = [p.relative_to(image_dir).with_suffix("").as_posix() for p in found]
    seen: dict[str, Path] = {}
    for name, path in zip(names, found):
        if name in seen:
            raise DatasetError(
                f"{seen[name].name} and {path.name} in {seen[name].parent} would share one label "
                f"{name + layout.label_suffix}; keep one image per name"
            )
        seen[name] = path
    samples = _pair_labels(layout, None, names, found, label_dir)
    return Split(layout, base, None, image_dir, label_dir, tuple(samples))


def _folder(base: Path | None, given: str | os.PathLike | None, default: str) -> Path:
    """``given`` (relative to ``base`` when there is one), else ``base/default``."""
    if given is not None:
        return base / given if base is not None else Path(given)
    assert base is not None
    return base / default


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as decoded for the model (EXIF rotation applied), from its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112)
            except Exception:  # a malformed EXIF block: the decoder ignores it too
                orientation = None
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DatasetError(f"{path}: cannot read this image ({text})") from None
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def label_size(path: Path) -> tuple[int, int]:
    """(width, height) of a label file from its header (labels are never rotated)."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DatasetError(f"{path}: cannot read this label file ({text})") from None


def size_mismatch(sample: Sample, image_wh: tuple[int, int], label_wh: tuple[int, int]) -> DatasetError:
    return DatasetError(
        f"{sample.label}: the label is {label_wh[0]}x{label_wh[1]} but its image {sample.image.name} is "
        f"{image_wh[0]}x{image_wh[1]} (width x height); labels must have their image's size"
    )


def check_all_sizes(samples: Sequence[Sample], threads: int = 8) -> None:
    """:func:`check_sizes` on every sample (headers read by a few threads); the first error in order is raised."""
    if len(samples) <= 1:
        for sample in samples:
            check_sizes(sample)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="psegzoo-check") as pool:
        for _ in pool.map(check_sizes, samples):
            pass


def check_sizes(sample: Sample) -> None:
    """Raise :class:`DatasetError` when the label's size (header) differs from its image's."""
    image_wh, label_wh = image_size(sample.image), label_size(sample.label)
    if image_wh != label_wh:
        raise size_mismatch(sample, image_wh, label_wh)
