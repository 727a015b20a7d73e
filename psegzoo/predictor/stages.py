"""Named stages of a prediction, seen by torch.profiler: where the time of an image goes.

Each stage is a ``torch.profiler.record_function`` range. A profiler with CPU and CUDA activities
gives each range its host time and the device time of the kernels launched inside it, so a
steady-state profile says per image what resizing, uploading, the forward, the outputs and the
final wait cost (``benchmarks/bench_gpu.py`` tabulates them). Without a profiler a range costs a
few microseconds, a handful of times per image.

==================  ==================================================================
``psegzoo.prepare``  the keep-ratio resize (and flip) on the host
``psegzoo.upload``   the uint8 image to the device (through pinned memory for a GPU)
``psegzoo.forward``  normalization and the model (every window in slide mode)
``psegzoo.outputs``  scores at the original size, labels, the copy back to the host
``psegzoo.wait``     the host waiting for the device at the end of a call
==================  ==================================================================
"""
from __future__ import annotations

import contextlib

import torch

STAGES = ("prepare", "upload", "forward", "outputs", "wait")
PREFIX = "psegzoo."


def stage(name: str) -> contextlib.AbstractContextManager:
    """The profiler range of one stage (one of :data:`STAGES`)."""
    return torch.profiler.record_function(PREFIX + name)
