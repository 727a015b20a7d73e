"""`psegzoo download / cache / verify / import / mirror` as a user runs them, over real HTTP on 127.0.0.1.

Entries come from an extra manifest (PSEGZOO_INDEX or --index) whose weights URLs point at the
loopback server of tests/support/http_server.py. Most cases use click's CliRunner; a few run the
installed ``psegzoo`` console script in a subprocess, where stderr is exactly what a user sees.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

import psegzoo
from tests.support.cli import cli, run_script
from tests.support.http_server import FileServer
from tests.support.hub import Zoo, cache_listing, checkpoint_bytes, clean_env, free_port, sha, url_path
from tests.support.terminal import run_in_sized_terminal

SSSEG_NAME = "pspnet_resnet50os8_voc"


@pytest.fixture(scope="module")
def ckpt_bytes() -> bytes:
    return checkpoint_bytes(10, numel=200_000)  # ~0.8 MB


@pytest.fixture(scope="module")
def other_bytes() -> bytes:
    return checkpoint_bytes(11, numel=200_000)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache, fast retries, and an 80-column non-terminal output as in a pipe."""
    home = clean_env(monkeypatch, tmp_path / "home")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("PSEGZOO_RETRIES", "2")
    return home


@pytest.fixture
def zoo(tmp_path, monkeypatch, env, http_server):
    return Zoo(tmp_path, monkeypatch, http_server)


def prefix_only(line: str) -> bool:
    """The warning said when a file from a third party (every entry here comes from an extra manifest)
    enters the cache on its 8-digit hash prefix alone; tests/test_hub_trust.py checks it."""
    return line.startswith("warning: ") and "-digit hash prefix" in line and "vouches for" in line


def other_lines(text: str) -> list[str]:
    """The non-empty lines of ``text`` but the prefix-only warnings."""
    return [line for line in text.splitlines() if line.strip() and not prefix_only(line)]


def error_line(text: str, *, warnings: int = 0) -> str:
    """The one line of ``text`` that carries the error (the message is not wrapped), after exactly
    ``warnings`` one-line warnings (retries shown as they happened)."""
    lines = other_lines(text)
    errors = [line for line in lines if line.startswith("error: ")]
    shown = [line for line in lines if line.startswith("warning: ")]
    assert len(errors) == 1 and len(shown) == warnings and len(lines) == 1 + warnings, text
    return errors[0]


def cache_files(home: Path) -> list[str]:
    """Every file of the cache relative to its root; trust records (kept on purpose) and locks aside."""
    return [p for p in cache_listing(home) if not p.startswith("trusted/")]


def ckpt_and_record(entry) -> list[str]:
    return [f"checkpoints/{entry.weights.file}", f"records/{entry.weights.file}.json"]


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def test_download_prints_the_cached_path(zoo, http_server, ckpt_bytes, env):
    entry = zoo.add("m_ok", ckpt_bytes)
    result = cli("download", "m_ok", "-q")
    path = env / "checkpoints" / entry.weights.file
    assert result.stdout.splitlines() == [str(path)]
    assert path.read_bytes() == ckpt_bytes
    record = json.loads((env / "records" / (path.name + ".json")).read_text())
    assert record["sha256"] == sha(ckpt_bytes) and record["size"] == len(ckpt_bytes)
    assert cache_files(env) == ckpt_and_record(entry)
    # Cached: the same path again without a request; --force downloads again.
    assert cli("download", "m_ok").stdout.splitlines() == [str(path)]
    assert len(http_server.gets(url_path(entry))) == 1
    assert cli("download", "m_ok", "--force", "-q").stdout.splitlines() == [str(path)]
    assert len(http_server.gets(url_path(entry))) == 2 and path.read_bytes() == ckpt_bytes


def test_download_through_index_option(zoo, http_server, ckpt_bytes, env, monkeypatch):
    entry = zoo.add("m_index", ckpt_bytes)
    monkeypatch.delenv("PSEGZOO_INDEX")  # the entry is known only through --index
    cli("download", "m_index", code=1)
    result = cli("download", "--index", str(zoo.path), "m_index")
    assert result.stdout.strip() == str(env / "checkpoints" / entry.weights.file)
    assert len(http_server.gets(url_path(entry))) == 1


def test_wrong_hash_fails_cleanly_and_leaves_nothing(zoo, http_server, ckpt_bytes, env):
    """As a user sees it: the installed script, one error line naming every URL tried."""
    wrong = "00000000" if not sha(ckpt_bytes).startswith("0") else "ffffffff"
    entry = zoo.add("m_wrong", ckpt_bytes, prefix=wrong)
    with FileServer() as mirror:
        mirror.add(url_path(entry), ckpt_bytes)
        proc = run_script("download", "m_wrong", "--mirror", mirror.base, code=1, timeout=60)
        line = error_line(proc.stderr)
        assert proc.stdout == ""
        mirror_url = mirror.url(url_path(entry))
        assert mirror_url in line and entry.weights.url in line and line.index(mirror_url) < line.index(entry.weights.url)
        assert f"published hash prefix {wrong}" in line and sha(ckpt_bytes) in line
        assert len(mirror.gets(url_path(entry))) == 1  # a complete but wrong file is not retried
    assert len(http_server.gets(url_path(entry))) == 1
    # Nothing that could later pass for a verified file: no final file, no record, no .part.
    assert cache_files(env) == []
    # A second try does not find anything to resume either: it downloads from zero again.
    error_line(cli("download", "m_wrong", code=1).stderr)
    assert [g.header("Range") for g in http_server.gets(url_path(entry))] == [None, None]


