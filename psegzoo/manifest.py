"""The model manifest: every published checkpoint as a frozen entry, and name resolution.

Standard library only: listing and resolving names must never import torch.
The built-in manifest is ``model_index.json`` shipped inside the package; extra manifests
(``PSEGZOO_INDEX`` or ``--index``) with the same schema are merged over it, entry by name.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ManifestError, UnknownModelError, option

SCHEMA_VERSION = 1
METHODS = ("PSPNet", "PSANet", "DeepLabV3", "UPerNet")
SOURCES = ("mmsegmentation", "sssegmentation")
BACKBONE_TYPES = ("ResNetV1c", "ResNet")
HEAD_TYPES = ("PSPHead", "ASPPHead", "PSAHead", "UPerHead", "FCNHead")
TEST_MODES = ("whole", "slide")
RESIZE_LOGITS = ("via_input", "direct")
INDEX_ENV = "PSEGZOO_INDEX"

_SHA256_PREFIX = re.compile(r"[0-9a-f]{8}")
_SHA256_FULL = re.compile(r"[0-9a-f]{64}")
_WEIGHTS_URL = re.compile(r"(https?|file)://")
RESNET_DEPTHS = (18, 34, 50, 101, 152)

# Sane bounds for what a manifest may ask for: far beyond every published checkpoint, small
# enough that a typo or a hostile file cannot make psegzoo build a network or a buffer no
# machine holds.
MAX_CLASSES = 4096
MAX_CHANNELS = 16384
MAX_SIDE = 16384  # pixels, for crop sizes, strides and test scales
MAX_DILATION = 128
MAX_MANIFEST_BYTES = 64 * 10**6
_LARGEST_NUMBER = 1e15
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

# Common spellings of dataset ids, all lower case; a dataset id always maps to itself.
DATASET_ALIASES: Mapping[str, str] = {
    "ade": "ade20k",
    "ade20k": "ade20k",
    "ade-20k": "ade20k",
    "ade_20k": "ade20k",
    "cityscapes": "cityscapes",
    "city": "cityscapes",
    "voc": "voc12aug",
    "voc12": "voc12aug",
    "voc2012": "voc12aug",
    "voc12aug": "voc12aug",
    "pascal_voc": "voc12aug",
    "pascal-voc": "voc12aug",
    "pascalvoc": "voc12aug",
    "pascal_context": "pascal_context",
    "pascal-context": "pascal_context",
    "context": "pascal_context",
    "pascal_context_59": "pascal_context_59",
    "pascal-context-59": "pascal_context_59",
    "context59": "pascal_context_59",
    "coco-stuff10k": "coco-stuff10k",
    "coco_stuff10k": "coco-stuff10k",
    "cocostuff10k": "coco-stuff10k",
    "coco-stuff164k": "coco-stuff164k",
    "coco_stuff164k": "coco-stuff164k",
    "cocostuff164k": "coco-stuff164k",
}
# Dataset words that may end a model name besides the dataset id itself.
_NAME_DATASET_SUFFIXES: Mapping[str, tuple[str, ...]] = {"voc12aug": ("voc12aug", "voc")}


# --------------------------------------------------------------------------------------------
# Frozen records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    """Where a checkpoint lives and the hash it was published with (None: no published hash).

    ``urls``: alternative URLs of the same file, tried after ``url``; ``sha256``: the full hash,
    checked instead of ``sha256_prefix`` when given; ``size``: the exact size in bytes. The last
    three are optional in the manifest and left out of :meth:`to_json` when unset.
    """

    url: str
    file: str
    sha256_prefix: str | None
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"url": self.url, "file": self.file, "sha256_prefix": self.sha256_prefix}
        if self.urls:
            obj["urls"] = list(self.urls)
        if self.sha256 is not None:
            obj["sha256"] = self.sha256
        if self.size is not None:
            obj["size"] = self.size
        return obj


@dataclass(frozen=True)
class Result:
    """One evaluation of a checkpoint (the main one, or an extra dataset such as Dark Zurich)."""

    dataset: str
    miou: float | None
    miou_ms_flip: float | None


@dataclass(frozen=True)
class BackboneSpec:
    """A ResNet as mmseg builds it: ``ResNetV1c`` has the deep 3x3 stem, ``ResNet`` the 7x7 one."""

    type: str
    depth: int
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    multi_grid: tuple[int, ...] | None = None
    contract_dilation: bool = True
    stem_channels: int = 64
    base_channels: int = 64
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class HeadSpec:
    """A decode or auxiliary head; which optional fields apply depends on ``type``."""

    type: str
    in_channels: int | tuple[int, ...]
    in_index: int | tuple[int, ...]
    channels: int
    dropout_ratio: float = 0.1
    pool_scales: tuple[int, ...] | None = None  # PSPHead, UPerHead
    dilations: tuple[int, ...] | None = None  # ASPPHead
    mask_size: tuple[int, int] | None = None  # PSAHead
    psa_type: str | None = None  # PSAHead: "bi-direction" | "collect" | "distribute"
    compact: bool | None = None  # PSAHead
    shrink_factor: int | None = None  # PSAHead
    normalization_factor: float | None = None  # PSAHead
    psa_softmax: bool | None = None  # PSAHead
    num_convs: int | None = None  # FCNHead
    concat_input: bool | None = None  # FCNHead


@dataclass(frozen=True)
class Architecture:
    """Everything needed to build the network of a checkpoint exactly."""

    num_classes: int
    align_corners: bool
    backbone: BackboneSpec
    decode_head: HeadSpec
    auxiliary_head: HeadSpec | None = None


@dataclass(frozen=True)
class TestSettings:
    """How the published mIoU was evaluated.

    ``scale`` is ``[long, short]`` for the keep-ratio resize. ``resize_logits`` is ``via_input``
    when logits are first upsampled to the resized input and then to the original size (mmseg),
    ``direct`` when the low-resolution logits go straight to the original size (SSSegmentation).
    """

    scale: tuple[int, int]
    mode: str
    crop_size: tuple[int, int] | None
    stride: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_logits: str = "via_input"


@dataclass(frozen=True)
class Dataset:
    """Class names and palette of a dataset, index for index."""

    id: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "palette": [list(c) for c in self.palette]}


@dataclass(frozen=True)
class Entry:
    """One published checkpoint."""

    name: str
    method: str
    backbone: str
    dataset: str
    crop_size: tuple[int, int]
    schedule: int | str
    mem_gb: float | None
    fps: float | None
    miou: float | None
    miou_ms_flip: float | None
    source: str
    weights: Weights | None
    architecture: Architecture
    test: TestSettings
    results: tuple[Result, ...] = ()
    fp16: bool = False
    config: str | None = None

    @property
    def num_classes(self) -> int:
        return self.architecture.num_classes

    def to_json(self) -> dict[str, Any]:
        """The entry as its manifest object (lists, not tuples)."""
        return _to_jsonable(self)


@dataclass(frozen=True)
class Resolution:
    """What a user-typed name resolved to."""

    query: str
    entry: Entry
    is_alias: bool
    alternatives: tuple[Entry, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """The merged manifest: entries in file order and datasets by id."""

    models: tuple[Entry, ...]
    datasets: Mapping[str, Dataset] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [e.name for e in self.models]

    def by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self.models}

    @cached_property
    def _lookup(self) -> _Lookup:
        return _Lookup.of(self.models)

    def dataset(self, dataset_id: str) -> Dataset:
        try:
            return self.datasets[dataset_id]
        except KeyError:
            raise ManifestError(
                f"dataset {dataset_id!r} is not described in the manifest; "
                f"known datasets: {', '.join(sorted(self.datasets))}"
            ) from None

    def resolve(self, name: str) -> Resolution:
        return _resolve(self, name)

    def get(self, name: str) -> Entry:
        return _resolve(self, name).entry

    def filter(
        self,
        pattern: str | None = None,
        *,
        dataset: str | None = None,
        method: str | None = None,
        backbone: str | None = None,
    ) -> list[Entry]:
        return _filter(self, pattern, dataset=dataset, method=method, backbone=backbone)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Weights):
        return value.to_json()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------


# The reader's methods are named after JSON kinds (str, int, ...): these name the builtins inside it.
_Str = str
_Int = int


class _Reader:
    """Reads one JSON object with messages that say where a bad value sits.

    Numbers must be finite and, where a bound is given, inside it: a manifest is data from
    anywhere (``--index``), and a NaN mean or a billion channels must fail here, with the field
    named, not later as a traceback or an allocation the machine cannot make.
    """

    def __init__(self, obj: Any, where: _Str):
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        self.obj = obj
        self.where = where

    def fail(self, key: _Str, why: _Str) -> ManifestError:
        return ManifestError(f"{self.where}: field {key!r} {why}")

    def has(self, key: _Str) -> bool:
        return key in self.obj

    def raw(self, key: _Str, default: Any = ...) -> Any:
        if key not in self.obj:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        return self.obj[key]

    def str(self, key: _Str, default: Any = ..., choices: Sequence[str] | None = None, max_length: _Int = 4096) -> Any:
        v = self.raw(key, default)
        if v is None and default is None:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"must be a non-empty string, got {_short(v)}")
        if len(v) > max_length or any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
            raise self.fail(key, f"must be a string of at most {max_length} printable characters, got {_short(v)}")
        if choices is not None and v not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {v!r}")
        return v

    def int(self, key: _Str, default: Any = ..., minimum: _Int = 0, maximum: _Int | None = None) -> Any:
        v = self.raw(key, default)
        if v is None and default is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise self.fail(key, f"must be an integer {bound}, got {_short(v)}")
        return v

    def num(self, key: _Str, default: Any = ..., minimum: float | None = None, maximum: float | None = None,
            above: float | None = None) -> Any:
        """A finite number within [minimum, maximum] (and > ``above``), as a float."""
        v = self.raw(key, default)
        if v is None:
            if default is None:
                return None
            raise self.fail(key, "must be a number, got null")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(key, f"must be a number or null, got {_short(v)}")
        if not _finite(v):
            raise self.fail(key, f"must be a finite number, got {_short(v)}")
        value = float(v)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum) or (
            above is not None and value <= above
        ):
            raise self.fail(key, f"must be {_range_text(minimum, maximum, above)}, got {_short(v)}")
        return value

    def bool(self, key: _Str, default: Any = ...) -> Any:
        v = self.raw(key, default)
        if v is None and default is None:
            return None
        if not isinstance(v, bool):
            raise self.fail(key, f"must be true or false, got {_short(v)}")
        return v

    def ints(self, key: _Str, default: Any = ..., length: _Int | None = None, minimum: _Int = 1,
             maximum: _Int | None = None, max_items: _Int = 64) -> Any:
        v = self.raw(key, default)
        if v is None and default is None:
            return None
        if (
            not isinstance(v, list)
            or not v
            or len(v) > max_items
            or any(isinstance(x, bool) or not isinstance(x, int) or x < minimum for x in v)
            or (maximum is not None and any(x > maximum for x in v))
            or (length is not None and len(v) != length)
        ):
            size = f"{length} " if length else ""
            kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
            if maximum is not None:
                kind = f"integers from {minimum} to {maximum}"
            raise self.fail(key, f"must be a list of {size}{kind}, got {_short(v)}")
        return tuple(v)

    def int_or_ints(self, key: _Str, minimum: _Int = 0, maximum: _Int | None = None) -> Any:
        v = self.raw(key)
        if isinstance(v, list):
            return self.ints(key, minimum=minimum, maximum=maximum)
        return self.int(key, minimum=minimum, maximum=maximum)

    def floats(self, key: _Str, length: _Int, minimum: float | None = None, maximum: float | None = None,
               above: float | None = None) -> tuple[float, ...]:
        v = self.raw(key)
        if (
            not isinstance(v, list)
            or len(v) != length
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not _finite(x) for x in v)
        ):
            raise self.fail(key, f"must be a list of {length} finite numbers, got {_short(v)}")
        values = tuple(float(x) for x in v)
        if any((minimum is not None and x < minimum) or (maximum is not None and x > maximum)
               or (above is not None and x <= above) for x in values):
            raise self.fail(key, f"must hold numbers {_range_text(minimum, maximum, above)}, got {_short(v)}")
        return values

    def sub(self, key: _Str, default: Any = ...) -> _Reader | None:
        v = self.raw(key, default)
        if v is None and default is None:
            return None
        return _Reader(v, f"{self.where}.{key}")

    def child(self, key: _Str) -> _Reader:
        """A required sub-object."""
        return _Reader(self.raw(key), f"{self.where}.{key}")


def _finite(value: int | float) -> bool:
    if isinstance(value, int):
        return abs(value) <= _LARGEST_NUMBER
    return math.isfinite(value) and abs(value) <= _LARGEST_NUMBER


def _range_text(minimum: float | None, maximum: float | None, above: float | None) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {above:g}")
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " and ".join(parts) or "finite"


def _short(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a manifest value may be megabytes long)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints past Python's digit limit, deep nesting
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_weights(r: _Reader | None) -> Weights | None:
    if r is None:
        return None
    url = r.str("url")
    if not re.match(r"(https?|file)://", url):
        raise r.fail("url", f"must be an http(s):// or file:// URL, got {url!r}")
    file = r.str("file")
    if "/" in file or "\\" in file or file in (".", "..") or not _SAFE_NAME.fullmatch(file):
        raise r.fail("file", f"must be a plain file name (letters, digits, . _ + -), got {file!r}")
    prefix = r.raw("sha256_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not _SHA256_PREFIX.fullmatch(prefix)):
        raise r.fail("sha256_prefix", f"must be exactly 8 lowercase hex digits or null, got {prefix!r}")
    urls = r.raw("urls", [])
    if not isinstance(urls, list) or any(not isinstance(u, str) or not _WEIGHTS_URL.match(u) for u in urls):
        raise r.fail("urls", f"must be a list of http(s):// or file:// URLs, got {urls!r}")
    full = r.raw("sha256", None)
    if full is not None and (not isinstance(full, str) or not _SHA256_FULL.fullmatch(full)):
        raise r.fail("sha256", f"must be 64 lowercase hex digits or null, got {full!r}")
    if full is not None and prefix is not None and not full.startswith(prefix):
        raise r.fail("sha256", f"{full} does not start with the sha256_prefix {prefix}")
    size = r.int("size", None, minimum=1)
    if size is not None and size > 2**62:
        raise r.fail("size", f"is {size}, more than any checkpoint could be")
    return Weights(url=url, file=file, sha256_prefix=prefix, urls=tuple(dict.fromkeys(u for u in urls if u != url)),
                   sha256=full, size=size)


def check_weights_files(entries: Iterable[Entry]) -> None:
    """Refuse two different file names that the cache would keep as one converted file (``x.pth``
    and ``x``). Entries may share one file (variants of a checkpoint); its records are per file."""
    seen: dict[str, tuple[str, str]] = {}
    for e in entries:
        if e.weights is None:
            continue
        file = e.weights.file
        key = file[: -len(".pth")] if file.endswith(".pth") else file
        other = seen.setdefault(key, (file, e.name))
        if other[0] != file:
            raise ManifestError(
                f"models {other[1]!r} and {e.name!r} publish the files {other[0]!r} and {file!r}, whose converted "
                "weights would share one cache file; rename one of them"
            )


def _parse_backbone(r: _Reader) -> BackboneSpec:
    strides = r.ints("strides", length=4, maximum=2)
    dilations = r.ints("dilations", length=4, maximum=MAX_DILATION)
    depth = r.int("depth", minimum=1)
    if depth not in RESNET_DEPTHS:
        raise r.fail("depth", f"must be a ResNet depth ({', '.join(map(str, RESNET_DEPTHS))}), got {depth}")
    return BackboneSpec(
        type=r.str("type", choices=BACKBONE_TYPES),
        depth=depth,
        strides=strides,
        dilations=dilations,
        multi_grid=r.ints("multi_grid", None, maximum=MAX_DILATION, max_items=16),
        contract_dilation=r.bool("contract_dilation", True),
        stem_channels=r.int("stem_channels", 64, minimum=1, maximum=1024),
        base_channels=r.int("base_channels", 64, minimum=1, maximum=1024),
        norm_eps=r.num("norm_eps", 1e-5, above=0.0, maximum=1.0),
    )


_HEAD_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "PSPHead": ("pool_scales",),
    "ASPPHead": ("dilations",),
    "PSAHead": ("mask_size", "psa_type", "compact", "shrink_factor", "normalization_factor", "psa_softmax"),
    "UPerHead": ("pool_scales",),
    "FCNHead": ("num_convs", "concat_input"),
}


def _parse_head(r: _Reader) -> HeadSpec:
    kind = r.str("type", choices=HEAD_TYPES)
    for key in _HEAD_REQUIRED[kind]:
        if r.raw(key, None) is None:
            raise r.fail(key, f"is required for {kind}")
    psa_type = r.str("psa_type", None, choices=("bi-direction", "collect", "distribute"))
    return HeadSpec(
        type=kind,
        in_channels=r.int_or_ints("in_channels", minimum=1, maximum=MAX_CHANNELS),
        in_index=r.int_or_ints("in_index", maximum=3),
        channels=r.int("channels", minimum=1, maximum=MAX_CHANNELS),
        dropout_ratio=r.num("dropout_ratio", 0.1, minimum=0.0, maximum=1.0),
        pool_scales=r.ints("pool_scales", None, maximum=256, max_items=16),
        dilations=r.ints("dilations", None, maximum=MAX_DILATION, max_items=16),
        mask_size=r.ints("mask_size", None, length=2, maximum=1024),
        psa_type=psa_type,
        compact=r.bool("compact", None),
        shrink_factor=r.int("shrink_factor", None, minimum=1, maximum=64),
        normalization_factor=r.num("normalization_factor", None, above=0.0, maximum=1e6),
        psa_softmax=r.bool("psa_softmax", None),
        num_convs=r.int("num_convs", None, maximum=16),
        concat_input=r.bool("concat_input", None),
    )


def _parse_architecture(r: _Reader) -> Architecture:
    return Architecture(
        num_classes=r.int("num_classes", minimum=1, maximum=MAX_CLASSES),
        align_corners=r.bool("align_corners"),
        backbone=_parse_backbone(r.child("backbone")),
        decode_head=_parse_head(r.child("decode_head")),
        auxiliary_head=_parse_head(a) if (a := r.sub("auxiliary_head", None)) else None,
    )


def _parse_test(r: _Reader) -> TestSettings:
    mode = r.str("mode", choices=TEST_MODES)
    crop = r.ints("crop_size", None, length=2, maximum=MAX_SIDE)
    stride = r.ints("stride", None, length=2, maximum=MAX_SIDE)
    if mode == "slide" and (crop is None or stride is None):
        raise r.fail("mode", "is 'slide', which needs crop_size and stride")
    return TestSettings(
        scale=r.ints("scale", length=2, maximum=MAX_SIDE),
        mode=mode,
        crop_size=crop,
        stride=stride,
        mean=_triple(r.floats("mean", 3, minimum=-255.0, maximum=255.0)),
        std=_triple(r.floats("std", 3, above=0.0, maximum=255.0)),
        resize_logits=r.str("resize_logits", "via_input", choices=RESIZE_LOGITS),
    )


def _triple(values: tuple[float, ...]) -> tuple[float, float, float]:
    return values[0], values[1], values[2]


def _parse_result(r: _Reader) -> Result:
    return Result(dataset=r.str("dataset", max_length=200), miou=r.num("miou", None, minimum=0.0, maximum=100.0),
                  miou_ms_flip=r.num("miou_ms_flip", None, minimum=0.0, maximum=100.0))


def _parse_entry(obj: Any, where: str) -> Entry:
    r = _Reader(obj, where)
    name = r.str("name", max_length=200)
    if not _SAFE_NAME.fullmatch(name):
        raise r.fail("name", f"may hold only letters, digits and . _ + -; got {name!r}")
    r.where = f"{where} ({name})"
    schedule = r.raw("schedule")
    if isinstance(schedule, str):
        r.str("schedule", max_length=200)
    elif isinstance(schedule, bool) or not isinstance(schedule, int) or not 1 <= schedule <= 10**9:
        raise r.fail("schedule", f"must be an iteration count (1 to 10^9) or a string, got {_short(schedule)}")
    results = r.raw("results", [])
    if not isinstance(results, list) or len(results) > 64:
        raise r.fail("results", "must be a list of at most 64 results")
    entry = Entry(
        name=name,
        method=r.str("method", choices=METHODS),
        backbone=r.str("backbone", max_length=200),
        dataset=r.str("dataset", max_length=200),
        crop_size=r.ints("crop_size", length=2, maximum=MAX_SIDE),
        schedule=schedule,
        mem_gb=r.num("mem_gb", None, minimum=0.0, maximum=1e4),
        fps=r.num("fps", None, minimum=0.0, maximum=1e6),
        miou=r.num("miou", None, minimum=0.0, maximum=100.0),
        miou_ms_flip=r.num("miou_ms_flip", None, minimum=0.0, maximum=100.0),
        source=r.str("source", choices=SOURCES),
        weights=_parse_weights(r.sub("weights")),
        architecture=_parse_architecture(r.child("architecture")),
        test=_parse_test(r.child("test")),
        results=tuple(_parse_result(_Reader(x, f"{r.where}.results[{i}]")) for i, x in enumerate(results)),
        fp16=r.bool("fp16", False),
        config=r.str("config", None, max_length=200),
    )
    return entry


def _parse_dataset(dataset_id: str, obj: Any, where: str) -> Dataset:
    r = _Reader(obj, f"{where}.datasets.{dataset_id}")
    classes = r.raw("classes")
    palette = r.raw("palette")
    if (
        not isinstance(classes, list)
        or not 0 < len(classes) <= MAX_CLASSES
        or not all(isinstance(c, str) and 0 < len(c) <= 200 for c in classes)
    ):
        raise r.fail("classes", f"must be a list of 1 to {MAX_CLASSES} names (strings of 1 to 200 characters)")
    if (
        not isinstance(palette, list)
        or len(palette) != len(classes)
        or not all(
            isinstance(c, list) and len(c) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
            for c in palette
        )
    ):
        raise r.fail("palette", f"must hold one [r, g, b] (0-255) per class ({len(classes)})")
    return Dataset(id=dataset_id, classes=tuple(classes), palette=tuple(tuple(c) for c in palette))


def parse_manifest(data: Any, where: str = "manifest") -> tuple[list[Entry], dict[str, Dataset]]:
    """Parse one manifest document; raises ManifestError naming the bad field."""
    r = _Reader(data, where)
    version = r.raw("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise r.fail("schema_version", f"is {version!r}; this psegzoo reads schema {SCHEMA_VERSION}")
    datasets_obj = r.raw("datasets", {})
    if not isinstance(datasets_obj, dict):
        raise r.fail("datasets", "must be an object of dataset id -> {classes, palette}")
    datasets = {k: _parse_dataset(k, v, where) for k, v in datasets_obj.items()}
    models_obj = r.raw("models", [])
    if not isinstance(models_obj, list):
        raise r.fail("models", "must be a list of model objects")
    entries = [_parse_entry(m, f"{where}: models[{i}]") for i, m in enumerate(models_obj)]
    seen: dict[str, str] = {}
    for e in entries:
        key = e.name.lower()
        if key in seen:
            same = "twice" if seen[key] == e.name else f"twice ({seen[key]!r} and {e.name!r}; names are case-insensitive)"
            raise ManifestError(f"{where}: model name {e.name!r} appears {same}")
        seen[key] = e.name
    return entries, datasets


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; numbers must be finite")


def _read_json(path: Path) -> Any:
    """The JSON document in ``path``: strict UTF-8, no NaN/Infinity, bounded size and depth."""
    where = f"manifest file {str(path)!r}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"{where} does not exist (check {INDEX_ENV} or {option('index=', '--index')})") from None
    except IsADirectoryError:
        raise ManifestError(f"{where} is a directory, not a JSON file") from None
    except OSError as exc:
        raise ManifestError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is larger than {MAX_MANIFEST_BYTES // 10**6} MB; a manifest is far smaller")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{where} nests arrays or objects too deeply to be a manifest") from None
    except ValueError as exc:  # NaN/Infinity, or an integer past Python's digit limit
        raise ManifestError(f"{where} holds a number psegzoo refuses: {str(exc).splitlines()[0]}") from None


def builtin_index_path() -> Path:
    """The ``model_index.json`` that ships inside the package."""
    return Path(str(resources.files("psegzoo").joinpath("model_index.json")))


def extra_index_paths(extra: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> tuple[Path, ...]:
    """Extra manifests: those given explicitly, else ``PSEGZOO_INDEX`` (os.pathsep-separated)."""
    if extra is None:
        env = os.environ.get(INDEX_ENV, "")
        return tuple(Path(p) for p in env.split(os.pathsep) if p.strip())
    if isinstance(extra, (str, os.PathLike)):
        return (Path(extra),)
    return tuple(Path(p) for p in extra)


def _stamp(path: Path) -> tuple[str, float, int]:
    try:
        st = path.stat()
        return (str(path.resolve()), st.st_mtime, st.st_size)
    except OSError:
        return (str(path), -1.0, -1)


@lru_cache(maxsize=8)
def _load_cached(stamps: tuple[tuple[str, float, int], ...]) -> Manifest:
    builtin = builtin_index_path()
    entries, datasets = parse_manifest(_read_json(builtin), builtin.name)
    merged: dict[str, Entry] = {e.name.lower(): e for e in entries}
    for path_str, _, _ in stamps[1:]:
        path = Path(path_str)
        extra_entries, extra_datasets = parse_manifest(_read_json(path), str(path))
        datasets.update(extra_datasets)
        for e in extra_entries:
            merged[e.name.lower()] = e  # names are case-insensitive: an extra entry replaces any spelling
    for e in merged.values():
        if e.dataset not in datasets:
            raise ManifestError(
                f"model {e.name!r} names dataset {e.dataset!r}, which no manifest describes; "
                f"known: {', '.join(sorted(datasets))}"
            )
        n = len(datasets[e.dataset].classes)
        if n != e.architecture.num_classes:
            raise ManifestError(
                f"model {e.name!r} has num_classes={e.architecture.num_classes} but dataset "
                f"{e.dataset!r} has {n} classes"
            )
    check_weights_files(merged.values())
    return Manifest(models=tuple(merged.values()), datasets=datasets, sources=tuple(s[0] for s in stamps))


def load_manifest(extra: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Manifest:
    """The built-in manifest merged with extra ones (explicit, else ``PSEGZOO_INDEX``)."""
    paths = (builtin_index_path(),) + extra_index_paths(extra)
    return _load_cached(tuple(_stamp(p) for p in paths))


# --------------------------------------------------------------------------------------------
# Names, aliases and filters
# --------------------------------------------------------------------------------------------


def normalize_dataset(value: str, known: Iterable[str] | None = None) -> str:
    """Map a user's spelling (``ADE20K``, ``ade``, ``pascal_voc``) to a dataset id."""
    key = value.strip().lower()
    known_set = set(known) if known is not None else set(DATASET_ALIASES.values())
    if key in known_set:
        return key
    if key in DATASET_ALIASES:
        return DATASET_ALIASES[key]
    options = sorted(known_set)
    raise UnknownModelError(f"unknown dataset {value!r}; choose one of: {', '.join(options)}")


