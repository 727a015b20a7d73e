"""Running an exported file with onnxruntime inside psegzoo's own test pipeline.

:class:`OnnxEngine` stands where the predictor expects a Segmentor: ``engine(x)`` takes the
normalized NCHW float32 batch and returns the logits as a torch tensor, ``engine.forward_lowres(x)``
the head's own logits (SSSegmentation entries). It holds no parameters, so the predictor feeds it
float32 contiguous CPU tensors; onnxruntime decides where the graph runs (its execution providers).
:func:`load_onnx` wraps it in a :class:`OnnxSegmenter`, whose ``predict()`` is the Segmenter's:
resize, whole/slide, test-time augmentation and outputs are the very same code.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..api import Prediction, Segmenter
from ..devices import parse_device
from ..errors import ExportError, PredictionError, check_count, option
from ..models import FastPaths
from ..predictor import InferenceSettings
from . import deps, metadata


def _is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "bad_alloc" in text or "bad allocation" in text or "failed to allocate" in text


def slide_option(size: tuple[int, int]) -> str:
    """How to ask for slide mode with ``size`` as the crop, for either audience."""
    h, w = size
    return option(f"mode='slide', crop_size=({h}, {w})", f"--mode slide --crop-size {h}x{w}")


Provider = str | tuple[str, dict[str, Any]]
"""An onnxruntime execution provider: its name, or its name and options."""


def providers_for(device: str | None, available: list[str]) -> list[Provider]:
    """onnxruntime execution providers for a psegzoo device name: auto (CUDA if this onnxruntime has
    it), cpu, cuda or cuda:N (the GPU's index goes to the CUDA provider as its ``device_id``, so each
    process of a torchrun job runs on its own GPU)."""
    try:
        name = parse_device(device)
    except PredictionError:
        name = None
    cuda = "CUDAExecutionProvider" in available
    if name is not None and name.kind == "auto":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if name is not None and name.kind == "cpu":
        return ["CPUExecutionProvider"]
    if name is not None and name.kind == "cuda":
        if not cuda:
            use_cpu = option("device='cpu'", "--device cpu")
            raise ExportError(f"device {device!r} asked for, but this onnxruntime has no CUDA provider; "
                              f"pip install onnxruntime-gpu, or use {use_cpu}")
        gpu: Provider = "CUDAExecutionProvider" if name.index is None else ("CUDAExecutionProvider", {"device_id": name.index})
        return [gpu, "CPUExecutionProvider"]
    raise ExportError(f"device {device!r} is not supported for ONNX files; use auto, cpu, cuda or cuda:N")


class OnnxEngine(nn.Module):
    """An exported graph run by onnxruntime, called like the model it was exported from."""

    def __init__(self, session: Any, info: metadata.OnnxInfo, where: str):
        super().__init__()
        self.session = session
        self.info = info
        self.where = where
        self.num_classes = info.entry.num_classes
        self.align_corners = info.entry.architecture.align_corners
        self.eval()

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _run(self, x: torch.Tensor, output: str) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise PredictionError(f"{self.where} takes N x 3 x H x W input, got {tuple(x.shape)}")
        fixed = self.info.input_size
        if fixed is not None and tuple(x.shape[-2:]) != fixed:
            raise PredictionError(
                f"{self.where} was exported for {fixed[0]}x{fixed[1]} inputs only and got {x.shape[2]}x{x.shape[3]}: "
                f"predict in slide mode with that crop ({slide_option(fixed)}) on images at least that large, "
                "or export at the size your images are resized to"
            )
        if fixed is None and min(x.shape[-2:]) < self.info.min_side:
            raise PredictionError(f"{self.where} takes heights and widths of at least {self.info.min_side} pixels, "
                                  f"got {x.shape[2]}x{x.shape[3]}; use a larger scale or crop")
        array = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        try:
            out = self.session.run([output], {metadata.INPUT: array})[0]
        except Exception as exc:
            if _is_allocation_failure(exc):
                raise MemoryError(f"onnxruntime ran out of memory on a {tuple(x.shape)} input") from None
            raise PredictionError(f"onnxruntime failed on {self.where} for a {tuple(x.shape)} input: {deps.first_line(exc)}") from None
        if out.ndim != 4 or out.shape[0] != x.shape[0] or out.shape[1] != self.num_classes:
            raise PredictionError(f"{self.where} gave {output} of shape {tuple(out.shape)} for a {tuple(x.shape)} input; "
                                  f"its metadata promises N x {self.num_classes} x H x W: export the model again")
        return torch.from_numpy(out).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, metadata.LOGITS)

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        if not self.info.lowres_output:
            raise PredictionError(f"{self.where} has no {metadata.LOWRES} output; export the model again")
        return self._run(x, metadata.LOWRES)


class OnnxSegmenter(Segmenter):
    """A :class:`Segmenter` whose model is an exported file run by onnxruntime.

    ``predict()``/``predict_many()`` run the entry's test pipeline exactly as for a torch model.
    Precision is fixed by the export; a fixed-size file (PSANet) predicts in slide mode with its size as crop.
    """

    def __init__(self, engine: OnnxEngine, path: Path, timings: dict[str, float] | None = None):
        info = engine.info
        super().__init__(cast(Any, engine), info.entry, torch.device("cpu"), torch.float32, info.dataset, timings,
                         fast_paths=False)
        self.engine = engine
        self.info = info
        self.path = path

    def __repr__(self) -> str:
        return f"OnnxSegmenter({self.entry.name!r}, file={str(self.path)!r}, providers={self.engine.providers})"

    def use_fast_paths(self, paths: bool | FastPaths | str = "auto") -> Segmenter:
        """An ONNX file has no torch fast paths: only False (none) is accepted, and changes nothing."""
        if paths is False or paths == FastPaths.none():
            return self
        raise ExportError("an ONNX file is optimized by onnxruntime when it is loaded; fast paths are for "
                          "psegzoo.load() models")

    def compile(self, **kwargs: Any) -> Segmenter:
        raise ExportError("an ONNX file is optimized by onnxruntime when it is loaded; compile() is for psegzoo.load() models")

    def settings(self, **overrides: Any) -> InferenceSettings:
        settings = super().settings(**overrides)
        fixed = self.info.input_size
        if fixed is not None and (settings.mode != "slide" or settings.crop_size != fixed):
            raise PredictionError(
                f"{self.path.name} was exported for {fixed[0]}x{fixed[1]} inputs only: predict in slide mode with that "
                f"crop ({slide_option(fixed)}), or export at the size your images are resized to"
            )
        return settings

    def predict(self, image: Any, **kwargs: Any) -> Prediction:
        if kwargs.get("amp_dtype") is not None:
            raise PredictionError(f"{self.path.name} runs in the precision it was exported with ({self.info.precision}); "
                                  "export with half precision instead of autocast")
        return super().predict(image, **kwargs)


def check_graph(session: Any, info: metadata.OnnxInfo, where: str) -> None:
    """The graph must be what its metadata claims: one input, the named outputs, each with as many
    channels as the entry has classes (a foreign file's claims are not taken on trust)."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if inputs != [metadata.INPUT] or not set(info.outputs) <= set(outputs):
        raise ExportError(f"{where!r} has inputs {inputs} and outputs {sorted(outputs)}; its metadata promises "
                          f"{metadata.INPUT!r} -> {', '.join(info.outputs)}: export the model again")
    classes = info.entry.num_classes
    for name in info.outputs:
        shape = list(outputs[name] or [])
        channels = shape[1] if len(shape) == 4 else None
        if channels != classes or len(info.dataset.classes) != classes:
            raise ExportError(f"{where!r} claims to be {info.entry.name} with {classes} classes "
                              f"({len(info.dataset.classes)} named), but its graph's {name} output has shape "
                              f"{shape} (N x C x H x W with C = {classes} expected); the file does not match its "
                              "metadata: export the model again")


def load_onnx(path: str | os.PathLike, *, device: str | None = "auto", threads: int | None = None) -> OnnxSegmenter:
    """Open a file written by :func:`psegzoo.export_onnx` for prediction with onnxruntime.

    ``device``: auto (CUDA when this onnxruntime has it, else CPU), cpu or cuda. ``threads``:
    onnxruntime's intra-op threads (default: its own choice, one per physical core). The entry,
    classes and test pipeline come from the file's metadata, so the manifest need not know the model.
    """
    t0 = time.perf_counter()
    ort = deps.onnxruntime()
    file = Path(path)
    if not file.is_file():
        raise ExportError(f"ONNX file {str(file)!r} does not exist")
    providers = providers_for(device, list(ort.get_available_providers()))
    check_count(threads, "threads", ExportError, none=True)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: onnxruntime's notices are not the user's business
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(file), options, providers=providers)
    except Exception as exc:
        raise ExportError(f"{str(file)!r} is not an ONNX model onnxruntime can load ({deps.first_line(exc)})") from None
    info = metadata.parse(session.get_modelmeta().custom_metadata_map, str(file))
    check_graph(session, info, str(file))
    engine = OnnxEngine(session, info, file.name)
    return OnnxSegmenter(engine, file, {"total_s": time.perf_counter() - t0})
