#!/usr/bin/env python3
"""Build ``model_index.json`` from the zoo tables and mmsegmentation 1.2.2's own configs.

The zoo tables (``shared/zoo/*.md``, copied to ``tests/data/zoo``) are authoritative for what is published: URLs, hashes and
figures. Everything needed to rebuild each network and its evaluation (architecture, test
resize, whole/slide inference, normalisation) is read from the checkpoint's own mmseg config,
found through ``<method>/metafile.yaml`` and evaluated here with a small config evaluator
(``_base_`` inheritance, recursive dict merge, ``_delete_``), so no OpenMMLab code is imported.
Class names and palettes come from the ``METAINFO`` literals of ``mmseg/datasets/*.py``, read
with :mod:`ast`.

Standard library only. The output is deterministic: same inputs, byte-identical file.

Extra-result dataset ids (``results[].dataset``): ``dark_zurich`` (Dark Zurich val night) and
``nighttime_driving`` (Nighttime Driving test), both evaluated with Cityscapes checkpoints.

Usage::

    python tools/build_index.py --mmseg-configs /path/to/mmseg/.mim/configs \\
        --mmseg-datasets /path/to/mmseg/datasets [--reference ../shared/reference] -o model_index.json
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ZOO = REPO_ROOT / "tests" / "data" / "zoo"  # a copy of the zoo tables, made by tools/make_test_data.py

SCHEMA_VERSION = 1

# Zoo tables in output order, with the metafile directory of each method.
MMSEG_TABLES = (
    ("mmseg_pspnet.md", "PSPNet", "pspnet"),
    ("mmseg_psanet.md", "PSANet", "psanet"),
    ("mmseg_deeplabv3.md", "DeepLabV3", "deeplabv3"),
    ("mmseg_upernet.md", "UPerNet", "upernet"),
)
SSSEG_TABLE = "sssegmentation_pspnet.md"
EXPECTED_MMSEG_CHECKPOINTS = 111
EXPECTED_SSSEG_ROWS = 12

# Section headings of the mmseg tables -> dataset id.
SECTION_DATASETS = {
    "Cityscapes": "cityscapes",
    "ADE20K": "ade20k",
    "Pascal VOC 2012 + Aug": "voc12aug",
    "Pascal Context": "pascal_context",
    "Pascal Context 59": "pascal_context_59",
    "COCO-Stuff 10k": "coco-stuff10k",
    "COCO-Stuff 164k": "coco-stuff164k",
}
EXTRA_RESULTS_SECTION = "Dark Zurich and Nighttime Driving"
# "Test Dataset" column of the extra-results table -> result dataset id (None: the main result).
EXTRA_TEST_DATASETS = {
    "Dark Zurich": "dark_zurich",
    "Nighttime Driving": "nighttime_driving",
    "Cityscapes Validation set": None,
}

# Dataset id -> (mmseg dataset class, source file, data_root fragment that tells 10k from 164k).
DATASETS = {
    "cityscapes": ("CityscapesDataset", "cityscapes.py", None),
    "ade20k": ("ADE20KDataset", "ade.py", None),
    "voc12aug": ("PascalVOCDataset", "voc.py", None),
    "pascal_context": ("PascalContextDataset", "pascal_context.py", None),
    "pascal_context_59": ("PascalContextDataset59", "pascal_context.py", None),
    "coco-stuff10k": ("COCOStuffDataset", "coco_stuff.py", "coco_stuff10k"),
    "coco-stuff164k": ("COCOStuffDataset", "coco_stuff.py", "coco_stuff164k"),
}
EXPECTED_CLASS_COUNTS = {
    "cityscapes": 19,
    "ade20k": 150,
    "voc12aug": 21,
    "pascal_context": 60,
    "pascal_context_59": 59,
    "coco-stuff10k": 171,
    "coco-stuff164k": 171,
}

# SSSegmentation: table section -> (dataset id, config-name suffix, test scale [long, short]).
SSSEG_SECTIONS = {
    "PASCAL VOC": ("voc12aug", "voc", [2048, 512]),
    "ADE20k": ("ade20k", "ade20k", [2048, 512]),
    "CityScapes": ("cityscapes", "cityscapes", [2048, 1024]),
}
SSSEG_WEIGHTS_URL = "https://github.com/SegmentationBLWX/modelstore/releases/download/ssseg_pspnet/{config}.pth"
# The object-storage bucket behind download.openmmlab.com: the alternative the public record gives
# for the mmseg files (same path; mmpose switched between the two by search-and-replace). Both are
# the publisher's own hosts: ``weights.origins`` marks them as origins. Then the community mirror
# that VBTI's OneDL fork of OpenMMLab runs, with the same paths: a third party, never an origin.
MMSEG_HOST = "https://download.openmmlab.com/"
MMSEG_ALTERNATIVE_HOST = "https://openmmlab.oss-accelerate.aliyuncs.com/"
MMSEG_COMMUNITY_MIRROR = "https://mmassets.onedl.ai/"


def _mmseg_path(url: str) -> str:
    if not url.startswith(MMSEG_HOST):
        raise BuildError(f"{url} is not on {MMSEG_HOST}: no known alternative")
    return url[len(MMSEG_HOST):]


def alternative_urls(url: str) -> list[str]:
    """``weights.urls`` of a published mmseg URL: the same path on the bucket that served the domain,
    then on the OneDL community mirror."""
    path = _mmseg_path(url)
    return [MMSEG_ALTERNATIVE_HOST + path, MMSEG_COMMUNITY_MIRROR + path]


def origin_urls(url: str) -> list[str]:
    """``weights.origins`` of a published mmseg URL: the original and the publisher's bucket."""
    return [url, MMSEG_ALTERNATIVE_HOST + _mmseg_path(url)]