def test_mirror_order_then_fallback_to_the_original(zoo, http_server, ckpt_bytes, env, monkeypatch):
    entry = zoo.add("m_mirror", ckpt_bytes)
    path = env / "checkpoints" / entry.weights.file
    with FileServer() as first, FileServer() as second:
        second.add(url_path(entry), ckpt_bytes)  # the first mirror lacks the file: 404
        result = cli("download", "m_mirror", "--mirror", first.base, "--mirror", second.base + "/")
        assert result.stdout.strip() == str(path) and path.read_bytes() == ckpt_bytes
        assert [(r.method, r.path) for r in first.requests] == [("GET", url_path(entry))]
        assert len(second.gets(url_path(entry))) == 1
        assert json.loads((env / "records" / (path.name + ".json")).read_text())["url"] == second.url(url_path(entry))
    assert http_server.requests == []  # the original URL was never contacted

    # Mirrors from the environment: one refuses connections, one answers 500; the original serves.
    cli("cache", "rm", "m_mirror")
    assert not path.exists()
    dead = f"http://127.0.0.1:{free_port()}"
    with FileServer() as broken:
        broken.add(url_path(entry), ckpt_bytes, status=500)
        monkeypatch.setenv("PSEGZOO_MIRROR", f"{dead},{broken.base}")
        result = cli("download", "m_mirror", "--retries", "1")
        assert result.stdout.strip() == str(path) and path.read_bytes() == ckpt_bytes
        assert len(broken.gets(url_path(entry))) == 2  # first attempt and one retry
        assert len(http_server.gets(url_path(entry))) == 1
        # Every URL failing: the one error line names each, in the order tried, with its reason.
        cli("cache", "rm", "m_mirror")
        http_server.add(url_path(entry), ckpt_bytes, status=404)
        line = error_line(cli("download", "m_mirror", "--retries", "0", code=1).stderr)
    assert f"{dead}{url_path(entry)}: connection refused" in line
    assert f"{broken.base}{url_path(entry)}: HTTP 500" in line
    assert f"{entry.weights.url}: HTTP 404" in line
    assert line.index(dead) < line.index(broken.base) < line.index(entry.weights.url)
    assert cache_files(env) == []


def test_offline_with_and_without_the_file_cached(zoo, http_server, ckpt_bytes, env, monkeypatch):
    entry = zoo.add("m_offline", ckpt_bytes)
    line = error_line(cli("download", "m_offline", "--offline", code=1).stderr)
    assert "offline" in line and "psegzoo import" in line and entry.weights.url in line
    monkeypatch.setenv("PSEGZOO_OFFLINE", "1")
    line = error_line(cli("download", "m_offline", code=1).stderr)
    assert "psegzoo import" in line
    assert http_server.requests == [] and cache_files(env) == []
    monkeypatch.delenv("PSEGZOO_OFFLINE")
    path = Path(cli("download", "m_offline").stdout.strip())
    assert path.read_bytes() == ckpt_bytes
    # Cached: offline mode uses it without touching the network.
    assert cli("download", "m_offline", "--offline").stdout.strip() == str(path)
    monkeypatch.setenv("PSEGZOO_OFFLINE", "1")
    assert cli("download", "m_offline").stdout.strip() == str(path)
    assert len(http_server.requests) == 1


def test_retries_and_timeout_options(zoo, http_server, ckpt_bytes, env):
    entry = zoo.add("m_retry", ckpt_bytes, plan=[{"status": 503}, {"status": 503}])
    line = error_line(cli("download", "m_retry", "--retries", "0", code=1).stderr)
    assert "HTTP 503" in line and len(http_server.gets(url_path(entry))) == 1
    cli("download", "m_retry", "--retries", "3")  # one more 503, then the file
    assert len(http_server.gets(url_path(entry))) == 3

    # Silence right after the headers, twice (attempts that make progress are not counted).
    stall = zoo.add("m_stall", ckpt_bytes, plan=[{"stall_after": 0, "stall": 30}] * 2)
    t0 = time.monotonic()
    stderr = cli("download", "m_stall", "--timeout", "0.3", "--retries", "1", code=1).stderr
    line = error_line(stderr, warnings=1)
    assert time.monotonic() - t0 < 5 and "read timeout" in line
    assert len(http_server.gets(url_path(stall))) == 2
    # the retry was shown as it happened: reason, where from, which retry, how long the wait
    (shown,) = [ln for ln in stderr.splitlines() if ln.startswith("warning: ")]
    assert shown == (f"warning: no data for 0.3 s (read timeout) after 0 B of {psegzoo.format_size(len(ckpt_bytes))} "
                     f"from {stall.weights.url}; retry 1 of 1 in 0.0 s")