def _dataset_spellings(dataset_id: str) -> tuple[str, ...]:
    """Every spelling of a dataset a name may end with: the id, its aliases, the published suffixes."""
    spellings = [dataset_id, *_NAME_DATASET_SUFFIXES.get(dataset_id, ())]
    spellings += sorted(k for k, v in DATASET_ALIASES.items() if v == dataset_id)
    return tuple(dict.fromkeys(spellings))


def _name_parts(entry: Entry) -> tuple[str, str, tuple[str, ...], frozenset[str]] | None:
    """(method token, backbone token, dataset suffix tokens, middle tokens) of a canonical name, lower case."""
    tokens = entry.name.lower().split("_")
    if len(tokens) < 3:
        return None
    for suffix in _NAME_DATASET_SUFFIXES.get(entry.dataset, (entry.dataset,)):
        tail = tuple(suffix.split("_"))
        if len(tokens) >= 2 + len(tail) and tuple(tokens[-len(tail):]) == tail:
            return tokens[0], tokens[1], tail, frozenset(tokens[2 : len(tokens) - len(tail)])
    return None


def _rank_key(entry: Entry) -> tuple[float, int, str]:
    miou = entry.miou if entry.miou is not None else float("-inf")
    schedule = entry.schedule if isinstance(entry.schedule, int) else 0
    return (miou, schedule, entry.name)