# SSSegmentation normalises with the ImageNet statistics mmseg uses (RGB, 0-255).
SSSEG_MEAN = [123.675, 116.28, 103.53]
SSSEG_STD = [58.395, 57.12, 57.375]
SSSEG_OUTPUT_STRIDES = {8: ([1, 2, 1, 1], [1, 1, 2, 4]), 16: ([1, 2, 2, 1], [1, 1, 1, 2])}

# Known disagreements between a zoo row and its 1.2.2 config that do not touch inference:
# config name -> (config max_iters, table schedule). Both 1.2.2 configs inherit a 40k config
# although their names, the published files and the mmseg 0.x configs all say 80k.
KNOWN_SCHEDULE_MISMATCHES = {
    "deeplabv3_r101-d8_4xb2-amp-80k_cityscapes-512x1024": (40000, 80000),
    "deeplabv3_r101-d8_4xb4-80k_pascal-context-59-480x480": (40000, 80000),
}

_MODEL_LINK = re.compile(r"\[model\]\((?P<url>[^)\s]+)\)")
_PUBLISHED_FILE = re.compile(r"(?P<name>.+)_(?P<date>\d{8})_(?P<time>\d{6})-(?P<hash>[0-9a-f]{8})\.pth")
_CROP = re.compile(r"(?P<h>\d+)x(?P<w>\d+)")


class BuildError(Exception):
    """The inputs contradict each other or hold something this builder does not understand."""


