"""CUDA settings a prediction needs, in scopes that leave the process as they found it.

* :func:`cudnn_benchmark`: cuDNN picks its fastest convolution algorithm per input shape while a
  forward runs (a prediction runs the same shapes again and again); the flag is the program's
  before and after.
* :class:`PeakMeter`: the most memory a block allocated on a device, read without resetting the
  process's peak counter (``torch.cuda.max_memory_allocated`` belongs to the program, which may be
  measuring something of its own).
* :func:`item_bytes`: per-item (window, whole image) memory measured on a model, remembered per model
  and input so that a measurement that could only bound it is tightened by an earlier exact one.
* :func:`remembered_batch` / :func:`remember_batch`: the items per forward sized from that memory, per
  model and input, so that later predictions of the same input shape neither measure again nor ask
  the device for its free memory.
* :func:`replays_cuda_graphs`: whether a compiled model's outputs are buffers its next forward
  overwrites, so that the predictor copies the logits it keeps across forwards.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import torch

_flags_lock = threading.Lock()
_benchmark_depth = 0
_benchmark_before = False


@contextlib.contextmanager
def cudnn_benchmark(on: bool = True) -> Iterator[None]:
    """Set ``torch.backends.cudnn.benchmark`` for a block (``on`` False: leave it as it is).

    Scopes may nest and overlap across threads: the first to enter saves the program's value and
    the last to leave restores it.
    """
    global _benchmark_depth, _benchmark_before
    if not on:
        yield
        return
    with _flags_lock:
        if _benchmark_depth == 0:
            _benchmark_before = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
        _benchmark_depth += 1
    try:
        yield
    finally:
        with _flags_lock:
            _benchmark_depth -= 1
            if _benchmark_depth == 0:
                torch.backends.cudnn.benchmark = _benchmark_before


class PeakMeter:
    """The most memory allocated on a CUDA ``device`` during a block, above what was allocated when
    it began: ``with PeakMeter(dev) as meter: ...`` then ``meter.bytes``.

    The process's peak counter only rises (it is not reset here). When the block raised it, the
    difference is exact (``exact``); when it did not, the block's own peak was at most the earlier
    one, so the same difference is an upper bound: batches sized from it err on the small side.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.before = self.after = 0

    def __enter__(self) -> PeakMeter:
        self.start = torch.cuda.memory_allocated(self.device)
        self.before = torch.cuda.max_memory_allocated(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.after = torch.cuda.max_memory_allocated(self.device)

    @property
    def exact(self) -> bool:
        return self.after > self.before

    @property
    def bytes(self) -> int:
        return self.after - self.start


_measured: weakref.WeakKeyDictionary[Any, dict[Hashable, int]] = weakref.WeakKeyDictionary()
_measured_lock = threading.Lock()


def item_bytes(model: Any, key: Hashable, meter: PeakMeter, items: int = 1, *, extra: int = 0) -> int:
    """Bytes per item of a forward of ``items`` items measured by ``meter`` (plus ``extra`` bytes made
    before it began), the smallest this model has shown for ``key`` (every measurement bounds it from
    above; an exact one is the value)."""
    measured = max((meter.bytes + extra) // max(items, 1), 1)
    with _measured_lock:
        known = _measured.setdefault(model, {})
        best = min(measured, known.get(key, measured))
        known[key] = best
    return best


_batches: weakref.WeakKeyDictionary[Any, dict[Hashable, int]] = weakref.WeakKeyDictionary()


def remembered_batch(model: Any, key: Hashable) -> int | None:
    """The items per forward sized for this model and input (``key``) before, if any."""
    with _measured_lock:
        return _batches.get(model, {}).get(key)


def remember_batch(model: Any, key: Hashable, batch: int) -> None:
    """Keep the items per forward sized (or halved after running out of memory) for this model and input."""
    with _measured_lock:
        _batches.setdefault(model, {})[key] = batch


def replays_cuda_graphs(device: torch.device | str, compile_kwargs: Mapping[str, Any]) -> bool:
    """Whether a model compiled with ``torch.compile(**compile_kwargs)`` on ``device`` replays CUDA graphs.

    A replayed graph writes its outputs into the same memory each time, so a forward's logits are
    overwritten by the next forward (``mode="reduce-overhead"`` or ``"max-autotune"``, inductor's
    ``triton.cudagraphs`` option or setting, the ``cudagraphs`` backend). A backend not known here
    counts as replaying: copying the logits costs little next to a forward, and keeps them right.
    """
    if torch.device(device).type != "cuda":
        return False
    backend = compile_kwargs.get("backend", "inductor")
    if backend in ("eager", "aot_eager"):
        return False
    if backend != "inductor":
        return True
    from torch._inductor import config, list_mode_options

    options = {**list_mode_options(compile_kwargs.get("mode") or "default"), **(compile_kwargs.get("options") or {})}
    return bool(options.get("triton.cudagraphs", config.triton.cudagraphs))
