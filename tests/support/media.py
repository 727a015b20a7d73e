"""A tiny served model and synthetic inputs (images of several sizes, videos) for job and video tests."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .http_server import FileServer
from .hub import scrub_environment
from .served import MMSEG_BASE, mmseg_spec, serve_clone, write_index
from .synth import write_mmseg_checkpoint

NAME = "pspnet_r18-d8_jobtest_cityscapes"
MISSING_NAME = "pspnet_r18-d8_jobtest404_cityscapes"  # its weights URL answers 404
ORIGINAL_HOST = "https://download.openmmlab.com"  # unreachable: the loopback server is given as --mirror
IMAGE_SIZES = [(40, 60), (33, 47), (64, 48), (20, 90), (50, 50)]  # (h, w)


@dataclass
class ServedModel:
    server: FileServer
    index: Path
    file: str  # the checkpoint's path on the server (below the mirror's base URL)
    missing: str  # the path of MISSING_NAME's weights on the server
    tmp: Path

    @property
    def mirror(self) -> str:
        return self.server.base

    def gets(self) -> int:
        """GET requests made for the checkpoint so far."""
        return len(self.server.gets(self.file))


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[ServedModel]:
    """A synthetic R-18 PSPNet whose published URL is unreachable; the loopback server mirrors it."""
    tmp = tmp_path_factory.mktemp("served")
    mp = pytest.MonkeyPatch()
    scrub_environment(mp)
    server = FileServer()
    try:
        ckpt = write_mmseg_checkpoint(mmseg_spec(), tmp / "model.pth")
        entry = serve_clone(server, MMSEG_BASE, NAME, ckpt.read_bytes())
        path = "/mmsegmentation/v0.5/jobtest/" + entry["weights"]["file"]
        server.add(path, ckpt.read_bytes())
        entry["weights"]["url"] = ORIGINAL_HOST + path
        missing = serve_clone(server, MMSEG_BASE, MISSING_NAME, b"never served")
        missing_path = "/served/" + missing["weights"]["file"]
        server.add(missing_path, b"", status=404)
        ckpt.unlink()
        index = write_index(tmp / "index.json", [entry, missing])
        mp.setenv("PSEGZOO_INDEX", str(index))
        mp.setenv("PSEGZOO_HOME", str(tmp / "home"))
        mp.setenv("PSEGZOO_RETRIES", "0")
        mp.setenv("PSEGZOO_TIMEOUT", "20")
        mp.setenv("COLUMNS", "200")
        yield ServedModel(server=server, index=index, file=path, missing=missing_path, tmp=tmp)
    finally:
        server.close()
        mp.undo()


def image(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth gradient with a block of colour and noise: gives several classes, not one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1).astype(np.float64)
    img[h // 4: 3 * h // 4, w // 3: 3 * w // 4] = rng.integers(0, 256, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def image_folder(folder: Path) -> list[Path]:
    """Five PNGs of different sizes, one in a subfolder, and a JPEG whose name clashes with a PNG."""
    paths = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        path = folder / ("sub" if i == 4 else "") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(i, h, w)).save(path)
        paths.append(path)
    clash = folder / "img0.jpg"
    Image.fromarray(image(9, 36, 44)).save(clash, quality=95)
    return paths + [clash]


def write_video(path: Path, frames: int = 6, size: tuple[int, int] = (48, 64), fps: int = 10, *,
                codec: str | None = None, rotation: float | None = None, seed: int = 0) -> list[np.ndarray]:
    """A video of moving gradients; ``.mkv`` is lossless (FFV1, RGB), ``.mp4`` H.264. Returns the frames."""
    import av

    lossless = path.suffix == ".mkv"
    codec = codec or ("ffv1" if lossless else "libx264")
    h, w = size
    written = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = w, h
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            rgb = np.roll(image(seed + i, h, w), 3 * i, axis=1)
            written.append(rgb)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return written


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction]:
    """Every frame of a video as RGB (no rotation applied) and its average frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, Fraction(stream.average_rate)


def leftovers(folder: Path) -> list[Path]:
    """Hidden temporary files or folders anywhere below ``folder`` (there must be none; a frame
    folder's record of psegzoo's own files is not one)."""
    from psegzoo.video import FRAMES_RECORD

    return sorted(p for p in folder.rglob(".*") if p.name != FRAMES_RECORD)
