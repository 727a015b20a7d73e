"""Hostile or broken manifests: every one is refused at load with the file and field named.

A manifest can come from anywhere (``--index``, ``PSEGZOO_INDEX``). Whatever it holds, loading it
gives a :class:`ManifestError` (one line on the command line), never a traceback, a NaN in
``list --json`` or a network no machine can build.
"""
from __future__ import annotations

import copy
import json

import pytest

import psegzoo
from psegzoo.manifest import builtin_index_path, load_manifest, parse_manifest
from tests.support.cli import cli

BASE = "pspnet_r50-d8_512x1024_40k_cityscapes"


@pytest.fixture(scope="module")
def base_model() -> dict:
    with open(builtin_index_path(), encoding="utf-8") as f:
        return next(m for m in json.load(f)["models"] if m["name"] == BASE)


def _model(base_model: dict, **changes) -> dict:
    obj = copy.deepcopy(base_model)
    obj["name"] = "pspnet_r50-d8_512x1024_40k_extra"
    obj.update(changes)
    return obj


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as any other JSON parser does."""

    def refuse(name: str):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def index_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PSEGZOO_INDEX", raising=False)
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "home"))

    def write(content: str | bytes):
        path = tmp_path / "extra.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    return write


# ------------------------------------------------------------------------------------------------
# Files that are not sane JSON
# ------------------------------------------------------------------------------------------------


def _doc(base_model: dict, model_text: str | None = None) -> str:
    models = model_text if model_text is not None else json.dumps(_model(base_model))
    return '{"schema_version": 1, "models": [' + models + "]}"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda m: "[" * 100_000 + "]" * 100_000, "too deeply"),
        (lambda m: '{"schema_version": 1, "models": [' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "]}", "too deeply"),
        (lambda m: _doc(m).encode("utf-8").replace(b"PSPNet", b"PSPN\xe9t"), "not UTF-8"),
        (lambda m: _doc(m).replace('"fps": ', '"fps": ' + "9" * 5000 + ", \"x\": "), "refuses"),
        (lambda m: _doc(m).replace('"miou": 77.85', '"miou": NaN'), "NaN"),
        (lambda m: _doc(m).replace('"miou": 77.85', '"miou": Infinity'), "Infinity"),
        (lambda m: _doc(m).replace('"miou": 77.85', '"miou": 1e999'), "miou"),
        (lambda m: _doc(m).replace('"mem_gb": ', '"mem_gb": -'), "mem_gb"),
    ],
)
def test_broken_files_are_one_line_errors(base_model, index_file, make, words):
    path = index_file(make(base_model))
    with pytest.raises(psegzoo.ManifestError) as info:
        load_manifest(extra=[path])
    assert words in str(info.value) and str(path) in str(info.value)
    result = cli("list", "--index", path, "--json", code=1)
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and words in line


def test_the_fixture_document_itself_loads(base_model, index_file):
    path = index_file(_doc(base_model))  # the unbroken document: the cases above fail for their change alone
    assert load_manifest(extra=[path]).get("pspnet_r50-d8_512x1024_40k_extra").miou == 77.85


# ------------------------------------------------------------------------------------------------
# Values out of any sane range (given as Python objects, so NaN reaches the checks)
# ------------------------------------------------------------------------------------------------


def _set(path: str, value):
    def change(model: dict) -> None:
        *parents, key = path.split(".")
        target = model
        for p in parents:
            target = target[p]
        target[key] = value

    return change


NAN = float("nan")


@pytest.mark.parametrize(
    "change, field",
    [
        (_set("test.mean", [NAN, 116.28, 103.53]), "mean"),
        (_set("test.std", [58.395, float("inf"), 57.375]), "std"),
        (_set("test.std", [58.395, 0, 57.375]), "std"),
        (_set("test.std", [58.395, -1, 57.375]), "std"),
        (_set("architecture.backbone.norm_eps", -1e-5), "norm_eps"),
        (_set("architecture.backbone.norm_eps", 0), "norm_eps"),
        (_set("architecture.backbone.norm_eps", NAN), "norm_eps"),
        (_set("architecture.decode_head.channels", 10**9), "channels"),
        (_set("architecture.decode_head.in_channels", 2**40), "in_channels"),
        (_set("architecture.decode_head.in_index", 9), "in_index"),
        (_set("architecture.decode_head.pool_scales", [1, 2, 3, 10**6]), "pool_scales"),
        (_set("architecture.decode_head.dropout_ratio", 2.0), "dropout_ratio"),
        (_set("architecture.backbone.depth", 19), "depth"),
        (_set("architecture.backbone.stem_channels", 10**7), "stem_channels"),
        (_set("architecture.backbone.strides", [1, 2, 3, 1]), "strides"),
        (_set("architecture.backbone.dilations", [1, 1, 2, 10**6]), "dilations"),
        (_set("architecture.num_classes", 10**8), "num_classes"),
        (_set("test.scale", [10**6, 10**6]), "scale"),
        (_set("crop_size", [0, 512]), "crop_size"),
        (_set("miou", NAN), "miou"),
        (_set("miou", 101.0), "miou"),
        (_set("miou_ms_flip", -3.0), "miou_ms_flip"),
        (_set("fps", float("inf")), "fps"),
        (_set("mem_gb", 1e300), "mem_gb"),
        (_set("schedule", 0), "schedule"),
        (_set("schedule", 10**30), "schedule"),
        (_set("backbone", "R-50\n-D8"), "backbone"),
        (_set("results", [{"dataset": "dark_zurich", "miou": NAN, "miou_ms_flip": None}]), "miou"),
    ],
)
def test_values_out_of_bounds_are_refused_naming_the_field(base_model, change, field):
    model = _model(base_model)
    change(model)
    with pytest.raises(psegzoo.ManifestError) as info:
        parse_manifest({"schema_version": 1, "models": [model]}, "extra.json")
    message = str(info.value)
    assert f"'{field}'" in message and "extra.json" in message and len(message) < 400


def test_every_builtin_entry_is_within_the_bounds(base_model):
    entries, _ = parse_manifest({"schema_version": 1, "models": [_model(base_model)]}, "x")
    assert entries[0].miou == 77.85  # the unchanged clone passes: the refusals above are the change alone
    assert len(load_manifest(extra=[]).models) == 123


def test_dataset_with_nan_or_too_many_classes_is_refused():
    with pytest.raises(psegzoo.ManifestError, match="palette"):
        parse_manifest({"datasets": {"d": {"classes": ["a"], "palette": [[0, 0, NAN]]}}}, "x")
    with pytest.raises(psegzoo.ManifestError, match="classes"):
        parse_manifest({"datasets": {"d": {"classes": ["a"] * 10**5, "palette": [[0, 0, 0]] * 10**5}}}, "x")
    with pytest.raises(psegzoo.ManifestError, match="palette"):
        parse_manifest({"datasets": {"d": {"classes": ["a"], "palette": [[True, 0, 0]]}}}, "x")


def test_list_json_is_strict_json(base_model, index_file):
    out = cli("list", "--json").output
    assert len(_strict_json(out)) == 123
    # An extra manifest with a figure JSON cannot hold is refused, so list --json never prints NaN.
    path = index_file(_doc(base_model).replace('"miou": 77.85', '"miou": NaN'))
    result = cli("list", "--index", path, "--json", code=1)
    assert "NaN" in result.output and "[" not in result.output.split("error:")[0]


# ------------------------------------------------------------------------------------------------
# Origins: only the built-in manifest marks them
# ------------------------------------------------------------------------------------------------


def test_builtin_origins_must_be_the_entrys_own_urls(base_model):
    model = _model(base_model)
    model["weights"]["origins"] = ["https://evil.example/x.pth"]
    with pytest.raises(psegzoo.ManifestError, match="'origins'") as info:
        parse_manifest({"schema_version": 1, "models": [model]}, "model_index.json", builtin=True)
    assert "own URLs" in str(info.value)
    model["weights"]["origins"] = "https://download.openmmlab.com/x.pth"
    with pytest.raises(psegzoo.ManifestError, match="'origins'"):
        parse_manifest({"schema_version": 1, "models": [model]}, "model_index.json", builtin=True)


def test_an_extra_manifest_can_never_declare_an_origin(base_model, index_file):
    """Same name as a built-in entry, same URLs, origins copied: every URL is still a third party."""
    assert load_manifest(extra=[]).get(BASE).weights.origins  # the built-in entry has origins
    model = copy.deepcopy(base_model)
    mirror = "http://127.0.0.1:9/mmsegmentation/" + model["weights"]["file"]
    model["weights"]["urls"].append(mirror)
    model["weights"]["origins"] = [model["weights"]["url"], mirror]
    path = index_file(json.dumps({"schema_version": 1, "models": [model]}))
    entry = load_manifest(extra=[path]).get(BASE)
    assert mirror in entry.weights.urls
    assert entry.weights.origins == () and not entry.weights.is_origin(entry.weights.url)