def short_name(entry: Entry) -> str | None:
    """The ``<method>_<backbone>_<dataset>`` form of an entry's name."""
    parts = _name_parts(entry)
    if parts is None:
        return None
    return "_".join((parts[0], parts[1]) + parts[2])


@dataclass(frozen=True)
class _Lookup:
    """Lower-case indexes of one manifest: names, published files, mmseg 1.x configs, alias parts."""

    names: Mapping[str, Entry]
    files: Mapping[str, Entry]
    configs: Mapping[str, tuple[Entry, ...]]
    parts: tuple[tuple[Entry, str, str, frozenset[str], tuple[tuple[str, ...], ...]], ...]

    @classmethod
    def of(cls, models: Sequence[Entry]) -> _Lookup:
        names = {e.name.lower(): e for e in models}
        files = {e.weights.file.lower(): e for e in models if e.weights is not None}
        configs: dict[str, list[Entry]] = {}
        for e in models:
            if e.config:
                configs.setdefault(e.config.lower(), []).append(e)
        parts = []
        for e in models:
            found = _name_parts(e)
            if found is not None:
                method, backbone, _tail, middle = found
                tails = tuple(tuple(s.split("_")) for s in _dataset_spellings(e.dataset))
                parts.append((e, method, backbone, middle, tails))
        return cls(names, files, {k: tuple(v) for k, v in configs.items()}, tuple(parts))

    def aliases(self, query: str) -> list[Entry]:
        q = query.split("_")
        found = []
        for entry, method, backbone, middle, tails in self.parts:
            if len(q) < 3 or q[0] != method or q[1] != backbone:
                continue
            for tail in tails:
                if len(q) >= 2 + len(tail) and tuple(q[len(q) - len(tail):]) == tail and set(q[2 : len(q) - len(tail)]) <= middle:
                    found.append(entry)
                    break
        return found