def test_unknown_name_suggests_and_other_names_still_download(zoo, http_server, ckpt_bytes, env):
    entry = zoo.add("m_known", ckpt_bytes)
    line = error_line(cli("download", "m_knwon", code=1).stderr)
    assert "unknown model 'm_knwon'" in line and "m_known" in line.split("Did you mean", 1)[1]
    assert http_server.requests == [] and cache_files(env) == []
    # Several names: the good one is downloaded and printed, the bad one reported, exit 1.
    result = cli("download", "m_known", "pspnet_r50-d8_512x1024_40k_cityscapez", code=1)
    assert result.stdout.splitlines() == [str(env / "checkpoints" / entry.weights.file)]
    line = error_line(result.stderr)
    assert "pspnet_r50-d8_512x1024_40k_cityscapes" in line.split("Did you mean", 1)[1]


def test_builtin_ssseg_entry_offline_is_a_clean_error(env):
    """The shipped SSSegmentation entry publishes no hash; offline, nothing is fetched."""
    proc = run_script("download", SSSEG_NAME, code=1, extra_env={"PSEGZOO_OFFLINE": "1"}, timeout=60)
    line = error_line(proc.stderr)
    assert SSSEG_NAME in line and "--allow-unverified" in line and "psegzoo import" in line
    proc = run_script("download", SSSEG_NAME, "--allow-unverified", code=1, extra_env={"PSEGZOO_OFFLINE": "1"}, timeout=60)
    line = error_line(proc.stderr)
    url = "https://github.com/SegmentationBLWX/modelstore/releases/download/ssseg_pspnet/pspnet_resnet50os8_voc.pth"
    assert "offline" in line and url in line and "psegzoo import" in line
    assert proc.stdout == "" and cache_files(env) == [] and not (env / "trusted").exists()


# --------------------------------------------------------------------------------------------
# Entries without a published hash: --allow-unverified, trust on first use, --sha256
# --------------------------------------------------------------------------------------------


def test_unpublished_hash_refused_then_trusted_on_first_use(zoo, http_server, ckpt_bytes, other_bytes, env):
    entry = zoo.add("m_tofu", ckpt_bytes, prefix=None)
    line = error_line(run_script("download", "m_tofu", code=1, timeout=60).stderr)
    for hint in ("--allow-unverified", "PSEGZOO_ALLOW_UNVERIFIED", "--sha256"):
        assert hint in line
    assert http_server.requests == [] and cache_files(env) == []

    proc = run_script("download", "m_tofu", "--allow-unverified", timeout=60)
    path = env / "checkpoints" / entry.weights.file
    assert proc.stdout.splitlines() == [str(path)] and path.read_bytes() == ckpt_bytes
    # The trusted SHA-256 is shown once, on one line, in full.
    assert proc.stderr.count(sha(ckpt_bytes)) == 1
    (notice,) = [line for line in proc.stderr.splitlines() if sha(ckpt_bytes) in line]
    assert "m_tofu" in notice and "trust" in notice
    assert (env / "trusted" / "m_tofu.sha256").read_text().split()[0] == sha(ckpt_bytes)

    # From then on no flag is needed, and nothing is said about trust again.
    result = cli("download", "m_tofu")
    assert result.stdout.strip() == str(path) and result.stderr == ""

    # The server's file changes: a new download (even with the flag) must match the trusted hash.
    cli("cache", "rm", "m_tofu")
    http_server.add(url_path(entry), other_bytes)
    line = error_line(cli("download", "m_tofu", "--allow-unverified", code=1).stderr)
    assert "trusted on first use" in line and sha(other_bytes) in line
    assert cache_files(env) == [] and len(http_server.gets(url_path(entry))) == 2
    # Forgetting the trust allows a new first use.
    cli("cache", "rm", "m_tofu", "--forget-trust")
    assert not (env / "trusted" / "m_tofu.sha256").exists()
    result = cli("download", "m_tofu", "--allow-unverified")
    assert path.read_bytes() == other_bytes and sha(other_bytes) in result.stderr


def test_allow_unverified_from_the_environment(zoo, http_server, ckpt_bytes, env, monkeypatch):
    zoo.add("m_tofu_env", ckpt_bytes, prefix=None)
    monkeypatch.setenv("PSEGZOO_ALLOW_UNVERIFIED", "1")
    result = cli("download", "m_tofu_env")
    assert Path(result.stdout.strip()).read_bytes() == ckpt_bytes and sha(ckpt_bytes) in result.stderr


