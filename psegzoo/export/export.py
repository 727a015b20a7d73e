"""``export_onnx``: a zoo model as an ONNX graph, checked with onnxruntime before the file is written.

The graph is ``seg.model(x)``: ``input`` (N x 3 x H x W float32, ``(pixel - mean) / std`` with the
entry's mean and std, RGB) -> ``logits`` (N x C x H x W float32 at the input's size). Entries whose
published pipeline resizes the head's own logits (SSSegmentation) also get ``logits_lowres``.

The exporter is ``torch.onnx.export(..., dynamo=True)``, the one torch 2.13 recommends: the model is
captured by ``torch.export`` with symbolic batch, height and width, so every size computation
(adaptive-pooling windows, resize targets) stays in the graph, and any code that would silently
fix a size fails the export instead. The TorchScript exporter traces sizes as constants and has no
symbolic form of adaptive pooling (pytorch#42653). The model is exported on its plain path (exact
shortcuts off, batch norms folded); adaptive pooling and PSANet's mask op take their export forms
(:mod:`psegzoo.models.pooling`, :func:`psegzoo.models.psa_mask.psa_mask_by_reshape`).

PSANet's attention geometry depends on the input size (the shrunk map's size and resize corners
follow the parity of the feature map), so PSANet exports at a fixed size, the training crop by
default. The other methods export with dynamic batch, height and width unless a fixed size is asked for.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__, hub
from ..api import Segmenter, load
from ..api.loading import refuse_writing_over
from ..errors import ExportError, option
from ..manifest import Architecture, Entry, get_entry
from ..models import Segmentor, use_fast_paths
from ..units import format_size
from . import deps, metadata

# Heads whose computation depends on the input size beyond what symbolic shapes can express.
FIXED_SIZE_HEADS = ("PSAHead",)
# Smallest height and width of a fixed-size export.
MIN_SIDE = 2
# A dynamic graph is checked at a size other than the traced one, divisible by no pool scale.
CHECK_SIZE = (65, 97)
# Largest max |onnxruntime - torch| allowed by the check, relative to max |logits|.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
OPSET_MIN = 18


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    ``input_size`` is None for a graph with free height and width. ``max_error`` is the check's
    ``max |onnxruntime - torch| / max |torch|`` at ``checked_size`` (None without a check).
    ``notes`` are things the user should know about this file (e.g. a fixed input size).
    """

    path: Path
    name: str
    opset: int
    precision: str
    input_size: tuple[int, int] | None
    outputs: tuple[str, ...]
    size_bytes: int
    seconds: float
    checked_size: tuple[int, int] | None
    max_error: float | None
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for people: the file, its contract and the check."""
        hw = "dynamic height and width" if self.input_size is None else f"fixed {self.input_size[0]}x{self.input_size[1]}"
        check = "not checked"
        if self.max_error is not None and self.checked_size is not None:
            h, w = self.checked_size
            check = f"onnxruntime matches torch to {self.max_error:.1e} x max|logits| at {h}x{w}"
        return (f"{self.path} ({format_size(self.size_bytes)}): {self.name}, opset {self.opset}, {self.precision}, "
                f"{hw}; {check}; {self.seconds:.1f} s")


class _Graph(nn.Module):
    """What the file computes: float32 NCHW in; float32 logits out (and the head's own, if asked)."""

    def __init__(self, model: Segmentor, *, float16: bool, lowres: bool):
        super().__init__()
        self.model = model.half() if float16 else model
        self.float16 = float16
        self.lowres = lowres

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        y = x.to(torch.float16) if self.float16 else x
        if not self.lowres:
            return self.model(y).float()
        # Segmentor.forward's resize, written out so both outputs share one forward
        low = self.model.forward_lowres(y)
        logits = F.interpolate(low, size=y.shape[-2:], mode="bilinear", align_corners=self.model.align_corners)
        return logits.float(), low.float()


def _size(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < MIN_SIDE for v in value)):
        raise ExportError(f"{what} must be a size (h, w) of integers >= {MIN_SIDE}, got {value!r}")
    return int(value[0]), int(value[1])


