"""Turning a prediction into files people can use: palette PNGs, overlays, confidences, JSON.

Files written for an image whose output name is ``<stem>`` (see :func:`output_paths`):

* ``<stem>.png``          label map, palette PNG (mode P): pixel value = class index, lossless
* ``<stem>_color.png``    the colour map alone (RGB)
* ``<stem>_overlay.png``  the colour map blended over the image (RGB)
* ``<stem>_probs.png``    per-pixel confidence (max softmax), 16-bit grey: ``round(p * 65535)``
* ``<stem>_probs.npy``    the same confidence as float32
* ``<stem>_logits.npy``   C x H x W logits as float16
* ``<stem>.json``         class areas (pixels and %), model, timings

Names: an image found in a directory keeps its path below that directory (``in/a/x.png`` ->
``out/a/x.png``); names that would still collide (``a/x.png`` and ``b/x.jpg`` given as files, or
``x.png`` beside ``x.jpg``) get ``_2``, ``_3``, ... in input order (:func:`unique_names`), so no
output of one image overwrites another's. Every file is written to a temporary name first and
renamed into place, so an interrupted run leaves no half-written file.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from . import files
from .errors import OutputError, PredictionError

Palette = Sequence[Sequence[int]]

OUTPUT_SUFFIXES = {
    "labels": ".png",
    "color": "_color.png",
    "overlay": "_overlay.png",
    "probs_png": "_probs.png",
    "probs_npy": "_probs.npy",
    "logits": "_logits.npy",
    "json": ".json",
}

_BAND_PIXELS = 4 * 2**20  # rows processed at a time: about this many pixels


def _row_bands(h: int, w: int) -> Iterator[tuple[int, int]]:
    step = max(1, _BAND_PIXELS // max(1, w))
    for r0 in range(0, h, step):
        yield r0, min(h, r0 + step)


# --------------------------------------------------------------------------------------------
# Images in memory
# --------------------------------------------------------------------------------------------


def palette_array(palette: Palette) -> np.ndarray:
    """The palette as an N x 3 uint8 array (checked)."""
    arr = np.asarray(palette)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise PredictionError(f"a palette is a list of [r, g, b] colours; got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise PredictionError("palette colours must be within 0..255")
    return arr.astype(np.uint8)


def _check_labels(labels: np.ndarray, num_colors: int) -> None:
    if labels.ndim != 2:
        raise PredictionError(f"labels must be an H x W array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise PredictionError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_colors):
        raise PredictionError(
            f"labels hold values {int(labels.min())}..{int(labels.max())} but the palette has {num_colors} colours"
        )


def colorize(labels: np.ndarray, palette: Palette) -> np.ndarray:
    """H x W class indices -> H x W x 3 uint8 colours of the dataset's palette."""
    lut = palette_array(palette)
    _check_labels(labels, len(lut))
    return lut[labels]


def overlay(image: np.ndarray, labels: np.ndarray, palette: Palette, opacity: float = 0.5) -> np.ndarray:
    """Colours blended over the image: ``round(image * (1 - opacity) + colour * opacity)``."""
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0.0 <= opacity <= 1.0:
        raise PredictionError(f"opacity must be a number from 0 to 1, got {opacity!r}")
    if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PredictionError(
            f"overlay needs an H x W x 3 uint8 image of the labels' size {labels.shape}, "
            f"got {image.dtype} {image.shape}"
        )
    lut = palette_array(palette)
    _check_labels(labels, len(lut))
    out = np.empty_like(image)
    h, w = labels.shape
    a = np.float32(opacity)
    for r0, r1 in _row_bands(h, w):
        blend = image[r0:r1].astype(np.float32) * (np.float32(1) - a)
        blend += lut[labels[r0:r1]].astype(np.float32) * a
        np.rint(blend, out=blend)
        out[r0:r1] = blend
    return out


