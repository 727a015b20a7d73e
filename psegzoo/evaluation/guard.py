"""``save_predictions`` never writes into or over an input: the images, the labels, their folders.

The same rules as ``predict``'s output folder: the folder may neither lie in nor hold an input
folder (compared by real path, through symlinks), and no prediction may land on an input file
(``predict``'s own check, :func:`psegzoo.outputs.unique_names`, by real path) nor on a hard link or
symlink to one (by device and inode). Checked before anything is written.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .. import outputs
from ..errors import OutputError, option
from .split import Sample, Split

_OPTION = option("save_predictions=DIR", "--save-predictions DIR")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _refuse(out_dir: Path, why: str) -> OutputError:
    return OutputError(f"{_OPTION} {out_dir} {why}; predictions are never written into or over the images or "
                       "labels: choose a folder outside them")


def _check_folders(out_dir: Path, split: Split) -> None:
    out = _real(out_dir)
    for what, folder in (("images", split.image_dir), ("labels", split.label_dir)):
        real = _real(folder)
        if out == real or real in out.parents:
            raise _refuse(out_dir, f"lies in the {what} folder {folder}")
        if out in real.parents:
            raise _refuse(out_dir, f"holds the {what} folder {folder}")


def _inodes(samples: Sequence[Sample]) -> dict[tuple[int, int], Path]:
    found: dict[tuple[int, int], Path] = {}
    for sample in samples:
        for path in (sample.image, sample.label):
            try:
                st = os.stat(path)
            except OSError:
                continue
            found[(st.st_dev, st.st_ino)] = path
    return found


def check_save_predictions(out_dir: str | os.PathLike, split: Split) -> None:
    """Raise :class:`OutputError` when predictions saved in ``out_dir`` could replace an input."""
    out = Path(out_dir)
    _check_folders(out, split)
    samples = split.samples
    names = [s.name for s in samples]
    inputs = [p for s in samples for p in (s.image, s.label)]
    renamed = outputs.unique_names(names, out_dir=out, inputs=inputs)
    for name, kept in zip(names, renamed):
        # A name changed only to avoid another image's files is no input's; alone, it must stay.
        if kept != name and outputs.unique_names([name], out_dir=out, inputs=inputs) != [name]:
            raise _refuse(out, f"would write {outputs.output_paths(out, name).labels} over an input")
    linked = _inodes(samples)
    for sample in samples:
        target = outputs.output_paths(out, sample.name).labels
        try:
            st = os.stat(target)  # through a symlink: its target
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in linked:
            raise _refuse(out, f"holds {target}, a link to the input {linked[(st.st_dev, st.st_ino)]}")