def test_sha256_pin_accepted_and_refused(zoo, http_server, ckpt_bytes, other_bytes, env):
    entry = zoo.add("m_pin", ckpt_bytes, prefix=None)
    line = error_line(cli("download", "m_pin", "--sha256", sha(other_bytes), code=1).stderr)
    assert "pinned hash" in line and sha(ckpt_bytes) in line and entry.weights.url in line
    assert cache_files(env) == [] and not (env / "trusted").exists()
    line = error_line(cli("download", "m_pin", "--sha256", "not-hex", code=1).stderr)
    assert "not a SHA-256" in line
    result = cli("download", "m_pin", "--sha256", sha(ckpt_bytes)[:12].upper())
    assert Path(result.stdout.strip()).read_bytes() == ckpt_bytes
    assert (env / "trusted" / "m_pin.sha256").read_text().split()[0] == sha(ckpt_bytes)
    assert len(http_server.gets(url_path(entry))) == 2
    # A pin that contradicts a published prefix is refused before any request.
    published = zoo.add("m_pin_published", ckpt_bytes)
    wrong = ("1" if sha(ckpt_bytes)[0] != "1" else "2") + sha(ckpt_bytes)[1:]
    line = error_line(cli("download", "m_pin_published", "--sha256", wrong, code=1).stderr)
    assert "contradicts the published hash prefix" in line
    assert http_server.gets(url_path(published)) == []


# --------------------------------------------------------------------------------------------
# import and the cache listing
# --------------------------------------------------------------------------------------------


def test_import_then_cache_lists_it(zoo, http_server, ckpt_bytes, env, tmp_path):
    entry = zoo.add("m_import", ckpt_bytes)
    src = tmp_path / "downloads" / entry.weights.file
    src.parent.mkdir()
    src.write_bytes(ckpt_bytes)
    path = env / "checkpoints" / entry.weights.file
    result = cli("import", str(src))
    assert result.stdout.strip() == f"imported m_import -> {path}"
    assert path.read_bytes() == ckpt_bytes and src.read_bytes() == ckpt_bytes  # copied, not moved

    table = cli("cache").stdout
    (row,) = [line for line in table.splitlines() if "m_import" in line]
    assert sha(ckpt_bytes)[:16] in row
    assert f" {psegzoo.format_size(len(ckpt_bytes))} " in row and "kB" in row  # decimal units, as everywhere
    assert "1 checkpoint(s)" in table

    listing = json.loads(cli("cache", "--json").stdout)
    assert listing["root"] == str(env) and listing["total_bytes"] == len(ckpt_bytes)
    (item,) = listing["checkpoints"]
    assert (item["name"], item["file"], item["size"], item["sha256"]) == (
        "m_import", entry.weights.file, len(ckpt_bytes), sha(ckpt_bytes)
    )
    assert item["path"] == str(path) and item["source"] == "import" and item["converted"] is False

    # The imported file serves offline downloads without any request.
    assert cli("download", "m_import", "--offline").stdout.strip() == str(path)
    # A renamed .pth is recognised by its hash; a file whose name says nothing is imported with --name.
    cli("cache", "rm", "--all")
    renamed = tmp_path / "downloads" / "weights (1).pth"
    renamed.write_bytes(ckpt_bytes)
    assert cli("import", str(renamed)).stdout.strip() == f"imported m_import -> {path}"
    assert cli("import", str(renamed)).stdout.strip() == f"already cached: m_import -> {path}"
    cli("cache", "rm", "--all")
    odd = tmp_path / "downloads" / "weights.dat"
    odd.write_bytes(ckpt_bytes)
    line = error_line(cli("import", str(odd), code=1).stderr)
    assert "--name" in line and "name=" not in line and not path.exists()
    cli("import", str(odd), "--name", "m_import")
    assert path.read_bytes() == ckpt_bytes
    assert http_server.requests == []


def test_import_refused_on_hash_mismatch(zoo, http_server, ckpt_bytes, other_bytes, env, tmp_path):
    entry = zoo.add("m_import_bad", ckpt_bytes)
    src = tmp_path / "m_import_bad.pth"
    src.write_bytes(other_bytes)
    line = error_line(cli("import", str(src), code=1).stderr)
    assert "m_import_bad" in line and sha(other_bytes) in line and entry.weights.file in line
    assert cache_files(env) == [] and src.read_bytes() == other_bytes
    assert json.loads(cli("cache", "--json").stdout)["checkpoints"] == []
    line = error_line(cli("import", str(tmp_path / "missing.pth"), "--name", "m_import_bad", code=1).stderr)
    assert "no such file" in line
    # --sha256 on an entry without a published hash: a wrong pin is refused.
    zoo.add("m_import_pin", ckpt_bytes, prefix=None)
    pinned = tmp_path / "m_import_pin.pth"
    pinned.write_bytes(ckpt_bytes)
    line = error_line(cli("import", str(pinned), "--sha256", sha(other_bytes), code=1).stderr)
    assert "pinned hash" in line and cache_files(env) == []
    cli("import", str(pinned), "--sha256", sha(ckpt_bytes))
    assert (env / "trusted" / "m_import_pin.sha256").read_text().split()[0] == sha(ckpt_bytes)


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def test_verify_ok_then_flipped_byte_reported_and_deleted(zoo, http_server, ckpt_bytes, other_bytes, env):
    a = zoo.add("m_verify_a", ckpt_bytes)
    b = zoo.add("m_verify_b", other_bytes)
    pa = Path(cli("download", "m_verify_a", "-q").stdout.strip())
    cli("download", "m_verify_b", "-q")
    out = cli("verify").stdout.splitlines()
    assert out == [f"ok  m_verify_a  sha256 {sha(ckpt_bytes)}  (prefix-only from {a.weights.url})",
                   f"ok  m_verify_b  sha256 {sha(other_bytes)}  (prefix-only from {b.weights.url})"]

    flip_byte(pa, len(ckpt_bytes) // 2)  # same size: only the full hash sees it
    proc = run_script("verify", "m_verify_a", code=1, timeout=60)
    (line,) = proc.stdout.splitlines()  # one line, not wrapped
    assert line.startswith("corrupt  m_verify_a") and "differs from the recorded" in line and "deleted" in line
    assert sha(ckpt_bytes) in line
    assert proc.stderr == ""  # said once, not again by a log message
    assert cache_files(env) == ckpt_and_record(b)
    assert cli("verify").stdout.splitlines() == [f"ok  m_verify_b  sha256 {sha(other_bytes)}  (prefix-only from "
                                                 f"{b.weights.url})"]
    assert "missing" in cli("verify", "m_verify_a", code=1).stdout
    # The next use downloads it again.
    assert cli("download", "m_verify_a").stdout.strip() == str(pa) and pa.read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(a))) == 2 and len(http_server.gets(url_path(b))) == 1