_LIST_HINT = option("psegzoo.list_models()", "'psegzoo list'")


def _config_key(query: str) -> str:
    """``configs/pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py`` -> the config name."""
    key = query.replace("\\", "/").rsplit("/", 1)[-1]
    return key[: -len(".py")] if key.endswith(".py") else key


def _resolve(manifest: Manifest, name: str) -> Resolution:
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"empty model name; {_LIST_HINT} lists the available models")
    lookup = manifest._lookup
    key = name.strip().lower()
    stem = key[: -len(".pth")] if key.endswith(".pth") else key
    if stem in lookup.names:
        return Resolution(query=name, entry=lookup.names[stem], is_alias=False)
    # A published file name with its _YYYYMMDD_HHMMSS-hash tail resolves to its entry too.
    for file in (key, stem + ".pth", stem):
        if file in lookup.files:
            return Resolution(query=name, entry=lookup.files[file], is_alias=False)
    # An mmseg 1.x config name (what MMSegInferencer takes), with or without its folder and .py.
    configs = lookup.configs.get(_config_key(key), ())
    if configs:
        return Resolution(query=name, entry=configs[0], is_alias=False, alternatives=configs[1:])
    matches = lookup.aliases(stem)
    if matches:
        ranked = sorted(matches, key=_rank_key, reverse=True)
        return Resolution(query=name, entry=ranked[0], is_alias=True, alternatives=tuple(ranked[1:]))
    candidates = sorted({*lookup.names, *(s for s in (short_name(e) for e in manifest.models) if s)})
    close = difflib.get_close_matches(stem, candidates, n=5, cutoff=0.6)
    if not close:
        prefix = stem.split("_")[0]
        close = [c for c in candidates if c.startswith(prefix)][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} {_LIST_HINT} lists all {len(lookup.names)} models."
    )


