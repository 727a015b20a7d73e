"""Videos: segment every frame (or every K-th) of any container PyAV opens.

Files written for a video whose output name is ``<stem>`` (see :func:`video_paths`):

* ``<stem>/<frame index, 6 digits>.png``  label map of each kept frame (palette PNG, as for images);
  the index is the frame's position in the input, so ``--every 5`` gives 000000, 000005, ...
* ``<stem>_overlay.mp4``                   the colours blended over the frames
* ``<stem>_color.mp4``                     the colour maps alone
* ``<stem>.json``                          class areas of every kept frame

The videos keep the input's frame rate divided by K, so they last as long as the input. They are
H.264 (``libx264``, CRF 18) when PyAV's FFmpeg has that encoder, which the PyPI wheels do, else
MPEG-4 part 2; odd widths or heights are padded by one edge pixel (4:2:0 needs even sizes). The
videos are renderings for people: their bytes may differ from run to run (the encoder's own
choices), the label PNGs are the exact result.
Display rotation metadata (phones) is applied, as EXIF orientation is for images.

Nothing is visible before a video is done: frames go to a hidden folder and the videos to hidden
temporary files beside their targets; when the last frame is done the videos and the JSON are
renamed into place, then the frame folder. A failure or ``SIGTERM`` leaves no partial output.

A frame folder holds a record of the files psegzoo wrote into it (:data:`FRAMES_RECORD`: names and
SHA-256). A later run into the same folder replaces and removes only those files, unchanged; a
folder that holds anything else (a file of the user's, a frame edited since) is refused before any
frame is decoded, and nothing in it is touched.

PyAV is optional (``pip install 'psegzoo[video]'``): without it a video input is a one-line
:class:`VideoError` saying so. Videos are recognised by extension (:data:`VIDEO_EXTENSIONS`); a
file with another extension that Pillow does not read is probed with PyAV.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import files, outputs
from .errors import OutputError, PsegzooError, VideoError, check_count, option
from .images import IMAGE_EXTENSIONS, MAX_PIXELS_ENV, VIDEO_EXTENSIONS, max_pixels_limit

__all__ = ["FRAMES_RECORD", "VIDEO_EXTENSIONS", "Frame", "VideoInfo", "VideoPaths", "VideoResult", "VideoWriter", "available", "encoder",
           "is_video", "predict_video", "probe", "read_frames", "require", "video_paths"]
INSTALL_HINT = "pip install 'psegzoo[video]'"
DEFAULT_FPS = Fraction(25)
FRAME_NAME = re.compile(r"\d{6,}\.png")  # a label frame in a video's folder
#: In a frame folder: the files psegzoo wrote there (``{"files": {name: sha256}}``); only those are ever replaced or removed.
FRAMES_RECORD = ".psegzoo-frames.json"


def _av(what: str) -> ModuleType:
    """PyAV, or a one-line error naming the input and how to install it."""
    try:
        import av
    except ImportError:
        raise VideoError(f"{what}: reading videos needs PyAV, which is not installed; install it with {INSTALL_HINT}") from None
    return av


def available() -> bool:
    """Whether PyAV can be imported."""
    try:
        _av("")
    except VideoError:
        return False
    return True


def require(paths: Sequence[str | os.PathLike]) -> None:
    """Raise the install hint when there are videos among ``paths`` and PyAV is missing."""
    if paths:
        _av(str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} other video(s))")


def is_video(path: str | os.PathLike) -> bool:
    """A video by extension; with another extension, a file Pillow cannot read that PyAV opens as a video."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix in IMAGE_EXTENSIONS or not available() or not Path(path).is_file():
        return False
    try:
        with Image.open(path):
            return False
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass
    try:
        probe(path)
    except VideoError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (``frames`` is 0 when it does not say)."""

    width: int
    height: int
    frames: int
    fps: Fraction


def _open(av: ModuleType, path: Path) -> Any:
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path}: not a video PyAV can read ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    return container


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0]


def _fps(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else DEFAULT_FPS


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame count and rate from the container's headers, without decoding."""
    path = Path(path)
    av = _av(str(path))
    with _open(av, path) as container:
        stream = container.streams.video[0]
        fps = _fps(stream)
        frames = int(stream.frames or 0)
        if not frames and stream.duration and stream.time_base:
            frames = round(float(stream.duration * stream.time_base * fps))
        if not frames and container.duration:  # e.g. Matroska: only the container's duration, in microseconds
            frames = round(container.duration / 1_000_000 * float(fps))
        ctx = stream.codec_context
        return VideoInfo(int(ctx.width), int(ctx.height), frames, fps)


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its position in the video, its time in seconds and its RGB pixels."""

    index: int
    time: float | None
    rgb: np.ndarray


def _upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    """Apply a display matrix's rotation (degrees, counter-clockwise) as players do."""
    k = round(rotation / 90.0) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def check_frame_size(path: str | os.PathLike, width: int, height: int, limit: int, where: str = "frames") -> None:
    """Refuse video frames larger than the pixel limit, as :func:`psegzoo.images.load_image` refuses images."""
    if width * height > limit:
        raise VideoError(
            f"{path}: {where} of {width}x{height} = {width * height} pixels exceed the limit of {limit} "
            f"(possible decompression bomb); raise it with {option('max_pixels=N', '--max-pixels N')} "
            f"or {MAX_PIXELS_ENV} if the file is trusted"
        )


