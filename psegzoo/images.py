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

import fnmatch
import glob
import io
import logging
import os
import struct
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTooLargeError, check_count, option
from .settings import MAX_PIXELS_ENV, max_pixels_from_env

log = logging.getLogger(__name__)

SAMPLE_IMAGE = "street.png"
DEFAULT_MAX_PIXELS = 2**27

# Extensions picked up when a directory is searched (files named explicitly may have any).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# Video extensions, picked up from directories when videos are asked for (read by psegzoo.video).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts",
     ".m2ts", ".3gp", ".ogv", ".vob"}
)

ImageInput = str | os.PathLike | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_DROP_ALPHA_VIA_RGBA = ("P", "PA", "RGBA", "LA")


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: the argument, else ``PSEGZOO_MAX_PIXELS``, else the default."""
    if max_pixels is not None:
        value, where = max_pixels, "max_pixels"
    else:
        env = max_pixels_from_env()
        if env is None:
            return DEFAULT_MAX_PIXELS
        value, where = env, MAX_PIXELS_ENV
    return check_count(value, where, ImageError, unit="number of pixels")


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
        with open(path, "rb") as f:
            return _from_stream(f, name, limit)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{name}: {_decode_reason(exc)}") from None


def decode_image(data: bytes, *, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image held in memory (an upload, a request body, a file read by the caller to
    hash what it decodes) exactly as :func:`load_image` reads a file, with the same pixel limit; errors
    name the image as ``name``."""
    if not data:
        raise ImageError(f"{name}: empty (0 bytes)")
    return _from_stream(io.BytesIO(data), name, max_pixels_limit(max_pixels))


def _from_stream(f: BinaryIO, name: str, limit: int) -> np.ndarray:
    """Decode an open binary stream: the header's size is checked against ``limit`` before any pixel is read."""
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below; Pillow's soft-limit warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(f)
            except UnidentifiedImageError:
                f.seek(0)
                raise ImageError(f"{name}: {_unidentified_reason(f.read(32))}") from None
            except Image.DecompressionBombError as exc:
                raise ImageTooLargeError(f"{name}: {_bomb_reason(exc)}") from None
            with im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ImageError(f"{name}: image has zero size ({w}x{h})")
                if w * h > limit:
                    raise ImageTooLargeError(
                        f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {limit} "
                        f"(possible decompression bomb); raise it with {option('max_pixels=N', '--max-pixels N')} "
                        f"or {MAX_PIXELS_ENV} if the file is trusted"
                    )
                try:
                    im.load()
                except Image.DecompressionBombError as exc:
                    raise ImageTooLargeError(f"{name}: {_bomb_reason(exc)}") from None
                return _from_pil(im, name)
    except ImageError:
        raise
    except PermissionError:
        raise
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


def sample_image() -> Path:
    """A small street scene shipped with psegzoo (512 x 256 PNG) to try a model on.

    Drawn by ``tools/make_sample_image.py`` (procedural, no photograph): psegzoo's own work,
    under psegzoo's licence (Apache-2.0).
    """
    return Path(str(resources.files("psegzoo") / "data" / SAMPLE_IMAGE))


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)




def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
        return path.absolute()


def _inside(path: Path, folders: set[Path]) -> Path | None:
    """The folder of ``folders`` that holds ``path`` (both real paths), or None."""
    for folder in folders:
        if path == folder or folder in path.parents:
            return folder
    return None


class _Search:
    """One expansion of the inputs: files in input order, each once, and a problem per input.

    Folders are walked without following directory symlinks (a link to a parent would loop
    forever); files are de-duplicated by real path. Nothing inside an excluded folder (the
    output folder) is found by a walk or a pattern, so earlier outputs never come back as inputs.
    """

    def __init__(self, excluded: set[Path], extensions: frozenset[str]):
        self.excluded = excluded
        self.extensions = extensions
        self.seen: set[Path] = set()
        self.images: list[FoundImage] = []
        self.errors: list[ImageError] = []

    def paths(self) -> list[Path]:
        return [f.path for f in self.images]

    def add(self, path: Path, relative: str) -> None:
        key = _resolved(path)
        if key in self.seen:
            return
        self.seen.add(key)
        self.images.append(FoundImage(path=path, relative=relative))

    def walk(self, root: Path, match: Callable[[tuple[str, ...], bool], bool] | None = None) -> list[tuple[Path, tuple[str, ...]]]:
        """Image files below ``root`` as (path, parts relative to root), sorted, pruned by ``match``.

        ``match(parts, False)`` says whether a path matches, ``match(parts, True)`` whether a folder
        may hold matches further down (else it is not entered). A folder that matches as a whole
        gives every image below it; without ``match`` every image is taken.
        """
        found: list[tuple[Path, tuple[str, ...]]] = []
        whole: set[str] = set()

        def unreadable(exc: OSError) -> None:
            where = exc.filename if exc.filename is not None else root
            self.errors.append(ImageError(
                f"{where}: folder cannot be read ({exc.strerror or exc}); the images in it were skipped"
            ))

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
            here = Path(dirpath)
            rel_dir = here.relative_to(root).parts if here != root else ()
            inherited = dirpath in whole
            keep = []
            for d in sorted(dirnames):
                parts = (*rel_dir, d)
                if d.startswith(".") or (here / d).is_symlink() or _inside(_resolved(here / d), self.excluded):
                    continue
                if inherited or match is None or match(parts, False):
                    whole.add(os.path.join(dirpath, d))
                    keep.append(d)
                elif match(parts, True):
                    keep.append(d)
            dirnames[:] = keep
            for fn in sorted(filenames):
                parts = (*rel_dir, fn)
                if fn.startswith(".") or Path(fn).suffix.lower() not in self.extensions:
                    continue
                if not (inherited or match is None or match(parts, False)):
                    continue
                p = here / fn
                if p.is_file():
                    found.append((p, parts))
        return found

    def excluded_root(self, text: str, root: Path) -> bool:
        folder = _inside(_resolved(root), self.excluded)
        if folder is None:
            return False
        self.errors.append(ImageError(
            f"{text}: lies in the output folder {folder}, which is never searched for inputs (its files "
            "may be earlier results); choose an output folder outside the inputs"
        ))
        return True

    def folder(self, text: str, root: Path) -> None:
        if self.excluded_root(text, root):
            return
        problems = len(self.errors)
        files = self.walk(root)
        if not files and len(self.errors) == problems:
            what = "image or video" if self.extensions != IMAGE_EXTENSIONS else "image"
            kinds = ", ".join(sorted(self.extensions))
            self.errors.append(ImageError(f"{text}: no {what} files in this directory ({kinds})"))
        for path, parts in files:
            self.add(path, _stem_name(parts))

    def pattern(self, text: str) -> None:
        base, pats = _split_pattern(text)
        root = base if base is not None else Path(".")
        if not root.is_dir():
            self.errors.append(ImageError(f"{text}: no image file matches this pattern"))
            return
        if self.excluded_root(text, root):
            return
        problems = len(self.errors)
        files = self.walk(root, lambda parts, prefix: _match_parts(parts, pats, prefix))
        if not files and len(self.errors) == problems:
            self.errors.append(ImageError(f"{text}: no image file matches this pattern"))
        for path, parts in files:
            # Named below the pattern's fixed folder; a pattern without one names files by their stem.
            self.add(path, _stem_name(parts) if base is not None else _stem_name(parts[-1:]))


