"""One process at a time changes a checkpoint's files: a ``filelock`` lock per checkpoint file.

The lock is the operating system's (flock on Unix, LockFileEx on Windows), so a killed holder never
blocks the next process. Where the file system has no working lock (some NFS or Lustre set-ups) a
soft lock (a file created exclusively) is used instead, as huggingface_hub does. A waiter gives up
only after ``timeout`` seconds in which the holder made no progress (its partial and temporary files
did not grow), and then names the holder (process, host, what it does, since when) from the
``.holder`` note the holder leaves beside the lock.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import filelock

from .. import files
from ..errors import CacheError
from .layout import CacheLayout, now_iso, unlink
from .settings import LOCK_TIMEOUT_ENV

log = logging.getLogger(__name__)

_POLL = 0.05
_TELL_AFTER = 1.0  # a wait longer than this is said (a warning), naming the holder
_POLL_MAX = 0.25
_UNSUPPORTED = {errno.ENOSYS, getattr(errno, "ENOTSUP", errno.ENOSYS), getattr(errno, "EOPNOTSUPP", errno.ENOSYS)}


def _try_acquire(lock: Any, wait: float) -> bool:
    try:
        lock.acquire(timeout=wait)
        return True
    except filelock.Timeout:
        return False


def _holder_text(layout: CacheLayout, file: str) -> str:
    try:
        with open(layout.holder(file), encoding="utf-8") as f:
            data = json.load(f)
        return f"process {int(data['pid'])} on {data['host']} ({data['what']} since {data['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another psegzoo process"


@contextlib.contextmanager
def entry_lock(layout: CacheLayout, file: str, *, timeout: float, what: str) -> Iterator[None]:
    """Hold the lock of checkpoint ``file`` while the block runs (``what`` says what for, to waiters)."""
    layout.ensure("locks")
    path = layout.lock(file)
    lock: Any = filelock.FileLock(str(path))
    started = time.monotonic()
    deadline = started + timeout
    seen = -1
    told = False
    delay = _POLL
    while True:
        try:
            if _try_acquire(lock, delay):
                break
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED or isinstance(lock, filelock.SoftFileLock):
                raise CacheError(f"cannot lock {path}: {exc.strerror or exc}") from None
            log.info("the file system of %s has no working file locks; using a soft lock", path)
            lock = filelock.SoftFileLock(str(path) + ".soft")
            continue
        except NotImplementedError:
            lock = filelock.SoftFileLock(str(path) + ".soft")
            continue
        size = layout.in_progress_size(file)
        if size != seen:
            seen = size
            deadline = time.monotonic() + timeout
        if time.monotonic() >= deadline:
            raise CacheError(
                f"gave up after {timeout:g} s waiting for {_holder_text(layout, file)}, which holds {path} and made no "
                f"progress; stop that process, or wait longer with {LOCK_TIMEOUT_ENV}=SECONDS"
            )
        if not told and time.monotonic() - started >= min(_TELL_AFTER, timeout):
            log.warning("waiting for %s, which holds the lock of %s (giving up after %g s without progress; "
                        "%s=SECONDS changes that)", _holder_text(layout, file), file, timeout, LOCK_TIMEOUT_ENV)
            told = True
        delay = min(delay * 1.5, _POLL_MAX)
    try:
        _write_holder(layout, file, what)
        yield
    finally:
        with contextlib.suppress(OSError):  # another user's stale note in a shared cache: only a courtesy
            unlink(layout.holder(file))
        lock.release()


def _write_holder(layout: CacheLayout, file: str, what: str) -> None:
    note = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": now_iso()}
    try:
        files.write_atomic(layout.holder(file), json.dumps(note) + "\n", sync=False)
    except OSError:
        pass  # only a courtesy to waiters