# --------------------------------------------------------------------------------------------
# Markdown tables
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One table row: its section heading, cells by column header, and where it was read."""

    section: str
    cells: dict[str, str]
    where: str


def _split_cells(line: str) -> list[str]:
    """Cells of a table line; ``\\|`` (like ``&#124;``) is a pipe inside a cell."""
    text = line.strip()
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|") and not text.endswith("\\|"):
        text = text[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", text)]


def _is_separator(line: str) -> bool:
    cells = _split_cells(line)
    return bool(cells) and all(re.fullmatch(r":?-+:?", c) for c in cells)


def read_table_rows(path: Path, heading_level: int) -> list[Row]:
    """All data rows of all pipe tables in a markdown file, under their ``#``-level headings."""
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = re.compile(r"#{" + str(heading_level) + r"}\s+(?P<title>.+?)\s*$")
    rows: list[Row] = []
    section = ""
    header: list[str] | None = None
    in_code = False
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        m = heading.fullmatch(line)
        if m and not line.startswith("#" * (heading_level + 1)):
            section, header = m.group("title"), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            if i + 1 < len(lines) and _is_separator(lines[i + 1]):
                header = _split_cells(line)
            continue
        if _is_separator(line):
            continue
        cells = _split_cells(line)
        if len(cells) != len(header):
            raise BuildError(f"{path.name}:{i + 1}: {len(cells)} cells, the table header has {len(header)}")
        rows.append(Row(section, dict(zip(header, cells)), f"{path.name}:{i + 1}"))
    return rows


def _figure(text: str, where: str, what: str) -> float | None:
    """A printed number ("-" is null), e.g. ``77.85``, ``12``, ``77.93%``."""
    value = text.strip().rstrip("%").strip()
    if value == "-":
        return None
    if not re.fullmatch(r"\d+(\.\d+)?", value):
        raise BuildError(f"{where}: {what} {text!r} is not a number or '-'")
    return float(value)


def _crop(text: str, where: str) -> list[int]:
    m = _CROP.fullmatch(text.strip())
    if not m:
        raise BuildError(f"{where}: crop size {text!r} is not HxW")
    return [int(m.group("h")), int(m.group("w"))]


def _cell(row: Row, *names: str) -> str:
    for n in names:
        if n in row.cells:
            return row.cells[n]
    raise BuildError(f"{row.where}: no column {names[0]!r} (columns: {', '.join(row.cells)})")


def _model_url(row: Row) -> str | None:
    urls = {m.group("url") for cell in row.cells.values() for m in _MODEL_LINK.finditer(cell)}
    if len(urls) > 1:
        raise BuildError(f"{row.where}: several [model] links: {sorted(urls)}")
    return urls.pop() if urls else None


@dataclass
class Checkpoint:
    """A published mmseg checkpoint as the zoo table prints it."""

    name: str
    method: str
    backbone: str
    dataset: str
    crop_size: list[int]
    schedule: int
    mem_gb: float | None
    fps: float | None
    miou: float | None
    miou_ms_flip: float | None
    fp16: bool
    url: str
    file: str
    sha256_prefix: str
    where: str
    results: list[dict[str, Any]] = field(default_factory=list)


def parse_published_file(url: str, where: str) -> tuple[str, str, str]:
    """(file, name, sha256 prefix) of a published checkpoint URL."""
    file = url.rsplit("/", 1)[-1]
    m = _PUBLISHED_FILE.fullmatch(file)
    if not m:
        raise BuildError(f"{where}: {file!r} is not <name>_YYYYMMDD_HHMMSS-<8 hex>.pth")
    return file, m.group("name"), m.group("hash")


def read_mmseg_table(path: Path, method: str) -> list[Checkpoint]:
    """The checkpoints of one mmseg zoo table, in table order, extra results attached."""
    checkpoints: dict[str, Checkpoint] = {}
    extra_rows: list[tuple[Row, str]] = []
    for row in read_table_rows(path, heading_level=3):
        url = _model_url(row)
        if url is None:
            continue
        if row.section == EXTRA_RESULTS_SECTION:
            extra_rows.append((row, url))
            continue
        if row.section not in SECTION_DATASETS:
            raise BuildError(f"{row.where}: section {row.section!r} names no known dataset")
        printed_method = _cell(row, "Method")
        fp16 = printed_method == f"{method} (FP16)"
        if printed_method != method and not fp16:
            raise BuildError(f"{row.where}: method {printed_method!r}, expected {method!r} in {path.name}")
        schedule = _cell(row, "Lr schd")
        if not schedule.isdigit():
            raise BuildError(f"{row.where}: schedule {schedule!r} is not an iteration count")
        file, name, prefix = parse_published_file(url, row.where)
        if url in checkpoints:
            raise BuildError(f"{row.where}: {file} is listed twice ({checkpoints[url].where})")
        checkpoints[url] = Checkpoint(
            name=name,
            method=method,
            backbone=_cell(row, "Backbone"),
            dataset=SECTION_DATASETS[row.section],
            crop_size=_crop(_cell(row, "Crop Size"), row.where),
            schedule=int(schedule),
            mem_gb=_figure(_cell(row, "Mem (GB)"), row.where, "memory"),
            fps=_figure(_cell(row, "Inf time (fps)"), row.where, "fps"),
            miou=_figure(_cell(row, "mIoU"), row.where, "mIoU"),
            miou_ms_flip=_figure(_cell(row, "mIoU(ms+flip)"), row.where, "mIoU(ms+flip)"),
            fp16=fp16,
            url=url,
            file=file,
            sha256_prefix=prefix,
            where=row.where,
        )
    for row, url in extra_rows:
        if url not in checkpoints:
            raise BuildError(f"{row.where}: links {url}, which no results table of {path.name} lists")
        ckpt = checkpoints[url]
        if _cell(row, "Backbone") != ckpt.backbone or _cell(row, "Method") != method:
            raise BuildError(f"{row.where}: method/backbone differ from {ckpt.where}")
        test_set = _cell(row, "Test Dataset")
        if test_set not in EXTRA_TEST_DATASETS:
            raise BuildError(f"{row.where}: unknown test dataset {test_set!r}")
        miou = _figure(_cell(row, "mIoU"), row.where, "mIoU")
        result_id = EXTRA_TEST_DATASETS[test_set]
        if result_id is None:
            if ckpt.dataset != "cityscapes" or miou != ckpt.miou:
                raise BuildError(f"{row.where}: Cityscapes mIoU {miou} differs from {ckpt.where} ({ckpt.miou})")
            continue
        if any(r["dataset"] == result_id for r in ckpt.results):
            raise BuildError(f"{row.where}: a second {result_id} result for {ckpt.name}")
        ckpt.results.append({"dataset": result_id, "miou": miou, "miou_ms_flip": None})
    return list(checkpoints.values())


# --------------------------------------------------------------------------------------------
# metafile.yaml (only the Models list: Name / Config / Weights)
# --------------------------------------------------------------------------------------------


def read_metafile(path: Path) -> list[dict[str, str]]:
    """The ``Name``, ``Config`` and ``Weights`` of each model in a metafile, in file order."""
    models: list[dict[str, str]] = []
    in_models = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"[A-Za-z]", line):  # a top-level key
            in_models = line.strip() == "Models:"
            continue
        if not in_models:
            continue
        m = re.fullmatch(r"- Name: (?P<v>\S+)\s*", line)
        if m:
            models.append({"Name": m.group("v")})
            continue
        m = re.fullmatch(r"  (?P<k>Config|Weights): (?P<v>\S+)\s*", line)
        if m:
            if not models:
                raise BuildError(f"{path}: {m.group('k')} before the first model")
            models[-1][m.group("k")] = m.group("v")
    return models


def config_for_url(url: str, metafile: list[dict[str, str]], where: str) -> tuple[str, str | None]:
    """(config path relative to configs/, note) for a published URL; matched by file name
    when the metafile's URL differs (the zoo table is authoritative for URLs)."""
    exact = [m for m in metafile if m.get("Weights") == url]
    if len(exact) == 1:
        return _config_rel(exact[0]["Config"], where), None
    file = url.rsplit("/", 1)[-1]
    by_file = [m for m in metafile if m.get("Weights", "").rsplit("/", 1)[-1] == file]
    if len(exact) > 1 or len(by_file) != 1:
        raise BuildError(f"{where}: {len(exact) or len(by_file)} metafile models publish {file}; expected 1")
    note = f"metafile URL {by_file[0]['Weights']} differs from the zoo table's {url}; matched by file name"
    return _config_rel(by_file[0]["Config"], where), note


def _config_rel(config: str, where: str) -> str:
    if not config.startswith("configs/") or not config.endswith(".py"):
        raise BuildError(f"{where}: unexpected metafile Config {config!r}")
    return config[len("configs/") :]


# --------------------------------------------------------------------------------------------
# Config evaluator (mmengine-style inheritance, without mmengine)
# --------------------------------------------------------------------------------------------

_SAFE_BUILTINS = {
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "range": range,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "zip": zip,
    "enumerate": enumerate,
}
DELETE_KEY = "_delete_"


class ConfigLoader:
    """Evaluates mmseg config files: each file runs in a fresh namespace with a few builtins,
    then its variables are merged over those of its ``_base_`` files, as mmengine does."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[Path, dict[str, Any]] = {}

    def load(self, rel: str) -> dict[str, Any]:
        return copy.deepcopy(self._load(self.root / rel))

    def _load(self, path: Path) -> dict[str, Any]:
        path = path.resolve()
        if path in self._cache:
            return self._cache[path]
        if not path.is_file():
            raise BuildError(f"config {path} does not exist")
        own = _exec_config(path)
        bases = own.pop("_base_", [])
        if isinstance(bases, str):
            bases = [bases]
        merged: dict[str, Any] = {}
        for base in bases:
            if not isinstance(base, str) or "::" in base or not base.endswith(".py"):
                raise BuildError(f"{path}: unsupported _base_ entry {base!r}")
            base_cfg = self._load(path.parent / base)
            dup = merged.keys() & base_cfg.keys()
            if dup:
                raise BuildError(f"{path}: keys {sorted(dup)} are defined by more than one base")
            merged.update(copy.deepcopy(base_cfg))
        result = merge_config(own, merged, str(path))
        self._cache[path] = result
        return result


def _exec_config(path: Path) -> dict[str, Any]:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            raise BuildError(f"{path}:{node.lineno}: imports are not supported in configs")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise BuildError(f"{path}:{node.lineno}: attribute {node.attr!r} is not allowed")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "{{" in node.value:
            raise BuildError(f"{path}:{node.lineno}: {{{{_base_.x}}}} substitution is not supported")
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise BuildError(f"{path}:{node.lineno}: name {node.id!r} is not allowed")
    namespace: dict[str, Any] = {"__builtins__": dict(_SAFE_BUILTINS)}
    try:
        exec(compile(tree, str(path), "exec"), namespace)
    except Exception as exc:  # a config we cannot evaluate is a build failure
        raise BuildError(f"{path}: cannot evaluate: {type(exc).__name__}: {exc}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def merge_config(child: dict[str, Any], base: dict[str, Any], where: str) -> dict[str, Any]:
    """``child`` merged over ``base``: dicts merge recursively unless ``_delete_=True``."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop(DELETE_KEY, False)
            if key in out and not delete:
                if not isinstance(out[key], dict):
                    raise BuildError(f"{where}: {key!r} is a dict here but {type(out[key]).__name__} in its base")
                out[key] = merge_config(value, out[key], where)
                continue
            out[key] = _strip_delete(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_delete(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# Config -> architecture and test settings
# --------------------------------------------------------------------------------------------

_MODEL_KEYS = {"type", "data_preprocessor", "pretrained", "backbone", "decode_head", "auxiliary_head",
               "train_cfg", "test_cfg"}
_BACKBONE_KEYS = {"type", "depth", "num_stages", "out_indices", "dilations", "strides", "norm_cfg",
                  "norm_eval", "style", "contract_dilation", "multi_grid", "stem_channels", "base_channels"}
# Keys every decode head may carry that do not change the network at inference.
_TRAINING_HEAD_KEYS = {"loss_decode", "sampler", "ignore_index", "norm_cfg", "num_classes", "align_corners", "type"}
_HEAD_KEYS = {
    "PSPHead": {"in_channels", "in_index", "channels", "dropout_ratio", "pool_scales"},
    "ASPPHead": {"in_channels", "in_index", "channels", "dropout_ratio", "dilations"},
    "PSAHead": {"in_channels", "in_index", "channels", "dropout_ratio", "mask_size", "psa_type", "compact",
                "shrink_factor", "normalization_factor", "psa_softmax"},
    "UPerHead": {"in_channels", "in_index", "channels", "dropout_ratio", "pool_scales"},
    "FCNHead": {"in_channels", "in_index", "channels", "dropout_ratio", "num_convs", "concat_input",
                "kernel_size", "dilation"},
}
# mmseg's defaults for arguments a config may leave out.
_HEAD_DEFAULTS = {
    "PSPHead": {"pool_scales": (1, 2, 3, 6)},
    "ASPPHead": {"dilations": (1, 6, 12, 18)},
    "PSAHead": {"psa_type": "bi-direction", "compact": False, "shrink_factor": 2, "normalization_factor": 1.0,
                "psa_softmax": True},
    "UPerHead": {"pool_scales": (1, 2, 3, 6)},
    "FCNHead": {"num_convs": 2, "concat_input": True, "kernel_size": 3, "dilation": 1},
}
_TEST_TRANSFORMS = {"LoadImageFromFile", "Resize", "LoadAnnotations", "PackSegInputs"}


def _ints(value: Any, where: str, what: str, length: int | None = None) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BuildError(f"{where}: {what} {value!r} is not a list of integers")
    if length is not None and len(value) != length:
        raise BuildError(f"{where}: {what} {value!r} should have {length} values")
    return list(value)


def _unexpected(d: dict[str, Any], allowed: set[str], where: str, what: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise BuildError(f"{where}: {what} has settings this builder does not model: {extra}")


def _backbone(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    _unexpected(cfg, _BACKBONE_KEYS, where, "backbone")
    kind = cfg.get("type")
    if kind not in ("ResNetV1c", "ResNet"):
        raise BuildError(f"{where}: backbone type {kind!r} is not ResNetV1c or ResNet")
    if cfg.get("num_stages", 4) != 4 or tuple(cfg.get("out_indices", (0, 1, 2, 3))) != (0, 1, 2, 3):
        raise BuildError(f"{where}: backbone must have 4 stages, all returned")
    if cfg.get("style", "pytorch") != "pytorch":
        raise BuildError(f"{where}: backbone style {cfg.get('style')!r} is not 'pytorch'")
    norm = cfg.get("norm_cfg") or {}
    if norm.get("type") not in ("SyncBN", "BN"):
        raise BuildError(f"{where}: backbone norm {norm!r} is not BatchNorm")
    multi_grid = cfg.get("multi_grid")
    return {
        "type": kind,
        "depth": cfg["depth"],
        "strides": _ints(cfg.get("strides", (1, 2, 2, 2)), where, "strides", 4),
        "dilations": _ints(cfg.get("dilations", (1, 1, 1, 1)), where, "dilations", 4),
        "multi_grid": None if multi_grid is None else _ints(multi_grid, where, "multi_grid"),
        "contract_dilation": bool(cfg.get("contract_dilation", False)),
        "stem_channels": cfg.get("stem_channels", 64),
        "base_channels": cfg.get("base_channels", 64),
        "norm_eps": float(norm.get("eps", 1e-5)),
    }


# Every head object lists all fields of the manifest's HeadSpec, in its order (null where unused),
# so that the file holds exactly what an entry serialises back to.
HEAD_FIELDS = ("type", "in_channels", "in_index", "channels", "dropout_ratio", "pool_scales", "dilations",
               "mask_size", "psa_type", "compact", "shrink_factor", "normalization_factor", "psa_softmax",
               "num_convs", "concat_input")


def head_object(head: dict[str, Any]) -> dict[str, Any]:
    unknown = set(head) - set(HEAD_FIELDS)
    if unknown:
        raise BuildError(f"head fields {sorted(unknown)} are not in the manifest schema")
    return {k: head.get(k) for k in HEAD_FIELDS}


def _head(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    kind = cfg.get("type")
    if kind not in _HEAD_KEYS:
        raise BuildError(f"{where}: head type {kind!r} is not supported")
    _unexpected(cfg, _HEAD_KEYS[kind] | _TRAINING_HEAD_KEYS, where, kind)
    norm = cfg.get("norm_cfg") or {}
    if norm.get("type") not in ("SyncBN", "BN") or "eps" in norm:
        raise BuildError(f"{where}: {kind} norm {norm!r} is not default BatchNorm")
    p = dict(_HEAD_DEFAULTS[kind])
    p.update(cfg)
    head: dict[str, Any] = {"type": kind}
    if isinstance(p["in_channels"], (list, tuple)):
        head["in_channels"] = _ints(p["in_channels"], where, "in_channels")
        head["in_index"] = _ints(p["in_index"], where, "in_index", len(head["in_channels"]))
    else:
        head["in_channels"] = p["in_channels"]
        head["in_index"] = p["in_index"]
    if (kind == "UPerHead") != isinstance(head["in_channels"], list):
        raise BuildError(f"{where}: {kind} in_channels {p['in_channels']!r} has the wrong form")
    head["channels"] = p["channels"]
    head["dropout_ratio"] = float(p.get("dropout_ratio", 0.1))
    if kind in ("PSPHead", "UPerHead"):
        head["pool_scales"] = _ints(p["pool_scales"], where, "pool_scales")
    elif kind == "ASPPHead":
        head["dilations"] = _ints(p["dilations"], where, "dilations")
    elif kind == "PSAHead":
        head["mask_size"] = _ints(p["mask_size"], where, "mask_size", 2)
        head["psa_type"] = p["psa_type"]
        head["compact"] = p["compact"]
        head["shrink_factor"] = p["shrink_factor"]
        head["normalization_factor"] = float(p["normalization_factor"])
        head["psa_softmax"] = p["psa_softmax"]
    elif kind == "FCNHead":
        if p["kernel_size"] != 3 or p["dilation"] != 1:
            raise BuildError(f"{where}: FCNHead kernel_size/dilation {p['kernel_size']}/{p['dilation']} not 3/1")
        head["num_convs"] = p["num_convs"]
        head["concat_input"] = p["concat_input"]
    return head_object(head)


def extract_model(cfg: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(architecture, test settings, facts for cross-checks) of an evaluated mmseg config."""
    model = cfg.get("model")
    if not isinstance(model, dict) or model.get("type") != "EncoderDecoder":
        raise BuildError(f"{where}: model is not an EncoderDecoder")
    _unexpected(model, _MODEL_KEYS, where, "model")
    decode = model["decode_head"]
    aux = model.get("auxiliary_head")
    if aux is not None and not isinstance(aux, dict):
        raise BuildError(f"{where}: auxiliary_head is not a single head")
    num_classes = decode.get("num_classes")
    align = decode.get("align_corners", False)
    if aux is not None and (aux.get("num_classes") != num_classes or aux.get("align_corners", False) != align):
        raise BuildError(f"{where}: auxiliary head disagrees on num_classes/align_corners")
    architecture = {
        "num_classes": num_classes,
        "align_corners": bool(align),
        "backbone": _backbone(model["backbone"], where),
        "decode_head": _head(decode, where),
        "auxiliary_head": None if aux is None else _head(aux, where),
    }
    if architecture["auxiliary_head"] is not None and architecture["auxiliary_head"]["type"] != "FCNHead":
        raise BuildError(f"{where}: auxiliary head is not an FCNHead")

    pre = model.get("data_preprocessor") or {}
    if pre.get("type") != "SegDataPreProcessor" or pre.get("bgr_to_rgb") is not True or "test_cfg" in pre:
        raise BuildError(f"{where}: unexpected data_preprocessor {pre!r}")
    test_cfg = model.get("test_cfg") or {}
    _unexpected(test_cfg, {"mode", "crop_size", "stride"}, where, "model.test_cfg")
    mode = test_cfg.get("mode", "whole")
    if mode not in ("whole", "slide"):
        raise BuildError(f"{where}: test mode {mode!r}")
    crop = stride = None
    if mode == "slide":
        crop = _ints(test_cfg["crop_size"], where, "test crop_size", 2)
        stride = _ints(test_cfg["stride"], where, "test stride", 2)
    elif "crop_size" in test_cfg or "stride" in test_cfg:
        raise BuildError(f"{where}: whole-image test with crop_size/stride")

    loader = cfg.get("test_dataloader") or {}
    dataset = loader.get("dataset") or {}
    pipeline = dataset.get("pipeline")
    if not isinstance(pipeline, list) or pipeline != cfg.get("test_pipeline"):
        raise BuildError(f"{where}: test_dataloader's pipeline differs from test_pipeline")
    kinds = [t.get("type") for t in pipeline]
    if not set(kinds) <= _TEST_TRANSFORMS or kinds.count("Resize") != 1:
        raise BuildError(f"{where}: unexpected test pipeline {kinds}")
    resize = pipeline[kinds.index("Resize")]
    _unexpected(resize, {"type", "scale", "keep_ratio"}, where, "test Resize")
    if resize.get("keep_ratio") is not True:
        raise BuildError(f"{where}: test Resize is not keep_ratio=True: {resize!r}")
    scale = _ints(resize["scale"], where, "test scale", 2)
    test = {
        "scale": [max(scale), min(scale)],
        "mode": mode,
        "crop_size": crop,
        "stride": stride,
        "mean": [float(v) for v in pre["mean"]],
        "std": [float(v) for v in pre["std"]],
        "resize_logits": "via_input",
    }
    facts = {
        "dataset_type": dataset.get("type"),
        "data_root": dataset.get("data_root", ""),
        "crop_size": cfg.get("crop_size"),
        "max_iters": (cfg.get("train_cfg") or {}).get("max_iters"),
        "amp": (cfg.get("optim_wrapper") or {}).get("type") == "AmpOptimWrapper",
    }
    return architecture, test, facts


def check_config_against_table(ckpt: Checkpoint, arch: dict[str, Any], facts: dict[str, Any],
                               datasets: dict[str, dict[str, Any]], where: str, notes: list[str]) -> None:
    """Fail when the config contradicts the zoo row it was matched to."""
    cls_name, _, root_part = DATASETS[ckpt.dataset]
    problems = []
    if facts["dataset_type"] != cls_name:
        problems.append(f"test dataset {facts['dataset_type']!r}, table says {cls_name}")
    if root_part is not None and root_part not in facts["data_root"]:
        problems.append(f"data_root {facts['data_root']!r} is not {ckpt.dataset}")
    if facts["crop_size"] is None or list(facts["crop_size"]) != ckpt.crop_size:
        problems.append(f"crop_size {facts['crop_size']!r}, table says {ckpt.crop_size}")
    config_name = Path(where).stem
    if KNOWN_SCHEDULE_MISMATCHES.get(config_name) == (facts["max_iters"], ckpt.schedule):
        notes.append(f"{ckpt.name}: config {config_name} trains {facts['max_iters']} iterations, "
                     f"the table says {ckpt.schedule} (table kept)")
    elif facts["max_iters"] != ckpt.schedule:
        problems.append(f"max_iters {facts['max_iters']!r}, table says {ckpt.schedule}")
    if facts["amp"] != ckpt.fp16:
        problems.append(f"mixed precision {facts['amp']}, table says fp16={ckpt.fp16}")
    if arch["num_classes"] != len(datasets[ckpt.dataset]["classes"]):
        problems.append(f"num_classes {arch['num_classes']}, {ckpt.dataset} has {len(datasets[ckpt.dataset]['classes'])}")
    token = ckpt.backbone.split("-")[1].lower()  # "50", "101b", ...
    depth = int(token.rstrip("b"))
    if arch["backbone"]["depth"] != depth:
        problems.append(f"depth {arch['backbone']['depth']}, backbone {ckpt.backbone!r}")
    if (arch["backbone"]["type"] == "ResNet") != token.endswith("b"):
        problems.append(f"backbone type {arch['backbone']['type']}, printed {ckpt.backbone!r}")
    if problems:
        raise BuildError(f"{where} ({ckpt.name}): " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Dataset metadata
# --------------------------------------------------------------------------------------------


def read_dataset_metainfo(path: Path, class_name: str) -> dict[str, Any]:
    """``classes`` and ``palette`` of ``METAINFO`` in a dataset class, read as literals."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "METAINFO" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Call)
                    and isinstance(stmt.value.func, ast.Name)
                    and stmt.value.func.id == "dict"
                ):
                    info = {kw.arg: ast.literal_eval(kw.value) for kw in stmt.value.keywords}
                    classes = list(info["classes"])
                    palette = [list(c) for c in info["palette"]]
                    if not all(isinstance(c, str) for c in classes) or len(palette) != len(classes) or not all(
                        len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette
                    ):
                        raise BuildError(f"{path}: {class_name}.METAINFO is malformed")
                    return {"classes": classes, "palette": palette}
    raise BuildError(f"{path}: no literal METAINFO = dict(...) in class {class_name}")


def read_datasets(datasets_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for ds_id, (cls_name, file, _) in DATASETS.items():
        info = read_dataset_metainfo(datasets_dir / file, cls_name)
        if len(info["classes"]) != EXPECTED_CLASS_COUNTS[ds_id]:
            raise BuildError(f"{cls_name} has {len(info['classes'])} classes, expected {EXPECTED_CLASS_COUNTS[ds_id]}")
        out[ds_id] = info
    return out


# --------------------------------------------------------------------------------------------
# SSSegmentation table
# --------------------------------------------------------------------------------------------

_SSSEG_BACKBONE = re.compile(r"ResNet(?P<depth>50|101) \(OS=(?P<os>8|16), PRE=ImageNet\)")


def read_ssseg_table(path: Path) -> list[dict[str, Any]]:
    """Entries for SSSegmentation's PSPNet rows (PSPNet on a deep-stem ResNet, whole-image test)."""
    entries = []
    for row in read_table_rows(path, heading_level=2):
        if row.section not in SSSEG_SECTIONS:
            raise BuildError(f"{row.where}: section {row.section!r} names no known dataset")
        dataset, suffix, scale = SSSEG_SECTIONS[row.section]
        backbone = _cell(row, "Backbone")
        m = _SSSEG_BACKBONE.fullmatch(backbone)
        if not m:
            raise BuildError(f"{row.where}: backbone {backbone!r} is not 'ResNet<depth> (OS=<n>, PRE=ImageNet)'")
        depth, os_ = int(m.group("depth")), int(m.group("os"))
        strides, dilations = SSSEG_OUTPUT_STRIDES[os_]
        config = f"pspnet_resnet{depth}os{os_}_{suffix}"
        entries.append({
            "name": config,
            "method": "PSPNet",
            "backbone": backbone,
            "dataset": dataset,
            "crop_size": _crop(_cell(row, "Crop Size"), row.where),
            "schedule": _cell(row, "Schedule"),
            "mem_gb": None,
            "fps": _figure(_cell(row, "FPS"), row.where, "FPS"),
            "miou": _figure(_cell(row, "mIoU"), row.where, "mIoU"),
            "miou_ms_flip": None,
            "results": [],
            "source": "sssegmentation",
            "fp16": False,
            "config": config,
            "weights": {
                "url": SSSEG_WEIGHTS_URL.format(config=config),
                "file": f"{config}.pth",
                "sha256_prefix": None,
            },
            "architecture": {
                "num_classes": EXPECTED_CLASS_COUNTS[dataset],
                "align_corners": False,
                "backbone": {
                    "type": "ResNetV1c",
                    "depth": depth,
                    "strides": strides,
                    "dilations": dilations,
                    "multi_grid": None,
                    "contract_dilation": True,
                    "stem_channels": 64,
                    "base_channels": 64,
                    "norm_eps": 1e-5,
                },
                "decode_head": head_object({
                    "type": "PSPHead",
                    "in_channels": 2048,
                    "in_index": 3,
                    "channels": 512,
                    "dropout_ratio": 0.1,
                    "pool_scales": [1, 2, 3, 6],
                }),
                "auxiliary_head": head_object({
                    "type": "FCNHead",
                    "in_channels": 1024,
                    "in_index": 2,
                    "channels": 512,
                    "dropout_ratio": 0.1,
                    "num_convs": 1,
                    "concat_input": False,
                }),
            },
            "test": {
                "scale": scale,
                "mode": "whole",
                "crop_size": None,
                "stride": None,
                "mean": SSSEG_MEAN,
                "std": SSSEG_STD,
                "resize_logits": "direct",
            },
        })
    return entries


# --------------------------------------------------------------------------------------------
# Reference state-dict specs (optional cross-check)
# --------------------------------------------------------------------------------------------


def _spec_facts(spec: list[list[Any]]) -> dict[str, Any]:
    shapes = {k: s for k, s, _ in spec}
    layer3 = {int(k.split(".")[2]) for k in shapes if k.startswith("backbone.layer3.")}
    bottleneck = any(k.startswith("backbone.layer1.0.conv3.") for k in shapes)
    blocks = len(layer3)
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101}.get((bottleneck, blocks))
    facts: dict[str, Any] = {
        "type": "ResNetV1c" if "backbone.stem.0.weight" in shapes else "ResNet",
        "depth": depth,
        "num_classes": shapes["decode_head.conv_seg.weight"][0],
        "channels": shapes["decode_head.conv_seg.weight"][1],
    }
    if "auxiliary_head.conv_seg.weight" in shapes:
        facts["aux_channels"] = shapes["auxiliary_head.conv_seg.weight"][1]
        facts["aux_in_channels"] = shapes["auxiliary_head.convs.0.conv.weight"][1]
    if "decode_head.attention.1.weight" in shapes:
        facts["psa_mask_area"] = shapes["decode_head.attention.1.weight"][0]
    lateral = sorted(
        (int(m.group(1)), s[1]) for k, s in shapes.items()
        if (m := re.fullmatch(r"decode_head\.lateral_convs\.(\d+)\.conv\.weight", k))
    )
    if lateral:
        # The PPM on the last level feeds its input plus one branch per pool scale to the bottleneck.
        pools = {k.split(".")[2] for k in shapes if k.startswith("decode_head.psp_modules.")}
        last = shapes["decode_head.bottleneck.conv.weight"][1] - len(pools) * facts["channels"]
        facts["uper_in_channels"] = [c for _, c in lateral] + [last]
    return facts


def check_reference(entries: list[dict[str, Any]], reference: Path) -> None:
    """Every published file is in ``state_dicts/index.json`` with a spec that fits the entry."""
    index = json.loads((reference / "state_dicts" / "index.json").read_text(encoding="utf-8"))
    mmseg = [e for e in entries if e["source"] == "mmsegmentation"]
    files = {e["weights"]["file"] for e in mmseg}
    if set(index) != files:
        raise BuildError(f"reference index and zoo differ: only in reference {sorted(set(index) - files)}, "
                         f"only in zoo {sorted(files - set(index))}")
    specs: dict[str, dict[str, Any]] = {}
    for e in mmseg:
        spec_id = index[e["weights"]["file"]]
        if spec_id not in specs:
            data = json.loads((reference / "state_dicts" / f"{spec_id}.json").read_text(encoding="utf-8"))
            specs[spec_id] = _spec_facts(data["state_dict"])
        s, a = specs[spec_id], e["architecture"]
        method, backbone, classes = re.fullmatch(r"([a-z0-9]+)_(r\d+b?)(?:-d8)?_c(\d+)", spec_id).groups()
        head, aux = a["decode_head"], a["auxiliary_head"]
        checks = {
            "method": (method, e["method"].lower()),
            "depth/stem": (backbone, f"r{a['backbone']['depth']}" + ("b" if a["backbone"]["type"] == "ResNet" else "")),
            "id classes": (int(classes), a["num_classes"]),
            "stem": (s["type"], a["backbone"]["type"]),
            "depth": (s["depth"], a["backbone"]["depth"]),
            "classes": (s["num_classes"], a["num_classes"]),
            "channels": (s["channels"], head["channels"]),
            "aux channels": (s.get("aux_channels"), aux and aux["channels"]),
            "aux in_channels": (s.get("aux_in_channels"), aux and aux["in_channels"]),
        }
        if head["type"] == "PSAHead":
            checks["psa mask"] = (s.get("psa_mask_area"), head["mask_size"][0] * head["mask_size"][1])
        if head["type"] == "UPerHead":
            checks["uper in_channels"] = (s.get("uper_in_channels"), head["in_channels"])
        bad = {k: v for k, v in checks.items() if v[0] != v[1]}
        if bad:
            raise BuildError(f"{e['name']}: reference spec {spec_id} disagrees (spec, config): {bad}")
    sss_index_path = reference / "sss_state_dicts" / "index.json"
    if sss_index_path.is_file():
        sss_index = json.loads(sss_index_path.read_text(encoding="utf-8"))
        sss = {e["name"]: e for e in entries if e["source"] == "sssegmentation"}
        if set(sss_index) != set(sss):
            raise BuildError(f"SSSegmentation reference index lists {sorted(sss_index)}, the table {sorted(sss)}")
        for name, spec_id in sss_index.items():
            a = sss[name]["architecture"]
            if spec_id != f"ssseg_pspnet_r{a['backbone']['depth']}_c{a['num_classes']}":
                raise BuildError(f"{name}: reference spec {spec_id} disagrees with depth/classes")


# --------------------------------------------------------------------------------------------
# Assembly and output
# --------------------------------------------------------------------------------------------


def resolve_configs_dir(path: Path) -> Path:
    """Accept ``.mim/configs`` itself, the ``mmseg`` package directory, or its parent."""
    for candidate in (path, path / ".mim" / "configs", path / "mmseg" / ".mim" / "configs"):
        if (candidate / "_base_").is_dir() and (candidate / "pspnet").is_dir():
            return candidate
    raise BuildError(f"{path} holds no mmseg configs (expected _base_/ and pspnet/ under it or .mim/configs)")


def resolve_datasets_dir(path: Path | None, configs: Path) -> Path:
    candidates = [path] if path is not None else [configs.parent.parent / "datasets"]
    for candidate in candidates:
        if candidate is not None and (candidate / "cityscapes.py").is_file():
            return candidate
    raise BuildError(f"no mmseg datasets sources at {candidates[0]} (pass --mmseg-datasets)")


# Model objects list their keys in the order of the manifest's Entry fields.
ENTRY_FIELDS = ("name", "method", "backbone", "dataset", "crop_size", "schedule", "mem_gb", "fps", "miou",
                "miou_ms_flip", "source", "weights", "architecture", "test", "results", "fp16", "config")


def entry_object(entry: dict[str, Any]) -> dict[str, Any]:
    if set(entry) != set(ENTRY_FIELDS):
        raise BuildError(f"{entry.get('name')}: model keys {sorted(entry)} differ from {sorted(ENTRY_FIELDS)}")
    return {k: entry[k] for k in ENTRY_FIELDS}


def mmseg_entry(ckpt: Checkpoint, config_name: str, arch: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": ckpt.name,
        "method": ckpt.method,
        "backbone": ckpt.backbone,
        "dataset": ckpt.dataset,
        "crop_size": ckpt.crop_size,
        "schedule": ckpt.schedule,
        "mem_gb": ckpt.mem_gb,
        "fps": ckpt.fps,
        "miou": ckpt.miou,
        "miou_ms_flip": ckpt.miou_ms_flip,
        "results": ckpt.results,
        "source": "mmsegmentation",
        "fp16": ckpt.fp16,
        "config": config_name,
        "weights": {"url": ckpt.url, "file": ckpt.file, "sha256_prefix": ckpt.sha256_prefix,
                    "urls": alternative_urls(ckpt.url), "origins": origin_urls(ckpt.url)},
        "architecture": arch,
        "test": test,
    }


def build(zoo: Path, configs: Path, datasets_dir: Path, reference: Path | None = None,
          notes: list[str] | None = None) -> dict[str, Any]:
    """The whole manifest document. ``notes`` collects remarks worth telling the user."""
    notes = notes if notes is not None else []
    datasets = read_datasets(datasets_dir)
    loader = ConfigLoader(configs)
    entries: list[dict[str, Any]] = []
    for table, method, folder in MMSEG_TABLES:
        metafile = read_metafile(configs / folder / "metafile.yaml")
        for ckpt in read_mmseg_table(zoo / table, method):
            rel, note = config_for_url(ckpt.url, metafile, ckpt.where)
            if note:
                notes.append(f"{ckpt.name}: {note}")
            if not rel.startswith(f"{folder}/"):
                raise BuildError(f"{ckpt.where}: config {rel} is outside {folder}/")
            cfg = loader.load(rel)
            arch, test, facts = extract_model(cfg, rel)
            check_config_against_table(ckpt, arch, facts, datasets, rel, notes)
            entries.append(mmseg_entry(ckpt, rel[len(folder) + 1 : -len(".py")], arch, test))
    if len(entries) != EXPECTED_MMSEG_CHECKPOINTS:
        raise BuildError(f"{len(entries)} mmseg checkpoints in the zoo tables, expected {EXPECTED_MMSEG_CHECKPOINTS}")
    sss = read_ssseg_table(zoo / SSSEG_TABLE)
    if len(sss) != EXPECTED_SSSEG_ROWS:
        raise BuildError(f"{len(sss)} SSSegmentation rows, expected {EXPECTED_SSSEG_ROWS}")
    entries.extend(sss)
    entries = [entry_object(e) for e in entries]
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise BuildError("duplicate model names: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    if reference is not None:
        check_reference(entries, reference)
    return {"schema_version": SCHEMA_VERSION, "datasets": datasets, "models": entries}


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def dumps(value: Any, indent: int = 0, step: int = 1) -> str:
    """JSON with objects one key per line and lists of scalars (or of scalar lists) kept short."""
    pad, inner = " " * indent, " " * (indent + step)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + step, step)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return "[" + ", ".join(_scalar(v) for v in value) + "]"
        if all(isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list, tuple)) for x in v) for v in value):
            return "[" + ", ".join(dumps(v) for v in value) + "]"
        items = [f"{inner}{dumps(v, indent + step, step)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return _scalar(value)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help="folder of the zoo tables (default: %(default)s)")
    parser.add_argument("--mmseg-configs", type=Path, required=True,
                        help="mmsegmentation 1.2.2 configs (mmseg/.mim/configs, or the mmseg package folder)")
    parser.add_argument("--mmseg-datasets", type=Path, default=None,
                        help="mmseg/datasets sources (default: beside the configs' package)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="optional reference folder with state_dicts/index.json to cross-check against")
    parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "model_index.json")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        configs = resolve_configs_dir(args.mmseg_configs)
        datasets_dir = resolve_datasets_dir(args.mmseg_datasets, configs)
        notes: list[str] = []
        document = build(args.zoo, configs, datasets_dir, args.reference, notes)
    except BuildError as exc:
        print(f"build_index: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError, TypeError) as exc:
        print(f"build_index: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    args.output.write_text(dumps(document) + "\n", encoding="utf-8")
    for note in notes:
        print(f"build_index: note: {note}", file=sys.stderr)
    models = document["models"]
    print(f"wrote {args.output}: {len(models)} models, {len(document['datasets'])} datasets", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