def read_frames(path: str | os.PathLike, every: int = 1, *, max_pixels: int | None = None) -> Iterator[Frame]:
    """Decode frames 0, ``every``, 2 * ``every``, ... as H x W x 3 uint8 RGB arrays.

    The stream's declared size and every decoded frame (a stream may change size) are checked
    against the pixel limit (``max_pixels``, else ``PSEGZOO_MAX_PIXELS``, else the images' default)
    before any frame is converted.
    """
    check_count(every, "every", VideoError, unit="number of frames")
    limit = max_pixels_limit(max_pixels)
    path = Path(path)
    av = _av(str(path))
    with _open(av, path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        check_frame_size(path, int(ctx.width or 0), int(ctx.height or 0), limit, "its stream declares frames")
        index = 0
        try:
            for frame in container.decode(stream):
                check_frame_size(path, int(frame.width), int(frame.height), limit, f"frame {index}")
                if index % every == 0:
                    rgb = frame.to_ndarray(format="rgb24")
                    yield Frame(index, None if frame.time is None else float(frame.time),
                                _upright(rgb, float(getattr(frame, "rotation", 0) or 0)))
                index += 1
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: damaged video at frame {index} ({_reason(exc)})") from None
    if index == 0:
        raise VideoError(f"{path}: the video has no frames")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def encoder() -> str:
    """The encoder videos are written with: ``libx264`` when this FFmpeg has it, else ``mpeg4``."""
    av = _av("writing a video")
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # PyAV raises UnknownCodecError, or FFmpegError on some builds
        return "mpeg4"
    return "libx264"


class VideoWriter:
    """An MP4 written to a hidden temporary file beside ``path``; :meth:`commit` renames it into place.

    The temporary file is made, flushed and renamed by psegzoo's one writer (:mod:`psegzoo.files`:
    mode ``0666 & ~umask``, fsync, rename); FFmpeg streams the frames into it by name.

    Frames are H x W x 3 uint8 RGB of one size; odd sizes are padded by one edge pixel.
    Use as a context manager: leaving it without :meth:`commit` removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction, *, codec: str | None = None):
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.codec = codec
        self.frames = 0
        self._tmp: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None

    def _start(self, h: int, w: int) -> None:
        av = _av(str(self.path))
        codec = self.codec or encoder()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = files.temp_sibling(self.path, "video")
            os.close(files.create_new(tmp))
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._tmp = tmp
        try:
            self._container = av.open(str(tmp), "w", format="mp4")
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.width, stream.height = w + w % 2, h + h % 2
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        else:
            stream.bit_rate = max(2_000_000, int(stream.width * stream.height * float(self.fps) * 0.5))
        self._stream = stream
        self._size = (h, w)

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self._stream is None:
            self._start(h, w)
        elif (h, w) != self._size:
            eh, ew = self._size or (0, 0)
            raise OutputError(f"{self.path}: a frame of size {w}x{h} in a video of size {ew}x{eh}")
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        av = _av(str(self.path))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None
        self.frames += 1

    def commit(self) -> Path:
        """Flush the encoder, close the file and rename it to ``path``."""
        if self._container is None or self._tmp is None:
            raise VideoError(f"{self.path}: no frames to write")
        av = _av(str(self.path))
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            tmp, self._tmp = self._tmp, None
            files.commit(tmp, self.path)  # removes the temporary file if it fails
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from None
        return self.path

    def discard(self) -> None:
        """Close and remove the temporary file (nothing at ``path`` changes)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a half-written container can fail; the file goes anyway
                pass
            self._container = None
        if self._tmp is not None:
            _remove(self._tmp)
            self._tmp = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Segmenting a video
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPaths:
    """Where each output of one video goes (only the requested ones are written)."""

    frames: Path
    overlay: Path
    color: Path
    json: Path

    def label(self, index: int) -> Path:
        return self.frames / f"{index:06d}.png"


def video_paths(out_dir: str | os.PathLike, name: str) -> VideoPaths:
    """The outputs of the video named ``name`` (a stem, possibly with subfolders) in ``out_dir``."""
    image = outputs.output_paths(out_dir, name)  # checks the name
    base = image.labels.with_suffix("")
    return VideoPaths(frames=base, overlay=base.with_name(base.name + "_overlay.mp4"),
                      color=base.with_name(base.name + "_color.mp4"), json=image.json)


class _Predicted(Protocol):
    labels: np.ndarray

    def overlay(self, opacity: float = ...) -> np.ndarray: ...
    def colorize(self) -> np.ndarray: ...
    def class_areas(self) -> list[dict[str, Any]]: ...


class _Predictor(Protocol):
    @property
    def palette(self) -> Sequence[Sequence[int]]: ...

    @property
    def entry(self) -> Any: ...

    def predict_many(self, inputs: Iterable[Any], **kwargs: Any) -> Iterator[Any]: ...


@dataclass(frozen=True)
class VideoResult:
    """What :func:`predict_video` wrote: the paths (the frame folder first) and the video's facts."""

    paths: tuple[Path, ...]
    model: str
    width: int
    height: int
    fps: float  # the input's frame rate
    every: int
    frames: int  # label frames written

    def summary(self) -> dict[str, Any]:
        """The video's JSON document without its per-frame class areas (those are in ``<stem>.json``)."""
        return {"model": self.model, "width": self.width, "height": self.height, "fps": self.fps, "every": self.every,
                "frames": self.frames}


def predict_video(segmenter: _Predictor, path: str | os.PathLike, out_dir: str | os.PathLike, name: str, *,
                  every: int = 1, overlay: bool = False, opacity: float = 0.5, color: bool = False,
                  summary: bool = False, codec: str | None = None, progress: Callable[[int, int], None] | None = None,
                  batch_size: int | None = 1, workers: int | None = None, max_pixels: int | None = None,
                  **predict_kwargs: Any) -> VideoResult:
    """Segment frames 0, ``every``, ... of ``path`` and write ``out_dir/<name>/*.png`` and the requested
    videos and JSON.

    ``segmenter`` is a :class:`psegzoo.Segmenter`; the frames go through its ``predict_many`` with
    ``batch_size``, ``workers`` and ``predict_kwargs`` (the class scores are not kept unless
    ``keep_scores=True`` is passed: frames need labels only). Frames share one size, so in whole
    mode they batch fully. ``codec`` overrides the encoder (:func:`encoder`). ``progress(done, total)``
    is told of the frames as they are done (``total`` from the container's header, an estimate for
    some formats). A frame that fails fails the video, with nothing written. Frames larger than
    ``max_pixels`` (else ``PSEGZOO_MAX_PIXELS``, else the images' default) are refused, from the
    container's header before any decoding and frame by frame. A frame folder that holds files
    psegzoo did not write is refused before any decoding (:func:`check_frame_folder`).
    """
    path = Path(path)
    paths = video_paths(out_dir, name)
    limit = max_pixels_limit(max_pixels)
    info = probe(path)
    check_frame_size(path, info.width, info.height, limit, "its stream declares frames")
    check_frame_folder(paths.frames)
    fps = info.fps / every if isinstance(every, int) and every >= 1 else info.fps
    expected = -(-info.frames // every) if isinstance(every, int) and every >= 1 else info.frames
    predict_kwargs.setdefault("keep_scores", False)
    try:
        paths.frames.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{paths.frames.name}.", suffix=".tmp", dir=paths.frames.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {paths.frames}: {exc.strerror or exc}") from None
    writers = {key: VideoWriter(target, fps, codec=codec)
               for key, target, wanted in (("overlay", paths.overlay, overlay), ("color", paths.color, color)) if wanted}
    records: list[dict[str, Any]] = []
    kept: list[int] = []
    written: dict[str, str] = {}  # frame file -> SHA-256, for the folder's record
    size = (0, 0)
    try:
        decoded: deque[Frame] = deque()  # frames handed to the model, awaiting their prediction

        def pixels() -> Iterator[np.ndarray]:
            for frame in read_frames(path, every, max_pixels=limit):
                decoded.append(frame)
                yield frame.rgb

        for result in segmenter.predict_many(pixels(), batch_size=batch_size, workers=workers, **predict_kwargs):
            frame = decoded.popleft()
            if isinstance(result, PsegzooError):
                text = Exception.__str__(result).removeprefix(f"input {len(kept)}: ")
                raise type(result)(f"{path}: frame {frame.index}: {text}")
            prediction: _Predicted = result
            frame_file = outputs.save_label_png(prediction.labels, segmenter.palette, staging / f"{frame.index:06d}.png")
            written[frame_file.name] = _sha256(frame_file)
            if "overlay" in writers:
                writers["overlay"].write(prediction.overlay(opacity))
            if "color" in writers:
                writers["color"].write(prediction.colorize())
            if summary:
                records.append({"index": frame.index, "time": frame.time, "classes": prediction.class_areas()})
            kept.append(frame.index)
            size = frame.rgb.shape[:2]
            if progress is not None:
                progress(len(kept), max(expected, len(kept)))
        check_frame_folder(paths.frames)  # again: nothing is committed next to a folder that will be refused
        done = [writer.commit() for writer in writers.values()]
        if summary:
            document = {"input": str(path), "model": segmenter.entry.name, "width": int(size[1]), "height": int(size[0]),
                        "fps": float(info.fps), "every": every, "frames": records}
            done.append(outputs.save_json(document, paths.json))
        _install_frames(staging, paths.frames, written)
    except BaseException:
        for writer in writers.values():
            writer.discard()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return VideoResult(paths=(paths.frames, *done), model=segmenter.entry.name, width=int(size[1]),
                       height=int(size[0]), fps=float(info.fps), every=every, frames=len(kept))


# --------------------------------------------------------------------------------------------
# The frame folder: psegzoo's own files only
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_frames(folder: Path) -> dict[str, set[str]]:
    """The files psegzoo recorded as written into ``folder`` (name -> the SHA-256 each may have);
    empty when there is no readable record."""
    try:
        with open(folder / FRAMES_RECORD, "rb") as f:
            doc = json.loads(f.read(1 << 24))
        listed = doc["files"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return {}
    if not isinstance(listed, dict):
        return {}
    return {str(name): {h} if isinstance(h, str) else {str(x) for x in h} for name, h in listed.items()
            if isinstance(name, str) and FRAME_NAME.fullmatch(name)}


def _is_record_temp(name: str) -> bool:
    owner = files.owner_of_temp(name)
    return owner is not None and owner[0] == FRAMES_RECORD


def foreign_files(folder: Path) -> list[str]:
    """Names in the existing folder ``folder`` that psegzoo did not write: anything not in its
    record, or changed since (another SHA-256). A missing folder holds none."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OutputError(f"cannot read the frame folder {folder}: {exc.strerror or exc}") from None
    record = recorded_frames(folder)
    foreign = []
    for name in names:
        if name == FRAMES_RECORD or _is_record_temp(name):
            continue
        path = folder / name
        try:
            ours = name in record and path.is_file() and not path.is_symlink() and _sha256(path) in record[name]
        except OSError:
            ours = False
        if not ours:
            foreign.append(name)
    return foreign


def check_frame_folder(folder: Path) -> None:
    """Refuse a frame folder that is a file, or that holds files psegzoo did not write (one line)."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputError(f"{folder} is where this video's label frames go, and it is not a folder; move it away "
                          f"or choose another output folder with {option('out_dir', '-o/--output')}")
    foreign = foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"{folder} holds files psegzoo did not write ({shown}); psegzoo replaces only its own "
                          f"frames there: move them away or choose another output folder with "
                          f"{option('out_dir', '-o/--output')}")


