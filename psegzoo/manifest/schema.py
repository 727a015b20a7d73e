"""Reading a manifest document: every field checked (type, bounds, finite numbers), the file and
field named in the error."""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ManifestError
from .entries import (
    _LARGEST_NUMBER,
    _SAFE_NAME,
    _SHA256_FULL,
    _SHA256_PREFIX,
    _WEIGHTS_URL,
    BACKBONE_TYPES,
    HEAD_TYPES,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_DILATION,
    MAX_SIDE,
    METHODS,
    RESIZE_LOGITS,
    RESNET_DEPTHS,
    SCHEMA_VERSION,
    SOURCES,
    TEST_MODES,
    Architecture,
    BackboneSpec,
    Dataset,
    Entry,
    HeadSpec,
    Result,
    TestSettings,
    Weights,
)

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


def _parse_origins(r: _Reader, url: str, urls: tuple[str, ...]) -> tuple[str, ...]:
    """``weights.origins``: which of the entry's own URLs are the publisher's hosts."""
    origins = r.raw("origins", [])
    if not isinstance(origins, list) or any(not isinstance(u, str) or u not in (url, *urls) for u in origins):
        raise r.fail("origins", f"must be a list of this entry's own URLs (its url or urls), got {_short(origins)}")
    return tuple(dict.fromkeys(origins))


def _parse_hashes(r: _Reader) -> tuple[str | None, str | None]:
    """``weights.sha256_prefix`` and ``weights.sha256``, which must agree."""
    prefix = r.raw("sha256_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not _SHA256_PREFIX.fullmatch(prefix)):
        raise r.fail("sha256_prefix", f"must be exactly 8 lowercase hex digits or null, got {prefix!r}")
    full = r.raw("sha256", None)
    if full is not None and (not isinstance(full, str) or not _SHA256_FULL.fullmatch(full)):
        raise r.fail("sha256", f"must be 64 lowercase hex digits or null, got {full!r}")
    if full is not None and prefix is not None and not full.startswith(prefix):
        raise r.fail("sha256", f"{full} does not start with the sha256_prefix {prefix}")
    return prefix, full


def _parse_weights(r: _Reader | None, builtin: bool = False) -> Weights | None:
    """The weights object; ``origins`` are kept for the built-in manifest only (see :func:`parse_manifest`)."""
    if r is None:
        return None
    url = r.str("url")
    if not re.match(r"(https?|file)://", url):
        raise r.fail("url", f"must be an http(s):// or file:// URL, got {url!r}")
    file = r.str("file")
    if "/" in file or "\\" in file or file in (".", "..") or not _SAFE_NAME.fullmatch(file):
        raise r.fail("file", f"must be a plain file name (letters, digits, . _ + -), got {file!r}")
    prefix, full = _parse_hashes(r)
    urls = r.raw("urls", [])
    if not isinstance(urls, list) or any(not isinstance(u, str) or not _WEIGHTS_URL.match(u) for u in urls):
        raise r.fail("urls", f"must be a list of http(s):// or file:// URLs, got {urls!r}")
    size = r.int("size", None, minimum=1)
    if size is not None and size > 2**62:
        raise r.fail("size", f"is {size}, more than any checkpoint could be")
    alternatives = tuple(dict.fromkeys(u for u in urls if u != url))
    origins = _parse_origins(r, url, alternatives) if builtin else ()
    return Weights(url=url, file=file, sha256_prefix=prefix, urls=alternatives, sha256=full, size=size, origins=origins)


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


def _parse_entry(obj: Any, where: str, builtin: bool = False) -> Entry:
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
        weights=_parse_weights(r.sub("weights"), builtin),
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


def parse_manifest(data: Any, where: str = "manifest", *, builtin: bool = False) -> tuple[list[Entry], dict[str, Dataset]]:
    """Parse one manifest document; raises ManifestError naming the bad field.

    ``builtin``: the document is the manifest shipped with psegzoo, the only one whose
    ``weights.origins`` are read; any other manifest (``--index``, ONNX metadata) can never declare
    an origin, so its ``origins`` are ignored and all its URLs are third parties.
    """
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
    entries = [_parse_entry(m, f"{where}: models[{i}]", builtin) for i, m in enumerate(models_obj)]
    seen: dict[str, str] = {}
    for e in entries:
        key = e.name.lower()
        if key in seen:
            same = "twice" if seen[key] == e.name else f"twice ({seen[key]!r} and {e.name!r}; names are case-insensitive)"
            raise ManifestError(f"{where}: model name {e.name!r} appears {same}")
        seen[key] = e.name
    return entries, datasets