# --------------------------------------------------------------------------------------------
# cache rm
# --------------------------------------------------------------------------------------------


def test_cache_rm_name_and_all(zoo, ckpt_bytes, other_bytes, env):
    a = zoo.add("m_rm_a", ckpt_bytes)
    zoo.add("m_rm_b", other_bytes, prefix=None)
    pa = Path(cli("download", "m_rm_a").stdout.strip())
    pb = Path(cli("download", "m_rm_b", "--allow-unverified").stdout.strip())
    conv_b = env / "converted" / pb.name.replace(".pth", ".safetensors")
    conv_b.parent.mkdir()
    conv_b.write_bytes(b"x" * 10)
    assert json.loads(cli("cache", "--json").stdout)["total_bytes"] == len(ckpt_bytes) + len(other_bytes) + 10

    removed = cli("cache", "rm", "m_rm_b").stdout.splitlines()
    record_b = env / "records" / (pb.name + ".json")
    assert sorted(removed) == sorted(f"removed {p}" for p in (pb, record_b, conv_b))
    assert cache_files(env) == ckpt_and_record(a)
    assert (env / "trusted" / "m_rm_b.sha256").is_file()  # trust kept without --forget-trust
    assert [c["name"] for c in json.loads(cli("cache", "--json").stdout)["checkpoints"]] == ["m_rm_a"]
    assert cli("cache", "rm", "m_rm_b").stdout.strip() == "nothing to remove"

    usage = cli("cache", "rm", code=2)
    assert "--all" in usage.output and pa.exists()
    error_line(cli("cache", "rm", "no_such_model", code=1).stderr)

    (env / "partial" / (a.weights.file + ".part")).write_bytes(b"partial")
    result = cli("cache", "rm", "--all", "--forget-trust")
    assert f"removed {pa}" in result.stdout.splitlines()
    assert cache_files(env) == [] and not (env / "trusted" / "m_rm_b.sha256").exists()
    assert json.loads(cli("cache", "--json").stdout) == {"root": str(env), "total_bytes": 0, "checkpoints": []}
    assert "0 checkpoint(s)" in cli("cache").stdout


# --------------------------------------------------------------------------------------------
# Failing well, and saying what happens as it happens
# --------------------------------------------------------------------------------------------


def test_every_source_down_is_one_clear_error_within_seconds(zoo, env, ckpt_bytes, tmp_path, monkeypatch):
    """The original host does not resolve, its alternative and a mirror refuse: one line, fast, with the ways in."""
    dead = f"http://127.0.0.1:{free_port()}"
    original = "https://download.psegzoo-test.invalid/mmsegmentation/v0.5/pspnet/x/m_down.pth"
    entry = zoo.add("m_down", ckpt_bytes, url=original, weights={"urls": [f"{dead}/alt/m_down.pth"]})
    monkeypatch.setenv("PSEGZOO_MIRROR", dead)
    monkeypatch.setenv("PSEGZOO_BACKOFF", "5")  # were these retried with backoff, it would show
    t0 = time.monotonic()
    proc = run_script("download", "m_down", code=1, timeout=60)
    wall = time.monotonic() - t0
    line = error_line(proc.stderr)
    assert wall < 8, f"{wall:.1f} s including start-up"
    mirror_url = f"{dead}/mmsegmentation/v0.5/pspnet/x/m_down.pth"  # <mirror>/<path of the original URL>
    del entry
    assert f"{mirror_url}: connection refused" in line and f"{original}: host name not found" in line
    assert f"{dead}/alt/m_down.pth: connection refused" in line
    assert line.index(mirror_url) < line.index(original) < line.index(f"{dead}/alt")
    assert "its original host download.psegzoo-test.invalid is unreachable" in line
    for way in ("psegzoo import FILE|DIR", "--search DIR", "PSEGZOO_SEARCH_PATH", "--mirror URL", "hf://ORG/REPO",
                "psegzoo mirror"):
        assert way in line
    assert "mirrors=" not in line and "search=" not in line  # the command line names its flags
    assert cache_files(env) == []


