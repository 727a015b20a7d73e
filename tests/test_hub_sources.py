"""Where weights come from now that the original host is gone: local copies, mirrors, hf://, a team's
mirror folder, import. Real files, real HTTP on 127.0.0.1, no network beyond it."""
from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from psegzoo import hub
from psegzoo.errors import DownloadError, OfflineError, VerificationError
from psegzoo.hub.sources import hf_url, mirror_url
from psegzoo.hub.sources import url_path as source_path
from psegzoo.manifest import load_manifest
from tests.support.http_server import FileServer
from tests.support.hub import cache_listing, free_port, opts, sha, url_path

ALIYUN = "https://openmmlab.oss-accelerate.aliyuncs.com/"


def tampered(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


# --------------------------------------------------------------------------------------------
# 1. Copies users already have
# --------------------------------------------------------------------------------------------


def test_copies_in_torch_hub_mim_and_search_folders_are_found_offline(zoo, http_server, ckpt_bytes, other_bytes,
                                                                      hub_env, tmp_path, monkeypatch):
    a, b, c = zoo.add("m_torch", ckpt_bytes), zoo.add("m_mim", other_bytes), zoo.add("m_search", ckpt_bytes + b"c")
    torch_home = Path(os.environ["TORCH_HOME"])
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / a.weights.file).write_bytes(ckpt_bytes)
    mim = Path(os.environ["HOME"]) / ".cache" / "mim"
    mim.mkdir(parents=True)
    (mim / b.weights.file).write_bytes(other_bytes)
    deep = tmp_path / "team" / "models" / "2024" / "pspnet"
    deep.mkdir(parents=True)
    (deep / c.weights.file).write_bytes(ckpt_bytes + b"c")
    (tmp_path / "team" / "models" / "loop").symlink_to(tmp_path / "team")  # a folder link loop is not followed
    monkeypatch.setenv("PSEGZOO_SEARCH_PATH", os.pathsep.join([str(tmp_path / "elsewhere"), str(tmp_path / "team")]))
    monkeypatch.setenv("PSEGZOO_OFFLINE", "1")
    found_in = ((a, ckpt_bytes, torch_home / "hub" / "checkpoints"), (b, other_bytes, mim), (c, ckpt_bytes + b"c", deep))
    for entry, data, folder in found_in:
        f = hub.fetch(entry, opts())
        assert f.source == "local" and f.url == (folder / entry.weights.file).resolve().as_uri()
        assert f.path == hub.checkpoint_path(entry) and f.path.read_bytes() == data
        record = json.loads((hub_env / "records" / (entry.weights.file + ".json")).read_text())
        assert record["source"] == "local" and record["sha256"] == sha(data)
    assert http_server.requests == []
    assert (deep / c.weights.file).read_bytes() == ckpt_bytes + b"c"  # copied, never moved


def test_search_folder_given_as_an_option_and_linked(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_link", ckpt_bytes)
    src = tmp_path / "mine" / entry.weights.file
    src.parent.mkdir()
    src.write_bytes(ckpt_bytes)
    f = hub.fetch(entry, opts(search=(tmp_path / "mine",), offline=True, link=True))
    assert f.source == "local" and f.path.stat().st_ino == src.stat().st_ino  # hard-linked, not copied


def test_a_tampered_local_copy_is_refused_and_never_cached(zoo, http_server, ckpt_bytes, hub_env, tmp_path, caplog):
    entry = zoo.add("m_tampered", ckpt_bytes)
    bad = tmp_path / "shelf" / entry.weights.file
    bad.parent.mkdir()
    bad.write_bytes(tampered(ckpt_bytes))
    with caplog.at_level(logging.WARNING, logger="psegzoo.hub"), pytest.raises(OfflineError) as err:
        hub.fetch(entry, opts(search=(bad.parent,), offline=True))
    assert f"{bad}: its SHA-256" in str(err.value) and "does not match the published hash prefix" in str(err.value)
    (line,) = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]  # reported in one line
    assert "not using" in line and "\n" not in line
    assert cache_listing(hub_env) == []
    # online: the copy is still refused, the download is used, and the result says what was skipped
    f = hub.fetch(entry, opts(search=(bad.parent,)))
    assert f.downloaded and f.path.read_bytes() == ckpt_bytes
    assert any(s.startswith(f"{bad}: its SHA-256") for s in f.skipped)
    assert bad.read_bytes() == tampered(ckpt_bytes)  # the user's file is left as it was


# --------------------------------------------------------------------------------------------
# 2. Mirrors in any layout; hf://; the manifest's alternative URLs
# --------------------------------------------------------------------------------------------


