"""`psegzoo list` and `psegzoo info` as a user runs them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from psegzoo.cli import main


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PSEGZOO_INDEX", raising=False)

    def invoke(*args: str, code: int = 0):
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_list_table_renders(run):
    out = run("list", "--dataset", "ade20k").output
    assert "upernet_r50_512x512_80k_ade20k" in out
    assert "pspnet_r50-d8_512x1024_40k_cityscapes" not in out
    for header in ("name", "method", "backbone", "crop", "schedule", "mIoU", "ms+flip", "fps", "mem", "cached"):
        assert header in out
    assert "41.13" in out  # pspnet_r50-d8_512x512_80k_ade20k


@pytest.mark.parametrize("spelling", ["ADE20K", "ade"])
def test_list_dataset_spellings_json(run, spelling):
    models = json.loads(run("list", "--dataset", spelling, "--json").output)
    assert models and {m["dataset"] for m in models} == {"ade20k"}
    assert all({"name", "weights", "architecture", "test", "miou"} <= set(m) for m in models)


def test_list_pattern_sort_and_filters(run):
    models = json.loads(run("list", "*r101*", "--method", "PSPNet", "--sort", "miou", "--json").output)
    assert models and all("r101" in m["name"] and m["method"] == "PSPNet" for m in models)
    mious = [m["miou"] for m in models if m["miou"] is not None]
    assert mious == sorted(mious, reverse=True)
    by_name = [m["name"] for m in json.loads(run("list", "--sort", "name", "--json").output)]
    assert by_name == sorted(by_name) and len(by_name) == 123
    fps = [m["fps"] for m in json.loads(run("list", "--sort", "fps", "--json").output) if m["fps"] is not None]
    assert fps == sorted(fps, reverse=True)


def test_list_unknown_dataset_is_clean_error(run):
    result = run("list", "--dataset", "imagenet", code=1)
    assert "unknown dataset 'imagenet'" in result.output and "cityscapes" in result.output
    assert "Traceback" not in result.output


def test_list_shows_cached_marker(run, tmp_path):
    import psegzoo

    entry = psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_cityscapes")
    path = psegzoo.checkpoint_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    out = run("list", "pspnet_r50-d8_512x1024_40k_cityscapes").output
    assert "yes" in out


def test_info_alias_json(run):
    obj = json.loads(run("info", "pspnet_r101-d8_cityscapes", "--json").output)
    assert obj["name"] == "pspnet_r101-d8_769x769_80k_cityscapes"
    assert obj["is_alias"] is True and len(obj["alternatives"]) == 3
    assert obj["classes"][0] == "road" and len(obj["classes"]) == 19
    assert obj["test"]["mode"] == "slide" and obj["architecture"]["align_corners"] is True


def test_info_text_shows_everything(run):
    out = run("info", "pspnet_r50-d8_512x1024_40k_cityscapes").output
    for text in ("PSPNet", "R-50-D8", "77.85", "79.18", "2966598c", "ResNetV1c", "PSPHead", "dark_zurich", "road"):
        assert text in out, text


def test_info_unknown_name(run):
    result = run("info", "pspnet_r101-d8_citiscapes", code=1)
    assert "pspnet_r101-d8_cityscapes" in result.output and "Traceback" not in result.output


def test_info_with_extra_index_option(run, tmp_path):
    with open(os.path.join(os.path.dirname(__file__), "..", "model_index.json")) as f:
        base = next(m for m in json.load(f)["models"] if m["name"] == "upernet_r50_512x512_80k_ade20k")
    base = {**base, "name": "upernet_r50_512x512_1k_ade20k", "miou": 12.5}
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"schema_version": 1, "models": [base]}))
    obj = json.loads(run("info", "--index", str(extra), "upernet_r50_512x512_1k_ade20k", "--json").output)
    assert obj["miou"] == 12.5


@pytest.mark.skipif(shutil.which("psegzoo") is None, reason="console script not installed")
def test_installed_console_script_lists(tmp_path):
    env = {**os.environ, "PSEGZOO_HOME": str(tmp_path)}
    env.pop("PSEGZOO_INDEX", None)
    out = subprocess.run(["psegzoo", "list", "--dataset", "cityscapes", "--json"], capture_output=True, text=True, env=env, check=True)
    assert all(m["dataset"] == "cityscapes" for m in json.loads(out.stdout))
    bad = subprocess.run(["psegzoo", "info", "nope_model"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "unknown model" in bad.stderr and "Traceback" not in bad.stderr
    via_module = subprocess.run([sys.executable, "-m", "psegzoo", "--version"], capture_output=True, text=True, env=env, check=True)
    assert "psegzoo" in via_module.stdout