def test_predict_says_the_weights_are_unreachable(zoo, env, ckpt_bytes, tmp_path):
    from PIL import Image

    original = "https://download.psegzoo-test.invalid/mmsegmentation/v0.5/pspnet/x/m_down2.pth"
    zoo.add("m_down2", ckpt_bytes, url=original)
    image = tmp_path / "street.png"
    Image.new("RGB", (8, 6)).save(image)
    proc = run_script("predict", "--model", "m_down2", image, "-o", tmp_path / "out", code=1, timeout=120)
    line = error_line(proc.stderr)
    assert f"{original}: host name not found" in line and "psegzoo import FILE|DIR" in line and "--mirror URL" in line


def test_retries_are_shown_as_they_happen_and_quiet_hides_them(zoo, http_server, ckpt_bytes, env):
    entry = zoo.add("m_shown", ckpt_bytes, plan=[{"status": 503}, {"status": 503}])
    proc = run_script("download", "m_shown", timeout=60)
    shown = other_lines(proc.stderr)
    assert shown == [f"warning: HTTP 503 Service Unavailable from {entry.weights.url}; retry {n} of 2 in 0.0 s"
                     for n in (1, 2)]  # one record each, printed once, never wrapped
    cli("cache", "rm", "m_shown")
    zoo.server.add(url_path(entry), ckpt_bytes, plan=[{"status": 503}])
    quiet = cli("-q", "download", "m_shown")
    assert quiet.stderr == "" and quiet.stdout.strip().endswith(entry.weights.file)
    cli("cache", "rm", "m_shown")
    verbose = cli("-v", "download", "m_shown")
    assert f"info: got {entry.weights.file} from {entry.weights.url}" in verbose.stderr


def test_bad_settings_are_one_line_errors(zoo, ckpt_bytes, env, monkeypatch):
    zoo.add("m_settings", ckpt_bytes)
    line = error_line(cli("download", "m_settings", "--timeout", "0", code=1).stderr)
    assert line == "error: --timeout S got 0.0: it must be a number from 0.01 to 86400"
    monkeypatch.setenv("PSEGZOO_BACKOFF", "nan")
    line = error_line(cli("download", "m_settings", code=1).stderr)
    assert "PSEGZOO_BACKOFF='nan'" in line and "unset it or fix its value" in line
    monkeypatch.setenv("PSEGZOO_BACKOFF", "0.01")
    home_file = env.parent / "a-file"
    home_file.write_text("x")
    monkeypatch.setenv("PSEGZOO_HOME", str(home_file))
    line = error_line(cli("cache", code=1).stderr)
    assert "is a file, not a folder; point PSEGZOO_HOME at a folder" in line


def test_index_option_is_passed_not_written_to_the_environment(zoo, http_server, ckpt_bytes, env, monkeypatch):
    entry = zoo.add("m_index_env", ckpt_bytes)
    monkeypatch.delenv("PSEGZOO_INDEX")
    cli("download", "--index", str(zoo.path), "m_index_env")
    assert "PSEGZOO_INDEX" not in os.environ
    info = json.loads(cli("info", "--index", str(zoo.path), "m_index_env", "--json").stdout)
    assert info["cached"] and info["cached_sha256"] == sha(ckpt_bytes)  # the full hash, to pin and share
    assert [c["sha256"] for c in json.loads(cli("cache", "--json").stdout)["checkpoints"]] == [sha(ckpt_bytes)]
    assert len(http_server.gets(url_path(entry))) == 1


# --------------------------------------------------------------------------------------------
# Ways in: copies found, import DIR, mirror DIR
# --------------------------------------------------------------------------------------------


def test_download_finds_a_copy_in_a_search_folder(zoo, http_server, ckpt_bytes, other_bytes, env, tmp_path,
                                                   monkeypatch):
    entry = zoo.add("m_found", ckpt_bytes)
    other = zoo.add("m_found_env", other_bytes)
    (tmp_path / "old-runs" / "work_dirs").mkdir(parents=True)
    copy = tmp_path / "old-runs" / "work_dirs" / entry.weights.file
    copy.write_bytes(ckpt_bytes)
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / other.weights.file).write_bytes(other_bytes)
    monkeypatch.setenv("PSEGZOO_SEARCH_PATH", str(tmp_path / "team"))  # --search adds to it
    result = cli("download", "m_found", "m_found_env", "--search", tmp_path / "old-runs", "--offline")
    assert result.stdout.splitlines() == [str(env / "checkpoints" / e.weights.file) for e in (entry, other)]
    assert other_lines(result.stderr)[0] == f"m_found: verified copy found at {copy.resolve().as_uri()}"
    assert http_server.requests == []