def test_mirror_templates(zoo, ckpt_bytes):
    entry = zoo.add("m_tpl", ckpt_bytes)
    path = source_path(entry)
    assert path == url_path(entry).lstrip("/")
    end = "https://huggingface.co"
    assert mirror_url("https://m.example/base/", entry, end) == f"https://m.example/base/{path}"
    assert mirror_url("https://m.example/x/{path}", entry, end) == f"https://m.example/x/{path}"
    assert mirror_url("https://m.example/flat/{file}", entry, end) == f"https://m.example/flat/{entry.weights.file}"
    assert mirror_url("https://m.example/{name}/w.pth", entry, end) == "https://m.example/m_tpl/w.pth"
    assert mirror_url("file:///srv/w/{file}", entry, end) == f"file:///srv/w/{entry.weights.file}"
    assert hf_url("hf://org/repo", "a b.pth", end) == "https://huggingface.co/org/repo/resolve/main/a%20b.pth"
    assert hf_url("hf://org/repo@v1.0/weights/sub", "w.pth", "http://h") == "http://h/org/repo/resolve/v1.0/weights/sub/w.pth"
    assert hf_url("hf://org/repo@refs%2Fpr%2F3", "w.pth", "http://h") == "http://h/org/repo/resolve/refs%2Fpr%2F3/w.pth"
    with pytest.raises(DownloadError, match="hf://ORG/REPO"):
        hf_url("hf://only-org", "w.pth", end)