def _write_record(path: Path, frames: dict[str, set[str]]) -> None:
    doc = {"format": 1, "files": {name: sorted(h) if len(h) > 1 else next(iter(h)) for name, h in sorted(frames.items())}}
    files.write_atomic(path, json.dumps(doc, indent=1) + "\n")


def _install_frames(staging: Path, target: Path, written: dict[str, str]) -> None:
    """Put the finished frame folder in place: one rename, or file by file into an existing folder
    that holds psegzoo's files only (checked again here): those of an earlier run that this run did
    not write are removed, nothing else is touched."""
    try:
        _write_record(staging / FRAMES_RECORD, {name: {h} for name, h in written.items()})
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the frames from other users
        os.rename(staging, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        check_frame_folder(target)
        old = recorded_frames(target)
        # Until the last step the record admits both versions of every frame, so an interrupted
        # install leaves a folder the next run still recognises as psegzoo's own.
        both = {name: old.get(name, set()) | ({written[name]} if name in written else set())
                for name in {*old, *written}}
        _write_record(target / FRAMES_RECORD, both)
        for name in sorted(written):
            os.replace(staging / name, target / name)
        for name in sorted(set(old) - set(written)):
            (target / name).unlink(missing_ok=True)
        os.replace(staging / FRAMES_RECORD, target / FRAMES_RECORD)
        staging.rmdir()
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _intact_video(path: Path, sizes: set[tuple[int, int]], frames: int) -> bool:
    info = probe(path)
    padded = {(w + w % 2, h + h % 2) for w, h in sizes}
    return (info.width, info.height) in padded and info.frames in (0, frames)


def outputs_intact(path: str | os.PathLike, out_dir: str | os.PathLike, name: str, *, overlay: bool = False,
                   color: bool = False, summary: bool = False) -> bool:
    """Whether the outputs of the video ``path`` already written as ``name`` are whole (what
    ``--skip-existing`` trusts): every recorded frame unchanged, the first of the video's size, and
    the requested videos and JSON readable with that size and frame count."""
    paths = video_paths(out_dir, name)
    try:
        info = probe(path)
        record = recorded_frames(paths.frames)
        if not record or foreign_files(paths.frames) or any(not (paths.frames / n).is_file() for n in record):
            return False
        sizes = {(info.width, info.height), (info.height, info.width)}  # display rotation may turn the frames
        with Image.open(paths.frames / min(record)) as im:
            im.load()
            if im.size not in sizes:
                return False
        videos = [p for p, on in ((paths.overlay, overlay), (paths.color, color)) if on]
        if not all(_intact_video(p, sizes, len(record)) for p in videos):
            return False
        if summary:
            with open(paths.json, "rb") as f:
                doc = json.loads(f.read(1 << 26))
            return (doc.get("width"), doc.get("height")) in sizes and len(doc.get("frames", ())) == len(record)
    except (PsegzooError, OSError, ValueError, AttributeError, TypeError):  # missing, truncated, not the format
        return False
    return True
