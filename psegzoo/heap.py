"""Freed memory kept for the next allocation, in psegzoo's own processes.

glibc's malloc hands out blocks above its mmap threshold (at most 32 MB, adjusted as blocks come
and go) as fresh pages of their own and gives them back to the kernel when they are freed. The
kernel zero-fills such pages on first touch, one 4 KiB page fault at a time. A segmentation
network's activations are tens to hundreds of megabytes (PSPNet R-50-D8 on two 769 x 769 windows:
150 MB for each 2048-channel map), so every layer of every forward faults its output in anew:
measured on a 2-core AMD EPYC (benchmarks/bench_heap.py), 5.5 million page faults and 16.6 s of
kernel CPU time per prediction of 8 windows. With blocks up to 1 GiB served from the heap, and the heap not trimmed
below 2 GiB, each forward reuses the pages of the one before, which are already mapped.

The memory a prediction needed then stays with the process until it exits (as a GPU allocator's
cache does), and the setting is the C library's, for the whole process. So the library never makes
it on its own: psegzoo's command line makes it at start (unless ``PSEGZOO_KEEP_MEMORY=0``), and a
program using the API may call :func:`keep_freed_memory` itself. Elsewhere than glibc (macOS,
Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping

from .settings import keep_memory_from_env

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30
"""Blocks up to this size come from the heap (glibc's own limit: 32 MB, or less)."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap up to this size is kept (glibc's own: twice the mmap threshold)."""


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Have malloc keep freed memory for reuse instead of returning it to the kernel (see the module
    text); True when the C library took the setting. Process-wide and not undone: call it at the
    start of a program that predicts more than once, if that program can spare the memory."""
    libc = _glibc()
    if libc is None:
        return False
    mmap_ok = libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD)) == 1
    trim_ok = libc.mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(TRIM_THRESHOLD)) == 1
    return mmap_ok and trim_ok


def setup_process(environ: Mapping[str, str] | None = None) -> bool:
    """What psegzoo's own processes do first: :func:`keep_freed_memory`, unless ``PSEGZOO_KEEP_MEMORY=0``.
    True when freed memory is kept."""
    return keep_memory_from_env(environ) and keep_freed_memory()
