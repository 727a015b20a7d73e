"""`psegzoo list` and `psegzoo info` as a user runs them: tables that fit, names that resolve."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import psegzoo
from psegzoo.cli.listing import info_lines
from tests.support.cli import cli, run_script

ALL_HEADERS = ("name", "method", "backbone", "crop", "schedule", "mIoU", "ms+flip", "fps", "mem GB", "cached")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PSEGZOO_INDEX", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    return tmp_path / "home"


def run(*args: object, code: int = 0, columns: int | None = None, monkeypatch=None):
    if columns is not None:
        monkeypatch.setenv("COLUMNS", str(columns))
    return cli(*args, code=code)


def parse_table(out: str) -> tuple[str, list[str], list[dict[str, str]]]:
    """(title, headers, rows as header -> cell) of a `psegzoo list` table (cells never hold two spaces)."""
    title, header, *lines = out.rstrip("\n").splitlines()
    headers = re.split(r" {2,}", header.strip())
    rows = []
    for line in lines:
        cells = re.split(r" {2,}", line.strip())
        if len(cells) == len(headers) - 1 and headers[-1] == "cached":
            cells.append("")  # an empty last cell is trimmed with the line
        assert len(cells) == len(headers), (line, headers)
        rows.append(dict(zip(headers, cells)))
    return title, headers, rows


def expected_cells(e: psegzoo.Entry) -> dict[str, str]:
    """What each column must show for an entry, written out here (not taken from the code under test)."""

    def num(v):
        return "-" if v is None else f"{v:.2f}"

    if isinstance(e.schedule, int):
        assert e.schedule % 1000 == 0
        schedule = f"{e.schedule // 1000}k"
    else:
        schedule = re.search(r"/(\d+)$", e.schedule).group(1) + " ep"
    backbone = e.backbone
    m = re.match(r"(ResNet\d+) \(OS=(\d+)", backbone)
    if m:
        backbone = f"{m.group(1)} OS{m.group(2)}"
    return {
        "name": e.name, "method": e.method, "backbone": backbone, "crop": f"{e.crop_size[0]}x{e.crop_size[1]}",
        "schedule": schedule, "mIoU": num(e.miou), "ms+flip": num(e.miou_ms_flip), "fps": num(e.fps),
        "mem GB": "-" if e.mem_gb is None else str(e.mem_gb),
    }


@pytest.mark.parametrize("width", [80, 100, 120])
def test_list_fits_the_terminal_and_never_cuts_a_figure(width, monkeypatch):
    out = run("list", columns=width, monkeypatch=monkeypatch).output
    title, headers, rows = parse_table(out)
    assert all(len(line) <= width for line in out.splitlines()), width
    assert "…" not in out and "..." not in out
    assert headers[0] == "name" and "mIoU" in headers and set(headers) <= set(ALL_HEADERS)
    assert headers == [h for h in ALL_HEADERS if h in headers]  # in the table's order
    hidden = [h for h in ALL_HEADERS if h not in headers]
    assert ("--wide" in title) == bool(hidden)
    entries = {e.name: e for e in psegzoo.list_models()}
    assert [r["name"] for r in rows] == list(entries)  # every row, on one line each, SSSegmentation's too
    for row in rows:
        want = expected_cells(entries[row["name"]])
        for header, cell in row.items():
            if header != "cached":
                assert cell == want[header], (row["name"], header, cell)


def test_narrower_terminals_show_fewer_columns_by_priority(monkeypatch):
    shown = {w: parse_table(run("list", columns=w, monkeypatch=monkeypatch).output)[1] for w in (60, 80, 100, 120, 200)}
    assert shown[60] == ["name", "mIoU"]
    assert set(shown[60]) < set(shown[80]) < set(shown[100]) < set(shown[120]) <= set(shown[200])
    assert shown[200] == list(ALL_HEADERS)
    assert "cached" in shown[80] and "method" not in shown[120]  # what is in the name goes first
    wide = parse_table(run("list", "--wide", columns=60, monkeypatch=monkeypatch).output)
    assert wide[1] == list(ALL_HEADERS)
    sss = next(r for r in wide[2] if r["name"] == "pspnet_resnet50os8_voc")
    assert sss["backbone"] == "ResNet50 (OS=8, PRE=ImageNet)" and sss["schedule"] == "LR/POLICY/BS/EPOCH: 0.01/poly/16/60"


def test_a_pipe_gets_every_column_unless_columns_says_otherwise():
    # CliRunner's stdout is not a terminal: with no COLUMNS the table is not narrowed.
    assert parse_table(cli("list", "--dataset", "ade").output)[1] == list(ALL_HEADERS)


def test_columns_option_chooses_and_orders(monkeypatch):
    out = run("list", "--dataset", "ade", "--columns", "NAME,fps,ms+flip", columns=40, monkeypatch=monkeypatch).output
    title, headers, rows = parse_table(out)
    assert headers == ["name", "fps", "ms+flip"] and "--wide" not in title
    assert rows[0] == {"name": "pspnet_r50-d8_512x512_80k_ade20k", "fps": "23.53", "ms+flip": "41.94"}
    bad = cli("list", "--columns", "name,colour", code=2)
    assert "colour" in bad.output and "miou" in bad.output


def test_list_dataset_spellings_json():
    for spelling in ("ADE20K", "ade"):
        models = json.loads(cli("list", "--dataset", spelling, "--json").output)
        assert models and {m["dataset"] for m in models} == {"ade20k"}
        assert all({"name", "weights", "architecture", "test", "miou"} <= set(m) for m in models)


def test_list_pattern_sort_and_filters():
    models = json.loads(cli("list", "*R101*", "--method", "PSPNet", "--sort", "miou", "--json").output)
    assert models and all("r101" in m["name"] and m["method"] == "PSPNet" for m in models)
    mious = [m["miou"] for m in models if m["miou"] is not None]
    assert mious == sorted(mious, reverse=True) and len(set(mious)) > 3
    by_name = [m["name"] for m in json.loads(cli("list", "--sort", "name", "--json").output)]
    assert by_name == sorted(by_name) and len(by_name) == 123
    fps = [m["fps"] for m in json.loads(cli("list", "--sort", "fps", "--json").output) if m["fps"] is not None]
    assert fps == sorted(fps, reverse=True)


def test_list_unknown_dataset_is_clean_error():
    result = cli("list", "--dataset", "imagenet", code=2)
    assert "unknown dataset 'imagenet'" in result.output and "cityscapes" in result.output


def test_list_shows_cached_marker_only_for_cached_entries(home):
    cached = psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_cityscapes")
    path = psegzoo.checkpoint_path(cached)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    _, _, rows = parse_table(cli("list", "pspnet_r50-d8_512x1024_*_cityscapes").output)
    marks = {r["name"]: r["cached"] for r in rows}
    assert marks == {"pspnet_r50-d8_512x1024_40k_cityscapes": "yes", "pspnet_r50-d8_512x1024_80k_cityscapes": ""}


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------


def test_info_alias_json():
    obj = json.loads(cli("info", "pspnet_r101-d8_cityscapes", "--json").output)
    assert obj["name"] == "pspnet_r101-d8_769x769_80k_cityscapes"
    assert obj["is_alias"] is True and len(obj["alternatives"]) == 3
    assert obj["classes"][0] == "road" and len(obj["classes"]) == 19
    assert obj["test"]["mode"] == "slide" and obj["architecture"]["align_corners"] is True


@pytest.mark.parametrize(
    "typed, canonical",
    [
        ("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024", "pspnet_r50-d8_512x1024_40k_cityscapes"),
        ("configs/upernet/upernet_r50_4xb4-80k_ade20k-512x512.py", "upernet_r50_512x512_80k_ade20k"),
        ("pspnet_r101-d8_voc", "pspnet_r101-d8_512x512_40k_voc12aug"),
        ("upernet_r50_ade", "upernet_r50_512x512_160k_ade20k"),
        ("UPerNet_R50_ADE20K", "upernet_r50_512x512_160k_ade20k"),
        ("PSPNet_R50-D8_512x1024_40K_Cityscapes", "pspnet_r50-d8_512x1024_40k_cityscapes"),
    ],
)
def test_names_people_type_resolve_and_info_json_gives_the_canonical_name(typed, canonical):
    obj = json.loads(cli("info", typed, "--json").output)
    assert obj["name"] == canonical and obj["query"] == typed
    first, second = cli("info", typed).output.splitlines()[:2]
    if typed.lower() == canonical:
        assert first == canonical
    else:
        assert first.startswith(f"{typed} ") and canonical in first  # says what the name resolved to
        assert second == canonical


def test_info_text_shows_everything():
    out = cli("info", "pspnet_r50-d8_512x1024_40k_cityscapes").output
    for text in ("PSPNet", "R-50-D8", "77.85", "79.18", "2966598c", "ResNetV1c", "PSPHead", "dark_zurich", "road"):
        assert text in out, text


def test_info_piped_keeps_urls_and_paths_on_one_line(home):
    name = "pspnet_r101-d8_512x1024_40k_cityscapes"
    entry = psegzoo.get_entry(name)
    proc = run_script("info", name, extra_env={"COLUMNS": "40"})  # a narrow value must not wrap a pipe either
    (weights,) = [line for line in proc.stdout.splitlines() if "weights" in line]  # what `| grep weights` finds
    assert weights.split() == ["weights", entry.weights.url]
    (classes,) = [line for line in proc.stdout.splitlines() if line.strip().startswith("classes")]
    assert classes.rstrip().endswith("bicycle") and len(classes) > 150
    assert "\x1b[" not in proc.stdout  # no colour codes in a pipe


def test_info_wraps_prose_but_never_urls_in_a_terminal():
    url = "https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/" + "x" * 80 + ".pth"
    rows = [("weights", url), ("cached", "/a/very/long/path/" + "y" * 70), ("classes", ", ".join(["word"] * 40))]
    lines = info_lines(rows, width=60)
    assert any(line.endswith(url) for line in lines)  # whole, on its key's line
    assert any(line.rstrip().endswith("y" * 70) for line in lines)
    class_lines = lines[2:]
    assert len(class_lines) > 3 and all(len(click_unstyle(line)) <= 60 for line in class_lines)
    assert " ".join(click_unstyle(line) for line in class_lines).count("word") == 40
    assert info_lines(rows, width=None)[2:] == [info_lines(rows, width=None)[2]]  # no width: one line


def click_unstyle(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_info_shows_the_full_sha256_of_a_cached_file(home, tmp_path):
    name = "pspnet_resnet50os8_voc"  # no published hash: importing it records the file's hash
    data = b"checkpoint bytes"
    src = tmp_path / "mine.pth"
    src.write_bytes(data)
    before = json.loads(cli("info", name, "--json").output)
    assert before["cached"] is False and before["cached_sha256"] is None
    cli("import", src, "--name", name)
    sha = hashlib.sha256(data).hexdigest()
    obj = json.loads(cli("info", name, "--json").output)
    assert obj["cached"] is True and obj["cached_sha256"] == sha
    (line,) = [line for line in cli("info", name).output.splitlines() if "cached sha256" in line]
    assert line.split() == ["cached", "sha256", sha]


def test_info_unknown_name():
    result = cli("info", "pspnet_r101-d8_citiscapes", code=1)
    assert "pspnet_r101-d8_cityscapes" in result.output


def test_info_with_extra_index_option(tmp_path):
    with open(os.path.join(os.path.dirname(__file__), "..", "model_index.json")) as f:
        base = next(m for m in json.load(f)["models"] if m["name"] == "upernet_r50_512x512_80k_ade20k")
    base = {**base, "name": "upernet_r50_512x512_1k_ade20k", "miou": 12.5}
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"schema_version": 1, "models": [base]}))
    obj = json.loads(cli("info", "--index", str(extra), "upernet_r50_512x512_1k_ade20k", "--json").output)
    assert obj["miou"] == 12.5
    assert "PSEGZOO_INDEX" not in os.environ  # --index holds for its command only
    cli("info", "upernet_r50_512x512_1k_ade20k", code=1)


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


def test_an_unreadable_cache_empties_the_cached_column_not_the_listing(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "home_is_a_file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("PSEGZOO_HOME", str(not_a_folder))
    result = cli("list", "*r18-d8_512x1024*")
    _, _, rows = parse_table(result.stdout)
    assert [r["name"] for r in rows] == ["pspnet_r18-d8_512x1024_80k_cityscapes", "deeplabv3_r18-d8_512x1024_80k_cityscapes"]
    assert all(r["cached"] == "" for r in rows) and "cached column is empty" in result.stderr


# ------------------------------------------------------------------------------------------------
# Nothing matched, misuse, and short texts
# ------------------------------------------------------------------------------------------------


def test_list_with_nothing_matched_says_so_suggests_names_and_exits_1():
    result = cli("list", "pspnet_r50-d8_512x1024_40k_cityscape_typo", code=1)
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: no checkpoint matches 'pspnet_r50-d8_512x1024_40k_cityscape_typo'")
    assert "Did you mean: pspnet_r50-d8_512x1024_40k_cityscapes" in line  # a name a pattern finds, not an alias
    assert "'psegzoo list' with no pattern lists all 123" in line
    filtered = cli("list", "*r18*", "--dataset", "ade20k", "--json", code=1)  # filters that exclude each other
    assert filtered.stdout == "" and "no checkpoint matches '*r18*' with --dataset ade20k" in filtered.stderr


def test_list_unknown_dataset_or_method_is_a_misuse_exit_2():
    result = cli("list", "--dataset", "foo", code=2)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: unknown dataset 'foo'") and "cityscapes" in line
    assert "unknown method 'fcn'" in cli("list", "--method", "fcn", code=2).stderr


def test_an_alias_with_one_match_says_so_in_words_that_agree():
    single = "pspnet_r50-d8_80k_ade20k"  # an alias (its schedule but not its crop) of one checkpoint
    resolution = psegzoo.resolve(single)
    assert resolution.is_alias and resolution.alternatives == ()
    first = cli("info", single).stdout.splitlines()[0]
    assert "its only match" in first and "among 1" not in first and "1 matches" not in first
    several = cli("info", "pspnet_r101-d8_cityscapes").stdout.splitlines()[0]
    assert "the best single-scale mIoU of its 4 matches" in several


def test_an_entry_s_repr_is_one_short_line_with_its_name():
    entry = psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_cityscapes")
    text = repr(entry)
    assert text.startswith("Entry('pspnet_r50-d8_512x1024_40k_cityscapes'") and len(text) < 120
    assert "\n" not in text and "77.85" in text


def test_info_tells_the_host_story_as_it_is():
    entry = psegzoo.get_entry("pspnet_r50-d8_512x1024_40k_cityscapes")
    out = run_script("info", entry.name).stdout
    lines = out.splitlines()
    assert [line.split() for line in lines if line.strip().startswith("fallback")] == [
        ["fallback", url] for url in entry.weights.urls]
    (hosts,) = [line for line in lines if line.strip().startswith("hosts")]
    assert "the original URL comes first" in hosts and "download.openmmlab.com has failed before" in hosts
    assert "came back" in hosts and "on its own" in hosts
    for gone in ("no longer resolves", "is gone", "stopped resolving", "unreachable since"):
        assert gone not in out