def _stem_name(parts: tuple[str, ...]) -> str:
    """Relative parts of a file -> its output name: folders kept, the last extension dropped.

    Built as text, not with ``Path.with_suffix``: a file named ``..png`` has the stem ``.``, which
    a path would swallow.
    """
    *folders, name = parts
    suffix = Path(name).suffix
    stem = name[: -len(suffix)] if suffix else name
    return "/".join((*folders, stem))


def _split_pattern(pattern: str) -> tuple[Path | None, tuple[str, ...]]:
    """``data/**/*.png`` -> (``data``, (``**``, ``*.png``)): the fixed folder, then the parts to match."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        fixed.append(part)
    return (Path(*fixed) if fixed else None), tuple(parts[len(fixed):])


def _match_parts(names: tuple[str, ...], pats: tuple[str, ...], prefix: bool) -> bool:
    """Whether ``names`` matches ``pats`` as :mod:`glob` would (``**`` spans folders, wildcards skip
    hidden names); with ``prefix``, whether a folder ``names`` may hold a match further down."""

    def component(name: str, pat: str) -> bool:
        if name.startswith(".") and not pat.startswith("."):
            return False
        return fnmatch.fnmatchcase(name, pat) if _has_magic(pat) else name == pat

    def match(i: int, j: int) -> bool:
        if i == len(names):
            return j < len(pats) if prefix else all(p == "**" for p in pats[j:])
        if j == len(pats):
            return False
        if pats[j] == "**":
            return match(i, j + 1) or (not names[i].startswith(".") and match(i + 1, j))
        return component(names[i], pats[j]) and match(i + 1, j + 1)

    return match(0, 0)


def walk_images(root: str | os.PathLike) -> tuple[list[Path], tuple[ImageError, ...]]:
    """The image files below the folder ``root``, walked as :func:`find_images` walks a folder
    (sorted, hidden names skipped, symlinked folders not entered, each file once by real path),
    and an error for each folder that could not be read."""
    search = _Search(set(), IMAGE_EXTENSIONS)
    for path, parts in search.walk(Path(root)):
        search.add(path, _stem_name(parts))
    return search.paths(), tuple(search.errors)


def find_images(
    inputs: Iterable[str | os.PathLike],
    *,
    exclude: Iterable[str | os.PathLike] = (),
    videos: bool = False,
) -> FoundImages:
    """Expand files, directories (recursive, by image extension) and globs, keeping input order.

    With ``videos``, folders and patterns also give the files with a video extension
    (:data:`VIDEO_EXTENSIONS`), for callers that segment videos too (``psegzoo predict``).

    A file named explicitly is taken whatever its extension and wherever it lies (a non-image
    fails later, when it is read). Folders and patterns skip hidden files and folders, do not
    follow directory symlinks, and never look inside the ``exclude`` folders (e.g. the output
    folder), even when one of them is the folder given: compared by real path. A file reached
    twice is listed once. Inputs that match nothing and folders that cannot be read become
    :class:`ImageError` entries in ``errors`` instead of stopping the search, so a batch goes on.
    """
    search = _Search({_resolved(Path(p)) for p in exclude}, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS)
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            search.folder(text, path)
        elif path.exists():
            search.add(path, _stem_name((path.name,)))
        elif _has_magic(text):
            search.pattern(text)
        else:
            search.errors.append(ImageError(f"{text}: file not found"))
    return FoundImages(images=tuple(search.images), errors=tuple(search.errors))
