"""The facts in model_index.json: schema, counts against the zoo tables, figures, architectures.

Expected values here were typed in from the zoo tables and from mmsegmentation 1.2.2's configs,
or are derived from the tables with a regex independent of tools/build_index.py. The zoo tables and
the reference specs are committed under tests/data (tests/support/shared.py); mmseg's configs are
fetched as a pinned wheel when no copy is at hand (tests/support/mmseg_wheel.py).
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from psegzoo.errors import ManifestError
from psegzoo.manifest import Entry, load_manifest, parse_manifest
from tests.support.shared import ZOO, write_reference

REPO = Path(__file__).resolve().parent.parent
INDEX = REPO / "model_index.json"
BUILDER = REPO / "tools" / "build_index.py"

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(INDEX, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def entries(raw) -> dict[str, Entry]:
    models, _ = parse_manifest(raw, "model_index.json", builtin=True)
    return {e.name: e for e in models}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The reference specs, laid out as ``tools/build_index.py --reference`` reads them."""
    return write_reference(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("build_index", BUILDER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_index"] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------

MODEL_KEYS = {"name", "method", "backbone", "dataset", "crop_size", "schedule", "mem_gb", "fps", "miou",
              "miou_ms_flip", "results", "source", "fp16", "weights", "architecture", "test", "config"}
ARCH_KEYS = {"num_classes", "align_corners", "backbone", "decode_head", "auxiliary_head"}
BACKBONE_KEYS = {"type", "depth", "strides", "dilations", "multi_grid", "contract_dilation"}
TEST_KEYS = {"scale", "mode", "crop_size", "stride", "mean", "std", "resize_logits"}


def test_top_level_and_every_model_has_the_documented_keys(raw):
    assert raw["schema_version"] == 1
    assert set(raw) == {"schema_version", "datasets", "models"}
    for m in raw["models"]:
        assert set(m) >= MODEL_KEYS, m["name"]
        assert set(m["architecture"]) >= ARCH_KEYS, m["name"]
        assert set(m["architecture"]["backbone"]) >= BACKBONE_KEYS, m["name"]
        assert set(m["test"]) >= TEST_KEYS, m["name"]
        assert {"url", "file", "sha256_prefix"} <= set(m["weights"]) <= {"url", "file", "sha256_prefix", "urls", "sha256",
                                                                          "size", "origins"}, m["name"]
        for r in m["results"]:
            assert set(r) == {"dataset", "miou", "miou_ms_flip"}
    for ds in raw["datasets"].values():
        assert set(ds) == {"classes", "palette"}


def test_every_entry_parses_and_the_builtin_manifest_loads(entries):
    assert len(entries) == 123
    manifest = load_manifest([])  # the packaged file, no extra manifests
    assert len(manifest.models) == 123
    assert [e.name for e in manifest.models] == list(entries)


def test_entries_round_trip_through_their_json_form(raw, entries):
    for m in raw["models"]:
        assert entries[m["name"]].to_json() == m


def test_a_broken_entry_is_refused(raw):
    bad = json.loads(json.dumps(raw))
    bad["models"][0]["architecture"]["decode_head"]["in_index"] = -1
    with pytest.raises(ManifestError, match="in_index"):
        parse_manifest(bad)


def test_hashes_and_file_names(entries):
    for e in entries.values():
        if e.source == "sssegmentation":
            continue
        assert re.fullmatch(r"[0-9a-f]{8}", e.weights.sha256_prefix), e.name
        assert e.weights.url.startswith("https://download.openmmlab.com/mmsegmentation/v0.5/"), e.name
        assert e.weights.url.endswith("/" + e.weights.file)
        m = re.fullmatch(r"(.+)_\d{8}_\d{6}-([0-9a-f]{8})\.pth", e.weights.file)
        assert m and m.group(1) == e.name and m.group(2) == e.weights.sha256_prefix, e.name
    assert len({e.weights.file for e in entries.values()}) == 123


def test_every_mmseg_entry_lists_the_origins_then_the_community_mirror(entries):
    """The original host and its bucket are the publisher's (origins); the OneDL mirror keeps the
    original path and comes after both, as a third party."""
    mmseg = [e for e in entries.values() if e.source == "mmsegmentation"]
    assert len(mmseg) == 111
    for e in mmseg:
        path = e.weights.url.removeprefix("https://download.openmmlab.com/")
        bucket = "https://openmmlab.oss-accelerate.aliyuncs.com/" + path
        onedl = "https://mmassets.onedl.ai/" + path
        assert path.startswith("mmsegmentation/v0.5/") and path.endswith("/" + e.weights.file), e.name
        assert e.weights.urls == (bucket, onedl), e.name
        assert e.weights.origins == (e.weights.url, bucket), e.name
        assert not e.weights.is_origin(onedl), e.name
    for e in entries.values():
        if e.source == "sssegmentation":
            assert e.weights.origins == () and e.weights.urls == (), e.name


def test_json_is_written_deterministically(raw):
    text = INDEX.read_text(encoding="utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert json.loads(text) == raw


# ------------------------------------------------------------------------------------------------
# Counts
# ------------------------------------------------------------------------------------------------


def test_known_totals(entries):
    by_source = Counter(e.source for e in entries.values())
    assert by_source == {"mmsegmentation": 111, "sssegmentation": 12}
    mmseg = [e for e in entries.values() if e.source == "mmsegmentation"]
    assert Counter(e.method for e in mmseg) == {"PSPNet": 38, "PSANet": 16, "DeepLabV3": 41, "UPerNet": 16}
    assert Counter(e.dataset for e in mmseg) == {
        "cityscapes": 51, "ade20k": 16, "voc12aug": 16, "pascal_context": 4, "pascal_context_59": 4,
        "coco-stuff10k": 8, "coco-stuff164k": 12,
    }
    sss = [e for e in entries.values() if e.source == "sssegmentation"]
    assert Counter(e.dataset for e in sss) == {"voc12aug": 4, "ade20k": 4, "cityscapes": 4}


_TABLE_DATASETS = {
    "Cityscapes": "cityscapes", "ADE20K": "ade20k", "Pascal VOC 2012 + Aug": "voc12aug",
    "Pascal Context": "pascal_context", "Pascal Context 59": "pascal_context_59",
    "COCO-Stuff 10k": "coco-stuff10k", "COCO-Stuff 164k": "coco-stuff164k",
}


def _table_links(path: Path) -> list[tuple[str, str]]:
    """(section, model URL) for every [model](...) link, in file order."""
    section, found = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            section = line[4:].strip()
        found += [(section, url) for url in re.findall(r"\[model\]\(([^)]+)\)", line)]
    return found


def test_counts_and_order_match_the_zoo_tables(entries):
    mmseg = [e for e in entries.values() if e.source == "mmsegmentation"]
    urls, per_method, per_dataset = [], Counter(), Counter()
    for file, method in (("mmseg_pspnet.md", "PSPNet"), ("mmseg_psanet.md", "PSANet"),
                         ("mmseg_deeplabv3.md", "DeepLabV3"), ("mmseg_upernet.md", "UPerNet")):
        for section, url in _table_links(ZOO / file):
            if section == "Dark Zurich and Nighttime Driving" or url in urls:
                continue
            urls.append(url)
            per_method[method] += 1
            per_dataset[_TABLE_DATASETS[section]] += 1
    assert [e.weights.url for e in mmseg] == urls  # every checkpoint, once, in table order
    assert Counter(e.method for e in mmseg) == per_method
    assert Counter(e.dataset for e in mmseg) == per_dataset
    sss_rows = re.findall(r"^\| ResNet(\d+) \(OS=(\d+)", (ZOO / "sssegmentation_pspnet.md").read_text(), re.M)
    assert len(sss_rows) == sum(e.source == "sssegmentation" for e in entries.values())


# ------------------------------------------------------------------------------------------------
# Figures typed in from the tables
# ------------------------------------------------------------------------------------------------

# name: (backbone, crop, schedule, mem, fps, mIoU, ms+flip, hash)
FIGURES = {
    "pspnet_r50-d8_512x1024_40k_cityscapes": ("R-50-D8", (512, 1024), 40000, 6.1, 4.07, 77.85, 79.18, "2966598c"),
    "pspnet_r101-d8_512x512_80k_ade20k": ("R-101-D8", (512, 512), 80000, 12.0, 15.30, 43.57, 44.35, "b6e782f0"),
    "pspnet_r101-d8_769x769_80k_cityscapes": ("R-101-D8", (769, 769), 80000, None, None, 79.77, 81.06, "dba412fa"),
    "pspnet_r50-d8_512x512_4x4_20k_coco-stuff10k": ("R-50-D8", (512, 512), 20000, 9.6, 20.5, 35.69, 36.62, "b88df27f"),
    "pspnet_r101-d8_480x480_40k_pascal_context_59": ("R-101-D8", (480, 480), 40000, None, None, 52.02, 53.54,
                                                     "86d44cd4"),
    "psanet_r50-d8_512x1024_40k_cityscapes": ("R-50-D8", (512, 1024), 40000, 7.0, 3.17, 77.63, 79.04, "99fac37c"),
    "psanet_r101-d8_512x512_20k_voc12aug": ("R-101-D8", (512, 512), 20000, 10.4, 12.63, 77.91, 79.30, "946fef11"),
    "deeplabv3_r101-d8_fp16_512x1024_80k_cityscapes": ("R-101-D8", (512, 1024), 80000, 5.75, 3.86, 80.48, None,
                                                       "774d9cec"),
    "deeplabv3_r101-d16-mg124_512x1024_80k_cityscapes": ("R-101-D16-MG124", (512, 1024), 80000, None, None, 78.36,
                                                         79.84, "57bb8425"),
    "deeplabv3_r101-d8_512x512_4x4_320k_coco-stuff164k": ("R-101-D8", (512, 512), 320000, None, None, 42.61, 43.42,
                                                          "3cbca14d"),
    "upernet_r101_512x512_160k_ade20k": ("R-101", (512, 512), 160000, None, None, 43.82, 44.85, "91b32684"),
    "upernet_r50_512x1024_40k_cityscapes": ("R-50", (512, 1024), 40000, 6.4, 4.25, 77.10, 78.37, "aa54cb54"),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_as_printed(entries, name):
    backbone, crop, schedule, mem, fps, miou, ms, prefix = FIGURES[name]
    e = entries[name]
    assert (e.backbone, e.crop_size, e.schedule) == (backbone, crop, schedule)
    assert (e.mem_gb, e.fps, e.miou, e.miou_ms_flip) == (mem, fps, miou, ms)
    assert e.weights.sha256_prefix == prefix
    assert e.fp16 is name.startswith("deeplabv3_r101-d8_fp16")


def test_only_the_fp16_row_is_fp16(entries):
    assert [n for n, e in entries.items() if e.fp16] == ["deeplabv3_r101-d8_fp16_512x1024_80k_cityscapes"]
    e = entries["deeplabv3_r101-d8_fp16_512x1024_80k_cityscapes"]
    assert e.method == "DeepLabV3" and e.config == "deeplabv3_r101-d8_4xb2-amp-80k_cityscapes-512x1024"


def test_misspelt_metafile_url_does_not_leak(entries):
    e = entries["pspnet_r101-d8_769x769_80k_cityscapes"]
    assert e.weights.url == (
        "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/pspnet_r101-d8_769x769_80k_cityscapes/"
        "pspnet_r101-d8_769x769_80k_cityscapes_20200606_225055-dba412fa.pth"
    )
    assert e.config == "pspnet_r101-d8_4xb2-80k_cityscapes-769x769"


def test_dark_zurich_and_nighttime_results(entries):
    expected = {
        "pspnet_r50-d8_512x1024_40k_cityscapes": (10.91, 23.02),
        "pspnet_r101-d8_512x1024_40k_cityscapes": (10.16, 20.25),
        "pspnet_r101b-d8_512x1024_80k_cityscapes": (15.54, 22.25),
    }
    with_results = {n: e for n, e in entries.items() if e.results}
    assert set(with_results) == set(expected)
    for name, (dark, night) in expected.items():
        got = {r.dataset: (r.miou, r.miou_ms_flip) for r in with_results[name].results}
        assert got == {"dark_zurich": (dark, None), "nighttime_driving": (night, None)}
        assert with_results[name].dataset == "cityscapes"


SSS_FIGURES = {
    "pspnet_resnet50os8_voc": ("ResNet50 (OS=8, PRE=ImageNet)", (512, 512), "LR/POLICY/BS/EPOCH: 0.01/poly/16/60", 77.93),
    "pspnet_resnet101os16_voc": ("ResNet101 (OS=16, PRE=ImageNet)", (512, 512), "LR/POLICY/BS/EPOCH: 0.01/poly/16/60",
                                 None),
    "pspnet_resnet50os8_ade20k": ("ResNet50 (OS=8, PRE=ImageNet)", (512, 512), "LR/POLICY/BS/EPOCH: 0.01/poly/16/130",
                                  42.10),
    "pspnet_resnet101os16_ade20k": ("ResNet101 (OS=16, PRE=ImageNet)", (512, 512),
                                    "LR/POLICY/BS/EPOCH: 0.01/poly/16/130", 43.40),
    "pspnet_resnet50os8_cityscapes": ("ResNet50 (OS=8, PRE=ImageNet)", (512, 1024),
                                      "LR/POLICY/BS/EPOCH: 0.01/poly/8/220", None),
}


def test_sssegmentation_entries(entries):
    sss = {n: e for n, e in entries.items() if e.source == "sssegmentation"}
    names = {f"pspnet_resnet{d}os{o}_{s}" for d in (50, 101) for o in (8, 16) for s in ("voc", "ade20k", "cityscapes")}
    assert set(sss) == names
    for name, (backbone, crop, schedule, miou) in SSS_FIGURES.items():
        e = sss[name]
        assert (e.backbone, e.crop_size, e.schedule, e.miou) == (backbone, crop, schedule, miou)
    for name, e in sss.items():
        a, t = e.architecture, e.test
        depth, os_ = map(int, re.fullmatch(r"pspnet_resnet(\d+)os(\d+)_\w+", name).groups())
        assert e.method == "PSPNet" and e.config == name
        assert (e.miou_ms_flip, e.fps, e.mem_gb, e.results, e.fp16) == (None, None, None, (), False)
        assert e.weights.url == f"https://github.com/SegmentationBLWX/modelstore/releases/download/ssseg_pspnet/{name}.pth"
        assert e.weights.file == f"{name}.pth" and e.weights.sha256_prefix is None
        assert (a.backbone.type, a.backbone.depth, a.backbone.multi_grid) == ("ResNetV1c", depth, None)
        assert a.backbone.contract_dilation is True and a.align_corners is False
        if os_ == 8:
            assert (a.backbone.strides, a.backbone.dilations) == ((1, 2, 1, 1), (1, 1, 2, 4))
        else:
            assert (a.backbone.strides, a.backbone.dilations) == ((1, 2, 2, 1), (1, 1, 1, 2))
        h = a.decode_head
        assert (h.type, h.in_channels, h.in_index, h.channels, h.pool_scales, h.dropout_ratio) == (
            "PSPHead", 2048, 3, 512, (1, 2, 3, 6), 0.1)
        x = a.auxiliary_head
        assert (x.type, x.in_channels, x.in_index, x.channels, x.num_convs, x.concat_input) == (
            "FCNHead", 1024, 2, 512, 1, False)
        scale = (2048, 1024) if e.dataset == "cityscapes" else (2048, 512)
        assert (t.scale, t.mode, t.crop_size, t.stride, t.resize_logits) == (scale, "whole", None, None, "direct")
        assert (t.mean, t.std) == (MEAN, STD)


# ------------------------------------------------------------------------------------------------
# Architecture and test facts: one checkpoint of every distinct architecture (all 40 reference
# specs), typed in from its mmseg 1.2.2 config
# ------------------------------------------------------------------------------------------------

D8 = ((1, 2, 1, 1), (1, 1, 2, 4), None)
D16_MG124 = ((1, 2, 2, 1), (1, 1, 1, 2), (1, 2, 4))
NO_DILATION = ((1, 2, 2, 2), (1, 1, 1, 1), None)
CITY = ((2048, 1024), "whole", None, None)
CITY_769 = ((2049, 1025), "slide", (769, 769), (513, 513))
SHORT_512 = ((2048, 512), "whole", None, None)
CONTEXT = ((520, 520), "slide", (480, 480), (320, 320))
PSP = {"type": "PSPHead", "pool_scales": (1, 2, 3, 6)}
ASPP = {"type": "ASPPHead", "dilations": (1, 12, 24, 36)}
ASPP_MG = {"type": "ASPPHead", "dilations": (1, 6, 12, 18)}
UPER = {"type": "UPerHead", "pool_scales": (1, 2, 3, 6), "in_channels": (256, 512, 1024, 2048),
        "in_index": (0, 1, 2, 3)}


def PSA(mask: int) -> dict:
    return {"type": "PSAHead", "mask_size": (mask, mask), "psa_type": "bi-direction", "compact": False,
            "shrink_factor": 2, "normalization_factor": 1.0, "psa_softmax": True}


R18 = (512, 128, 256, 64)  # head in/out channels, aux in/out channels
R50 = (2048, 512, 1024, 256)

# spec id: (checkpoint, backbone type, depth, layout, head, channels, classes, align_corners, test)
ARCHITECTURES = {
    "pspnet_r50-d8_c19": ("pspnet_r50-d8_512x1024_40k_cityscapes", "ResNetV1c", 50, D8, PSP, R50, 19, False, CITY),
    "pspnet_r101-d8_c19": ("pspnet_r101-d8_769x769_80k_cityscapes", "ResNetV1c", 101, D8, PSP, R50, 19, True,
                           CITY_769),
    "pspnet_r18-d8_c19": ("pspnet_r18-d8_512x1024_80k_cityscapes", "ResNetV1c", 18, D8, PSP, R18, 19, False, CITY),
    "pspnet_r18b-d8_c19": ("pspnet_r18b-d8_769x769_80k_cityscapes", "ResNet", 18, D8, PSP, R18, 19, True, CITY_769),
    "pspnet_r50b-d8_c19": ("pspnet_r50b-d8_512x1024_80k_cityscapes", "ResNet", 50, D8, PSP, R50, 19, False, CITY),
    "pspnet_r101b-d8_c19": ("pspnet_r101b-d8_769x769_80k_cityscapes", "ResNet", 101, D8, PSP, R50, 19, True,
                            CITY_769),
    "pspnet_r50-d8_c150": ("pspnet_r50-d8_512x512_80k_ade20k", "ResNetV1c", 50, D8, PSP, R50, 150, False, SHORT_512),
    "pspnet_r101-d8_c150": ("pspnet_r101-d8_512x512_160k_ade20k", "ResNetV1c", 101, D8, PSP, R50, 150, False,
                            SHORT_512),
    "pspnet_r50-d8_c21": ("pspnet_r50-d8_512x512_20k_voc12aug", "ResNetV1c", 50, D8, PSP, R50, 21, False, SHORT_512),
    "pspnet_r101-d8_c21": ("pspnet_r101-d8_512x512_40k_voc12aug", "ResNetV1c", 101, D8, PSP, R50, 21, False,
                           SHORT_512),
    "pspnet_r101-d8_c60": ("pspnet_r101-d8_480x480_40k_pascal_context", "ResNetV1c", 101, D8, PSP, R50, 60, False,
                           CONTEXT),
    "pspnet_r101-d8_c59": ("pspnet_r101-d8_480x480_80k_pascal_context_59", "ResNetV1c", 101, D8, PSP, R50, 59, False,
                           CONTEXT),
    "pspnet_r50-d8_c171": ("pspnet_r50-d8_512x512_4x4_20k_coco-stuff10k", "ResNetV1c", 50, D8, PSP, R50, 171, False,
                           SHORT_512),
    "pspnet_r101-d8_c171": ("pspnet_r101-d8_512x512_4x4_320k_coco-stuff164k", "ResNetV1c", 101, D8, PSP, R50, 171,
                            False, SHORT_512),
    "psanet_r50-d8_c19": ("psanet_r50-d8_769x769_40k_cityscapes", "ResNetV1c", 50, D8, PSA(97), R50, 19, True,
                          CITY_769),
    "psanet_r101-d8_c19": ("psanet_r101-d8_512x1024_80k_cityscapes", "ResNetV1c", 101, D8, PSA(97), R50, 19, False,
                           CITY),
    "psanet_r50-d8_c150": ("psanet_r50-d8_512x512_80k_ade20k", "ResNetV1c", 50, D8, PSA(66), R50, 150, False,
                           SHORT_512),
    "psanet_r101-d8_c150": ("psanet_r101-d8_512x512_160k_ade20k", "ResNetV1c", 101, D8, PSA(66), R50, 150, False,
                            SHORT_512),
    "psanet_r50-d8_c21": ("psanet_r50-d8_512x512_20k_voc12aug", "ResNetV1c", 50, D8, PSA(97), R50, 21, False,
                          SHORT_512),
    "psanet_r101-d8_c21": ("psanet_r101-d8_512x512_40k_voc12aug", "ResNetV1c", 101, D8, PSA(97), R50, 21, False,
                           SHORT_512),
    "deeplabv3_r50-d8_c19": ("deeplabv3_r50-d8_512x1024_40k_cityscapes", "ResNetV1c", 50, D8, ASPP, R50, 19, False,
                             CITY),
    "deeplabv3_r101-d8_c19": ("deeplabv3_r101-d16-mg124_512x1024_40k_cityscapes", "ResNetV1c", 101, D16_MG124,
                              ASPP_MG, R50, 19, False, CITY),
    "deeplabv3_r18-d8_c19": ("deeplabv3_r18-d8_769x769_80k_cityscapes", "ResNetV1c", 18, D8, ASPP, R18, 19, True,
                             CITY_769),
    "deeplabv3_r18b-d8_c19": ("deeplabv3_r18b-d8_512x1024_80k_cityscapes", "ResNet", 18, D8, ASPP, R18, 19, False,
                              CITY),
    "deeplabv3_r50b-d8_c19": ("deeplabv3_r50b-d8_769x769_80k_cityscapes", "ResNet", 50, D8, ASPP, R50, 19, True,
                              CITY_769),
    "deeplabv3_r101b-d8_c19": ("deeplabv3_r101b-d8_512x1024_80k_cityscapes", "ResNet", 101, D8, ASPP, R50, 19, False,
                               CITY),
    "deeplabv3_r50-d8_c150": ("deeplabv3_r50-d8_512x512_160k_ade20k", "ResNetV1c", 50, D8, ASPP, R50, 150, False,
                              SHORT_512),
    "deeplabv3_r101-d8_c150": ("deeplabv3_r101-d8_512x512_80k_ade20k", "ResNetV1c", 101, D8, ASPP, R50, 150, False,
                               SHORT_512),
    "deeplabv3_r50-d8_c21": ("deeplabv3_r50-d8_512x512_40k_voc12aug", "ResNetV1c", 50, D8, ASPP, R50, 21, False,
                             SHORT_512),
    "deeplabv3_r101-d8_c21": ("deeplabv3_r101-d8_512x512_20k_voc12aug", "ResNetV1c", 101, D8, ASPP, R50, 21, False,
                              SHORT_512),
    "deeplabv3_r101-d8_c60": ("deeplabv3_r101-d8_480x480_80k_pascal_context", "ResNetV1c", 101, D8, ASPP, R50, 60,
                              False, CONTEXT),
    "deeplabv3_r101-d8_c59": ("deeplabv3_r101-d8_480x480_40k_pascal_context_59", "ResNetV1c", 101, D8, ASPP, R50, 59,
                              False, CONTEXT),
    "deeplabv3_r50-d8_c171": ("deeplabv3_r50-d8_512x512_4x4_80k_coco-stuff164k", "ResNetV1c", 50, D8, ASPP, R50, 171,
                              False, SHORT_512),
    "deeplabv3_r101-d8_c171": ("deeplabv3_r101-d8_512x512_4x4_40k_coco-stuff10k", "ResNetV1c", 101, D8, ASPP, R50,
                               171, False, SHORT_512),
    "upernet_r50_c19": ("upernet_r50_769x769_40k_cityscapes", "ResNetV1c", 50, NO_DILATION, UPER, R50, 19, True,
                        CITY_769),
    "upernet_r101_c19": ("upernet_r101_512x1024_80k_cityscapes", "ResNetV1c", 101, NO_DILATION, UPER, R50, 19, False,
                         CITY),
    "upernet_r50_c150": ("upernet_r50_512x512_160k_ade20k", "ResNetV1c", 50, NO_DILATION, UPER, R50, 150, False,
                         SHORT_512),
    "upernet_r101_c150": ("upernet_r101_512x512_80k_ade20k", "ResNetV1c", 101, NO_DILATION, UPER, R50, 150, False,
                          SHORT_512),
    "upernet_r50_c21": ("upernet_r50_512x512_20k_voc12aug", "ResNetV1c", 50, NO_DILATION, UPER, R50, 21, False,
                        SHORT_512),
    "upernet_r101_c21": ("upernet_r101_512x512_40k_voc12aug", "ResNetV1c", 101, NO_DILATION, UPER, R50, 21, False,
                         SHORT_512),
}


@pytest.mark.parametrize("spec_id", sorted(ARCHITECTURES))
def test_architecture_and_test_facts(entries, spec_id):
    name, kind, depth, layout, head, channels, classes, align, test = ARCHITECTURES[spec_id]
    e = entries[name]
    a, t = e.architecture, e.test
    strides, dilations, multi_grid = layout
    assert (a.backbone.type, a.backbone.depth) == (kind, depth)
    assert (a.backbone.strides, a.backbone.dilations, a.backbone.multi_grid) == (strides, dilations, multi_grid)
    assert a.backbone.contract_dilation is True
    assert (a.backbone.stem_channels, a.backbone.base_channels, a.backbone.norm_eps) == (64, 64, 1e-5)
    assert (a.num_classes, a.align_corners) == (classes, align)
    head_in, head_ch, aux_in, aux_ch = channels
    h = a.decode_head
    expected_head = {"in_channels": head_in, "in_index": 3, **head}
    assert {k: getattr(h, k) for k in expected_head} == expected_head
    assert (h.channels, h.dropout_ratio) == (head_ch, 0.1)
    x = a.auxiliary_head
    assert (x.type, x.in_channels, x.in_index, x.channels, x.num_convs, x.concat_input, x.dropout_ratio) == (
        "FCNHead", aux_in, 2, aux_ch, 1, False, 0.1)
    assert (t.scale, t.mode, t.crop_size, t.stride) == test
    assert (t.mean, t.std, t.resize_logits) == (MEAN, STD, "via_input")


def test_test_settings_of_all_mmseg_entries_follow_their_crop(entries):
    """Every 769x769 config tests by sliding with align_corners, every Pascal Context one at 520."""
    for e in entries.values():
        if e.source != "mmsegmentation":
            continue
        expected = {(769, 769): CITY_769, (512, 1024): CITY, (480, 480): CONTEXT, (512, 512): SHORT_512}[e.crop_size]
        t = e.test
        assert (t.scale, t.mode, t.crop_size, t.stride) == expected, e.name
        assert e.architecture.align_corners is (e.crop_size == (769, 769)), e.name


def test_every_reference_spec_has_a_checked_checkpoint(entries, reference):
    index = json.loads((reference / "state_dicts" / "index.json").read_text())
    assert set(index.values()) == set(ARCHITECTURES)
    for spec_id, (name, *_rest) in ARCHITECTURES.items():
        assert index[entries[name].weights.file] == spec_id
    mmseg_files = {e.weights.file for e in entries.values() if e.source == "mmsegmentation"}
    assert set(index) == mmseg_files


def test_every_entry_agrees_with_its_reference_spec(builder, raw, reference):
    builder.check_reference(raw["models"], reference)  # raises BuildError on any disagreement


@pytest.mark.parametrize("name, part, key, value", [
    ("pspnet_r18-d8_512x1024_80k_cityscapes", "auxiliary_head", "channels", 256),
    ("psanet_r50-d8_512x512_80k_ade20k", "decode_head", "mask_size", [97, 97]),
    ("upernet_r50_512x512_20k_voc12aug", "decode_head", "in_channels", [256, 512, 1024, 1024]),
    ("deeplabv3_r50b-d8_512x1024_80k_cityscapes", "backbone", "type", "ResNetV1c"),
])
def test_reference_check_catches_a_wrong_fact(builder, raw, reference, name, part, key, value):
    models = json.loads(json.dumps(raw["models"]))
    model = next(m for m in models if m["name"] == name)
    model["architecture"][part][key] = value
    with pytest.raises(builder.BuildError, match=name):
        builder.check_reference(models, reference)


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


def test_datasets(raw):
    sizes = {"cityscapes": 19, "ade20k": 150, "voc12aug": 21, "pascal_context": 60, "pascal_context_59": 59,
             "coco-stuff10k": 171, "coco-stuff164k": 171}
    ds = raw["datasets"]
    assert {k: len(v["classes"]) for k, v in ds.items()} == sizes
    assert {k: len(v["palette"]) for k, v in ds.items()} == sizes
    assert ds["cityscapes"]["classes"][0] == "road" and ds["cityscapes"]["classes"][-1] == "bicycle"
    assert ds["cityscapes"]["palette"][0] == [128, 64, 128]
    assert ds["ade20k"]["classes"][0] == "wall" and ds["ade20k"]["classes"][-1] == "flag"
    assert ds["voc12aug"]["classes"][0] == "background" and ds["voc12aug"]["classes"][-1] == "tvmonitor"
    assert ds["voc12aug"]["palette"][:2] == [[0, 0, 0], [128, 0, 0]]
    assert ds["pascal_context"]["classes"][:2] == ["background", "aeroplane"]
    assert ds["pascal_context"]["classes"][1:] == ds["pascal_context_59"]["classes"]
    assert ds["coco-stuff10k"] == ds["coco-stuff164k"]
    assert ds["coco-stuff10k"]["classes"][0] == "person"


def test_every_model_matches_its_dataset(raw, entries):
    for e in entries.values():
        assert len(raw["datasets"][e.dataset]["classes"]) == e.num_classes, e.name


# ------------------------------------------------------------------------------------------------
# The builder
# ------------------------------------------------------------------------------------------------


def _run_builder(tmp_path: Path, mmseg: Path, *extra: str) -> bytes:
    out = tmp_path / "model_index.json"
    cmd = [sys.executable, str(BUILDER), "--zoo", str(ZOO), "--mmseg-configs", str(mmseg / ".mim" / "configs"),
           "--mmseg-datasets", str(mmseg / "datasets"), "-o", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def test_builder_regenerates_the_committed_file(tmp_path, mmseg_package, reference):
    committed = INDEX.read_bytes()
    assert _run_builder(tmp_path, mmseg_package) == committed
    assert _run_builder(tmp_path, mmseg_package, "--reference", str(reference)) == committed


def test_config_inheritance_merges_like_mmengine(builder, tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.py").write_text(
        "norm = dict(type='BN')\n"
        "model = dict(backbone=dict(depth=50, strides=(1, 2, 1, 1), norm=norm), head=dict(a=1, b=2))\n"
        "pipeline = [dict(type='Resize', scale=(2048, 512))]\n"
    )
    (tmp_path / "base" / "data.py").write_text("loader = dict(dataset=dict(pipeline=[1]))\ntest = loader\n")
    (tmp_path / "child.py").write_text(
        "_base_ = ['./base/model.py', './base/data.py']\n"
        "model = dict(backbone=dict(depth=101), head=dict(_delete_=True, c=3))\n"
        "pipeline = [dict(type='Resize', scale=(520, 520))]\n"
        "loader = dict(dataset=dict(pipeline=[2]))\ntest = loader\n"
    )
    (tmp_path / "grandchild.py").write_text("_base_ = './child.py'\nmodel = dict(backbone=dict(strides=(1, 2, 2, 1)))\n")
    cfg = builder.ConfigLoader(tmp_path).load("grandchild.py")
    assert cfg["model"]["backbone"] == {"depth": 101, "strides": (1, 2, 2, 1), "norm": {"type": "BN"}}
    assert cfg["model"]["head"] == {"c": 3}
    assert cfg["pipeline"] == [{"type": "Resize", "scale": (520, 520)}]
    assert cfg["test"] == {"dataset": {"pipeline": [2]}}


def test_config_evaluator_refuses_imports_and_duplicate_bases(builder, tmp_path):
    (tmp_path / "imp.py").write_text("import os\nx = 1\n")
    with pytest.raises(builder.BuildError, match="imports"):
        builder.ConfigLoader(tmp_path).load("imp.py")
    (tmp_path / "dunder.py").write_text("x = ().__class__\n")
    with pytest.raises(builder.BuildError, match="__class__"):
        builder.ConfigLoader(tmp_path).load("dunder.py")
    (tmp_path / "a.py").write_text("crop = (1, 1)\n")
    (tmp_path / "b.py").write_text("crop = (2, 2)\n")
    (tmp_path / "c.py").write_text("_base_ = ['a.py', 'b.py']\n")
    with pytest.raises(builder.BuildError, match="more than one base"):
        builder.ConfigLoader(tmp_path).load("c.py")


def test_metafile_url_matching(builder):
    good = "https://download.openmmlab.com/x/m_20200101_000000-0123abcd.pth"
    meta = [
        {"Name": "a", "Config": "configs/m/a.py", "Weights": "https://download.oz1z1penmmlab.com/x/m_20200101_000000-0123abcd.pth"},
        {"Name": "b", "Config": "configs/m/b.py", "Weights": "https://download.openmmlab.com/x/n_20200101_000000-89abcdef.pth"},
    ]
    rel, note = builder.config_for_url(good, meta, "row")
    assert rel == "m/a.py" and "matched by file name" in note
    rel, note = builder.config_for_url(meta[1]["Weights"], meta, "row")
    assert rel == "m/b.py" and note is None
    with pytest.raises(builder.BuildError, match="expected 1"):
        builder.config_for_url("https://download.openmmlab.com/x/o_20200101_000000-00000000.pth", meta, "row")


def test_table_cells_keep_escaped_pipes(builder):
    assert builder._split_cells("| a | [model](u) \\| [log](v) |") == ["a", "[model](u) \\| [log](v)"]
    assert builder._figure("77.93%", "w", "mIoU") == 77.93
    assert builder._figure("-", "w", "mIoU") is None
    with pytest.raises(builder.BuildError):
        builder._figure("n/a", "w", "mIoU")


def test_builder_refuses_a_test_resize_without_keep_ratio(builder, mmseg_package):
    loader = builder.ConfigLoader(mmseg_package / ".mim" / "configs")
    cfg = loader.load("pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py")
    builder.extract_model(cfg, "ok")
    for pipeline in (cfg["test_pipeline"], cfg["test_dataloader"]["dataset"]["pipeline"]):
        next(t for t in pipeline if t["type"] == "Resize")["keep_ratio"] = False
    with pytest.raises(builder.BuildError, match="keep_ratio"):
        builder.extract_model(cfg, "bad")
