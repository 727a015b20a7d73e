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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

__all__ = ["TEMP_NAME", "NotRegularFileError", "atomic_path", "commit", "create_new", "open_regular", "owner_of_temp",
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
