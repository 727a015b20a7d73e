"""The cache: records, modes, locks between processes, verify, remove, temporary files, settings.

Everything over real files and real HTTP on 127.0.0.1 (tests/support/hub.py).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import numpy as np
import pytest

import psegzoo
from psegzoo import files, hub
from psegzoo.errors import (
    CacheError,
    DownloadError,
    ManifestError,
    OfflineError,
    UnverifiedWeightsError,
    VerificationError,
)
from psegzoo.hub import transfer
from psegzoo.manifest import load_manifest
from tests.support.hub import (
    cache_listing,
    child_env,
    opts,
    run_python,
    sha,
    url_path,
)

CHILD = """
import sys, time
from psegzoo import hub
started = time.time()
f = hub.fetch(sys.argv[1], hub.DownloadOptions(progress=False))
print(f.sha256, f.downloaded, started)
"""


def record_of(home: Path, entry) -> dict:
    return json.loads((home / "records" / (entry.weights.file + ".json")).read_text())


# --------------------------------------------------------------------------------------------
# The cached file and its record
# --------------------------------------------------------------------------------------------


def test_truncated_cached_file_is_detected_and_downloaded_again(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_cached_trunc", ckpt_bytes)
    path = hub.download(entry, opts())
    with open(path, "r+b") as f:
        f.truncate(len(ckpt_bytes) - 10)
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 2


def test_file_changed_in_place_is_hashed_again(zoo, http_server, ckpt_bytes, caplog):
    """Same size, new bytes: the record no longer describes the file (mtime), so it is hashed and replaced."""
    entry = zoo.add("m_in_place", ckpt_bytes)
    path = hub.download(entry, opts())
    data = bytearray(ckpt_bytes)
    data[1000] ^= 0xFF
    time.sleep(0.01)
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="psegzoo.hub"):
        assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert "differs from its record" in caplog.text and len(http_server.gets(url_path(entry))) == 2


def test_missing_record_with_bad_file_is_replaced(zoo, http_server, ckpt_bytes, other_bytes, hub_env):
    entry = zoo.add("m_no_record", ckpt_bytes)
    path = hub.download(entry, opts())
    (hub_env / "records" / (entry.weights.file + ".json")).unlink()
    path.write_bytes(other_bytes)
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 2


def test_the_record_is_written_before_the_file_is_renamed_into_place(zoo, ckpt_bytes, hub_env, monkeypatch):
    """A reader never finds a new checkpoint without the record that describes that very file."""
    entry = zoo.add("m_record_first", ckpt_bytes)
    record = hub_env / "records" / (entry.weights.file + ".json")
    real_replace = files.os.replace
    at_rename = []

    def watching(src, dst):
        if Path(dst) == hub.checkpoint_path(entry):
            rec = json.loads(record.read_text()) if record.exists() else None
            at_rename.append(rec is not None and rec["inode"] == os.stat(src).st_ino and rec["sha256"] == sha(ckpt_bytes))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", watching)
    hub.download(entry, opts())
    assert at_rename == [True]


def test_offline_uses_cache_and_rebuilds_a_missing_record(zoo, http_server, ckpt_bytes, hub_env, monkeypatch):
    entry = zoo.add("m_offline", ckpt_bytes)
    path = hub.download(entry, opts())
    monkeypatch.setenv("PSEGZOO_OFFLINE", "1")
    (hub_env / "records" / (entry.weights.file + ".json")).unlink()
    assert hub.download(entry, opts()) == path
    assert record_of(hub_env, entry)["sha256"] == sha(ckpt_bytes) and record_of(hub_env, entry)["source"] == "cache"
    assert len(http_server.gets(url_path(entry))) == 1


def test_offline_without_cache_says_how_to_import(zoo, http_server, ckpt_bytes, monkeypatch):
    entry = zoo.add("m_offline_missing", ckpt_bytes)
    monkeypatch.setenv("PSEGZOO_OFFLINE", "yes")
    with pytest.raises(OfflineError) as err:
        hub.download(entry, opts(mirrors=(http_server.base,)))
    assert "psegzoo import" in str(err.value) and entry.weights.url in str(err.value)
    assert http_server.requests == []
    assert hub.download(entry, opts(offline=False)).read_bytes() == ckpt_bytes  # the argument wins


def test_file_modes_follow_the_umask_everywhere(zoo, ckpt_bytes, hub_env, tmp_path):
    """0666 & ~umask for every file psegzoo creates: checkpoint, record, trust, converted, outputs, eval state."""
    from psegzoo import evaluation, outputs

    entry = zoo.add("m_perm", ckpt_bytes, prefix=None)
    old = os.umask(0o022)
    try:
        path = hub.fetch(entry, opts(allow_unverified=True)).path
        conv = hub.store_converted(entry, sha(ckpt_bytes), _fake_converted(entry, sha(ckpt_bytes)), opts())
        made = [path, hub_env / "records" / (entry.weights.file + ".json"), hub_env / "trusted" / "m_perm.sha256", conv]
        made.append(outputs.save_json({"a": 1}, tmp_path / "out" / "x.json"))
        made.append(files.write_atomic(tmp_path / "plain.txt", "x"))
        state = evaluation.WorkState.open(tmp_path / "work", "m_perm", "val", {"k": 1}, 3, resume=False)
        state.save("0" * 64, evaluation.Counts.from_array(np.ones((4, 3), np.int64)))
        made.extend([state.counts_dir / ("0" * 64 + ".npy"), state.record, state.save_result({"a": 1})])
        assert not [p for p in state.folder.rglob("*") if p.name.endswith(".tmp")]
        assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {p.name: "0o644" for p in made}
        os.umask(0o027)
        hub.remove(entry, options=opts())
        src = tmp_path / "src.pth"
        src.write_bytes(ckpt_bytes)
        hub.import_checkpoint(src, name=entry.name, options=opts())
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_local_copy_keeps_at_most_the_permissions_of_its_source(zoo, ckpt_bytes, tmp_path):
    entry = zoo.add("m_private", ckpt_bytes, prefix=None)
    secret = tmp_path / "private" / entry.weights.file
    secret.parent.mkdir()
    secret.write_bytes(ckpt_bytes)
    secret.chmod(0o600)
    mirror = secret.parent.as_uri() + "/{file}"
    f = hub.fetch(entry, opts(allow_unverified=True, mirrors=(mirror,), offline=True))
    assert f.url == secret.as_uri() and f.newly_trusted  # says what was copied from where
    assert stat.S_IMODE(f.path.stat().st_mode) == 0o600  # never more readable than the source


def test_full_disk_is_a_clear_error_leaving_nothing(zoo, http_server, ckpt_bytes, monkeypatch, hub_env):
    entry = zoo.add("m_full", ckpt_bytes)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(transfer.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CacheError, match="not enough disk space") as err:
        hub.download(entry, opts())
    assert "PSEGZOO_HOME" in str(err.value) and f"{psegzoo.format_size(len(ckpt_bytes))} needed, 1.0 kB free" in str(err.value)
    assert cache_listing(hub_env) == []
    assert len(http_server.gets(url_path(entry))) == 1  # not retried, no other URL tried


def test_no_name_can_leave_the_cache(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_escape", ckpt_bytes)
    for bad in ("../evil.pth", "/tmp/evil.pth", ".hidden.pth", "a/b.pth"):
        evil = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, file=bad))
        with pytest.raises(CacheError, match="not a plain file name"):
            hub.download(evil, opts())
    bad_name = dataclasses.replace(entry, name="../x", weights=dataclasses.replace(entry.weights, sha256_prefix=None))
    with pytest.raises(CacheError):
        hub.download(bad_name, opts(allow_unverified=True))
    assert not (hub_env.parent / "evil.pth").exists() and not (hub_env / "evil.pth").exists()


# --------------------------------------------------------------------------------------------
# Keeping what is verified until its replacement is
# --------------------------------------------------------------------------------------------


def test_force_keeps_the_verified_copy_until_the_new_one_verifies(zoo, http_server, ckpt_bytes, other_bytes):
    entry = zoo.add("m_force", ckpt_bytes)
    path = hub.download(entry, opts())
    inode = path.stat().st_ino
    zoo.server.add(url_path(entry), other_bytes)  # the host now serves a wrong file
    with pytest.raises(DownloadError, match="does not match"):
        hub.download(entry, opts(force=True))
    assert path.read_bytes() == ckpt_bytes and path.stat().st_ino == inode
    assert hub.fetch(entry, opts()).source == "cache"  # still the verified copy
    zoo.server.add(url_path(entry), ckpt_bytes)
    f = hub.fetch(entry, opts(force=True))
    assert f.downloaded and len(http_server.gets(url_path(entry))) == 3


def test_a_mistyped_pin_never_deletes_a_good_trusted_copy(zoo, http_server, ckpt_bytes, other_bytes):
    entry = zoo.add("m_pin_keep", ckpt_bytes, prefix=None)
    path = hub.fetch(entry, opts(allow_unverified=True)).path
    typo = sha(ckpt_bytes)[:-1] + ("0" if sha(ckpt_bytes)[-1] != "0" else "1")
    gets = len(http_server.requests)
    with pytest.raises(VerificationError) as err:  # the recorded hash wins: refused before anything is touched
        hub.download(entry, opts(sha256=typo))
    assert f"pinned SHA-256 {typo} contradicts the hash trusted on first use" in str(err.value)
    assert "--forget-trust" in str(err.value)
    assert len(http_server.requests) == gets
    assert path.read_bytes() == ckpt_bytes and hub.trusted_sha256(entry) == sha(ckpt_bytes)
    assert hub.download(entry, opts()) == path


def test_force_while_offline_keeps_the_cached_file(zoo, ckpt_bytes):
    entry = zoo.add("m_force_offline", ckpt_bytes)
    path = hub.download(entry, opts())
    with pytest.raises(OfflineError):
        hub.download(entry, opts(offline=True, force=True))
    assert path.read_bytes() == ckpt_bytes


# --------------------------------------------------------------------------------------------
# Trust on first use and pinned hashes
# --------------------------------------------------------------------------------------------


def test_unpublished_hash_is_refused_by_default(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_tofu_refused", ckpt_bytes, prefix=None)
    with pytest.raises(UnverifiedWeightsError) as err:
        hub.download(entry, opts())
    msg = str(err.value)
    for hint in ("PSEGZOO_ALLOW_UNVERIFIED=1", "allow_unverified=True", "sha256=HEX", "psegzoo import"):
        assert hint in msg
    assert "--allow-unverified" in err.value.cli_message() and "--allow-unverified" not in msg
    assert http_server.requests == [] and hub.trusted_sha256(entry) is None


def test_trust_on_first_use_then_verified_then_tamper_refused(zoo, http_server, ckpt_bytes, other_bytes, hub_env):
    entry = zoo.add("m_tofu", ckpt_bytes, prefix=None)
    first = hub.fetch(entry, opts(allow_unverified=True))
    assert first.newly_trusted and first.sha256 == sha(ckpt_bytes)  # the return value says so, with the hash
    assert (hub_env / "trusted" / "m_tofu.sha256").read_text().split()[0] == sha(ckpt_bytes)
    later = hub.fetch(entry, opts())
    assert not later.newly_trusted and "trusted on first use" in later.verified_by
    (hub_env / "records" / (entry.weights.file + ".json")).unlink()
    first.path.write_bytes(other_bytes)
    http_server.add(url_path(entry), other_bytes)
    with pytest.raises(DownloadError, match="hash trusted on first use"):
        hub.download(entry, opts(allow_unverified=True))
    assert not first.path.exists()
    hub.remove(entry, options=opts())
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)
    hub.remove(entry, options=opts(), forget_trust=True)
    assert hub.trusted_sha256(entry) is None


def test_pinned_sha256(zoo, http_server, ckpt_bytes, other_bytes):
    entry = zoo.add("m_pin", ckpt_bytes, prefix=None)
    with pytest.raises(DownloadError, match="pinned hash"):
        hub.download(entry, opts(sha256=sha(other_bytes)))
    assert not hub.checkpoint_path(entry).exists()
    f = hub.fetch(entry, opts(sha256=sha(ckpt_bytes).upper()))
    assert f.downloaded and "pinned hash" in f.verified_by
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)
    for bad in ("xyz", "abc", "0" * 65):
        with pytest.raises(VerificationError, match="not a SHA-256"):
            hub.download(entry, opts(sha256=bad))
    published = zoo.add("m_pin_published", ckpt_bytes)
    wrong = ("1" if sha(ckpt_bytes)[0] != "1" else "2") + sha(ckpt_bytes)[1:]
    with pytest.raises(VerificationError, match="contradicts the published hash prefix"):
        hub.download(published, opts(sha256=wrong))
    assert http_server.gets(url_path(published)) == []


def test_first_use_never_trusts_an_html_page(zoo, ckpt_bytes):
    entry = zoo.add("m_tofu_html", ckpt_bytes, prefix=None, html=True)
    with pytest.raises(DownloadError, match="HTML page"):
        hub.download(entry, opts(allow_unverified=True))
    assert hub.trusted_sha256(entry) is None and not hub.checkpoint_path(entry).exists()


# --------------------------------------------------------------------------------------------
# verify, cached, remove, temporary files
# --------------------------------------------------------------------------------------------


def test_verify_detects_flipped_byte_and_truncation(zoo, ckpt_bytes, hub_env):
    a = zoo.add("m_verify_a", ckpt_bytes)
    b = zoo.add("m_verify_b", ckpt_bytes[:-1] + b"\x00")
    pa, pb = hub.download(a, opts()), hub.download(b, opts())
    assert [r.status for r in hub.verify(options=opts())] == ["ok", "ok"]
    data = bytearray(pa.read_bytes())
    data[100] ^= 0xFF
    st = pa.stat()
    pa.write_bytes(bytes(data))
    os.utime(pa, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time: only the full hash can see it
    assert hub.verify(a, options=opts(), full=False)[0].ok
    (res,) = hub.verify(a, options=opts())
    assert res.status == "corrupt" and "differs from the recorded" in res.problem
    assert not pa.exists() and pa in res.removed
    with open(pb, "r+b") as f:
        f.truncate(10)
    (res,) = hub.verify("m_verify_b", options=opts(), full=False)
    assert res.status == "corrupt" and "size is 10 bytes" in res.problem and not pb.exists()
    assert hub.verify(a, options=opts())[0].status == "missing"


def test_cached_listing_counts_everything_and_remove_cleans_it(zoo, ckpt_bytes, other_bytes, hub_env):
    a = zoo.add("m_list_a", ckpt_bytes)
    b = zoo.add("m_list_b", other_bytes)
    hub.download(a, opts())
    hub.download(b, opts())
    conv = hub.store_converted(b, sha(other_bytes), _fake_converted(b, sha(other_bytes)), opts())
    # a conversion killed with -9 left a large temporary file: it belongs to b, is counted and removed with it
    orphan = files.temp_sibling(conv, "convert")
    orphan.write_bytes(b"x" * 1000)
    listed = hub.cached(opts())
    assert [(c.name, c.file, c.size, c.sha256, c.converted) for c in listed] == [
        ("m_list_a", a.weights.file, len(ckpt_bytes), sha(ckpt_bytes), False),
        ("m_list_b", b.weights.file, len(other_bytes), sha(other_bytes), True),
    ]
    assert listed[1].partial_size == 1000 and listed[1].converted_size == conv.stat().st_size
    assert listed[1].total_size == len(other_bytes) + conv.stat().st_size + 1000
    removed = hub.remove("m_list_b", options=opts())
    assert set(removed) == {hub.checkpoint_path(b), conv, orphan, hub_env / "records" / (b.weights.file + ".json")}
    assert [c.name for c in hub.cached(opts())] == ["m_list_a"]
    (hub_env / "partial" / (a.weights.file + ".part")).write_bytes(b"partial")
    hub.remove(options=opts(), all=True)
    assert hub.cached(opts()) == [] and cache_listing(hub_env) == []
    with pytest.raises(CacheError):
        hub.remove(options=opts())


def test_remove_all_leaves_the_temporary_files_of_a_live_process(zoo, ckpt_bytes, hub_env, tmp_path):
    entry = zoo.add("m_busy", ckpt_bytes)
    hub.download(entry, opts())
    # a stray temporary file of a process that is still running (no entry owns its name)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = hub_env / "converted" / f".someone-else.safetensors.convert-{sleeper.pid}-0123abcd.tmp"
        live.parent.mkdir(exist_ok=True)
        live.write_bytes(b"in progress")
        dead = hub_env / "converted" / ".gone.safetensors.convert-999999999-0123abcd.tmp"
        dead.write_bytes(b"orphan")
        hub.remove(options=opts(), all=True)
        assert live.exists() and not dead.exists() and not hub.checkpoint_path(entry).exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# --------------------------------------------------------------------------------------------
# Converted weights in the cache (the hub's side; the converter is tested in test_hub_converted.py)
# --------------------------------------------------------------------------------------------


def _fake_converted(entry, source_sha: str, payload: bytes = b"\0" * 16):
    """A writer of a minimal safetensors file stamped like psegzoo's converter does."""
    header = {"w": {"dtype": "F32", "shape": [len(payload) // 4], "data_offsets": [0, len(payload)]},
              "__metadata__": {"source_sha256": source_sha, "name": entry.name}}
    blob = json.dumps(header).encode()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob + payload)

    return write


def test_converted_weights_are_recorded_and_verified(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_conv", ckpt_bytes)
    src = hub.fetch(entry, opts()).sha256
    path = hub.store_converted(entry, src, _fake_converted(entry, src), opts())
    rec = record_of(hub_env, entry)["converted"]
    assert rec["sha256"] == sha(path.read_bytes()) and rec["source_sha256"] == src
    assert hub.read_converted(entry, src, opts()) == path.read_bytes()
    assert hub.converted_file(entry, opts()) == path
    assert hub.header_metadata(path) == {"source_sha256": src, "name": "m_conv"}
    # flipped bits in the tensor data (the header still looks right): refused and removed
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    assert hub.read_converted(entry, src, opts()) is None and not path.exists()
    assert record_of(hub_env, entry)["converted"] is None
    # made from another checkpoint: stale, decided from the header alone
    hub.store_converted(entry, src, _fake_converted(entry, src), opts())
    assert hub.read_converted(entry, "0" * 64, opts()) is None and path.exists()
    # verify re-hashes converted weights too
    path.write_bytes(path.read_bytes()[:-1] + b"\x07")
    (res,) = hub.verify(entry, options=opts())
    assert res.status == "ok" and res.converted_status == "corrupt" and not res.ok and not path.exists()


def test_writing_converted_weights_fails_cleanly(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_conv_fail", ckpt_bytes)
    src = hub.fetch(entry, opts()).sha256
    target = hub.converted_path(entry, opts())

    def disk_full(tmp: Path) -> None:
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(CacheError, match="No space left on device"):
        hub.store_converted(entry, src, disk_full, opts())
    target.mkdir(parents=True)  # a folder in the way
    with pytest.raises(CacheError, match="cannot write the converted weights"):
        hub.store_converted(entry, src, _fake_converted(entry, src), opts())
    target.rmdir()
    assert list((hub_env / "converted").iterdir()) == []  # no temporary file left behind


# --------------------------------------------------------------------------------------------
# Locks between processes and threads
# --------------------------------------------------------------------------------------------


def test_eight_processes_download_one_verified_file(zoo, http_server, ckpt_bytes, hub_env):
    entry = zoo.add("m_concurrent", ckpt_bytes, plan=[{"throttle": 0.1}])  # ~3 s: the processes overlap
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, entry.name], env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    lines = [o[0].split() for o in outs]
    assert {line[0] for line in lines} == {sha(ckpt_bytes)}
    assert sum(line[1] == "True" for line in lines) == 1  # exactly one process downloaded
    assert len(http_server.gets(url_path(entry))) == 1
    path = hub.checkpoint_path(entry)
    assert path.read_bytes() == ckpt_bytes
    assert cache_listing(hub_env) == [f"checkpoints/{entry.weights.file}", f"records/{entry.weights.file}.json"]
    assert sum(float(line[2]) < path.stat().st_mtime for line in lines) >= 4  # they waited on the lock


def test_threads_in_one_process_share_one_download(zoo, http_server, ckpt_bytes):
    from concurrent.futures import ThreadPoolExecutor

    entry = zoo.add("m_threads", ckpt_bytes, plan=[{"throttle": 0.01}])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: hub.fetch(entry, opts()), range(4)))
    assert {r.sha256 for r in results} == {sha(ckpt_bytes)} and sum(r.downloaded for r in results) == 1
    assert len(http_server.gets(url_path(entry))) == 1


