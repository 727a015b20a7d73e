"""What an exported ONNX file says about itself, in its ``metadata_props``.

ONNX metadata values are strings; structured values are JSON. A reader needs nothing else to use
the file: ``name``, ``dataset``, ``classes``, ``palette``, ``mean``, ``std`` (the input
normalization), ``test`` (the published test pipeline), ``input``/``output`` (the graph's contract),
``precision``, ``opset``, ``exporter`` and ``psegzoo_version`` are for people and other tools;
``manifest`` holds the entry and its dataset in the manifest's own schema, from which
:func:`parse` rebuilds them exactly (so a file runs where its entry is not in the manifest).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ExportError, ManifestError
from ..manifest import SCHEMA_VERSION, Dataset, Entry, parse_manifest

FORMAT = "1"
INPUT = "input"
LOGITS = "logits"
LOWRES = "logits_lowres"
PRECISIONS = ("float32", "float16")


@dataclass(frozen=True)
class OnnxInfo:
    """The metadata of one exported file.

    ``input_size`` is ``(h, w)`` for a fixed-size graph and None when height and width are free
    (from ``min_side`` up); ``lowres_output`` says whether the graph also returns the head's own low-resolution logits.
    """

    entry: Entry
    dataset: Dataset
    input_size: tuple[int, int] | None
    min_side: int
    precision: str
    lowres_output: bool
    opset: int
    psegzoo_version: str
    exporter: str

    @property
    def outputs(self) -> tuple[str, ...]:
        return (LOGITS, LOWRES) if self.lowres_output else (LOGITS,)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def build(info: OnnxInfo) -> dict[str, str]:
    """The ``metadata_props`` of an exported file."""
    entry, test = info.entry, info.entry.test
    size = list(info.input_size) if info.input_size else None
    return {
        "psegzoo_format": FORMAT,
        "name": entry.name,
        "dataset": entry.dataset,
        "classes": _json(list(info.dataset.classes)),
        "palette": _json([list(c) for c in info.dataset.palette]),
        "mean": _json(list(test.mean)),
        "std": _json(list(test.std)),
        "test": _json({
            "scale": list(test.scale), "mode": test.mode,
            "crop_size": list(test.crop_size) if test.crop_size else None,
            "stride": list(test.stride) if test.stride else None,
            "resize_logits": test.resize_logits, "align_corners": entry.architecture.align_corners,
            "train_crop": list(entry.crop_size),
        }),
        "input": _json({
            "name": INPUT, "dtype": "float32", "layout": "NCHW", "channels": "RGB",
            "normalization": "(pixel - mean) / std, pixel in 0..255", "height_width": size or "dynamic",
            "min_height_width": info.min_side,
        }),
        "output": _json({
            "names": list(info.outputs), "dtype": "float32", "layout": "NCHW",
            LOGITS: "class logits at the input's height and width",
            **({LOWRES: "the decode head's logits at its own stride"} if info.lowres_output else {}),
        }),
        "precision": info.precision,
        "opset": str(info.opset),
        "exporter": info.exporter,
        "psegzoo_version": info.psegzoo_version,
        "manifest": _json({"schema_version": SCHEMA_VERSION, "datasets": {info.dataset.id: info.dataset.to_json()},
                           "models": [entry.to_json()]}),
    }


def parse(props: Mapping[str, str], where: str) -> OnnxInfo:
    """The metadata of the file ``where``; ExportError when it was not written by ``psegzoo export``."""
    if "psegzoo_format" not in props or "manifest" not in props:
        raise ExportError(f"{where} has no psegzoo metadata; make the file with 'psegzoo export' (psegzoo.export_onnx)")
    if props["psegzoo_format"] != FORMAT:
        raise ExportError(f"{where} uses psegzoo ONNX metadata format {props['psegzoo_format']!r}; "
                          f"this psegzoo reads format {FORMAT}: export the model again")
    try:
        entries, datasets = parse_manifest(json.loads(props["manifest"]), where=f"{where} metadata")
        entry = entries[0]
        graph_input = json.loads(props["input"])
        size = graph_input["height_width"]
        info = OnnxInfo(
            entry=entry,
            dataset=datasets[entry.dataset],
            input_size=None if size == "dynamic" else (int(size[0]), int(size[1])),
            min_side=int(graph_input["min_height_width"]),
            precision=props["precision"],
            lowres_output=LOWRES in json.loads(props["output"])["names"],
            opset=int(props["opset"]),
            psegzoo_version=props["psegzoo_version"],
            exporter=props["exporter"],
        )
    except RecursionError:  # JSON nested deeper than any psegzoo file
        raise ExportError(f"{where} has unreadable psegzoo metadata (nested too deeply); export the model again") from None
    except (ManifestError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ExportError(f"{where} has unreadable psegzoo metadata ({exc}); export the model again") from None
    if info.precision not in PRECISIONS:
        raise ExportError(f"{where} declares precision {info.precision!r}; expected one of {', '.join(PRECISIONS)}")
    return info
