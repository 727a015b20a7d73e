"""Reading input images as HxWx3 uint8 RGB arrays, and finding them on disk.

Conversion rules (every Pillow mode ends as 8-bit RGB; they follow what ``cv2.imread`` with
``IMREAD_COLOR`` gives mmsegmentation, so the labels match its test pipeline):

* EXIF orientation is applied (``ImageOps.exif_transpose``), as ``cv2.imread`` does.
* Alpha is dropped, never composited: ``RGBA``/``RGBa``/``RGBX`` keep their RGB, ``LA`` its grey,
  ``P``/``PA`` with transparency the palette colour of each pixel.
* Grey (``L``, ``1`` as 0/255) is repeated into three channels.
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and ``uint16`` arrays are scaled to 8 bits
  by keeping the high byte (``v >> 8``, what libpng's strip-16 gives OpenCV); ``I`` (32-bit integer)
  is read as 16-bit data: clipped to 0..65535, then ``>> 8``. 16-bit RGB PNGs are scaled the same
  way by Pillow itself. Nothing is clipped at 255.
* ``F`` (32-bit float) follows Pillow's own float-to-grey rule: values are grey levels 0..255,
  fractions dropped, out-of-range values clipped.
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and any other mode use Pillow's ``convert("RGB")``;
  embedded ICC profiles are ignored (OpenCV ignores them too).
* Multi-frame files (GIF, TIFF) give their first frame.

Numpy arrays are taken as RGB (a ``cv2.imread`` array is BGR: pass ``img[..., ::-1]``).

Safety: a file whose header declares more than ``max_pixels`` pixels is refused before decoding
(argument, else env ``PSEGZOO_MAX_PIXELS``, else ``DEFAULT_MAX_PIXELS`` = 2**27, about
11585 x 11585). Pillow's own hard limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 million
pixels unless the application changes it) still applies on top. Truncated files are refused
(Pillow's ``LOAD_TRUNCATED_IMAGES`` is left off). Every failure raises :class:`ImageError`
naming the file, with a one-line reason.
"""
from __future__ import annotations

import glob
import logging
import os
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 2**27
MAX_PIXELS_ENV = "PSEGZOO_MAX_PIXELS"

# Extensions picked up when a directory is searched (files named explicitly may have any).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)

