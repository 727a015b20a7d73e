"""The hub against hostile or unlucky input: secrets in URLs, paths that climb out of a folder,
files that change after they were checked, FIFOs, huge sparse files, files no one may delete.

Real files, real HTTP on 127.0.0.1, real CLI processes; the permission cases run as an
unprivileged user in a child process (root ignores permission bits).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psegzoo import hub
from psegzoo.errors import DownloadError, ManifestError
from psegzoo.hub.redact import redact_url
from tests.support.cli import cli, psegzoo_command
from tests.support.http_server import FileServer
from tests.support.hub import URL_DIR, child_env, free_port, opts, sha, url_path

SECRETS = ("SECRET1", "SECRET2", "SECRET3", "SECRET4")
QUERY = "?token=SECRET1&X-Amz-Signature=SECRET2&sig=SECRET3&X-Amz-Credential=SECRET4"


def everything_under(folder: Path) -> str:
    """The names and text of every file under ``folder`` (where a secret could have been stored)."""
    out = []
    for p in sorted(folder.rglob("*")):
        out.append(str(p))
        if p.is_file():
            out.append(p.read_bytes().decode("latin-1"))
    return "\n".join(out)


def served_at(server: FileServer, name: str, data: bytes) -> str:
    """The URL where :class:`Zoo` serves ``name``'s file (to give its entry a URL with a query)."""
    return server.url(f"{URL_DIR}/{name}_20240101_000000-{sha(data)[:8]}.pth")


def assert_no_secret(text: str) -> None:
    for s in SECRETS:
        assert s not in text, s


# --------------------------------------------------------------------------------------------
# Secrets in URLs
# --------------------------------------------------------------------------------------------


def test_redact_url_hides_query_values_and_credentials_and_keeps_names():
    assert redact_url("https://u:pw@h.example:8/a/b.pth" + QUERY + "#frag") == (
        "https://***@h.example:8/a/b.pth?token=***&X-Amz-Signature=***&sig=***&X-Amz-Credential=***#***")
    assert redact_url("https://h.example/a.pth") == "https://h.example/a.pth"
    assert redact_url("u:pw@h.example/x?a=1") == "***@h.example/x?a=***"
    assert redact_url("file:///data/a.pth") == "file:///data/a.pth"


def test_query_secrets_never_reach_errors_warnings_logs_records_or_cache_json(zoo, http_server, ckpt_bytes, other_bytes,
                                                                            hub_env, caplog):
    # One 503 first: the retry warning names the URL.
    entry = zoo.add("m_signed", ckpt_bytes, url=served_at(http_server, "m_signed", ckpt_bytes) + QUERY,
                    plan=[{"status": 503}])
    # A download that breaks off leaves a partial file and its note in the cache.
    broken = zoo.add("m_signed_broken", other_bytes, url=served_at(http_server, "m_signed_broken", other_bytes) + QUERY,
                     etag='"e"', plan=[{"drop_after": 70_000}] * 10)
    missing = zoo.add("m_signed_missing", ckpt_bytes, url=http_server.url("/nothing.pth") + QUERY)
    with caplog.at_level(logging.DEBUG, logger="psegzoo"):
        f = hub.fetch(entry, opts())
        with pytest.raises(DownloadError) as err_missing:
            hub.download(missing, opts())
        with pytest.raises(DownloadError) as err_broken:
            hub.download(broken, opts(retries=0))
    assert http_server.gets(url_path(entry))[-1].path == url_path(entry)  # the server was asked (query stripped by it)
    assert "503" in caplog.text and "retry" in caplog.text
    assert f.url == http_server.url(url_path(entry)) + "?token=***&X-Amz-Signature=***&sig=***&X-Amz-Credential=***"
    assert "/nothing.pth?token=***" in str(err_missing.value)
    assert (hub_env / "partial" / (broken.weights.file + ".part")).is_file()
    for text in (f.url, str(err_missing.value), str(err_broken.value), caplog.text, everything_under(hub_env)):
        assert_no_secret(text)
    listing = cli("cache", "--json").output
    assert_no_secret(listing)
    assert {c["name"]: c["url"] for c in json.loads(listing)["checkpoints"]}["m_signed"] == f.url


def test_hf_endpoint_credentials_are_never_echoed(zoo, ckpt_bytes, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "ftp://alice:SECRET1@hub.example")
    with pytest.raises(DownloadError) as err:
        opts()
    assert_no_secret(str(err.value))
    assert "***@hub.example" in str(err.value)
    entry = zoo.add("m_hf_creds", ckpt_bytes, url=f"http://127.0.0.1:{free_port()}/gone.pth")
    with FileServer() as hf:
        monkeypatch.setenv("HF_ENDPOINT", hf.base.replace("http://", "http://alice:SECRET2@"))
        with pytest.raises(DownloadError) as err:
            hub.download(entry, opts(mirrors=("hf://org/repo",)))
    assert_no_secret(str(err.value))


