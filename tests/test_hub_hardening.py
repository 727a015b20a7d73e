"""The hub against hostile or unlucky input: secrets in URLs, paths that climb out of a folder,
files that change after they were checked, FIFOs, huge sparse files, files no one may delete.

Real files, real HTTP on 127.0.0.1, real CLI processes; the permission cases run as an
unprivileged user in a child process (root ignores permission bits).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
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


# --------------------------------------------------------------------------------------------
# Files the user may not delete or read: one clean line, as an unprivileged user
# --------------------------------------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def shared(tmp_path):
    """A folder every user can reach (pytest's own temporary folders are private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="psegzoo-shared-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        shutil.rmtree(path)


def _import_rows(stdout: str) -> list[list[str]]:
    """The cells (file, model, result) of each row of the table 'psegzoo import DIR' prints without a width."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["file", "model", "result"])
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or re.fullmatch(r"\d+ [a-z].*", line):  # the counts below the table
            break
        rows.append(re.split(r" {2,}", line.strip()))
    assert rows and all(len(r) == 3 for r in rows), stdout
    return rows


def as_nobody(*args: object, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``psegzoo ARGS`` as the user nobody (permission bits apply to it, not to root)."""
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to run a command as another user"
    full = child_env(**env)
    command = psegzoo_command()
    reach = subprocess.run([*NOBODY, command[0], "--version"], env=full, capture_output=True, text=True, timeout=60)
    assert reach.returncode == 0, (f"the user nobody cannot run {command[0]}: the clone and its venv must sit in "
                                   f"folders others may enter (e.g. chmod 755 on a mktemp -d folder); {reach.stderr}")
    return subprocess.run([*NOBODY, *command, *map(str, args)], env=full, capture_output=True, text=True,
                          timeout=timeout)


def _shared_cache(zoo, shared: Path, monkeypatch, *entries) -> dict[str, str]:
    """A cache in a sticky, world-writable folder whose files belong to root (as in a team's shared
    cache where root downloaded them); the environment for nobody to use it."""
    home = shared / "cache"
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    hub.CacheLayout(home).ensure("checkpoints", "records", "converted", "partial", "locks", "trusted")
    for entry in entries:
        hub.download(entry, opts())
    index = shared / "index.json"
    index.write_bytes(zoo.path.read_bytes())
    index.chmod(0o644)
    for folder in [home, *[p for p in home.rglob("*") if p.is_dir()]]:
        folder.chmod(0o1777)
    for lock in (home / "locks").iterdir():
        lock.chmod(0o666)  # nobody may take the locks; the files themselves stay root's
    return {"PSEGZOO_HOME": str(home), "PSEGZOO_INDEX": str(index), "HOME": str(shared / "nobody-home"),
            "TORCH_HOME": str(shared / "torch")}


def _one_clean_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cache_rm_and_verify_on_files_another_user_owns_are_one_clean_line(zoo, ckpt_bytes, other_bytes, shared,
                                                                          monkeypatch):
    a = zoo.add("m_shared_a", ckpt_bytes)
    b = zoo.add("m_shared_b", other_bytes)
    env = _shared_cache(zoo, shared, monkeypatch, a, b)
    ckpt = hub.checkpoint_path(a, opts())
    proc = as_nobody("cache", "rm", "m_shared_a", env=env)
    assert proc.returncode == 1
    line = _one_clean_line(proc)
    assert "cannot delete" in line and "owned by root" in line and "not permitted" in line
    assert ckpt.read_bytes() == ckpt_bytes
    proc = as_nobody("cache", "rm", "--all", env=env)
    assert proc.returncode == 1 and "cannot delete" in _one_clean_line(proc)
    # verify finds a damaged file it may not delete: says so, on the file's own line
    st = ckpt.stat()
    ckpt.write_bytes(ckpt_bytes[:-1] + bytes([ckpt_bytes[-1] ^ 1]))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = as_nobody("verify", env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    (bad,) = [line for line in proc.stdout.splitlines() if "m_shared_a" in line]
    assert "corrupt" in bad and "not deleted" in bad and "owned by root" in bad
    assert any("ok" in line and "m_shared_b" in line for line in proc.stdout.splitlines())


def test_an_unreadable_file_in_an_imported_folder_is_reported_as_unreadable(zoo, ckpt_bytes, other_bytes, shared,
                                                                           monkeypatch):
    a = zoo.add("m_unreadable", ckpt_bytes)
    b = zoo.add("m_readable", other_bytes)
    env = _shared_cache(zoo, shared, monkeypatch)
    folder = shared / "work_dirs"
    folder.mkdir(mode=0o755)
    for entry, data, mode in ((a, ckpt_bytes, 0o600), (b, other_bytes, 0o644)):
        (folder / entry.weights.file).write_bytes(data)
        (folder / entry.weights.file).chmod(mode)
    proc = as_nobody("import", folder, env={**env, "COLUMNS": ""})  # no width: one line per row
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    rows = {cells[0].split("_2024")[0]: cells for cells in _import_rows(proc.stdout)}
    assert rows["m_unreadable"][1:] == ["m_unreadable", "unreadable"]
    assert rows["m_readable"][1:] == ["m_readable", "imported"] and "mismatch" not in proc.stdout
    assert "Permission denied" in proc.stderr and "hash mismatch" not in proc.stderr


# --------------------------------------------------------------------------------------------
# Files that change after they were checked; sizes before hashing; a stopped lock holder
# --------------------------------------------------------------------------------------------


def _flip_in_place(path: Path) -> None:
    """Change one byte of ``path`` in place and set its modification time back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_a_linked_import_edited_in_place_is_hashed_again_before_use(zoo, http_server, ckpt_bytes, tmp_path):
    entry = zoo.add("m_linked_edit", ckpt_bytes)
    src = tmp_path / "have" / entry.weights.file
    src.parent.mkdir()
    src.write_bytes(ckpt_bytes)
    imported = hub.import_checkpoint(src, options=opts(link=True))
    assert imported.path.stat().st_ino == src.stat().st_ino  # one file, two names
    _flip_in_place(src)  # the user's copy is the cached file
    got = hub.fetch(entry, opts())
    assert got.path.read_bytes() == ckpt_bytes and got.downloaded
    assert len(http_server.gets(url_path(entry))) == 1


def test_a_mirror_linked_out_and_edited_is_hashed_again_before_use(zoo, http_server, ckpt_bytes, tmp_path):
    entry = zoo.add("m_mirror_edit", ckpt_bytes)
    hub.download(entry, opts())
    (r,) = hub.mirror(tmp_path / "share", options=opts(), link=True)
    assert r.status == "linked"
    _flip_in_place(r.path)
    assert hub.fetch(entry, opts()).path.read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 2


def _sparse(path: Path, size: str = "30G") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, str(path)], check=True)
    return path


def test_a_huge_sparse_file_is_refused_by_its_size_before_any_hashing(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_sparse", ckpt_bytes)
    big = _sparse(tmp_path / "have" / entry.weights.file)
    for extra in (["--link"], []):
        proc = _run_cli("import", big, *extra, timeout=25)  # hashing 30 GB would take minutes
        assert proc.returncode == 1
        line = _one_clean_line(proc)
        assert "the file is 32.2 GB, more than the size limit 2.0 GB (PSEGZOO_MAX_SIZE)" in line
        assert "server" not in line
    proc = _run_cli("import", big, timeout=25, PSEGZOO_MAX_SIZE="1000000")
    assert proc.returncode == 1 and "the file is 32.2 GB, more than the size limit 1.0 MB" in _one_clean_line(proc)


def test_import_folder_hashes_only_files_whose_size_fits_an_entry(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_sized", ckpt_bytes, weights={"size": len(ckpt_bytes)})
    folder = tmp_path / "work_dirs"
    for name in ("huge.pth", "huge.pt", "huge.ckpt", "huge.bin"):
        _sparse(folder / name)
    (folder / "renamed.pth").write_bytes(ckpt_bytes)  # found by its hash: its size fits the entry
    proc = _run_cli("import", folder, timeout=30, COLUMNS="")  # no width: one line per row
    assert proc.returncode == 0, proc.stderr
    rows = _import_rows(proc.stdout)
    assert sum(r[1:] == ["-", "not a zoo file"] for r in rows) == 4
    assert ["renamed.pth", entry.name, "imported"] in rows


HOLDER = """
import pathlib, sys, time
from psegzoo.hub import locking
from psegzoo.hub.layout import CacheLayout
with locking.entry_lock(CacheLayout(pathlib.Path(sys.argv[1])), sys.argv[2], timeout=5, what="holding it"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_cache_rm_all_behind_a_stopped_lock_holder_says_who_and_gives_up(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_stopped_holder", ckpt_bytes)
    hub.download(entry, opts())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(hub_env), entry.weights.file], env=child_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        proc = _run_cli("cache", "rm", "--all", timeout=60, PSEGZOO_LOCK_TIMEOUT="3")
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1 and took < 30 and "Traceback" not in proc.stderr
    waiting = [line for line in proc.stderr.splitlines() if "waiting for" in line and "gave up" not in line]
    assert waiting and f"process {holder.pid} on " in waiting[0] and "PSEGZOO_LOCK_TIMEOUT" in waiting[0]
    assert f"gave up after 3 s waiting for process {holder.pid}" in proc.stderr
    assert hub.checkpoint_path(entry, opts()).is_file()


def test_cache_rm_on_an_immutable_file_is_one_clean_line(zoo, ckpt_bytes, shared, monkeypatch):
    """Even root cannot delete an immutable file (chattr +i): no process can."""
    entry = zoo.add("m_immutable", ckpt_bytes)
    env = _shared_cache(zoo, shared, monkeypatch, entry)
    ckpt = hub.checkpoint_path(entry, opts())
    made = subprocess.run(["chattr", "+i", str(ckpt)], capture_output=True, text=True)
    assert made.returncode == 0, f"chattr +i is needed for this test: {made.stderr}"
    proc = _run_cli("cache", "rm", "m_immutable", **env)
    assert proc.returncode == 1
    line = _one_clean_line(proc)
    assert "cannot delete" in line and ckpt.name in line and "not permitted" in line
    assert ckpt.read_bytes() == ckpt_bytes


def test_mirror_into_a_folder_whose_sums_file_is_a_fifo_fails_at_once(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_sums_fifo", ckpt_bytes)
    _import(tmp_path, entry, ckpt_bytes)
    share = tmp_path / "share"
    share.mkdir()
    os.mkfifo(share / "SHA256SUMS")
    proc = _run_cli("mirror", share, timeout=60)
    assert proc.returncode == 1 and "FIFO" in _one_clean_line(proc)


def test_verify_without_hashing_never_blesses_a_file_changed_in_place(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_quick_verify", ckpt_bytes)
    path = hub.download(entry, opts())
    _flip_in_place(path)
    (report,) = hub.verify(entry, options=opts(), full=False)  # sizes only: it cannot tell, and must not vouch
    assert report.status == "ok"  # the size matches; only hashing could tell
    got = hub.fetch(entry, opts())
    assert got.path.read_bytes() == ckpt_bytes and got.downloaded
