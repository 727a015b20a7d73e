"""Reading a sample's image and label once: the bytes decoded are the bytes hashed.

An image's saved counts are found by the content of the files they were made from, not by their
names: the key of a sample hashes the SHA-256 of its image file, of its label file and the kind of
label (the layout's fallback files are mapped by another table). Any change to either file gives
another key, so a resumed run counts that image again. Hashing costs one pass over bytes that are
read anyway.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import PsegzooError

# A file larger than this many bytes per pixel of the pixel limit is no image of that size.
_BYTES_PER_PIXEL = 16
_SLACK = 16 * 2**20
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


@dataclass(frozen=True, eq=False)
class ReadFile:
    """The bytes of one input file, their SHA-256, and the file's status when it was read."""

    data: bytes
    sha256: str
    size: int
    mtime_ns: int


def size_limit(max_pixels: int) -> int:
    """The largest input file read into memory under the pixel limit ``max_pixels``."""
    return _BYTES_PER_PIXEL * max_pixels + _SLACK


def read_input(path: Path, limit: int, error: type[PsegzooError], what: str) -> ReadFile:
    """The bytes of the regular file ``path`` (a FIFO or device is refused before any read, so
    nothing waits), at most ``limit`` of them; ``error`` is raised with a one-line message."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read this {what} file ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file; a {what} is read from a file")
        if st.st_size > limit:
            raise error(f"{path}: {st.st_size} bytes is larger than any {what} under the pixel limit "
                        f"({limit} bytes); raise the pixel limit if the file is trusted")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read this {what} file ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise error(f"{path}: grew past {limit} bytes while it was read")
    return ReadFile(data, hashlib.sha256(data).hexdigest(), len(data), st.st_mtime_ns)


def sample_key(image: ReadFile, label: ReadFile, fallback: bool) -> str:
    """The name under which the counts of this image and label are saved (64 hex digits)."""
    text = f"psegzoo-eval-sample\x00{image.sha256}\x00{label.sha256}\x00{int(fallback)}"
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def stat_hint(image: Path, label: Path, image_size: int, image_mtime_ns: int, label_size: int,
              label_mtime_ns: int) -> str:
    """A guess that the files are the ones counted before (their names, sizes and times), used only
    to share out work: what is used is always found by content."""
    text = f"{image}\x00{image_size}\x00{image_mtime_ns}\x00{label}\x00{label_size}\x00{label_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def hint_of(image: Path, label: Path) -> str | None:
    """:func:`stat_hint` from the files as they are now (None when one cannot be stat-ed)."""
    try:
        a, b = os.stat(image), os.stat(label)
    except OSError:
        return None
    return stat_hint(image, label, a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns)