def test_import_folder_prints_a_table_and_never_stops(zoo, ckpt_bytes, other_bytes, env, tmp_path):
    good = zoo.add("m_dir_ok", ckpt_bytes)
    bad = zoo.add("m_dir_tampered", other_bytes)
    root = tmp_path / "stash"
    (root / "sub").mkdir(parents=True)
    (root / good.weights.file).write_bytes(ckpt_bytes)
    tampered = bytearray(other_bytes)
    tampered[len(tampered) // 2] ^= 0x01
    (root / "sub" / bad.weights.file).write_bytes(bytes(tampered))
    (root / "README.txt").write_text("notes")
    result = cli("import", root, code=1)  # a refused checkpoint: exit 1, after everything was looked at
    table = _table(result.stdout, "file")
    cells = [re.split(r" {2,}", line.strip()) for line in table]
    assert cells[0] == ["file", "model", "result"]
    rows = {c[0]: c[1:] for c in cells[1:]}
    assert rows[good.weights.file] == ["m_dir_ok", "imported"]
    assert rows[f"sub/{bad.weights.file}"] == ["m_dir_tampered", "hash mismatch"]
    assert rows["README.txt"] == ["-", "not a zoo file"]
    (why,) = other_lines(result.stderr)
    assert why.startswith(f"hash mismatch: sub/{bad.weights.file}: ") and "does not match the published hash prefix" in why
    assert result.stdout.strip().splitlines()[-1] == "1 imported, 1 hash mismatch, 1 not a zoo file"
    assert cache_files(env) == ckpt_and_record(good)
    again = cli("import", root, code=1)
    assert "already cached" in again.stdout and "1 already cached" in again.stdout


def test_mirror_command_and_a_colleagues_download_from_it(zoo, http_server, ckpt_bytes, env, tmp_path, monkeypatch):
    entry = zoo.add("m_share", ckpt_bytes)
    cli("download", "m_share")
    share = tmp_path / "share"
    result = cli("mirror", share)
    target = share / url_path(entry).lstrip("/")
    assert result.stdout.strip() == f"copied m_share -> {target}"  # copied by default: the cache stays the cache's
    assert "1 checkpoint(s) in" in result.stderr and "--mirror" in result.stderr
    assert (share / "SHA256SUMS").read_text() == f"{sha(ckpt_bytes)}  {url_path(entry).lstrip('/')}\n"
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "colleague"))
    got = cli("download", "m_share", "--mirror", share.as_uri(), "--offline")
    assert Path(got.stdout.strip()).read_bytes() == ckpt_bytes and len(http_server.requests) == 1
    line = error_line(cli("mirror", share, "no_such_model", code=1).stderr)
    assert "unknown model 'no_such_model'" in line


# --------------------------------------------------------------------------------------------
# First contact: the advice comes first, a cached file says where it came from, tables fit
# --------------------------------------------------------------------------------------------


def test_when_every_source_is_down_what_to_do_comes_before_the_sources(zoo, http_server, env, ckpt_bytes,
                                                                        monkeypatch):
    """The original answers 404, its fallback and a mirror refuse: the ways in are on the first lines at 80
    columns, the sources tried after them."""
    dead = f"http://127.0.0.1:{free_port()}"
    original = http_server.url("/mmsegmentation/v0.5/pspnet/x/m_all_down.pth")  # nothing served there
    zoo.add("m_all_down", ckpt_bytes, url=original, weights={"urls": [f"{dead}/fallback/m_all_down.pth"]})
    monkeypatch.setenv("PSEGZOO_MIRROR", dead)
    proc = run_script("download", "m_all_down", code=1, timeout=60)
    line = error_line(proc.stderr)
    advice, tried = line.split(" Tried, in order: ")
    for way in ("--mirror URL", "--weights FILE (predict, eval, export)", "psegzoo import FILE|DIR", "--search DIR", "try again later"):
        assert way in advice
    assert original in tried and f"{dead}/fallback/m_all_down.pth" in tried and original not in advice
    rows = [line[i:i + 80] for i in range(0, len(line), 80)]  # as an 80-column terminal shows the line
    first = "".join(rows[:5])
    assert "What to do" in rows[0] or "What to do" in rows[1]
    assert all(way in first for way in ("--mirror URL", "--weights FILE", "psegzoo import"))
    assert "download.openmmlab.com" not in line or "may come back" in line
    for gone in ("no longer resolves", "is gone", "stopped resolving"):
        assert gone not in line


def test_verbose_download_of_a_cached_file_says_it_is_cached_and_where_it_came_from(zoo, http_server, env,
                                                                                     ckpt_bytes):
    entry = zoo.add("m_whence", ckpt_bytes)
    cli("download", "m_whence", "-q")
    proc = run_script("-v", "download", "m_whence")
    path = env / "checkpoints" / entry.weights.file
    assert proc.stdout.splitlines() == [str(path)]
    (said,) = [line for line in proc.stderr.splitlines() if "already in the cache" in line]
    assert f"m_whence is already in the cache: {path}" in said
    assert f"downloaded from {entry.weights.url}" in said and sha(ckpt_bytes) in said
    assert len(http_server.gets(url_path(entry))) == 1  # nothing asked again
    assert "already in the cache" not in run_script("download", "m_whence").stderr  # -v only


