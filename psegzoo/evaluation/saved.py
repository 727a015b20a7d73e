"""Saved per-image counts: read within bounds, then checked before a resumed run adds them up.

A counts file is a ``.npy`` holding one ``4 x C`` int64 array (rows: intersect, union, pred, label).
Its size is checked before anything is read and its header before any array is built, so a file
whose header claims a huge shape allocates nothing. The numbers must then be those one image can
give: the label row equal to the areas of the image's label file, the predicted areas adding up to
its labelled pixels, each intersection within its predicted and label areas, each union equal to
predicted + label - intersection.
"""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np

# psegzoo writes 128-byte headers; numpy's own reader refuses headers over 10000 bytes.
HEADER_LIMIT = 4096
_INT64 = np.dtype("<i8")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class BadCounts(ValueError):
    """A counts file that cannot be used; the message says why."""


def _read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (not a link, FIFO or device), refused above ``limit``."""
    try:
        fd = os.open(path, _OPEN_FLAGS | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise BadCounts(f"cannot be opened ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadCounts("is not a regular file")
        if st.st_size > limit:
            raise BadCounts(f"has {st.st_size} bytes, more than the {limit} of a counts file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadCounts(f"has more than the {limit} bytes of a counts file")
    return data


def read_counts(path: Path, num_classes: int) -> tuple[np.ndarray, bytes]:
    """The ``4 x num_classes`` int64 array saved in ``path`` and the file's bytes (to checksum).

    Raises :class:`BadCounts` for anything else: another shape or dtype (read from the header,
    nothing allocated), a short or long body, a file that is no ``.npy``.
    """
    body_size = 4 * num_classes * _INT64.itemsize
    data = _read_bounded(path, HEADER_LIMIT + body_size)
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise BadCounts(f"is a .npy file of format {version[0]}.{version[1]}, not 1.0 or 2.0")
    except (ValueError, SyntaxError, TypeError) as exc:
        if isinstance(exc, BadCounts):
            raise
        raise BadCounts(f"is not a .npy file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if tuple(shape) != (4, num_classes) or dtype != _INT64 or fortran:
        raise BadCounts(f"holds a {dtype} array of shape {tuple(shape)}, not the 4 x {num_classes} int64 counts")
    body = data[f.tell():]
    if len(body) != body_size:
        raise BadCounts(f"holds {len(body)} bytes of counts, not {body_size}")
    return np.frombuffer(body, dtype=_INT64).reshape(4, num_classes).astype(np.int64), data


def counts_problem(arr: np.ndarray, label_areas: np.ndarray) -> str | None:
    """Why ``arr`` (rows intersect, union, pred, label) cannot be the counts of an image whose
    label file has ``label_areas`` pixels of each class; None when it can."""
    intersect, union, pred, label = arr
    if (arr < 0).any():
        return "negative counts"
    if not np.array_equal(label, label_areas):
        return (f"its label areas ({int(label.sum())} pixels) are not those of the label file "
                f"({int(label_areas.sum())} labelled pixels)")
    labelled = int(label_areas.sum())
    # Bounded first, so that the sum cannot overflow.
    if (pred > labelled).any() or int(pred.sum()) != labelled:
        return f"its predicted areas do not add up to the {labelled} labelled pixels"
    if (intersect > np.minimum(pred, label)).any():
        return "an intersection is larger than its predicted or label area"
    if not np.array_equal(union, pred + label - intersect):
        return "a union is not predicted + label - intersection"
    return None
