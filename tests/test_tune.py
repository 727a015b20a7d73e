"""``psegzoo tune`` measures and records the CPU's fast paths; loading and predicting only read the record.

``tuning.measure`` is replaced by a function that fails the test wherever loading or predicting must not
measure; where ``tune`` itself is tested, by fixed timings (the record logic is what is tested; one test
runs the real measurement once). The load average is set per test so that both verdicts are reached on any
machine.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

import psegzoo
from psegzoo.models import FastPaths
from psegzoo.models.fast import tuning
from tests.support.cli import cli
from tests.support.media import image as scene
from tests.test_predictor_api import TINY, tiny  # noqa: F401  (the tiny model's fixture)

FIXED = {"channels_last": {"plain": 1.0, "fast": 0.5}, "winograd": {"plain": 1.0, "fast": 2.0},
         "decompose": {"plain": 1.0, "fast": 1.0}}
"""Timings where only channels-last pays: a choice the rule never makes."""


def _no_measuring(*_args, **_kwargs):
    raise AssertionError("measured the fast paths outside 'psegzoo tune'")


@pytest.fixture
def home(tmp_path, monkeypatch, tiny) -> Path:  # noqa: F811
    home = tmp_path / "home"
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    monkeypatch.setattr(tuning, "measure", _no_measuring)
    monkeypatch.setattr(tuning, "_best_pair", _no_measuring)
    return home


def _record(home: Path, paths: FastPaths) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / tuning.RECORD_NAME).write_text(json.dumps({tuning.machine_key(): {"measured": FIXED,
                                                                              "decided": asdict(paths)}}))


def _large_input(tmp_path: Path) -> Path:
    """An image predicted at 640 x 640: above the 512 x 512 forward at which the CPU used to be measured."""
    path = tmp_path / "big.png"
    Image.fromarray(scene(3, 640, 640)).save(path)
    return path


def test_the_rule_needs_no_timing_and_always_decomposes():
    assert tuning.default_fast_paths("AVX512") == FastPaths.all()
    assert tuning.default_fast_paths("AVX2") == FastPaths.all()
    assert tuning.default_fast_paths("NO AVX") == FastPaths(decompose=True)  # an unknown family: the fallback
    # F(2x2, 3x3) alone is never a default: where Winograd is on, it is F(4x4, 3x3)
    assert all(paths.decompose and paths.winograd_f4 == paths.winograd for paths in tuning.DEFAULTS.values())


def test_load_and_predict_read_the_record_and_never_measure(home, tiny, tmp_path):  # noqa: F811
    recorded = FastPaths(channels_last=True)
    _record(home, recorded)
    seg = psegzoo.load(TINY, weights=tiny, device="cpu")
    assert seg.fast_paths == recorded and seg.fast_path_choice.source == "record"
    seg.predict(_large_input(tmp_path), scale=(640, 640))
    assert seg.fast_paths == recorded
    result = cli("-v", "predict", "-m", TINY, "--weights", tiny, _large_input(tmp_path), "--scale", "640x640",
                 "--device", "cpu", "-o", tmp_path / "out")
    assert "fast paths on this CPU: channels_last (measured by psegzoo tune)" in result.stderr


def test_without_a_record_the_rule_is_used_and_nothing_measured(home, tiny, tmp_path):  # noqa: F811
    seg = psegzoo.load(TINY, weights=tiny, device="cpu")
    # the rule's choice; what is installed is that choice where the tiny model has layers for it
    assert seg.fast_path_choice.paths == tuning.default_fast_paths() and seg.fast_path_choice.source == "rule"
    installed = seg.fast_paths
    assert (installed.decompose, installed.channels_last) == (tuning.default_fast_paths().decompose,
                                                             tuning.default_fast_paths().channels_last)
    seg.predict(_large_input(tmp_path), scale=(640, 640))
    assert seg.fast_paths == installed
    result = cli("-v", "predict", "-m", TINY, "--weights", tiny, _large_input(tmp_path), "--scale", "640x640",
                 "--device", "cpu", "-o", tmp_path / "out")
    assert "(the default for this CPU; 'psegzoo tune' measures which pay)" in result.stderr
    assert not (home / tuning.RECORD_NAME).exists()


def test_a_record_of_another_machine_is_not_used(home, tiny):  # noqa: F811
    home.mkdir()
    (home / tuning.RECORD_NAME).write_text(json.dumps({"another CPU | AVX2 | torch 0 | 1 threads": {
        "measured": FIXED, "decided": asdict(FastPaths(channels_last=True))}}))
    assert psegzoo.load(TINY, weights=tiny, device="cpu").fast_path_choice.source == "rule"


def test_tune_records_on_a_quiet_machine_and_shows_what_it_measured(home, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda repeats=3: FIXED)
    monkeypatch.setattr(tuning, "load_average", lambda: (0.4, 4))
    result = cli("tune")
    for path in FIXED:
        assert path in result.stdout
    assert "1000.0 ms" in result.stdout and "500.0 ms" in result.stdout and "2.00x" in result.stdout
    assert "chosen: channels_last" in result.stdout
    assert f"recorded in {home / tuning.RECORD_NAME}" in result.stderr
    record = json.loads((home / tuning.RECORD_NAME).read_text())[tuning.machine_key()]
    assert record["decided"] == asdict(FastPaths(channels_last=True)) and record["measured"] == FIXED
    monkeypatch.setattr(tuning, "measure", _no_measuring)
    assert "channels_last (measured by psegzoo tune)" in cli("tune", "--show").stdout


def test_tune_on_a_busy_machine_records_nothing_unless_forced(home, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda repeats=3: FIXED)
    monkeypatch.setattr(tuning, "load_average", lambda: (3.0, 4))
    result = cli("tune", code=1)
    assert "too busy" in result.stderr and "load average 3.00 on 4 CPU(s)" in result.stderr
    assert "--force" in result.stderr
    assert not (home / tuning.RECORD_NAME).exists()
    assert psegzoo.cpu_fast_paths().source == "rule"
    forced = json.loads(cli("tune", "--force", "--json").stdout)
    assert forced["busy"] and forced["recorded"] and forced["chosen"] == asdict(FastPaths(channels_last=True))
    assert json.loads((home / tuning.RECORD_NAME).read_text())[tuning.machine_key()]["forced"] is True
    assert psegzoo.cpu_fast_paths().source == "record"


def test_tune_measures_for_real(tmp_path):
    """One real measurement (a few seconds): every path timed, the choice is decide()'s."""
    result = psegzoo.tune(force=True, repeats=1, record=tmp_path / "record.json")
    assert set(result.measured) == {"channels_last", "winograd", "winograd_f4", "decompose"}
    assert all(t["plain"] > 0 and t["fast"] > 0 for t in result.measured.values())
    assert result.chosen == tuning.decide(result.measured) and result.recorded