def test_verify_on_an_empty_cache_says_there_is_nothing_to_verify(env):
    result = cli("verify")
    assert result.stdout.strip() == f"nothing to verify: the cache ({env}) holds no checkpoint"


def _table(text: str, header_start: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip() or re.match(r"\d+ [a-z]", lines[i]))
    return lines[start:end]


def _split(table: list[str]) -> list[list[str]]:
    """The cells of each line: columns are the runs of positions where some line has a character."""
    width = max(map(len, table))
    used = [any(i < len(line) and line[i] != " " for line in table) for i in range(width)]
    spans, start = [], None
    for i, u in enumerate([*used, False]):
        if u and start is None:
            start = i
        elif not u and start is not None:
            if i < width and any(used[i:i + 2]) and i + 1 < width and used[i + 1]:
                continue  # one space inside a cell ("808.7 kB", "not a zoo file")
            spans.append((start, i))
            start = None
    return [[line[a:b].strip() for a, b in spans] for line in table]


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_cache_table_fits_the_terminal_and_never_cuts_a_value(zoo, http_server, env, ckpt_bytes, other_bytes,
                                                              columns):
    long_name = "deeplabv3_r101-d8_512x512_4x4_160k_coco-stuff164k"  # the longest name in the zoo
    zoo.add(long_name, ckpt_bytes)
    other = zoo.add("m_short", other_bytes)
    cli("download", long_name, "m_short", "-q")
    half = env / "partial" / (other.weights.file + ".part")
    half.write_bytes(other_bytes[: len(other_bytes) // 2])  # an unfinished download beside the complete one
    code, text = run_in_sized_terminal("cache", columns=columns, env=dict(os.environ))
    assert code == 0, text
    table = _table(text, "name")
    assert all(len(line) <= columns for line in table), "\n".join(table)
    headers, *cells = _split(table)
    assert headers[:3] == ["name", "size", "unfinished"]
    rows = {c[0]: dict(zip(headers[1:], c[1:])) for c in cells}
    assert rows[long_name]["size"] == psegzoo.format_size(len(ckpt_bytes)) and rows[long_name]["unfinished"] == ""
    assert rows["m_short"]["size"] == psegzoo.format_size(len(other_bytes))
    assert rows["m_short"]["unfinished"] == psegzoo.format_size(len(other_bytes) // 2)
    title = text.split("\nname")[0]
    for column in ("sha256", "trust", "converted"):
        if column not in headers:  # a column left out is named, with where to see it
            assert column in title and "--json" in title
    if "sha256" in headers:
        assert rows[long_name]["sha256"] == sha(ckpt_bytes)[:16]
    if "trust" in headers:  # a third party's file: only the published hash prefix vouches for it
        assert rows[long_name]["trust"] == rows["m_short"]["trust"] == "prefix-only"
    assert columns > 80 or "sha256" not in headers  # 80 columns leave the hash out, 120 keep it
    assert columns < 120 or "sha256" in headers
    assert columns < 100 or "trust" in headers  # the trust level stays longer than the hash prefix
    assert "…" not in text and "2 checkpoint(s)" in text


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_import_table_fits_the_terminal_and_never_cuts_a_value(zoo, env, ckpt_bytes, other_bytes, tmp_path, columns):
    good = zoo.add("upernet_r101_512x1024_80k_cityscapes_hubtest_long", ckpt_bytes)
    root = tmp_path / "stash"
    deep = root / "runs" / "2026-06-07" / "work_dirs" / "upernet"
    deep.mkdir(parents=True)
    (deep / good.weights.file).write_bytes(ckpt_bytes)
    (root / "notes about the runs of last june.txt").write_text("notes")
    code, text = run_in_sized_terminal("import", root, columns=columns, env=dict(os.environ))
    assert code == 0, text
    table = _table(text, "file")
    assert all(len(line) <= columns for line in table), "\n".join(table)
    headers, *lines = _split(table)
    rows: list[list[str]] = []
    for cells in lines:
        if cells[-1]:  # a row starts where its result is
            rows.append(cells)
        else:  # a folded file name goes on
            rows[-1][0] += cells[0]
    by_file = {r[0]: r[1:] for r in rows}
    assert by_file[f"runs/2026-06-07/work_dirs/upernet/{good.weights.file}"][-1] == "imported"
    assert by_file["notes about the runs of last june.txt"][-1] == "not a zoo file"
    if "model" in headers:
        assert by_file[f"runs/2026-06-07/work_dirs/upernet/{good.weights.file}"][0] == good.name
    else:
        assert "model left out" in text.split("\nfile")[0]
    assert "…" not in text and "1 imported, 1 not a zoo file" in text
