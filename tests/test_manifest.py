"""Name resolution, filters and extra manifests (no torch)."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

import psegzoo
from psegzoo.manifest import builtin_index_path, load_manifest, normalize_dataset, short_name


@pytest.fixture(scope="module")
def raw_index() -> dict:
    with open(builtin_index_path(), encoding="utf-8") as f:
        return json.load(f)


def _extra(tmp_path, monkeypatch, models, datasets=None):
    path = tmp_path / "extra.json"
    doc = {"schema_version": 1, "models": models}
    if datasets is not None:
        doc["datasets"] = datasets
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("PSEGZOO_INDEX", str(path))
    return path


def _clone(raw_index, base_name, **changes):
    obj = copy.deepcopy(next(m for m in raw_index["models"] if m["name"] == base_name))
    obj.update(changes)
    return obj


# ------------------------------------------------------------------------------------------------
# Resolution
# ------------------------------------------------------------------------------------------------


def test_every_canonical_name_resolves_to_itself():
    manifest = load_manifest()
    for entry in manifest.models:
        res = manifest.resolve(entry.name)
        assert res.entry is entry and not res.is_alias


def test_published_file_name_resolves():
    entry = psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth")
    assert entry.name == "pspnet_r50-d8_512x1024_40k_cityscapes"


@pytest.mark.parametrize(
    "alias, expected",
    [
        # 512x1024/40k 78.34, 769x769/40k 79.08, 512x1024/80k 79.76, 769x769/80k 79.77
        ("pspnet_r101-d8_cityscapes", "pspnet_r101-d8_769x769_80k_cityscapes"),
        ("pspnet_r50-d8_769x769_cityscapes", "pspnet_r50-d8_769x769_80k_cityscapes"),
        ("pspnet_r50-d8_80k_cityscapes", "pspnet_r50-d8_769x769_80k_cityscapes"),
        ("pspnet_r50-d8_512x1024_cityscapes", "pspnet_r50-d8_512x1024_80k_cityscapes"),
        ("pspnet_r50-d8_512x1024_40k_cityscapes", "pspnet_r50-d8_512x1024_40k_cityscapes"),
        ("upernet_r50_ade20k", "upernet_r50_512x512_160k_ade20k"),
        ("deeplabv3_r101-d16-mg124_cityscapes", "deeplabv3_r101-d16-mg124_512x1024_80k_cityscapes"),
        ("pspnet_r101-d8_pascal_context", "pspnet_r101-d8_480x480_40k_pascal_context"),
        ("pspnet_resnet50os8_voc", "pspnet_resnet50os8_voc"),
    ],
)
def test_short_aliases(alias, expected):
    res = psegzoo.resolve(alias)
    assert res.entry.name == expected
    matches = [res.entry, *res.alternatives]
    best = max(m.miou for m in matches if m.miou is not None)
    assert res.entry.miou == best
    assert res.is_alias == (alias != expected)


def test_alias_alternatives_are_all_matching_entries():
    res = psegzoo.resolve("pspnet_r101-d8_cityscapes")
    names = {res.entry.name, *(a.name for a in res.alternatives)}
    expected = {
        e.name
        for e in psegzoo.list_models(dataset="cityscapes", method="pspnet")
        if e.name.startswith("pspnet_r101-d8_")
    }
    assert names == expected and len(names) == 4


def test_alias_tie_prefers_longer_schedule(raw_index, tmp_path, monkeypatch):
    base = "pspnet_r50-d8_512x512_80k_ade20k"
    short = _clone(raw_index, base, name="pspnet_r9-d8_512x512_80k_ade20k", miou=40.0)
    long = _clone(raw_index, base, name="pspnet_r9-d8_512x512_160k_ade20k", miou=40.0, schedule=160000)
    worse = _clone(raw_index, base, name="pspnet_r9-d8_640x640_320k_ade20k", miou=39.0, schedule=320000)
    _extra(tmp_path, monkeypatch, [short, long, worse])
    assert psegzoo.get_entry("pspnet_r9-d8_ade20k").name == "pspnet_r9-d8_512x512_160k_ade20k"


@pytest.mark.parametrize(
    "bad, suggestion",
    [
        ("pspnet_r102-d8_cityscapes", "pspnet_r101-d8_cityscapes"),
        ("pspnet_r50-d8_512x1024_40k_cityscape", "pspnet_r50-d8_512x1024_40k_cityscapes"),
        ("upernet_r50_ade21k", "upernet_r50_ade20k"),
    ],
)
def test_unknown_name_lists_close_names(bad, suggestion):
    with pytest.raises(psegzoo.UnknownModelError) as info:
        psegzoo.get_entry(bad)
    message = str(info.value)
    assert bad in message and suggestion in message and "psegzoo.list_models()" in message
    assert "'psegzoo list'" not in message and "'psegzoo list'" in info.value.cli_message()


@pytest.mark.parametrize("bad", ["", "   ", "___", "pspnet", "x" * 300])
def test_malformed_names_are_clean_errors(bad):
    with pytest.raises(psegzoo.UnknownModelError):
        psegzoo.get_entry(bad)


def test_short_name_of_entries():
    entry = psegzoo.get_entry("deeplabv3_r101-d8_480x480_40k_pascal_context_59")
    assert short_name(entry) == "deeplabv3_r101-d8_pascal_context_59"
    for e in load_manifest().models:
        assert short_name(e) is not None, e.name
        assert psegzoo.get_entry(short_name(e)).name.startswith(short_name(e).split("_")[0])


@pytest.mark.parametrize(
    "typed, expected",
    [
        ("PSPNet_R50-D8_512x1024_40K_Cityscapes", "pspnet_r50-d8_512x1024_40k_cityscapes"),
        ("PSPNET_R50-D8_512X1024_40K_CITYSCAPES_20200605_003338-2966598C.PTH", "pspnet_r50-d8_512x1024_40k_cityscapes"),
        ("PSPNet_R101-D8_Cityscapes", "pspnet_r101-d8_769x769_80k_cityscapes"),
        ("UPerNet_R50_ADE20K", "upernet_r50_512x512_160k_ade20k"),
        ("  pspnet_resnet50os8_VOC ", "pspnet_resnet50os8_voc"),
    ],
)
def test_names_and_aliases_are_case_insensitive(typed, expected):
    assert psegzoo.get_entry(typed).name == expected


def test_patterns_are_case_insensitive():
    lower = [e.name for e in psegzoo.list_models("*r101*")]
    assert lower and [e.name for e in psegzoo.list_models("*R101*")] == lower
    assert [e.name for e in psegzoo.list_models("UPERNET")] == [e.name for e in psegzoo.list_models("upernet")]
    assert psegzoo.list_models("*R999*") == []


@pytest.mark.parametrize(
    "config, expected",
    [
        ("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024", "pspnet_r50-d8_512x1024_40k_cityscapes"),
        ("configs/pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py", "pspnet_r50-d8_512x1024_40k_cityscapes"),
        ("upernet_r50_4xb4-80k_ade20k-512x512", "upernet_r50_512x512_80k_ade20k"),
        ("pspnet_r18-d8_4xb2-80k_cityscapes-769x769.py", "pspnet_r18-d8_769x769_80k_cityscapes"),
        ("DeepLabV3_R101-D8_4xb4-20k_VOC12aug-512x512", "deeplabv3_r101-d8_512x512_20k_voc12aug"),
    ],
)
def test_mmseg_config_names_resolve_to_their_checkpoint(config, expected):
    res = psegzoo.resolve(config)
    assert res.entry.name == expected and not res.is_alias


def test_every_config_name_resolves_to_its_own_entry():
    manifest = load_manifest(extra=[])
    with_config = [e for e in manifest.models if e.config]
    assert len(with_config) == len(manifest.models)
    renamed = [e for e in with_config if e.config != e.name]
    assert len(renamed) == 111  # every mmseg entry: 1.x config names differ from the 0.x file names
    for e in with_config:
        assert manifest.resolve(e.config).entry is e, e.config


@pytest.mark.parametrize(
    "spelling, canonical_alias",
    [
        ("pspnet_r101-d8_voc", "pspnet_r101-d8_voc12aug"),
        ("pspnet_r101-d8_pascal_voc", "pspnet_r101-d8_voc12aug"),
        ("upernet_r50_ade", "upernet_r50_ade20k"),
        ("UPerNet_R50_ADE", "upernet_r50_ade20k"),
        ("pspnet_r50-d8_512x1024_city", "pspnet_r50-d8_512x1024_cityscapes"),
        ("pspnet_r101-d8_context59", "pspnet_r101-d8_pascal_context_59"),
        ("pspnet_r50-d8_cocostuff164k", "pspnet_r50-d8_coco-stuff164k"),
        ("pspnet_resnet50os8_ade", "pspnet_resnet50os8_ade20k"),
    ],
)
def test_aliases_accept_the_dataset_spellings_of_dataset_option(spelling, canonical_alias):
    expected = psegzoo.resolve(canonical_alias)
    got = psegzoo.resolve(spelling)
    assert got.entry is expected.entry
    assert {e.name for e in got.alternatives} == {e.name for e in expected.alternatives}


def test_a_dataset_spelling_never_crosses_datasets():
    assert psegzoo.get_entry("pspnet_r101-d8_context").dataset == "pascal_context"
    assert psegzoo.get_entry("pspnet_r101-d8_context59").dataset == "pascal_context_59"
    with pytest.raises(psegzoo.UnknownModelError):
        psegzoo.get_entry("pspnet_r50-d8_imagenet")


def test_extra_entry_differing_only_in_case_replaces_the_builtin(raw_index, tmp_path, monkeypatch):
    shouted = _clone(raw_index, "upernet_r50_512x512_80k_ade20k", name="UPerNet_R50_512x512_80k_ADE20K", miou=1.5)
    _extra(tmp_path, monkeypatch, [shouted])
    assert len(load_manifest().models) == len(raw_index["models"])
    assert psegzoo.get_entry("upernet_r50_512x512_80k_ade20k").miou == 1.5


def test_one_manifest_may_not_hold_two_spellings_of_a_name(raw_index, tmp_path, monkeypatch):
    a = _clone(raw_index, "upernet_r50_512x512_80k_ade20k", name="upernet_r50_512x512_1k_ade20k")
    b = _clone(raw_index, "upernet_r50_512x512_80k_ade20k", name="UPERNET_r50_512x512_1k_ade20k")
    _extra(tmp_path, monkeypatch, [a, b])
    with pytest.raises(psegzoo.ManifestError, match="case-insensitive"):
        load_manifest()


# ------------------------------------------------------------------------------------------------
# Filters
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["ade20k", "ADE20K", "ade", "Ade"])
def test_dataset_spellings(spelling):
    entries = psegzoo.list_models(dataset=spelling)
    assert entries and all(e.dataset == "ade20k" for e in entries)


@pytest.mark.parametrize("spelling, dataset_id", [("voc", "voc12aug"), ("pascal_voc", "voc12aug"), ("Cityscapes", "cityscapes")])
def test_dataset_aliases(spelling, dataset_id):
    assert normalize_dataset(spelling) == dataset_id


def test_unknown_dataset_lists_choices():
    with pytest.raises(psegzoo.UnknownModelError, match="ade20k"):
        psegzoo.list_models(dataset="imagenet")


def test_pattern_method_backbone_filters():
    r101 = psegzoo.list_models("*r101*")
    assert r101 and all("r101" in e.name for e in r101)
    upernet = psegzoo.list_models(method="upernet")
    assert upernet and {e.method for e in upernet} == {"UPerNet"}
    mg = psegzoo.list_models(backbone="R-101-D16-MG124")
    assert {e.name for e in mg} == {
        "deeplabv3_r101-d16-mg124_512x1024_40k_cityscapes",
        "deeplabv3_r101-d16-mg124_512x1024_80k_cityscapes",
    }
    with pytest.raises(psegzoo.UnknownModelError, match="PSPNet"):
        psegzoo.list_models(method="segformer")


# ------------------------------------------------------------------------------------------------
# Extra manifests
# ------------------------------------------------------------------------------------------------


def test_extra_manifest_adds_and_overrides(raw_index, tmp_path, monkeypatch):
    added = _clone(raw_index, "pspnet_r50-d8_512x1024_40k_cityscapes", name="pspnet_r50-d8_512x1024_40k_mycity")
    added["weights"] = {"url": "http://127.0.0.1:1/x.pth", "file": "x.pth", "sha256_prefix": "0123abcd"}
    override = _clone(raw_index, "upernet_r50_512x512_80k_ade20k", miou=99.0)
    _extra(tmp_path, monkeypatch, [added, override])
    assert psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_mycity").weights.sha256_prefix == "0123abcd"
    assert psegzoo.get_entry("upernet_r50_512x512_80k_ade20k").miou == 99.0
    assert len(load_manifest().models) == len(raw_index["models"]) + 1
    monkeypatch.delenv("PSEGZOO_INDEX")
    assert psegzoo.get_entry("upernet_r50_512x512_80k_ade20k").miou != 99.0


def test_extra_manifest_with_own_dataset(raw_index, tmp_path, monkeypatch):
    model = _clone(raw_index, "pspnet_r50-d8_512x1024_40k_cityscapes", name="pspnet_r50-d8_512x1024_40k_twoclass", dataset="twoclass")
    model["architecture"]["num_classes"] = 2
    _extra(tmp_path, monkeypatch, [model], {"twoclass": {"classes": ["bg", "fg"], "palette": [[0, 0, 0], [255, 0, 0]]}})
    entry = psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_twoclass")
    assert psegzoo.get_dataset(entry.dataset).classes == ("bg", "fg")


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m["weights"].update(sha256_prefix="2966598C"), "sha256_prefix"),
        (lambda m: m["weights"].update(sha256_prefix="2966598"), "sha256_prefix"),
        (lambda m: m["weights"].update(sha256_prefix="zz66598c"), "sha256_prefix"),
        (lambda m: m["weights"].update(file="../../evil.pth"), "file"),
        (lambda m: m["weights"].update(url="ftp://host/x.pth"), "url"),
        (lambda m: m.update(name="../evil"), "name"),
        (lambda m: m.update(method="SegFormer"), "method"),
        (lambda m: m["test"].update(mode="slide", crop_size=None), "mode"),
        (lambda m: m["architecture"]["backbone"].update(strides=[1, 2]), "strides"),
        (lambda m: m["architecture"]["decode_head"].pop("pool_scales"), "pool_scales"),
        (lambda m: m.pop("architecture"), "architecture"),
    ],
)
def test_invalid_extra_entries_are_rejected_naming_the_field(raw_index, tmp_path, monkeypatch, change, field):
    model = _clone(raw_index, "pspnet_r50-d8_512x1024_40k_cityscapes", name="pspnet_r50-d8_512x1024_40k_bad")
    change(model)
    path = _extra(tmp_path, monkeypatch, [model])
    with pytest.raises(psegzoo.ManifestError) as info:
        load_manifest()
    assert field in str(info.value) and str(path) in str(info.value)


def test_num_classes_must_match_dataset(raw_index, tmp_path, monkeypatch):
    model = _clone(raw_index, "pspnet_r50-d8_512x1024_40k_cityscapes", name="pspnet_r50-d8_512x1024_40k_odd")
    model["architecture"]["num_classes"] = 20
    _extra(tmp_path, monkeypatch, [model])
    with pytest.raises(psegzoo.ManifestError, match="num_classes=20"):
        load_manifest()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"schema_version": 2}'])
def test_broken_extra_manifest_files(tmp_path, monkeypatch, content):
    path = tmp_path / "extra.json"
    path.write_text(content)
    monkeypatch.setenv("PSEGZOO_INDEX", str(path))
    with pytest.raises(psegzoo.ManifestError):
        load_manifest()


def test_missing_extra_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("PSEGZOO_INDEX", str(tmp_path / "nope.json"))
    with pytest.raises(psegzoo.ManifestError, match="does not exist"):
        load_manifest()


def test_extra_manifest_reloads_when_file_changes(raw_index, tmp_path, monkeypatch):
    model = _clone(raw_index, "pspnet_r50-d8_512x1024_40k_cityscapes", name="pspnet_r50-d8_512x1024_40k_v", miou=1.0)
    path = _extra(tmp_path, monkeypatch, [model])
    assert psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_v").miou == 1.0
    model["miou"] = 2.5
    path.write_text(json.dumps({"schema_version": 1, "models": [model, {**model, "name": "pspnet_r50-d8_512x1024_40k_w"}]}))
    assert psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_v").miou == 2.5


def test_entries_are_frozen():
    entry = psegzoo.get_entry("upernet_r50_ade20k")
    with pytest.raises(Exception):
        entry.name = "x"  # type: ignore[misc]


def test_to_json_round_trips(raw_index):
    for obj in raw_index["models"]:
        entry = psegzoo.get_entry(obj["name"])
        assert entry.to_json() == obj  # what the index says, field for field
        doc = {"schema_version": 1, "models": [entry.to_json()]}
        assert psegzoo.manifest.parse_manifest(doc, builtin=True)[0][0] == entry
        # read as any other manifest, the same object declares no origin
        assert psegzoo.manifest.parse_manifest(doc)[0][0].weights.origins == ()
    changed = copy.deepcopy(raw_index["models"][0])
    changed["test"]["scale"] = [1, 1]
    assert psegzoo.get_entry(changed["name"]).to_json() != changed  # the comparison can fail


def test_listing_never_imports_torch():
    code = (
        "import sys\n"
        "import psegzoo, psegzoo.cli\n"
        "psegzoo.list_models(dataset='ade'); psegzoo.get_entry('upernet_r50_ade20k')\n"
        "from psegzoo.cli import main\n"
        "sys.argv = ['psegzoo', 'list']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "sys.argv = ['psegzoo', 'info', 'upernet_r50_ade20k']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "bad = [m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