def test_an_unwritable_record_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda repeats=3: FIXED)
    monkeypatch.setattr(tuning, "load_average", lambda: (0.0, 4))
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "file" / "home"))
    result = cli("tune", code=1)
    (line,) = result.stderr.splitlines()  # one line, and no status line outside a terminal
    assert line.startswith("error: cannot record the fast paths") and "PSEGZOO_HOME" in line


def test_decide_takes_the_faster_winograd_tile_and_needs_channels_last():
    def timed(**fast: float) -> dict[str, dict[str, float]]:
        return {k: {"plain": 1.0, "fast": v} for k, v in fast.items()}

    f4 = tuning.decide(timed(channels_last=0.5, decompose=0.5, winograd=0.8, winograd_f4=0.6))
    assert f4 == FastPaths.all()
    f2 = tuning.decide(timed(channels_last=0.5, decompose=0.5, winograd=0.6, winograd_f4=0.8))
    assert f2.winograd and not f2.winograd_f4
    only_f4 = tuning.decide(timed(channels_last=0.5, decompose=0.5, winograd=1.2, winograd_f4=0.7))
    assert only_f4.winograd and only_f4.winograd_f4
    no_cl = tuning.decide(timed(channels_last=1.0, decompose=0.5, winograd=0.5, winograd_f4=0.5))
    assert no_cl == FastPaths(decompose=True)
