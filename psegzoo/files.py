"""The one way psegzoo creates files: mode ``0666 & ~umask``, a temporary sibling, fsync, rename.

Checkpoints, cache records, converted weights and prediction outputs all go through here, so a
reader never sees a half-written file and every file gets the permissions the user's umask asks
for (``mkstemp`` would give 0600). Temporary files are named ``.<name>.<tag>-<pid>-<random>.tmp``
beside their target: hidden, on the same file system (so the rename is atomic), and telling which
file and which process they belong to, so a cleaner can count them and remove orphans.

Standard library only: every layer may use it. Errors are plain ``OSError`` (with the file name);
callers turn them into their own error types.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

__all__ = ["TEMP_NAME", "InputGuard", "NotRegularFileError", "atomic_path", "commit", "create_new", "open_regular",
           "overwrites_input", "owner_of_temp",
           "temp_sibling", "write_atomic"]

# Files are never opened through a symlink someone placed where a new file goes.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

#: ``.<target name>.<tag>-<pid>-<random hex>.tmp``
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<tag>[a-z]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})\.tmp")


class NotRegularFileError(OSError):
    """The path names a FIFO, socket or device: reading it could block for ever or never end."""


def open_regular(path: str | os.PathLike, buffering: int = -1) -> io.BufferedReader | io.FileIO:
    """Open ``path`` for reading only if it is a regular file (symlinks to one are fine).

    Opened with ``O_NONBLOCK`` first, so opening a FIFO never waits for a writer, then checked
    with ``fstat`` on the open descriptor (no window between the check and the read). A folder
    raises IsADirectoryError, anything else that is not a regular file NotRegularFileError; both
    are OSErrors whose ``strerror`` says what the path is.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "it is a folder, not a file", str(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, "it is a FIFO, socket or device, not a regular file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # no effect on a regular file's reads; leaves the descriptor as open() would
        return cast(io.BufferedReader | io.FileIO, os.fdopen(fd, "rb", buffering=buffering))
    except BaseException:
        os.close(fd)
        raise


def temp_sibling(path: Path, tag: str = "w") -> Path:
    """A fresh temporary name beside ``path`` that says whose it is (see :data:`TEMP_NAME`)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def owner_of_temp(file_name: str) -> tuple[str, int] | None:
    """``(target name, pid)`` of a temporary file made by :func:`temp_sibling`, else None."""
    m = TEMP_NAME.fullmatch(file_name)
    return (m.group("name"), int(m.group("pid"))) if m else None


def create_new(path: Path, *, mode_limit: int | None = None) -> int:
    """Create ``path`` (which must not exist) for writing; returns the descriptor.

    The mode is ``0666 & ~umask``, further limited to ``mode_limit`` when given (a copy keeps at
    most the permission bits of its source).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    if mode_limit is not None:
        try:
            current = os.fstat(fd).st_mode & 0o777
            wanted = current & mode_limit & 0o777
            if wanted != current:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, wanted)
                else:  # pragma: no cover - Windows has no fchmod
                    os.chmod(path, wanted)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    except OSError:
        if os.name != "nt":  # Windows cannot flush a read-only handle; its rename is durable enough
            raise
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; not possible (nor needed) on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path, *, before: Callable[[], None] | None = None, sync: bool = True) -> None:
    """Move the finished temporary file ``tmp`` to ``path``: fsync, ``before()``, rename, fsync the folder.

    ``before`` runs once the bytes are durable and just before the rename, e.g. to write the
    record that describes the file, so the record never describes a file that is not there yet
    complete. ``tmp`` is removed if anything fails.
    """
    try:
        if sync:
            _fsync_path(tmp)
        if before is not None:
            before()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, tag: str = "w", mode_limit: int | None = None,
                before: Callable[[Path], None] | None = None, sync: bool = True) -> Iterator[Path]:
    """Yield an empty temporary file beside ``path`` (right mode) for the caller to fill by name;
    on a normal exit it replaces ``path``, on an exception it is removed.

    For writers that want a file name rather than a file object (safetensors' ``save_file``):
    opening the existing temporary file for writing keeps its mode. ``before(tmp)`` runs after the
    fsync and before the rename (see :func:`commit`).
    """
    target = Path(path)
    tmp = temp_sibling(target, tag)
    fd = create_new(tmp, mode_limit=mode_limit)
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that replaced the file (safetensors does) reset it
            os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    commit(tmp, target, before=None if before is None else (lambda: before(tmp)), sync=sync)


def write_atomic(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], None], *, tag: str = "w",
                 sync: bool = True) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function given the open binary file) to ``path``
    atomically with mode ``0666 & ~umask``; returns ``path`` as a Path."""
    target = Path(path)
    tmp = temp_sibling(target, tag)
    fd = create_new(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8"))
            elif isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    commit(tmp, target, sync=sync)
    return target


# --------------------------------------------------------------------------------------------
# Never write into or over an input
# --------------------------------------------------------------------------------------------


class InputGuard:
    """The files and folders a command reads, which nothing it writes may replace or enter.

    A file input is identified by its device and inode, so a target that is the input itself
    (under any spelling, on a case-insensitive file system too), a hard link of it or a symlink
    leading to it is caught; a folder input (a labels folder, say) also covers every path inside
    it, symlinks resolved. Inputs that do not exist protect nothing. Build it once for many
    targets: each input is looked at once here.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike]):
        self._files: dict[tuple[int, int], Path] = {}
        self._folders: list[tuple[str, Path]] = []
        for item in inputs:
            path = Path(item)
            try:
                st = os.stat(path)
            except (OSError, ValueError):
                continue
            self._files.setdefault((st.st_dev, st.st_ino), path)
            if stat.S_ISDIR(st.st_mode):
                self._folders.append((os.path.realpath(path), path))

    def overwritten_by(self, target: str | os.PathLike) -> Path | None:
        """The input that writing ``target`` would replace or write into, else None.

        ``target`` is looked at as given and as its real path (``missing/../x`` is ``x`` once the
        writer creates ``missing``).
        """
        real = os.path.realpath(target)
        for candidate in (target, real):
            try:
                st = os.stat(candidate)
            except (OSError, ValueError):
                continue
            hit = self._files.get((st.st_dev, st.st_ino))
            if hit is not None:
                return hit
        if self._folders:
            for root, path in self._folders:
                if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                    return path
        return None


def overwrites_input(target: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path | None:
    """The input (of ``inputs``) that writing ``target`` would replace or write into, else None.

    The one check every writer with a source uses (see :class:`InputGuard`): an output may never be
    its own source, a hard link of it, a symlink to it, or lie inside an input folder.
    """
    return InputGuard(inputs).overwritten_by(target)