def _check_opset(opset: int | None) -> None:
    if opset is None:
        return
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSET_MIN <= opset <= newest:
        raise ExportError(f"opset {opset!r} is not supported: torch's exporter writes opsets {OPSET_MIN} to {newest}; "
                          f"pass one of those with {option('opset=N', '--opset N')} or leave it out")


def _plain_copy(model: nn.Module) -> Segmentor:
    """A float32 CPU copy of ``model`` (the user's is left as it is)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if not isinstance(model, Segmentor):
        raise ExportError(f"only psegzoo's own models export; got {type(model).__name__}")
    plain = copy.deepcopy(model)
    plain.to(device="cpu", dtype=torch.float32)
    plain.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # missing from torch's stub
    return plain.eval()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's chatter (optional-op notices, deprecation warnings) stays out of the user's terminal."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def min_dynamic_side(arch: Architecture) -> int:
    """Smallest height and width a dynamic graph is made for: the coarsest feature map has 2 rows and columns.

    Sizes compile to ceil(side / stride) at each stride; a 1-pixel map would be a different case
    for torch.export (it broadcasts), so the graph's declared range starts above it.
    """
    last = max(arch.decode_head.in_index) if isinstance(arch.decode_head.in_index, tuple) else arch.decode_head.in_index
    return 4 * math.prod(arch.backbone.strides[: last + 1]) + 1


def _capture(graph: _Graph, example: torch.Tensor, min_side: int | None, name: str) -> Any:
    from torch.export import Dim

    dims: dict[int, Any] = {0: Dim("batch", min=1, max=4096)}
    if min_side is not None:
        dims[2] = Dim("height", min=min_side, max=65536)
        dims[3] = Dim("width", min=min_side, max=65536)
    try:
        return torch.export.export(graph, (example,), dynamic_shapes=({**dims},), strict=False)
    except Exception as exc:
        raise ExportError(f"torch.export could not capture {name} ({deps.first_line(exc)}); "
                          f"try a fixed size with {option('static=True', '--static')}") from None


def _name_dims(program: Any, input_size: tuple[int, int] | None, name: str) -> None:
    """Check the input kept the sizes asked for (never trust a silent fixed size) and name its free axes."""
    dims = list(program.model.graph.inputs[0].shape)
    fixed = [isinstance(d, int) for d in dims]
    want = [False, True, True, True] if input_size is not None else [False, True, False, False]
    if len(dims) != 4 or fixed != want or (input_size is not None and tuple(dims[2:]) != input_size):
        raise ExportError(f"the exporter gave {name}'s input the shape {dims}, not N x 3 x "
                          + ("x".join(map(str, input_size)) if input_size else "H x W with free H and W")
                          + f"; try a fixed size with {option('static=True', '--static')}")
    names = ("batch", None, "height", "width")
    program.rename_axes({dim: names[i] for i, dim in enumerate(dims) if not isinstance(dim, int)})


def _check(path: Path, x: torch.Tensor, references: dict[str, torch.Tensor]) -> float:
    """max |onnxruntime - torch| / max |torch| over the graph's outputs for one input, on the CPU."""
    ort = deps.onnxruntime()
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outs = session.run(list(references), {metadata.INPUT: x.numpy()})
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot run the exported graph ({deps.first_line(exc)})") from None
    worst = 0.0
    for (name, reference), out in zip(references.items(), outs):
        ref = reference.numpy()
        if out.shape != ref.shape:
            raise ExportError(f"the exported graph's {name} is {out.shape} for {tuple(x.shape)}; torch gives {ref.shape}")
        scale = max(float(np.abs(ref).max()), float(np.finfo(np.float32).tiny))
        worst = max(worst, float(np.abs(out - ref).max()) / scale)
    return worst