def test_file_and_name_templates_and_their_order(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_flat", ckpt_bytes)
    with FileServer() as flat, FileServer() as by_name:
        by_name.add(f"/models/{entry.name}.pth", ckpt_bytes)
        flat.add(f"/flat/{entry.weights.file}", b"not it")  # first in order, wrong bytes: refused, next one
        f = hub.fetch(entry, opts(mirrors=(f"{flat.base}/flat/{{file}}", f"{by_name.base}/models/{{name}}.pth")))
        assert f.url == f"{by_name.base}/models/{entry.name}.pth" and f.path.read_bytes() == ckpt_bytes
        assert len(flat.gets(f"/flat/{entry.weights.file}")) == 1
    assert f.skipped and "does not match the published hash prefix" in f.skipped[0]
    assert http_server.requests == []  # the original was not needed


def test_hf_mirror_with_hf_endpoint_and_token_sent_to_that_endpoint_only(zoo, http_server, ckpt_bytes, other_bytes,
                                                                        monkeypatch):
    entry = zoo.add("m_hf", ckpt_bytes)
    with FileServer() as hf, FileServer() as cdn, FileServer() as plain:
        monkeypatch.setenv("HF_ENDPOINT", hf.base)
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        # The Hub answers resolve/ with a redirect to its storage on another host (another port here).
        hf.add(f"/team/weights/resolve/v2/pspnet/{entry.weights.file}", b"", redirect_to=cdn.url("/blob"))
        cdn.add("/blob", ckpt_bytes)
        plain.add(url_path(entry), other_bytes)  # tried first: wrong bytes
        f = hub.fetch(entry, opts(mirrors=(plain.base, "hf://team/weights@v2/pspnet")))
        assert f.path.read_bytes() == ckpt_bytes and f.url.startswith(hf.base)
        (asked,) = hf.gets(f"/team/weights/resolve/v2/pspnet/{entry.weights.file}")
        assert asked.header("Authorization") == "Bearer hf_secret"
        assert cdn.gets("/blob")[0].header("Authorization") is None  # dropped on the redirect to another host
        assert plain.gets(url_path(entry))[0].header("Authorization") is None
    assert http_server.requests == []


def test_hf_401_says_a_token_is_needed(zoo, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_gated", ckpt_bytes, url=f"http://127.0.0.1:{free_port()}/gone.pth")
    with FileServer() as hf:
        monkeypatch.setenv("HF_ENDPOINT", hf.base)
        hf.add(f"/org/gated/resolve/main/{entry.weights.file}", ckpt_bytes, status=401)
        with pytest.raises(DownloadError, match="HTTP 401.*needs HF_TOKEN"):
            hub.download(entry, opts(mirrors=("hf://org/gated",)))


def test_the_manifest_alternative_is_tried_after_the_original(zoo, http_server, ckpt_bytes):
    gone = f"http://127.0.0.1:{free_port()}/x.pth"
    entry = zoo.add("m_alt", ckpt_bytes, url=gone, weights={"urls": [http_server.url("/alt.pth")]})
    http_server.add("/alt.pth", ckpt_bytes)
    assert hub.candidate_urls(entry, opts(mirrors=("http://m.example",))) == [
        f"http://m.example/{source_path(entry)}", entry.weights.url, http_server.url("/alt.pth")]
    f = hub.fetch(entry, opts())
    assert f.url == http_server.url("/alt.pth") and f.skipped == (f"{entry.weights.url}: connection refused",)



def test_builtin_mmseg_entries_ship_the_bucket_fallback():
    """Every mmseg entry lists the object-storage bucket, then the OneDL community mirror, under the same
    path; SSSegmentation's list none."""
    models = load_manifest(extra=[]).models
    mmseg = [e for e in models if e.source == "mmsegmentation"]
    assert len(mmseg) == 111
    for e in mmseg:
        path = urlsplit(e.weights.url).path
        assert e.weights.urls == (ALIYUN.rstrip("/") + path, "https://mmassets.onedl.ai" + path), e.name
    assert all(e.weights.urls == () for e in models if e.source == "sssegmentation")
    raw = json.loads((Path(hub.__file__).parents[1] / "model_index.json").read_text())
    assert [m["weights"] for m in raw["models"]] == [e.weights.to_json() for e in models]  # round trip, raw form


def test_credentials_in_urls_are_never_shown_or_stored(zoo, http_server, ckpt_bytes, hub_env, caplog):
    with_creds = http_server.base.replace("http://", "http://alice:s3cr3t@")
    missing = zoo.add("m_creds_missing", ckpt_bytes, url=f"{with_creds}/nothing.pth")
    with caplog.at_level(logging.DEBUG, logger="psegzoo"), pytest.raises(DownloadError) as err:
        hub.download(missing, opts())
    assert "s3cr3t" not in str(err.value) and f"http://***@127.0.0.1:{http_server.port}/nothing.pth" in str(err.value)
    entry = zoo.add("m_creds", ckpt_bytes)
    with caplog.at_level(logging.DEBUG, logger="psegzoo"):
        f = hub.fetch(entry, opts(mirrors=(with_creds + "/{path}",)))
    assert f.url.startswith("http://***@") and "s3cr3t" not in f.url
    assert "s3cr3t" not in (hub_env / "records" / (entry.weights.file + ".json")).read_text()
    assert "s3cr3t" not in caplog.text
    assert http_server.gets(url_path(entry))[-1].header("Authorization") is not None  # the server did get them
    for bad in ("ftp://alice:s3cr3t@host/x", "alice:s3cr3t@host/x"):  # a mirror refused: its credentials hidden too
        with pytest.raises(DownloadError) as err:
            opts(mirrors=(bad,))
        assert "s3cr3t" not in str(err.value) and "***@host/x" in str(err.value)


# --------------------------------------------------------------------------------------------
# import FILE|DIR
# --------------------------------------------------------------------------------------------


def test_import_accepted_by_file_name_by_hash_and_by_name(zoo, http_server, ckpt_bytes, tmp_path, monkeypatch):
    entry = zoo.add("m_import", ckpt_bytes)
    src = tmp_path / "downloads" / entry.weights.file
    src.parent.mkdir()
    src.write_bytes(ckpt_bytes)
    result = hub.import_checkpoint(src, options=opts())
    assert (result.status, result.name, result.path) == ("imported", entry.name, hub.checkpoint_path(entry))
    assert result.path.read_bytes() == ckpt_bytes and src.read_bytes() == ckpt_bytes  # copied, not moved
    monkeypatch.setenv("PSEGZOO_OFFLINE", "1")
    assert hub.download(entry, opts()) == result.path and http_server.requests == []
    assert hub.import_checkpoint(src, options=opts()).status == "already cached"
    hub.remove(entry, options=opts())
    renamed = tmp_path / "downloads" / "model (1).pth"  # recognised by its hash
    renamed.write_bytes(ckpt_bytes)
    assert hub.import_checkpoint(renamed, options=opts()).name == entry.name
    hub.remove(entry, options=opts())
    odd = tmp_path / "downloads" / "weights.bin.txt"
    odd.write_bytes(ckpt_bytes)
    from psegzoo.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="name="):
        hub.import_checkpoint(odd, options=opts())
    assert hub.import_checkpoint(odd, name="m_import", options=opts()).path.read_bytes() == ckpt_bytes


def test_import_refused_on_hash_mismatch(zoo, ckpt_bytes, other_bytes, tmp_path, hub_env):
    entry = zoo.add("m_import_bad", ckpt_bytes)
    src = tmp_path / f"{entry.name}.pth"
    src.write_bytes(other_bytes)
    with pytest.raises(VerificationError) as err:
        hub.import_checkpoint(src, options=opts())
    assert entry.name in str(err.value) and sha(other_bytes) in str(err.value)
    assert cache_listing(hub_env) == [] and src.read_bytes() == other_bytes


def test_import_folder_reports_every_file(zoo, ckpt_bytes, other_bytes, tmp_path, hub_env):
    good = zoo.add("m_dir_good", ckpt_bytes)
    bad = zoo.add("m_dir_bad", other_bytes)
    tofu = zoo.add("m_dir_tofu", ckpt_bytes + b"t", prefix=None)
    root = tmp_path / "stash"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / good.weights.file).write_bytes(ckpt_bytes)
    (root / "a" / "b" / bad.weights.file).write_bytes(tampered(other_bytes))
    (root / tofu.weights.file).write_bytes(ckpt_bytes + b"t")
    (root / "notes.txt").write_text("hello")
    (root / "random.pth").write_bytes(b"\x80\x02junk")
    (root / "a" / "loop").symlink_to(root)
    results = hub.import_folder(root, opts())
    got = {str(r.source.relative_to(root)): (r.status, r.name) for r in results}
    assert got == {
        f"a/{good.weights.file}": ("imported", "m_dir_good"),
        f"a/b/{bad.weights.file}": ("hash mismatch", "m_dir_bad"),
        tofu.weights.file: ("imported", "m_dir_tofu"),
        "notes.txt": ("not a zoo file", None),
        "random.pth": ("not a zoo file", None),
    }
    assert next(r for r in results if r.name == "m_dir_tofu").newly_trusted
    assert hub.trusted_sha256(tofu) == sha(ckpt_bytes + b"t")
    assert not hub.checkpoint_path(bad).exists()
    again = {r.name: r.status for r in hub.import_folder(root, opts()) if r.name}
    assert again == {"m_dir_good": "already cached", "m_dir_bad": "hash mismatch", "m_dir_tofu": "already cached"}


