"""What several benchmark scripts share: size arguments, a converted synthetic model, a folder of PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import psegzoo
from tests.support.served import MMSEG_BASE, mmseg_spec
from tests.support.synth import write_mmseg_checkpoint


def parse_size(text: str) -> tuple[int, int]:
    """``AxB`` (as the command line writes sizes) -> ``(A, B)``."""
    a, _, b = text.lower().partition("x")
    return int(a), int(b)


def synthetic_weights(folder: Path) -> Path:
    """A synthetic PSPNet R-18-D8 (``MMSEG_BASE``) in mmseg's format, converted to psegzoo's weights file."""
    ckpt = write_mmseg_checkpoint(mmseg_spec(), folder / "model.pth")
    return psegzoo.convert_checkpoint(ckpt, folder / "model.safetensors", name=MMSEG_BASE)


def random_pngs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` PNGs of random pixels, ``size`` = (h, w), named 0000.png, 0001.png, ... (seeded: the same each run)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        files.append(folder / f"{i:04d}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(files[-1])
    return files