ImageInput = str | os.PathLike | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_DROP_ALPHA_VIA_RGBA = ("P", "PA", "RGBA", "LA")


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: the argument, else ``PSEGZOO_MAX_PIXELS``, else the default."""
    if max_pixels is not None:
        value, where = max_pixels, "max_pixels"
    else:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        where = MAX_PIXELS_ENV
        try:
            value = int(env.replace("_", ""))
        except ValueError:
            raise ImageError(f"{MAX_PIXELS_ENV}={env!r} is not an integer pixel count (e.g. 200000000)") from None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ImageError(f"{where} must be a positive number of pixels, got {value!r}")
    return value


def load_image(src: ImageInput, *, max_pixels: int | None = None) -> np.ndarray:
    """Read ``src`` (path, PIL image or array) as a C-contiguous, writable HxWx3 uint8 RGB array.

    Arrays already in that form are returned as they are (no copy). See the module docstring for
    how each image mode is converted.
    """
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, Image.Image):
        name = getattr(src, "filename", "") or "<PIL image>"
        try:
            return _from_pil(src, name)
        except ImageError:
            raise
        except _DECODE_ERRORS as exc:  # a lazily opened image decodes here
            raise ImageError(f"{name}: {_decode_reason(exc)}") from None
    if isinstance(src, (str, os.PathLike)):
        return _from_file(Path(src), max_pixels_limit(max_pixels))
    raise ImageError(
        f"cannot read an image from a {type(src).__name__}; pass a file path, a PIL image "
        "or an HxWx3 uint8 RGB numpy array"
    )


def _from_file(path: Path, limit: int) -> np.ndarray:
    name = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageError(f"{name}: is a directory, not an image file")
    if size == 0:
        raise ImageError(f"{name}: file is empty (0 bytes)")
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            # Our own limit is checked below; Pillow's soft-limit warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(f)
            except UnidentifiedImageError:
                f.seek(0)
                raise ImageError(f"{name}: {_unidentified_reason(f.read(32))}") from None
            except Image.DecompressionBombError as exc:
                raise ImageError(f"{name}: {_bomb_reason(exc)}") from None
            with im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ImageError(f"{name}: image has zero size ({w}x{h})")
                if w * h > limit:
                    raise ImageError(
                        f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {limit} "
                        f"(possible decompression bomb); raise it with {MAX_PIXELS_ENV} or max_pixels "
                        "if the file is trusted"
                    )
                try:
                    im.load()
                except Image.DecompressionBombError as exc:
                    raise ImageError(f"{name}: {_bomb_reason(exc)}") from None
                return _from_pil(im, name)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode it") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: {_decode_reason(exc)}") from None


# What Pillow's decoders raise on damaged data (truncated streams, bad chunks, bad headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


def _decode_reason(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return f"{'truncated' if 'truncat' in text.lower() else 'corrupt or truncated'} file ({text})"


def _bomb_reason(exc: BaseException) -> str:
    text = str(exc).split(",")[0].strip()
    return (
        f"refused as a possible decompression bomb ({text}, Pillow's own limit); raise "
        "PIL.Image.MAX_IMAGE_PIXELS in your program if the file is trusted"
    )


def _unidentified_reason(head: bytes) -> str:
    """Why Pillow could not open a file, from its first bytes (zero-size PNG/GIF/BMP headers)."""
    size = None
    kind = None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        kind, size = "PNG", struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        kind, size = "GIF", struct.unpack("<HH", head[6:10])
    elif head.startswith(b"BM") and len(head) >= 26:
        kind, size = "BMP", struct.unpack("<ii", head[18:26])
    if size is not None and (size[0] == 0 or size[1] == 0):
        return f"image has zero size ({size[0]}x{size[1]})"
    if kind is not None:
        return f"corrupt {kind} header (Pillow cannot read it)"
    return "not an image (format not recognised by Pillow)"


def _from_pil(im: Image.Image, name: str) -> np.ndarray:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has zero size ({w}x{h})")
    try:
        oriented = ImageOps.exif_transpose(im)
    except Exception as exc:  # a malformed EXIF block must not lose the image
        log.warning("%s: EXIF orientation ignored (%s)", name, exc)
        oriented = im
    im = oriented if oriented is not None else im
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode in ("L", "1"):
        arr = _grey_to_rgb(np.asarray(im.convert("L")))
    elif mode in _SIXTEEN_BIT_MODES:
        arr = _grey_to_rgb(_sixteen_to_eight(np.asarray(im)))
    elif mode == "I":
        values = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        arr = _grey_to_rgb(_sixteen_to_eight(values))
    elif mode == "F":
        arr = _grey_to_rgb(np.asarray(im.convert("L")))
    elif mode in _DROP_ALPHA_VIA_RGBA:
        arr = np.asarray(im.convert("RGBA"))[..., :3]
    else:
        try:
            arr = np.asarray(im.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise ImageError(f"{name}: image mode {mode!r} cannot be converted to RGB ({exc})") from None
    out = np.ascontiguousarray(arr, dtype=np.uint8)
    return out if out.flags.writeable else out.copy()  # Pillow's arrays are read-only views


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.uint16, copy=False) >> 8).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        pass
    elif arr.ndim != 2:
        raise ImageError(
            f"array of shape {arr.shape} is not an image; expected HxWx3 RGB (HxW grey and HxWx4 RGBA "
            "are accepted too)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"array image has zero size ({arr.shape[1]}x{arr.shape[0]})")
    if arr.dtype == np.uint16:
        arr = _sixteen_to_eight(arr)
    elif arr.dtype != np.uint8:
        raise ImageError(
            f"array image has dtype {arr.dtype}; expected uint8 (0..255) or uint16, e.g. "
            "(img * 255).round().astype(np.uint8) for floats in 0..1"
        )
    if arr.ndim == 2:
        return _grey_to_rgb(arr)
    if arr.shape[2] == 1:
        return _grey_to_rgb(arr[:, :, 0])
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
# Finding input files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundImage:
    """One input file and its name relative to the input it came from, without extension.

    ``relative`` keeps the subdirectories below a directory (or a glob's fixed prefix), so
    outputs can mirror the input tree: ``photos/`` holding ``a/x.png`` gives ``a/x``.
    """

    path: Path
    relative: str


@dataclass(frozen=True)
class FoundImages:
    """The files found, in input order, and an error for each input that matched nothing."""

    images: tuple[FoundImage, ...]
    errors: tuple[ImageError, ...]

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.images]


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk(root: Path, excluded: set[Path]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and _resolved(here / d) not in excluded
        )
        for fn in sorted(filenames):
            p = here / fn
            if not fn.startswith(".") and _is_image_name(p) and p.is_file():
                found.append(p)
    return found


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _relative_name(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            rel = path.relative_to(base)
            return rel.with_suffix("").as_posix()
        except ValueError:
            pass
    return path.stem


def find_images(
    inputs: Iterable[str | os.PathLike],
    *,
    exclude: Iterable[str | os.PathLike] = (),
) -> FoundImages:
    """Expand files, directories (recursive, by image extension) and globs, keeping input order.

    A file named explicitly is taken whatever its extension (a non-image fails later, when it is
    read). In directories, hidden files and folders and the ``exclude`` folders (e.g. the output
    folder) are skipped. A file reached twice is listed once. Inputs that match nothing become
    :class:`ImageError` entries in ``errors`` instead of stopping the search, so a batch goes on.
    """
    excluded = {_resolved(Path(p)) for p in exclude}
    seen: set[Path] = set()
    images: list[FoundImage] = []
    errors: list[ImageError] = []

    def add(path: Path, base: Path | None) -> None:
        key = _resolved(path)
        if key in seen:
            return
        seen.add(key)
        images.append(FoundImage(path=path, relative=_relative_name(path, base)))

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = _walk(path, excluded)
            if not files:
                kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
                errors.append(ImageError(f"{text}: no image files in this directory ({kinds})"))
            for f in files:
                add(f, path)
        elif path.exists():
            add(path, None)
        elif _has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            base = _glob_base(text)
            files = []
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    files.extend(_walk(mp, excluded))
                elif mp.is_file() and _is_image_name(mp):
                    files.append(mp)
            if not files:
                errors.append(ImageError(f"{text}: no image file matches this pattern"))
            for f in files:
                add(f, base)
        else:
            errors.append(ImageError(f"{text}: file not found"))
    return FoundImages(images=tuple(images), errors=tuple(errors))


def _glob_base(pattern: str) -> Path | None:
    """The fixed directory part of a glob (``data/**/*.png`` -> ``data``), or None."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else None