def confidence_from_logits(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per pixel of C x H x W logits: H x W float32 in (0, 1]."""
    if logits.ndim != 3:
        raise PredictionError(f"logits must be C x H x W, got shape {logits.shape}")
    _, h, w = logits.shape
    out = np.empty((h, w), dtype=np.float32)
    for r0, r1 in _row_bands(h, w * max(1, logits.shape[0])):
        band = logits[:, r0:r1].astype(np.float32)
        band -= band.max(axis=0, keepdims=True)
        np.exp(band, out=band)
        out[r0:r1] = 1.0 / band.sum(axis=0)
    return out


def confidence_from_probs(probs: np.ndarray) -> np.ndarray:
    """Max probability per pixel of C x H x W probabilities: H x W float32."""
    if probs.ndim != 3:
        raise PredictionError(f"probabilities must be C x H x W, got shape {probs.shape}")
    return probs.max(axis=0).astype(np.float32, copy=False)


def class_areas(labels: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Classes present in ``labels``, largest first: index, name, pixels and percent of the image."""
    _check_labels(labels, len(classes))
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    total = int(labels.size)
    order = sorted((i for i in range(len(classes)) if counts[i] > 0), key=lambda i: (-counts[i], i))
    return [
        {
            "index": int(i),
            "name": classes[i],
            "pixels": int(counts[i]),
            "percent": round(100.0 * int(counts[i]) / total, 4),
        }
        for i in order
    ]


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (kept by Python as surrogates) shown as U+FFFD.

    A file name need not be UTF-8; JSON and terminals need text that is.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def summary(
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    model: str | None = None,
    image: str | None = None,
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The per-image JSON document: input (the image, as the JSON lines on stdout name it), size, model, class
    areas, timings (seconds)."""
    h, w = labels.shape
    doc: dict[str, Any] = {
        "input": printable(image) if image is not None else None,
        "width": int(w),
        "height": int(h),
        "model": model,
        "classes": class_areas(labels, classes),
        "timings": {k: round(float(v), 6) for k, v in (timings or {}).items()},
    }
    if extra:
        doc.update(extra)
    return doc


# --------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Write through ``write(file object)`` with psegzoo's one atomic writer (mode 0666 & ~umask,
    temporary file beside ``path``, fsync, rename)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return files.write_atomic(target, write)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None


def label_png_image(labels: np.ndarray, palette: Palette, name: str = "labels") -> Image.Image:
    """The label map as a palette image: mode P, pixel value = class index, colours = ``palette``.

    PNG palettes hold at most 256 entries; more classes raise :class:`OutputError` (save the
    labels with ``numpy.save`` instead).
    """
    lut = palette_array(palette)
    if len(lut) > 256:
        raise OutputError(
            f"{name}: a palette PNG holds at most 256 classes, this model has {len(lut)}; "
            "save the labels as .npy instead"
        )
    _check_labels(labels, len(lut))
    im = Image.fromarray(labels.astype(np.uint8, copy=False))
    im.putpalette(lut.reshape(-1).tolist())
    return im


def _rgb_image(rgb: np.ndarray) -> Image.Image:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise PredictionError(f"expected an H x W x 3 uint8 image, got {rgb.dtype} {rgb.shape}")
    return Image.fromarray(np.ascontiguousarray(rgb))


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def save_label_png(labels: np.ndarray, palette: Palette, path: str | os.PathLike) -> Path:
    """The label map as a palette PNG file (see :func:`label_png_image`)."""
    im = label_png_image(labels, palette, Path(path).name)
    return _atomic_write(path, lambda f: im.save(f, format="PNG"))


def label_png_bytes(labels: np.ndarray, palette: Palette) -> bytes:
    """The bytes :func:`save_label_png` writes, in memory (what a web service answers)."""
    return _png_bytes(label_png_image(labels, palette))


def save_rgb_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """An H x W x 3 uint8 image (colour map or overlay) as an RGB PNG."""
    im = _rgb_image(rgb)
    return _atomic_write(path, lambda f: im.save(f, format="PNG"))


def rgb_png_bytes(rgb: np.ndarray) -> bytes:
    """The bytes :func:`save_rgb_png` writes, in memory."""
    return _png_bytes(_rgb_image(rgb))


def save_confidence(confidence: np.ndarray, path: str | os.PathLike) -> Path:
    """Per-pixel confidence in [0, 1]: ``.png`` as 16-bit grey ``round(p * 65535)``, ``.npy`` as float32."""
    if confidence.ndim != 2:
        raise PredictionError(f"confidence must be H x W, got shape {confidence.shape}")
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        arr = confidence.astype(np.float32, copy=False)
        return _atomic_write(path, lambda f: np.save(f, arr))
    if suffix == ".png":
        scaled = np.rint(np.clip(confidence, 0.0, 1.0).astype(np.float64) * 65535.0).astype(np.uint16)
        im = Image.fromarray(scaled)  # mode I;16
        return _atomic_write(path, lambda f: im.save(f, format="PNG"))
    raise OutputError(
        f"{Path(path).name}: confidence is written as .png (16-bit) or .npy, not {suffix or 'no extension'}"
    )


def read_confidence_png(path: str | os.PathLike) -> np.ndarray:
    """A confidence PNG written by :func:`save_confidence` back as float32 in [0, 1]."""
    with Image.open(path) as im:
        return np.asarray(im).astype(np.float32) / np.float32(65535)


def save_logits(logits: np.ndarray, path: str | os.PathLike) -> Path:
    """C x H x W logits as a float16 ``.npy`` (converted band by band: no full-size float copy).

    float16 keeps about 3 significant digits and overflows beyond 65504, far above real logits.
    """
    if logits.ndim != 3:
        raise PredictionError(f"logits must be C x H x W, got shape {logits.shape}")

    def write(f: Any) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                  "shape": tuple(int(s) for s in logits.shape)}
        np.lib.format.write_array_header_1_0(f, header)
        c, h, w = logits.shape
        for ch in range(c):
            for r0, r1 in _row_bands(h, w):
                f.write(np.ascontiguousarray(logits[ch, r0:r1], dtype=np.float16).tobytes())

    return _atomic_write(path, write)


def save_json(document: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """A JSON document (UTF-8, indented)."""
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return _atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------------------------------
# Output names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPaths:
    """Where each output of one image goes (only the requested ones are written)."""

    labels: Path
    color: Path
    overlay: Path
    probs_png: Path
    probs_npy: Path
    logits: Path
    json: Path


def _split_name(name: str) -> tuple[tuple[str, ...], str]:
    """``sub/dir/stem`` -> (("sub", "dir"), "stem"), refusing names that leave the output folder.

    The stem is text, not a path component: any legal file name works (``.`` for an input named
    ``..png`` gives ``..png``; ``:`` and, outside Windows, ``\\`` are ordinary characters).
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise OutputError(f"output name {name!r} must be a non-empty relative path")
    text = name.replace("\\", "/") if os.name == "nt" else name
    *folders, stem = text.split("/")
    if text.startswith("/") or (os.name == "nt" and PureWindowsPath(text).drive) or not stem or any(
        f in ("", ".", "..") for f in folders
    ):
        raise OutputError(f"output name {name!r} must be a relative path without '..'")
    return tuple(folders), stem


def output_paths(out_dir: str | os.PathLike, name: str) -> OutputPaths:
    """The output files of the image named ``name`` (a stem, possibly with subfolders) in ``out_dir``."""
    folders, stem = _split_name(name)
    base = Path(out_dir).joinpath(*folders)
    return OutputPaths(**{k: base / (stem + s) for k, s in OUTPUT_SUFFIXES.items()})


def unique_names(names: Sequence[str], *, out_dir: str | os.PathLike | None = None,
                 inputs: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Output names, in order, with ``_2``, ``_3``, ... added where files would collide.

    Two names collide when any of their output files would be the same (compared without case,
    for case-insensitive file systems): ``x`` and ``X``, but also ``x`` and ``x_overlay`` (whose
    label map ``x_overlay.png`` is ``x``'s overlay). Given ``out_dir`` and the ``inputs``, a name
    whose files would replace an input (the input itself, a hard link of it or a symlink to it:
    :class:`psegzoo.files.InputGuard`) is renamed the same way: no output ever overwrites an input.
    """
    guard = files.InputGuard(inputs) if out_dir is not None else None
    taken: set[str] = set()
    result = []
    for name in names:
        folders, stem = _split_name(name)
        rel = "/".join((*folders, stem))
        candidate, n = rel, 1
        while any(f in taken for f in _family(candidate)) or _replaces_input(out_dir, candidate, guard):
            n += 1
            candidate = f"{rel}_{n}"
        taken.update(_family(candidate))
        result.append(candidate)
    return result


def _replaces_input(out_dir: str | os.PathLike | None, name: str, guard: files.InputGuard | None) -> bool:
    if out_dir is None or guard is None:
        return False
    return any(guard.overwritten_by(p) is not None for p in vars(output_paths(out_dir, name)).values())


def _family(name: str) -> list[str]:
    return [(name + s).lower() for s in OUTPUT_SUFFIXES.values()]


def unique_output_names(names: Sequence[str], *, out_dir: str | os.PathLike | None = None,
                        inputs: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Output names with ``_2``, ``_3``, ... added where two images would write the same files,
    or (given ``out_dir`` and ``inputs``) where an output would replace an input (public: ``psegzoo.unique_output_names``)."""
    return unique_names(names, out_dir=out_dir, inputs=inputs)


# --------------------------------------------------------------------------------------------
# Reading back: is an existing output whole?
# --------------------------------------------------------------------------------------------

_PNG_MODES = {"labels": ("P",), "color": ("RGB",), "overlay": ("RGB",), "probs_png": ("I;16", "I;16B", "I;16L", "I")}


def _png_intact(path: Path, kind: str, size: tuple[int, int]) -> bool:
    with Image.open(path) as im:
        if im.format != "PNG" or im.mode not in _PNG_MODES[kind] or im.size != size:
            return False
        im.verify()  # every chunk's CRC, up to the end marker
    with Image.open(path) as im:
        im.load()  # every row decodes
    return True


def _npy_intact(path: Path, kind: str, size: tuple[int, int]) -> bool:
    w, h = size
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        data_start = f.tell()
    if fortran or dtype != (np.float32 if kind == "probs_npy" else np.float16):
        return False
    if shape[-2:] != (h, w) or len(shape) != (2 if kind == "probs_npy" else 3):
        return False
    return os.path.getsize(path) == data_start + int(np.prod(shape)) * dtype.itemsize


def _json_intact(path: Path, size: tuple[int, int]) -> bool:
    with open(path, "rb") as f:
        doc = json.loads(f.read(1 << 26))
    return isinstance(doc, dict) and (doc.get("width"), doc.get("height")) == size


def output_intact(path: str | os.PathLike, kind: str, size: tuple[int, int]) -> bool:
    """Whether the existing output ``path`` of ``kind`` (a key of :data:`OUTPUT_SUFFIXES`) decodes
    in full and is of the image's ``size`` (width, height): what ``--skip-existing`` trusts."""
    target = Path(path)
    try:
        if kind in _PNG_MODES:
            return _png_intact(target, kind, size)
        if kind in ("probs_npy", "logits"):
            return _npy_intact(target, kind, size)
        if kind == "json":
            return _json_intact(target, size)
    except Exception:  # missing, unreadable, truncated, not the format: not intact
        return False
    raise ValueError(f"unknown output kind {kind!r}")
