"""Devices and precision: which device runs a model, how the model is prepared, which autocast."""
from __future__ import annotations

from typing import Any

import torch

from ..devices import DTYPES, dtype_name, parse_device, usable_cores
from ..errors import PredictionError, option


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """The torch dtype of a precision name of :data:`psegzoo.devices.DTYPES` (or of a torch dtype,
    returned as it is); None when the name is not one."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype)
    return None if name is None else getattr(torch, name)


DEFAULT_WORKERS = 16
"""The most threads reading (and writing) images beside a GPU when none are asked for."""


def default_workers(device: str | torch.device, cores: int | None = None) -> int:
    """Threads that decode the next images (and encode the outputs) while the model runs, when none
    are asked for: beside a GPU one per core but the model's own (``cores``: this process's share,
    default every core it may run on), at least 1 and at most ``DEFAULT_WORKERS``; none beside a CPU model.

    Feeding a fast GPU takes many cores: a 1024 x 2048 PNG takes tens of milliseconds to decode, while
    the model spends about 10 on it. A model on the CPU already keeps every core busy (torch's
    intra-op threads); decoding there on other threads only takes cores from it, so images are
    decoded on the model's thread instead.
    """
    if torch.device(device).type == "cpu":
        return 0
    return max(1, min(DEFAULT_WORKERS, (usable_cores() if cores is None else cores) - 1))


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA if present, else Apple MPS, else CPU; a named device is checked.

    A name is parsed first without torch (:func:`psegzoo.devices.parse_device`); only whether the
    device exists is asked of torch."""
    if device is None or isinstance(device, str):
        device = str(parse_device(device))
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PredictionError(f"unknown device {device!r} ({exc}); use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PredictionError(
                f"device {device!r} asked for, but this PyTorch sees no CUDA GPU; use {option('device=' + repr('cpu'), '--device cpu')}"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PredictionError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not _mps_available():
            raise PredictionError(
                f"device {device!r} asked for, but MPS is not available; use {option('device=' + repr('cpu'), '--device cpu')}"
            )
    elif dev.type != "cpu":
        raise PredictionError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def autocast_dtype(amp: str | torch.dtype | None, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype asked for (None: float32), checked against the device.

    Takes ``torch.float16``/``torch.bfloat16`` or a name: ``"float16"``, ``"fp16"``, ``"half"``,
    ``"bfloat16"``, ``"bf16"`` (``"float32"`` means no autocast). float16 autocast is for GPUs (CUDA,
    MPS); bfloat16 runs on CUDA, MPS and the CPU (fast where the CPU has AVX512-BF16 or AMX).
    """
    if amp is None:
        return None
    if isinstance(amp, torch.dtype):
        dtype: torch.dtype | None = None if amp == torch.float32 else amp
        if dtype not in (None, torch.float16, torch.bfloat16):
            raise PredictionError(f"amp_dtype must be torch.float16 or torch.bfloat16, got {amp!r}")
    elif isinstance(amp, str) and dtype_name(amp) is not None:
        named = torch_dtype(amp)
        dtype = None if named == torch.float32 else named
    else:
        raise PredictionError(
            f"amp_dtype must be torch.float16, torch.bfloat16 or one of {', '.join(repr(k) for k in DTYPES)}, got {amp!r}"
        )
    dev = torch.device(device)
    if dtype == torch.float16 and dev.type == "cpu":
        raise PredictionError(
            f"float16 autocast ({option('amp_dtype=torch.float16', '--half')}) is a GPU option (CUDA or MPS); "
            f"on the CPU use {option('amp_dtype=torch.bfloat16', '--bf16')} or float32"
        )
    if dtype is not None and dev.type not in ("cpu", "cuda", "mps"):
        raise PredictionError(f"autocast is not supported on {dev}")
    return dtype


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_is_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's convolution weights are in channels-last order (its inputs should be too)."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:  # strides that tell the layout
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def prepare_model(
    model: torch.nn.Module,
    device: str | torch.device | None = "auto",
    *,
    channels_last: bool | None = None,
) -> torch.nn.Module:
    """Put ``model`` in eval mode on ``device``; ``channels_last`` None keeps its memory format.

    Nothing process-wide is set here: on CUDA, cuDNN's per-shape algorithm search is on only while
    a prediction's forwards run (:func:`psegzoo.predictor.cuda.cudnn_benchmark`).
    """
    dev = select_device(device)
    model.eval()
    if channels_last is None:
        model.to(device=dev)
    else:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(device=dev, memory_format=fmt)  # type: ignore[call-overload]
    return model


def resolve_device(model: Any, device: str | torch.device | None) -> torch.device:
    """The device to run ``model`` on: its own, checked against ``device`` when one is asked for."""
    mdev = model_device(model)
    if device is None:
        return mdev
    dev = select_device(device)
    has_tensors = any(True for _ in model.parameters()) or any(True for _ in model.buffers())
    if not has_tensors:
        return dev
    same = dev.type == mdev.type and (dev.index is None or mdev.index is None or dev.index == mdev.index)
    if not same:
        raise PredictionError(f"the model is on {mdev} but device {dev} was asked for; move it there with model.to()")
    return mdev