def test_killed_lock_holder_does_not_block_and_its_part_is_resumed(zoo, http_server, ckpt_bytes, hub_env):
    entry = zoo.add("m_killed", ckpt_bytes, etag='"k"', plan=[{"throttle": 0.2}])
    part = hub_env / "partial" / (entry.weights.file + ".part")
    child = subprocess.Popen([sys.executable, "-c", CHILD, entry.name], env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size >= 2 * 65536):
            assert child.poll() is None and time.monotonic() < deadline, "the child never started downloading"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    got = part.stat().st_size
    t0 = time.monotonic()
    assert hub.download(entry, opts(lock_timeout=10)).read_bytes() == ckpt_bytes
    assert time.monotonic() - t0 < 5
    last = http_server.gets(url_path(entry))[-1]
    assert last.header("Range") == f"bytes={got}-" and last.header("If-Range") == '"k"'


HOLDER = """
import pathlib, sys, time
from psegzoo.hub import locking
from psegzoo.hub.layout import CacheLayout
with locking.entry_lock(CacheLayout(pathlib.Path(sys.argv[1])), sys.argv[2], timeout=5, what="holding it"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_held_without_progress_times_out_naming_the_holder(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_locked", ckpt_bytes)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(hub_env), entry.weights.file], env=child_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(CacheError, match="PSEGZOO_LOCK_TIMEOUT") as err:
            hub.download(entry, opts(lock_timeout=0.5))
        assert 0.4 < time.monotonic() - t0 < 3
        assert f"process {holder.pid} on " in str(err.value) and "holding it since" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes


def test_a_waiter_keeps_waiting_while_the_holder_makes_progress(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_progress", ckpt_bytes)
    layout = hub.CacheLayout(hub_env)
    layout.ensure("locks", "partial")
    part = layout.part(entry.weights.file)
    done = threading.Event()

    def holder() -> None:
        from psegzoo.hub.locking import entry_lock

        with entry_lock(layout, entry.weights.file, timeout=5, what="growing a part"):
            for _ in range(15):  # 1.5 s of growth: longer than the waiter's 0.5 s without progress
                with open(part, "ab") as f:
                    f.write(b"x" * 1000)
                time.sleep(0.1)
            part.unlink()
        done.set()

    t = threading.Thread(target=holder)
    t.start()
    time.sleep(0.2)
    try:
        assert hub.download(entry, opts(lock_timeout=0.5)).read_bytes() == ckpt_bytes
        assert done.is_set()
    finally:
        t.join()


def test_filelock_is_what_locks(hub_env, zoo, ckpt_bytes):
    """The lock is filelock's: a plain FileLock on the lock path blocks psegzoo (and is what a user can inspect)."""
    entry = zoo.add("m_filelock", ckpt_bytes)
    lock_path = hub_env / "locks" / (entry.weights.file + ".lock")
    lock_path.parent.mkdir(parents=True)
    with filelock.FileLock(str(lock_path)), pytest.raises(CacheError, match="gave up after 0.3 s"):
        hub.download(entry, opts(lock_timeout=0.3))


