"""`psegzoo download / cache / verify / import` as a user runs them, over real HTTP on 127.0.0.1.

Entries come from an extra manifest (PSEGZOO_INDEX or --index) whose weights URLs point at the
loopback server of tests/support/http_server.py. Most cases use click's CliRunner; a few run the
installed ``psegzoo`` console script in a subprocess, where stderr is exactly what a user sees.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from tests.support.cli import cli, run_script
from tests.support.http_server import FileServer
from tests.test_hub import URL_DIR, Zoo, _checkpoint_bytes, sha

SSSEG_NAME = "pspnet_resnet50os8_voc"


@pytest.fixture(scope="module")
def ckpt_bytes() -> bytes:
    return _checkpoint_bytes(10, numel=200_000)  # ~0.8 MB


@pytest.fixture(scope="module")
def other_bytes() -> bytes:
    return _checkpoint_bytes(11, numel=200_000)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache, fast retries, and an 80-column non-terminal output as in a pipe."""
    for name in list(os.environ):
        if name.startswith("PSEGZOO_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    # Recorded so that what `--index` adds to os.environ is undone after the test.
    monkeypatch.setenv("PSEGZOO_INDEX", "")
    monkeypatch.delenv("PSEGZOO_INDEX")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    home = tmp_path / "home"
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    monkeypatch.setenv("PSEGZOO_BACKOFF", "0.01")
    monkeypatch.setenv("PSEGZOO_RETRIES", "2")
    monkeypatch.setenv("PSEGZOO_TIMEOUT", "5")
    monkeypatch.setenv("PSEGZOO_CONNECT_TIMEOUT", "2")
    return home


@pytest.fixture
def zoo(tmp_path, monkeypatch, env, http_server):
    return Zoo(tmp_path, monkeypatch, http_server)


def error_line(text: str) -> str:
    """The one line of ``text`` that carries the error; the message must not be wrapped."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(lines) == 1, text
    return errors[0]


def url_path(entry) -> str:
    return f"{URL_DIR}/{entry.weights.file}"


def cache_files(home: Path) -> list[str]:
    d = home / "checkpoints"
    return sorted(os.listdir(d)) if d.is_dir() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["sha256"] == sha(ckpt_bytes) and record["size"] == len(ckpt_bytes)
    assert cache_files(env) == sorted([path.name, path.name + ".json"])
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
        assert json.loads(path.with_name(path.name + ".json").read_text())["url"] == second.url(url_path(entry))
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
    line = error_line(cli("download", "m_stall", "--timeout", "0.3", "--retries", "1", code=1).stderr)
    assert time.monotonic() - t0 < 5 and "read timeout" in line
    assert len(http_server.gets(url_path(stall))) == 2


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
    assert entry.weights.file in row and sha(ckpt_bytes)[:16] in row
    assert f"{len(ckpt_bytes) / 1000:.1f} kB" in row  # decimal units (psegzoo.format_size)
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
    # A file with another name is imported with --name.
    cli("cache", "rm", "--all")
    odd = tmp_path / "downloads" / "weights (1).pth"
    odd.write_bytes(ckpt_bytes)
    line = error_line(cli("import", str(odd), code=1).stderr)
    assert "--name" in line and not path.exists()
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
    pb = Path(cli("download", "m_verify_b", "-q").stdout.strip())
    pa.with_name(pa.name[: -len(".pth")] + ".safetensors").write_bytes(b"converted")
    out = cli("verify").stdout.splitlines()
    assert out == [f"ok  m_verify_a  sha256 {sha(ckpt_bytes)}", f"ok  m_verify_b  sha256 {sha(other_bytes)}"]

    flip_byte(pa, len(ckpt_bytes) // 2)  # same size: only the full hash sees it
    proc = run_script("verify", "m_verify_a", code=1, timeout=60)
    (line,) = proc.stdout.splitlines()  # one line, not wrapped
    assert line.startswith("corrupt  m_verify_a") and "differs from the recorded" in line and "deleted" in line
    assert sha(ckpt_bytes) in line
    assert proc.stderr == ""  # said once, not again by a log message
    assert cache_files(env) == sorted([pb.name, pb.name + ".json"])
    assert cli("verify").stdout.splitlines() == [f"ok  m_verify_b  sha256 {sha(other_bytes)}"]
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
    conv_b = pb.with_name(pb.name[: -len(".pth")] + ".safetensors")
    conv_b.write_bytes(b"x" * 10)
    assert json.loads(cli("cache", "--json").stdout)["total_bytes"] == len(ckpt_bytes) + len(other_bytes) + 10

    removed = cli("cache", "rm", "m_rm_b").stdout.splitlines()
    assert sorted(removed) == sorted(f"removed {p}" for p in (pb, pb.with_name(pb.name + ".json"), conv_b))
    assert cache_files(env) == sorted([pa.name, pa.name + ".json"])
    assert (env / "trusted" / "m_rm_b.sha256").is_file()  # trust kept without --forget-trust
    assert [c["name"] for c in json.loads(cli("cache", "--json").stdout)["checkpoints"]] == ["m_rm_a"]
    assert cli("cache", "rm", "m_rm_b").stdout.strip() == "nothing to remove"

    usage = cli("cache", "rm", code=2)
    assert "--all" in usage.output and pa.exists()
    error_line(cli("cache", "rm", "no_such_model", code=1).stderr)

    pa.with_name(a.weights.file + ".part").write_bytes(b"partial")
    result = cli("cache", "rm", "--all", "--forget-trust")
    assert f"removed {pa}" in result.stdout.splitlines()
    assert cache_files(env) == [] and not (env / "trusted" / "m_rm_b.sha256").exists()
    assert json.loads(cli("cache", "--json").stdout) == {"root": str(env), "total_bytes": 0, "checkpoints": []}
    assert "0 checkpoint(s)" in cli("cache").stdout
