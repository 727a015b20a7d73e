"""Adaptive average pooling that also exports to ONNX with symbolic input sizes.

``F.adaptive_avg_pool2d`` has no ONNX counterpart for an output larger than 1x1 when the input's
height and width are not known at export time (pytorch#42653). Its result is a plain average
over windows that follow from the sizes alone: output row ``i`` of ``s`` averages input rows

    [floor(i * H / s), ceil((i + 1) * H / s))

and columns likewise. So it equals ``A @ x @ B^T`` with ``A`` (s x H) and ``B`` (t x W) the
averaging matrices of the windows (``1 / length`` inside a window, 0 outside), which are built
from ``arange`` of the sizes and export as ordinary ops. Averaging each axis in turn keeps
intermediate values in the input's range, so it holds in float16 too.

Which form runs where:

* exporting: the window form (it is the only one with symbolic sizes);
* compiling for a GPU: the window form in float32 (matrix products inductor handles well; its lowering
  of adaptive pooling with windows of unequal length fails to compile on CUDA);
* eager on a channels-last CUDA tensor: PyTorch's kernel on a contiguous copy (its channels-last
  kernel runs one thread block per output cell, tens of milliseconds for a 1x1 pool of a large map);
* a 1x1 output: the mean over height and width (the same average, as one reduction);
* otherwise PyTorch's own kernel.

All are the same average; only float rounding differs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def averaging_matrix(in_size: int, out_size: int, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | None = None) -> torch.Tensor:
    """``M`` (out x in): ``M[i, j] = 1 / len(window i)`` when j lies in output i's window, else 0.

    ``in_size`` may be symbolic (a ``torch.SymInt`` during export).
    """
    i = torch.arange(out_size, device=device)
    start = (i * in_size) // out_size
    end = ((i + 1) * in_size + (out_size - 1)) // out_size
    j = torch.arange(in_size, device=device)
    member = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return member.to(dtype) / (end - start).to(dtype)[:, None]


def adaptive_avg_pool2d_windows(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as averaging-matrix products: ``A @ x @ B^T``."""
    s, t = _pair(size)
    rows = averaging_matrix(x.shape[-2], s, dtype=x.dtype, device=x.device)
    cols = averaging_matrix(x.shape[-1], t, dtype=x.dtype, device=x.device)
    y = torch.matmul(x, cols.t())  # (N, C, H, t): the wide axis goes first, as one product
    # the short axis by broadcasting: a batched product would reshape a transposed map, which
    # torch.export cannot prove valid for every symbolic size
    return (rows[:, :, None] * y[..., None, :, :]).sum(dim=-2)  # (N, C, s, t)


def adaptive_avg_pool2d(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling in the form that suits where it runs (module docstring)."""
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return adaptive_avg_pool2d_windows(x, size)
    if torch.compiler.is_compiling() and x.is_cuda:
        return adaptive_avg_pool2d_windows(x.float(), size).to(x.dtype)
    if _pair(size) == (1, 1):
        return x.mean(dim=(-2, -1), keepdim=True)
    if x.is_cuda and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return F.adaptive_avg_pool2d(x.contiguous(), size)
    return F.adaptive_avg_pool2d(x, size)