def _exporter_name() -> str:
    import onnxscript

    return f"torch.onnx.export(dynamo=True), torch {torch.__version__}, onnxscript {onnxscript.__version__}"


def _output_path(output: str | os.PathLike) -> Path:
    path = Path(output)
    if path.is_dir():
        raise ExportError(f"output {str(path)!r} is a folder; give a file name such as model.onnx")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the folder of {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _sources(model: Any, entry: Entry, weights: str | os.PathLike | None, download: Any) -> list[Path]:
    """The files an export by name reads: ``weights``, else the cached checkpoint and its conversion."""
    if isinstance(model, Segmenter):
        return []
    if weights is not None:
        return [Path(weights)]
    if entry.weights is None:
        return []
    return [hub.checkpoint_path(entry, download), hub.converted_path(entry, download)]


def _entry_of(model: Any, weights: Any, download_kwargs: dict[str, Any]) -> Entry:
    """The entry being exported: a loaded (torch) Segmenter's, or the one a name resolves to."""
    if isinstance(model, Segmenter):
        if getattr(model, "info", None) is not None:  # an OnnxSegmenter
            raise ExportError(f"{model.entry.name} is already an ONNX file; export the model from its name or weights")
        if weights is not None or download_kwargs:
            raise ExportError("weights and download options apply when the model is given by name, not a Segmenter")
        return model.entry
    if isinstance(model, str):
        return get_entry(model, index=getattr(download_kwargs.get("download"), "index", None))
    raise ExportError(f"export_onnx takes a model name or a psegzoo Segmenter, got {type(model).__name__}")


def _fixed_size(entry: Entry, static: bool | None, input_size: Any) -> tuple[int, int] | None:
    """The graph's fixed input size, or None for free height and width (where the method allows it)."""
    fixed_only = entry.architecture.decode_head.type in FIXED_SIZE_HEADS
    if static is None:
        static = fixed_only
    if fixed_only and not static:
        raise ExportError(f"{entry.name}: {entry.method} exports at a fixed input size only (its attention masks depend "
                          f"on the size); pass {option('static=True', '--static')} or leave it out")
    if not static:
        if input_size is not None:
            raise ExportError(f"{option('input_size', '--input-size')} sets the size of a fixed-size export; also pass "
                              f"{option('static=True', '--static')} (the dynamic graph takes any size)")
        return None
    return _size(input_size if input_size is not None else tuple(entry.crop_size), option("input_size", "--input-size"))


def _references(plain: Segmentor, x: torch.Tensor, lowres: bool) -> dict[str, torch.Tensor]:
    """What ``seg.model(x)`` gives (and the head's own logits, if exported), float32 on the CPU."""
    with torch.inference_mode():
        references = {metadata.LOGITS: plain(x)}
        if lowres:
            references[metadata.LOWRES] = plain.forward_lowres(x)
    return references


def _program(graph: _Graph, example: torch.Tensor, size: tuple[int, int] | None, min_side: int, name: str,
             outputs: Sequence[str], opset: int | None) -> Any:
    """The ONNX program of ``graph``: captured by torch.export, translated, its input's axes checked and named."""
    with _quiet_exporter(), torch.no_grad():
        exported = _capture(graph, example, None if size else min_side, name)
        try:
            program = torch.onnx.export(exported, (example,), dynamo=True, input_names=[metadata.INPUT],
                                        output_names=list(outputs), opset_version=opset, verbose=False, optimize=True)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {name} ({deps.first_line(exc)})") from None
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for {name}")
    _name_dims(program, size, name)
    return program


def _save_checked(program: Any, out_path: Path, name: str, precision: str, x: torch.Tensor,
                  references: dict[str, torch.Tensor]) -> float | None:
    """Write the file beside ``out_path``, check it against ``references`` (if any), then put it in
    place; nothing is left behind on failure. The check's relative error (None without one)."""
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")
    try:
        try:
            program.save(tmp, external_data=False)
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot write {str(out_path)!r}: {deps.first_line(exc)}") from None
        error = None
        if references:
            error = _check(tmp, x, references)
            if not error <= TOLERANCE[precision]:
                h, w = x.shape[-2:]
                raise ExportError(f"the exported {name} differs from the torch model by {error:.2e} x max|logits| "
                                  f"at {h}x{w} (allowed {TOLERANCE[precision]:.0e}); nothing written")
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return error


def _notes(entry: Entry, size: tuple[int, int] | None, half: bool) -> tuple[str, ...]:
    """What the user should know about the file: a fixed size the method imposes, float16 compute."""
    notes = []
    if size is not None and entry.architecture.decode_head.type in FIXED_SIZE_HEADS:
        notes.append(f"{entry.method} is exported for {size[0]}x{size[1]} inputs only, because its attention masks depend "
                     f"on the input size: predict with it in slide mode with a {size[0]}x{size[1]} crop, or export at the "
                     "size your images are resized to")
    if half:
        notes.append("float16 weights and compute; input and output stay float32")
    return tuple(notes)


def export_onnx(model: str | Segmenter, output: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                opset: int | None = None, input_size: int | Sequence[int] | None = None, static: bool | None = None,
                half: bool = False, check: bool = True, **download_kwargs: Any) -> ExportResult:
    """Export a model (by name, or a loaded :class:`Segmenter`) to the ONNX file ``output``.

    ``static``: fixed height and width (``input_size``, default the training crop); None exports
    dynamic sizes where the method allows (PSANet is always fixed). ``half``: float16 weights and
    compute behind float32 input and output. ``check`` runs the file with onnxruntime on the CPU
    and compares with the torch model before writing it. ``weights`` and the download options
    (those of :func:`psegzoo.load`) apply when the model is given by name.
    """
    t0 = time.perf_counter()
    deps.require_exporter()
    _check_opset(opset)
    entry = _entry_of(model, weights, download_kwargs)
    size = _fixed_size(entry, static, input_size)
    out_path = _output_path(output)
    refuse_writing_over(out_path, _sources(model, entry, weights, download_kwargs.get("download")))
    precision = "float16" if half else "float32"
    min_side = min_dynamic_side(entry.architecture)
    lowres = entry.test.resize_logits == "direct"
    outputs = [metadata.LOGITS, metadata.LOWRES] if lowres else [metadata.LOGITS]
    seg = model if isinstance(model, Segmenter) else load(entry.name, weights=weights, device="cpu", **download_kwargs)

    plain = _plain_copy(seg.model)
    check_size = size or CHECK_SIZE
    check_x = torch.randn((1, 3, *check_size), generator=torch.Generator().manual_seed(0))
    references = _references(plain, check_x, lowres) if check else {}
    plain.fuse_bn()
    use_fast_paths(plain, False)
    graph = _Graph(plain, float16=half, lowres=lowres).eval()
    example = torch.randn((2, 3, *(size or tuple(entry.crop_size))))
    program = _program(graph, example, size, min_side, entry.name, outputs, opset)
    actual_opset = int(program.model.opset_imports.get("", opset or 0))
    info = metadata.OnnxInfo(entry=entry, dataset=seg.dataset, input_size=size, min_side=min(size) if size else min_side,
                             precision=precision, lowres_output=lowres,
                             opset=actual_opset, psegzoo_version=__version__, exporter=_exporter_name())
    program.model.metadata_props.update(metadata.build(info))
    program.model.doc_string = f"psegzoo {entry.name}: normalized NCHW float32 input -> NCHW float32 logits"
    error = _save_checked(program, out_path, entry.name, precision, check_x, references)
    return ExportResult(path=out_path, name=entry.name, opset=actual_opset, precision=precision, input_size=size,
                        outputs=info.outputs, size_bytes=out_path.stat().st_size, seconds=time.perf_counter() - t0,
                        checked_size=check_size if references else None, max_error=error, notes=_notes(entry, size, half))