def _filter(
    manifest: Manifest,
    pattern: str | None,
    *,
    dataset: str | None,
    method: str | None,
    backbone: str | None,
) -> list[Entry]:
    entries = list(manifest.models)
    if dataset:
        ds = normalize_dataset(dataset, manifest.datasets)
        entries = [e for e in entries if e.dataset == ds]
    if method:
        m = method.strip().lower()
        valid = sorted({e.method for e in manifest.models})
        if m not in {v.lower() for v in valid}:
            raise UnknownModelError(f"unknown method {method!r}; choose one of: {', '.join(valid)}")
        entries = [e for e in entries if e.method.lower() == m]
    if backbone:
        b = backbone.strip().lower()
        entries = [e for e in entries if e.backbone.lower() == b or fnmatch.fnmatchcase(e.backbone.lower(), b)]
    if pattern:
        p = pattern.strip().lower()
        p = p if any(ch in p for ch in "*?[") else f"*{p}*"
        entries = [e for e in entries if fnmatch.fnmatchcase(e.name.lower(), p)]
    return entries


# --------------------------------------------------------------------------------------------
# Module-level conveniences (the public API re-exports these)
# --------------------------------------------------------------------------------------------


def list_models(
    pattern: str | None = None,
    *,
    dataset: str | None = None,
    method: str | None = None,
    backbone: str | None = None,
    index: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
) -> list[Entry]:
    """Entries matching a shell-style ``pattern`` on names and the given filters, in manifest order."""
    return load_manifest(index).filter(pattern, dataset=dataset, method=method, backbone=backbone)


def get_entry(name: str, *, index: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Entry:
    """The entry a canonical name, published file name or short alias resolves to."""
    return load_manifest(index).get(name)


def resolve(name: str, *, index: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Resolution:
    """Like :func:`get_entry`, also telling whether ``name`` was an alias and its alternatives."""
    return load_manifest(index).resolve(name)


def get_dataset(dataset_id: str, *, index: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Dataset:
    return load_manifest(index).dataset(dataset_id)