def test_hf_token_is_never_sent_after_a_redirect(zoo, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_hf_redirect", ckpt_bytes, url=f"http://127.0.0.1:{free_port()}/gone.pth")
    with FileServer() as hf, FileServer() as cdn:
        monkeypatch.setenv("HF_ENDPOINT", hf.base)
        monkeypatch.setenv("HF_TOKEN", "hf_SECRET1")
        resolve = f"/org/repo/resolve/main/{entry.weights.file}"
        # Same host and port, another path: requests alone would keep the header here.
        hf.add(resolve, b"", redirect_to=hf.url("/same-host-blob"))
        hf.add("/same-host-blob", b"", redirect_to=f"http://localhost:{cdn.port}/blob")  # then another host name
        cdn.add("/blob", ckpt_bytes)
        f = hub.fetch(entry, opts(mirrors=("hf://org/repo",)))
        assert f.path.read_bytes() == ckpt_bytes
        assert hf.gets(resolve)[0].header("Authorization") == "Bearer hf_SECRET1"
        assert hf.gets("/same-host-blob")[0].header("Authorization") is None
        assert cdn.gets("/blob")[0].header("Authorization") is None


# --------------------------------------------------------------------------------------------
# psegzoo mirror DIR: every write stays inside DIR; the cache's files are not linked out
# --------------------------------------------------------------------------------------------


def _import(tmp_path: Path, entry, data: bytes) -> Path:
    src = tmp_path / "have" / entry.weights.file
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return hub.import_checkpoint(src, name=entry.name, options=opts()).path


@pytest.mark.parametrize("escape", ["%2e%2e/%2e%2e/%2e%2e/%2e%2e", "%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E", "a/%2e/../../../.."])
def test_mirror_never_writes_outside_its_folder_whatever_the_url_path(zoo, ckpt_bytes, tmp_path, escape):
    entry = zoo.add("m_escape", ckpt_bytes, url=f"http://127.0.0.1:{free_port()}/{escape}/escaped/x.pth")
    _import(tmp_path, entry, ckpt_bytes)
    share = tmp_path / "deep" / "er" / "share"
    share.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*") if "home" not in p.parts)
    (r,) = hub.mirror(share, options=opts())
    assert r.status == "refused" and r.path is None and "outside" in r.detail
    after = sorted(p for p in tmp_path.rglob("*") if "home" not in p.parts)
    assert [p for p in after if p not in before and not p.is_relative_to(share)] == []
    assert not list(tmp_path.rglob("escaped")) and not Path("/escaped").exists()
    proc = subprocess.run([*psegzoo_command(), "mirror", str(share)], env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "refused" in proc.stderr and "Traceback" not in proc.stderr


def test_mirror_never_follows_a_symlink_out_of_its_folder(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_link_out", ckpt_bytes)
    _import(tmp_path, entry, ckpt_bytes)
    share, outside = tmp_path / "share", tmp_path / "outside"
    share.mkdir()
    outside.mkdir()
    (share / url_path(entry).lstrip("/").split("/")[0]).symlink_to(outside, target_is_directory=True)
    (r,) = hub.mirror(share, options=opts())
    assert r.status == "refused" and list(outside.rglob("*")) == []


def test_mirror_copies_by_default_and_links_only_when_asked(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_mirror_copy", ckpt_bytes)
    cached = _import(tmp_path, entry, ckpt_bytes)
    (r,) = hub.mirror(tmp_path / "share", options=opts())
    assert r.status == "copied" and r.path.stat().st_ino != cached.stat().st_ino
    r.path.chmod(0o644)
    r.path.write_bytes(b"changed by someone who can write the mirror folder")
    assert hub.fetch(entry, opts(offline=True)).path.read_bytes() == ckpt_bytes
    out = cli("mirror", tmp_path / "share2").output
    assert "copied m_mirror_copy" in out and (tmp_path / "share2" / url_path(entry).lstrip("/")).stat().st_ino != \
        cached.stat().st_ino
    out = cli("mirror", "--link", tmp_path / "share3").output
    assert "linked m_mirror_copy" in out and (tmp_path / "share3" / url_path(entry).lstrip("/")).stat().st_ino == \
        cached.stat().st_ino


# --------------------------------------------------------------------------------------------
# FIFOs and devices: never opened for reading
# --------------------------------------------------------------------------------------------


def _run_cli(*args: object, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """The console script in a child process: a hang shows as TimeoutExpired, not a stuck test run."""
    return subprocess.run([*psegzoo_command(), *map(str, args)], env=child_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def test_a_fifo_given_as_index_is_refused_at_once(hub_env, tmp_path):
    fifo = tmp_path / "index.json"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    proc = _run_cli("list", "--index", fifo, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - t0 < 30
    (line,) = proc.stderr.strip().splitlines()
    assert "FIFO" in line and str(fifo) in line and "Traceback" not in line
    with pytest.raises(ManifestError, match="FIFO"):
        from psegzoo.manifest import load_manifest

        load_manifest(fifo)


def test_a_fifo_behind_a_file_mirror_is_skipped_and_the_next_source_used(zoo, http_server, ckpt_bytes, tmp_path):
    entry = zoo.add("m_fifo", ckpt_bytes)
    share = tmp_path / "share"
    share.mkdir()
    os.mkfifo(share / entry.weights.file)
    code = ("import sys\nfrom psegzoo import hub\n"
            "f = hub.fetch(sys.argv[1], hub.DownloadOptions(progress=False, mirrors=(sys.argv[2],), deadline=20))\n"
            "print(f.url)\nprint(f.skipped)\n")
    proc = subprocess.run([sys.executable, "-c", code, entry.name, share.as_uri() + "/{file}"], env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    url, skipped = proc.stdout.splitlines()
    assert url == entry.weights.url and "FIFO" in skipped
    assert len(http_server.gets(url_path(entry))) == 1