def test_the_package_imports_and_locks_without_fcntl(zoo, ckpt_bytes, hub_env):
    """As on Windows: no fcntl module at all. The hub and the CLI import, and a download still locks."""
    entry = zoo.add("m_nofcntl", ckpt_bytes)
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "import psegzoo.hub, psegzoo.cli\n"
        "from psegzoo import hub\n"
        "f = hub.fetch(sys.argv[1], hub.DownloadOptions(progress=False))\n"
        "print(f.sha256, 'fcntl' in sys.modules and sys.modules['fcntl'] is not None)\n"
    )
    out = run_python(code, entry.name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [sha(ckpt_bytes), "False"]


def test_hub_never_imports_torch_and_imports_requests_only_to_fetch():
    code = ("import sys, psegzoo.hub; print(*[m in sys.modules for m in ('torch', 'psegzoo.convert', 'requests', 'ssl')])"
            "; psegzoo.hub.transfer.new_session(); print('requests' in sys.modules)")
    out = run_python(code)
    assert out.stdout.split() == ["False", "False", "False", "False", "True"], out.stderr


# --------------------------------------------------------------------------------------------
# Settings: read once, checked at the edge
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("PSEGZOO_TIMEOUT", "0"), ("PSEGZOO_TIMEOUT", "nan"), ("PSEGZOO_TIMEOUT", "inf"), ("PSEGZOO_TIMEOUT", "-1"),
    ("PSEGZOO_BACKOFF", "1e308"), ("PSEGZOO_BACKOFF", "nan"), ("PSEGZOO_BACKOFF_MAX", "-3"),
    ("PSEGZOO_RETRIES", "many"), ("PSEGZOO_RETRIES", "2.5"), ("PSEGZOO_RETRIES", "100000"),
    ("PSEGZOO_LOCK_TIMEOUT", "inf"), ("PSEGZOO_OFFLINE", "maybe"), ("PSEGZOO_MAX_SIZE", "0"),
])
def test_bad_environment_values_are_one_line_errors(hub_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(DownloadError, match=f"{name}={value!r}"):
        hub.DownloadOptions()


def test_explicit_values_are_checked_too_and_win_over_the_environment(hub_env, monkeypatch):
    monkeypatch.setenv("PSEGZOO_RETRIES", "7")
    assert hub.DownloadOptions().retries == 7 and hub.DownloadOptions(retries=1).retries == 1
    for bad in ({"read_timeout": 0}, {"read_timeout": float("nan")}, {"backoff": float("inf")}, {"retries": -1}):
        with pytest.raises(DownloadError, match="must be a number"):
            hub.DownloadOptions(**bad)
    with pytest.raises(DownloadError, match="not an http"):
        hub.DownloadOptions(mirrors=("ftp.example.org",))
    assert "secret" not in repr(hub.DownloadOptions(hf_token="secret"))
    monkeypatch.setenv("PSEGZOO_TIMEOUT", "nan")
    assert hub.DownloadOptions(read_timeout=3).read_timeout == 3  # a given value never reads the variable


def test_cache_home_that_is_a_file_is_a_clear_error(zoo, ckpt_bytes, tmp_path, monkeypatch):
    entry = zoo.add("m_home_file", ckpt_bytes)
    not_a_folder = tmp_path / "oops"
    not_a_folder.write_text("I am a file")
    monkeypatch.setenv("PSEGZOO_HOME", str(not_a_folder))
    for call in (lambda: hub.download(entry, opts()), lambda: hub.cached(opts()), lambda: hub.verify(options=opts())):
        with pytest.raises(CacheError, match="is a file, not a folder; point PSEGZOO_HOME at a folder"):
            call()
    assert not_a_folder.read_text() == "I am a file"


def test_manifest_refuses_files_whose_converted_weights_would_collide(zoo, ckpt_bytes):
    a = zoo.add("m_side_a", ckpt_bytes)
    zoo.models.append(dict(zoo.models[-1], name="m_side_b"))  # a variant sharing the file: fine
    zoo.write()
    assert load_manifest().get("m_side_b").weights.file == a.weights.file
    zoo.models[-1]["weights"] = dict(zoo.models[-1]["weights"], file=a.weights.file[: -len(".pth")])  # x vs x.pth
    zoo.write()
    with pytest.raises(ManifestError, match="would share one cache file"):
        load_manifest()


def test_sidecar_names_cannot_collide(zoo, ckpt_bytes, other_bytes, hub_env):
    """An entry whose file is named like another's record, lock or partial download keeps to itself."""
    a = zoo.add("m_side", ckpt_bytes)
    names = [a.weights.file + suffix for suffix in (".json", ".lock", ".part", ".part.json")]
    for i, file in enumerate(names):
        zoo.server.add(f"/side/{file}", other_bytes)
        zoo.add(f"m_side_{i}", other_bytes)
        zoo.models[-1]["weights"].update(file=file, url=zoo.server.url(f"/side/{file}"))
    zoo.write()
    manifest = load_manifest()
    hub.download(a, opts())
    for i in range(len(names)):
        assert hub.download(manifest.get(f"m_side_{i}"), opts()).read_bytes() == other_bytes
    assert hub.download(a, opts()).read_bytes() == ckpt_bytes
    assert [r.status for r in hub.verify(options=opts())] == ["ok"] * (1 + len(names))
    assert hub.checkpoint_path(a).read_bytes() == ckpt_bytes
    # A temporary file of a's record (left by a killed process) belongs to a, not to the entry named like the record.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = hub_env / "records" / f".{a.weights.file}.json.w-{int(dead.stdout)}-0123abcd.tmp"
    orphan.write_bytes(b"{")
    hub.remove(manifest.get("m_side_0"), options=opts())
    assert orphan.exists()
    hub.remove(a, options=opts())
    assert not orphan.exists()
