"""Who this process is in a torchrun job, its process group, its device, and sums across processes.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (plus
``MASTER_ADDR``/``MASTER_PORT`` for the rendezvous); :meth:`Launch.from_environ` reads them once
into a frozen value. Without them the process is a job of one and nothing here talks to anyone.

The process group uses gloo for CPU tensors and, where CUDA is present, NCCL for CUDA tensors
(``"cpu:gloo,cuda:nccl"``): the counts psegzoo exchanges are small CPU arrays and go through gloo
either way. The module-level helpers (:func:`is_main`, :func:`all_reduce_sum`, ...) work on
torch.distributed's default group and are no-ops when none is initialised, so library code can
call them unconditionally.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import DistributedError, option
from .environ import _TORCHRUN, Launch

DEFAULT_TIMEOUT = timedelta(minutes=5)


def backend() -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors where CUDA is present."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init_group(launch: Launch, timeout: timedelta = DEFAULT_TIMEOUT) -> dist.Store:
    """Join torchrun's rendezvous, initialise the default process group, and return the job's store.

    The store (a TCPStore kept by torchrun, or by rank 0) carries the small messages of
    :class:`~psegzoo.distributed.job.Job`; the process group gets its own prefix in it.
    """
    if not dist.is_available():
        raise DistributedError("this PyTorch build has no torch.distributed; run psegzoo as a single process")
    try:
        store, _, _ = next(dist.rendezvous("env://", rank=launch.rank, world_size=launch.world_size, timeout=timeout))
        dist.init_process_group(backend(), store=dist.PrefixStore("default_pg", store), rank=launch.rank,
                                world_size=launch.world_size, timeout=timeout)
    except (RuntimeError, ValueError) as exc:  # missing MASTER_ADDR, unreachable store, timeout
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DistributedError(f"cannot join the torchrun job as rank {launch.rank}: {text}; start psegzoo with {_TORCHRUN}") from None
    return store


def close_group() -> None:
    """Leave the default process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(requested: str | None, launch: Launch) -> str | None:
    """The device this rank runs on: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` in a job with GPUs.

    Outside a job ``requested`` is returned unchanged. In a job, ``cuda:N`` is refused when
    several processes share a node (they would all use GPU N). CUDA ranks are pinned with
    ``torch.cuda.set_device``.
    """
    if not launch.distributed:
        return requested
    text = (requested or "auto").strip().lower()
    if text == "auto" and not torch.cuda.is_available():
        return requested
    if text not in ("auto", "cuda") and not text.startswith("cuda:"):
        return requested  # cpu, mps: every process on the same device, by request
    if text.startswith("cuda:") and launch.local_world_size > 1:
        raise DistributedError(
            f"device {requested!r} in a job of {launch.local_world_size} processes per node would put them all on one "
            f"GPU; pass {option('device=' + repr('cuda'), '--device cuda')} and process LOCAL_RANK uses cuda:LOCAL_RANK"
        )
    if not torch.cuda.is_available():
        raise DistributedError(f"device {requested!r}: CUDA is not available on this node")
    index = int(text.split(":", 1)[1]) if text.startswith("cuda:") else launch.local_rank
    count = torch.cuda.device_count()
    if index >= count:
        raise DistributedError(
            f"this node has {count} GPU(s) but torchrun started {launch.local_world_size} processes on it; "
            f"use --nproc-per-node {count} (or fewer)"
        )
    torch.cuda.set_device(index)
    return f"cuda:{index}"


# --------------------------------------------------------------------------------------------
# Collectives on the default group (no-ops without one)
# --------------------------------------------------------------------------------------------


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside a job)."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    """The number of processes in the job (1 outside a job)."""
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Whether this process is rank 0 (always true outside a job): the one that prints and writes summaries."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (returns at once outside a job)."""
    if initialized():
        _collective(dist.barrier)


def all_reduce_sum(array: Any) -> np.ndarray:
    """The element-wise sum of ``array`` over all processes, as int64 (the array itself outside a job).

    Meant for counts: per-class intersection/union/prediction/label areas, images done. Every
    process must call it with the same shape; the result is the same on every process.
    """
    values = np.asarray(array)
    if values.dtype.kind not in "biu":
        raise TypeError(f"all_reduce_sum sums integer counts, got {values.dtype}")
    values = values.astype(np.int64)
    if not initialized():
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy()


def all_reduce_max(array: Any) -> np.ndarray:
    """The element-wise maximum of an int64 ``array`` over all processes."""
    values = np.ascontiguousarray(np.asarray(array).astype(np.int64))
    if not initialized():
        return values
    tensor = torch.from_numpy(values)
    _collective(dist.all_reduce, tensor, op=dist.ReduceOp.MAX)
    return tensor.numpy()


def _collective(call: Any, *args: Any, **kwargs: Any) -> None:
    """Run a collective; a peer that died or timed out becomes a one-line :class:`DistributedError`."""
    try:
        call(*args, **kwargs)
    except RuntimeError as exc:  # DistBackendError, DistNetworkError, timeouts
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DistributedError(f"lost contact with another process of the job ({text})") from None