# --------------------------------------------------------------------------------------------
# 4. Sharing within a team: mirror DIR, served by any static server
# --------------------------------------------------------------------------------------------


class _Static:
    """``python -m http.server`` over a folder, on 127.0.0.1, in a thread."""

    def __init__(self, directory: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_mirror_round_trip_through_a_static_server(zoo, http_server, ckpt_bytes, other_bytes, tmp_path,
                                                   monkeypatch, hub_env):
    a = zoo.add("m_team_a", ckpt_bytes)
    b = zoo.add("m_team_b", other_bytes, prefix=None)
    not_cached = zoo.add("m_team_c", ckpt_bytes + b"c")
    hub.download(a, opts())
    hub.download(b, opts(allow_unverified=True))
    share = tmp_path / "share"
    results = hub.mirror(share, options=opts(), link=True)
    assert sorted((r.name, r.status) for r in results) == [("m_team_a", "linked"), ("m_team_b", "linked")]
    target_a = share / url_path(a).lstrip("/")
    assert target_a.read_bytes() == ckpt_bytes and target_a.stat().st_ino == hub.checkpoint_path(a).stat().st_ino
    sums = (share / "SHA256SUMS").read_text().splitlines()
    expected = {url_path(e).lstrip("/"): sha(d) for e, d in ((a, ckpt_bytes), (b, other_bytes))}
    assert sums == [f"{expected[p]}  {p}" for p in sorted(expected)]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=share, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert [(r.name, r.status) for r in hub.mirror(share, ["m_team_a", "m_team_c"], options=opts())] == [
        ("m_team_a", "already there"), ("m_team_c", "not cached")]
    del not_cached

    # A colleague with an empty cache and no access to the original host.
    requests_before = len(http_server.requests)
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "colleague"))
    static = _Static(share)
    try:
        fa = hub.fetch(a, opts(mirrors=(static.base,)))
        fb = hub.fetch(b, opts(mirrors=(static.base,), sha256=sha(other_bytes)))
    finally:
        static.close()
    assert fa.downloaded and fa.url.startswith(static.base) and fa.path.read_bytes() == ckpt_bytes
    assert fb.path.read_bytes() == other_bytes and fa.path.parent == tmp_path / "colleague" / "checkpoints"
    assert len(http_server.requests) == requests_before  # the original host was never asked


def test_mirror_refuses_a_cached_file_that_no_longer_matches(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_team_bad", ckpt_bytes)
    path = hub.download(entry, opts())
    st = path.stat()
    path.write_bytes(tampered(ckpt_bytes))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    (r,) = hub.mirror(tmp_path / "share", options=opts())
    assert r.status == "corrupt" and "psegzoo verify" in r.detail
    assert not (tmp_path / "share" / url_path(entry).lstrip("/")).exists()
    assert not (tmp_path / "share" / "SHA256SUMS").exists()
