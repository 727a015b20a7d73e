"""Downloads over real HTTP on 127.0.0.1: verification, resume, retries, bounds (tests/support/http_server.py).

Entries come from an extra manifest (PSEGZOO_INDEX) whose URLs point at the loopback server;
the files served are small checkpoints in mmseg's format written with torch.save.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import requests
import urllib3

import psegzoo
from psegzoo import hub
from psegzoo.errors import DownloadError, NoWeightsError
from psegzoo.hub import failures, transfer
from psegzoo.hub.progress import Bar, columns, short_label
from psegzoo.hub.settings import cache_root
from tests.support.http_server import FileServer
from tests.support.hub import (
    cache_listing,
    free_port,
    opts,
    sha,
    url_path,
)


def part_of(home, entry):
    return home / "partial" / (entry.weights.file + ".part")


# --------------------------------------------------------------------------------------------
# Success, records, layout
# --------------------------------------------------------------------------------------------


def test_download_success_record_and_cache_hit(zoo, http_server, ckpt_bytes, hub_env):
    entry = zoo.add("m_ok", ckpt_bytes, etag='"v1"')
    f = hub.fetch(entry, opts())
    path = f.path
    assert path == hub_env / "checkpoints" / entry.weights.file == hub.checkpoint_path(entry)
    assert f.downloaded and f.source == "download" and f.sha256 == sha(ckpt_bytes) and f.url == entry.weights.url
    assert path.read_bytes() == ckpt_bytes
    record = json.loads((hub_env / "records" / (entry.weights.file + ".json")).read_text())
    assert record["sha256"] == sha(ckpt_bytes) and record["size"] == len(ckpt_bytes)
    assert record["name"] == "m_ok" and record["url"] == entry.weights.url and record["source"] == "download"
    assert record["inode"] == path.stat().st_ino and record["mtime_ns"] == path.stat().st_mtime_ns
    # nothing else is left: no .part, .part.json, temporary file or holder note
    assert cache_listing(hub_env) == [f"checkpoints/{entry.weights.file}", f"records/{entry.weights.file}.json"]
    (get,) = http_server.gets(url_path(entry))
    assert get.header("Accept-Encoding") == "identity" and get.header("Range") is None
    # A second call uses the cache: no request, no hashing needed.
    again = hub.fetch(entry, opts())
    assert again.path == path and again.source == "cache" and again.sha256 == sha(ckpt_bytes)
    assert len(http_server.gets(url_path(entry))) == 1


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("PSEGZOO_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "psegzoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_root() == tmp_path / "user" / ".cache" / "psegzoo"
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit" == hub.DownloadOptions().home


def test_download_bar_fits_80_columns():
    """Short label, bar, size, speed and time left on one 80-column line, every figure whole."""
    from rich.console import Console
    from rich.progress import Progress

    out = io.StringIO()
    progress = Progress(*columns(), console=Console(file=out, width=80, force_terminal=True, color_system=None),
                        expand=False)
    name = "upernet_r101_512x1024_80k_cityscapes_20200605_094827-a5dc4a1e"
    progress.add_task(short_label(name).ljust(20), total=412_345_678, completed=123_456_789)
    Console(file=out, width=80, force_terminal=True, color_system=None).print(progress.get_renderable())
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) <= 80, lines
    line = lines[0]
    assert line.startswith("upernet_r101_512x10…") and "123.5/412.3 MB" in line
    assert "…" not in line.replace("upernet_r101_512x10…", "")  # nothing else is cut
    assert short_label("short") == "short" and len(short_label("x" * 50)) == 20


def test_progress_bar_does_not_break_download(zoo, ckpt_bytes, capfd):
    entry = zoo.add("m_bar", ckpt_bytes)
    assert hub.download(entry, opts(progress=True)).read_bytes() == ckpt_bytes
    err = capfd.readouterr().err
    assert "m_bar" in err and "MB" in err  # the bar names the model and counts decimal megabytes
    Bar(False, "x").close()  # a disabled bar is silent


# --------------------------------------------------------------------------------------------
# Verification of downloads
# --------------------------------------------------------------------------------------------


def test_wrong_published_hash_is_refused(zoo, http_server, ckpt_bytes, hub_env):
    entry = zoo.add("m_wrong", ckpt_bytes, prefix="00000000" if not sha(ckpt_bytes).startswith("0") else "ffffffff")
    with pytest.raises(DownloadError) as err:
        hub.download(entry, opts())
    msg = str(err.value)
    assert entry.weights.url in msg and "published hash prefix" in msg and sha(ckpt_bytes) in msg
    assert not hub.checkpoint_path(entry).exists() and cache_listing(hub_env) == []
    assert len(http_server.gets(url_path(entry))) == 1  # a complete but wrong file is not retried


def test_full_published_sha256_is_checked_instead_of_the_prefix(zoo, ckpt_bytes, hub_env):
    full = sha(ckpt_bytes)
    entry = zoo.add("m_full_ok", ckpt_bytes, weights={"sha256": full, "size": len(ckpt_bytes)})
    f = hub.fetch(entry, opts())
    assert f.sha256 == full and f.verified_by == "published SHA-256"
    # Same 8-digit prefix, other full hash: the prefix alone would pass, the full hash refuses.
    wrong = full[:8] + ("0" if full[8] != "0" else "1") + full[9:]
    bad = zoo.add("m_full_bad", ckpt_bytes, weights={"sha256": wrong})
    with pytest.raises(DownloadError, match=f"does not match the published SHA-256 {wrong}"):
        hub.download(bad, opts())
    assert not hub.checkpoint_path(bad).exists()


def test_one_flipped_byte_is_refused(zoo, ckpt_bytes, hub_env):
    flipped = bytearray(ckpt_bytes)
    flipped[len(flipped) // 2] ^= 0x01
    entry = zoo.add("m_flip", ckpt_bytes)
    zoo.server.add(url_path(entry), bytes(flipped))
    with pytest.raises(DownloadError, match="does not match the published hash prefix"):
        hub.download(entry, opts())
    assert cache_listing(hub_env) == []


def test_truncated_answers_are_never_accepted(zoo, http_server, ckpt_bytes, hub_env):
    n = len(ckpt_bytes)
    entry = zoo.add("m_trunc", ckpt_bytes, ignore_range=True, plan=[{"drop_after": n // 3}] * 10)
    with pytest.raises(DownloadError) as err:
        hub.download(entry, opts(retries=2))
    assert f"{psegzoo.format_size(n // 3)} of {psegzoo.format_size(n)}" in str(err.value)
    assert "gave up after 3 attempts" in str(err.value)
    assert cache_listing(hub_env) == []
    assert len(http_server.gets(url_path(entry))) == 3


def test_html_error_page_with_200_is_never_cached(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_html", ckpt_bytes, html=True)
    with pytest.raises(DownloadError, match="HTML page"):
        hub.download(entry, opts())
    assert cache_listing(hub_env) == []


def test_entry_without_weights(zoo, ckpt_bytes):
    import dataclasses

    entry = dataclasses.replace(zoo.add("m_noweights", ckpt_bytes), weights=None)
    with pytest.raises(NoWeightsError, match="no weights are published for m_noweights yet"):
        hub.download(entry, opts())


# --------------------------------------------------------------------------------------------
# Resume, and never splicing
# --------------------------------------------------------------------------------------------


def test_dropped_at_40_percent_resumes_with_range_and_if_range(zoo, http_server, ckpt_bytes):
    cut = int(len(ckpt_bytes) * 0.4)
    entry = zoo.add("m_resume", ckpt_bytes, etag='"abc123"', plan=[{"drop_after": cut}])
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    first, second = http_server.gets(url_path(entry))
    assert first.header("Range") is None
    assert second.header("Range") == f"bytes={cut}-" and second.header("If-Range") == '"abc123"'


def test_resume_uses_last_modified_when_there_is_no_etag(zoo, http_server, ckpt_bytes):
    lm = "Wed, 01 Jan 2020 00:00:00 GMT"
    cut = len(ckpt_bytes) // 2
    entry = zoo.add("m_lm", ckpt_bytes, last_modified=lm, plan=[{"drop_after": cut}])
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert http_server.gets(url_path(entry))[1].header("If-Range") == lm


def test_no_validator_no_resume(zoo, http_server, ckpt_bytes):
    """Without an ETag or Last-Modified nothing proves the rest belongs to the same file: start again."""
    cut = len(ckpt_bytes) // 2
    entry = zoo.add("m_novalidator", ckpt_bytes, plan=[{"drop_after": cut}])
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert [g.header("Range") for g in http_server.gets(url_path(entry))] == [None, None]


def test_weak_etag_is_no_validator(zoo, http_server, ckpt_bytes):
    cut = len(ckpt_bytes) // 2
    entry = zoo.add("m_weak", ckpt_bytes, etag='W/"weak"', plan=[{"drop_after": cut}])
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert [g.header("Range") for g in http_server.gets(url_path(entry))] == [None, None]


def test_a_partial_from_one_source_is_never_finished_from_another(zoo, http_server, ckpt_bytes, other_bytes):
    """The splice case: a mirror dies half-way; the original must not append to the mirror's bytes."""
    cut = len(ckpt_bytes) // 2
    entry = zoo.add("m_splice", ckpt_bytes, etag='"same"')
    with FileServer() as mirror:
        # the mirror holds another version of the file under the same ETag, and dies half-way
        mirror.add(url_path(entry), other_bytes, etag='"same"', plan=[{"drop_after": cut}, {"status": 404}])
        f = hub.fetch(entry, opts(mirrors=(mirror.base,), retries=1))
    assert f.path.read_bytes() == ckpt_bytes and f.url == entry.weights.url
    (get,) = http_server.gets(url_path(entry))
    assert get.header("Range") is None and get.header("If-Range") is None


def test_trust_on_first_use_never_resumes(zoo, http_server, ckpt_bytes, hub_env):
    """With no hash to check, only a whole file from one answer may be trusted."""
    cut = len(ckpt_bytes) // 2
    entry = zoo.add("m_tofu_part", ckpt_bytes, prefix=None, etag='"t"', plan=[{"drop_after": cut}])
    with pytest.raises(DownloadError):
        hub.download(entry, opts(allow_unverified=True, retries=0))
    assert part_of(hub_env, entry).stat().st_size == cut
    f = hub.fetch(entry, opts(allow_unverified=True))
    assert f.newly_trusted and f.path.read_bytes() == ckpt_bytes
    assert [g.header("Range") for g in http_server.gets(url_path(entry))] == [None, None]


def test_server_ignoring_range_restarts_from_zero(zoo, http_server, ckpt_bytes):
    cut = int(len(ckpt_bytes) * 0.4)
    entry = zoo.add("m_norange", ckpt_bytes, etag='"n"', ignore_range=True, plan=[{"drop_after": cut}])
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    gets = http_server.gets(url_path(entry))
    assert len(gets) == 2 and gets[1].header("Range") == f"bytes={cut}-"  # asked, got a 200, restarted


def test_206_at_wrong_offset_restarts_from_zero(zoo, http_server, ckpt_bytes):
    cut = int(len(ckpt_bytes) * 0.4)
    entry = zoo.add("m_offset", ckpt_bytes, etag='"o"', plan=[{"drop_after": cut}, {"wrong_offset": 7}])
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    gets = http_server.gets(url_path(entry))
    assert [g.header("Range") for g in gets] == [None, f"bytes={cut}-", None]


def test_changed_file_behind_if_range_restarts(zoo, http_server, ckpt_bytes, other_bytes, hub_env):
    """A part from an older version of the file is discarded (If-Range mismatch -> 200)."""
    cut = len(other_bytes) // 2
    entry = zoo.add("m_changed", ckpt_bytes, etag='"new"')
    served = zoo.server.add(url_path(entry), other_bytes, etag='"old"', plan=[{"drop_after": cut}])
    with pytest.raises(DownloadError):
        hub.download(entry, opts(retries=0))
    assert part_of(hub_env, entry).stat().st_size == cut
    served.data, served.etag = ckpt_bytes, '"new"'
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    last = http_server.gets(url_path(entry))[-1]
    assert last.header("Range") == f"bytes={cut}-" and last.header("If-Range") == '"old"'


def test_resumed_file_failing_verification_is_downloaded_again_from_zero(zoo, http_server, ckpt_bytes, other_bytes):
    cut = len(other_bytes) // 2
    entry = zoo.add("m_mixed", ckpt_bytes)
    served = zoo.server.add(url_path(entry), other_bytes, etag='"lies"', plan=[{"drop_after": cut}])
    with pytest.raises(DownloadError):
        hub.download(entry, opts(retries=0))
    served.data = ckpt_bytes  # the server changed the file but not its ETag: the resume splices
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert [g.header("Range") for g in http_server.gets(url_path(entry))[1:]] == [f"bytes={cut}-", None]


# --------------------------------------------------------------------------------------------
# Retries: a policy value, classified by type, shown as they happen
# --------------------------------------------------------------------------------------------


def test_retry_policy_is_a_small_value():
    policy = failures.RetryPolicy(retries=3, backoff=1.0, backoff_max=5.0)
    timeout = failures.Problem("read-timeout", "no data", retryable=True)
    assert [policy.wait(n, timeout) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, None]
    assert policy.wait(1, failures.Problem("dns", "host name not found", retryable=False)) is None
    slow_down = failures.Problem("http", "HTTP 429", retryable=True, retry_after=120.0)
    assert policy.wait(1, slow_down) == 5.0  # honoured up to the longest wait
    assert failures.RetryPolicy(retries=50, backoff=3600, backoff_max=3600).wait(50, timeout) == 3600


def test_retry_after_as_seconds_or_http_date():
    now = time.time()
    later = format_datetime(datetime.fromtimestamp(now, timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert failures.retry_after_seconds(later, now=now) == pytest.approx(30, abs=1)
    assert failures.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0  # in the past
    assert failures.retry_after_seconds("120") == 120.0
    assert failures.retry_after_seconds("soon") is None and failures.retry_after_seconds(None) is None


def test_failures_are_classified_by_type_not_text():
    o = opts()
    refused = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/x", urllib3.exceptions.NewConnectionError(None, "whatever the message says")))
    refused.args[0].reason.__cause__ = ConnectionRefusedError(111, "x")
    assert failures.classify(refused, o).kind == "refused" and not failures.classify(refused, o).retryable
    import socket

    assert failures.classify(socket.gaierror(-2, "x"), o).kind == "dns"
    assert failures.classify(requests.ReadTimeout("x"), o).kind == "read-timeout"
    assert failures.classify(ConnectionResetError(104, "x"), o).retryable
    # A message that merely mentions a refused connection is not a refused connection.
    assert failures.classify(OSError("Connection refused"), o).kind == "other"


def test_503_503_200_and_retries_logged_as_they_happen(zoo, http_server, ckpt_bytes, caplog):
    entry = zoo.add("m_503", ckpt_bytes, plan=[{"status": 503}, {"status": 503}])
    with caplog.at_level(logging.WARNING, logger="psegzoo.hub"):
        assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 3
    retries = [r for r in caplog.records if hasattr(r, "psegzoo_retry")]
    assert [r.psegzoo_retry["attempt"] for r in retries] == [2, 3]
    assert all(r.psegzoo_retry["reason"].startswith("HTTP 503") for r in retries)
    assert "retry 1 of 3 in 0.0 s" in retries[0].getMessage() and entry.weights.url in retries[0].getMessage()


def test_429_with_retry_after_is_retried(zoo, http_server, ckpt_bytes, monkeypatch):
    monkeypatch.setenv("PSEGZOO_BACKOFF_MAX", "0.05")  # Retry-After is honoured up to this cap
    entry = zoo.add("m_429", ckpt_bytes, plan=[{"status": 429, "retry_after": 120}])
    t0 = time.monotonic()
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert len(http_server.gets(url_path(entry))) == 2 and time.monotonic() - t0 < 5


def test_retries_are_bounded(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_5xx", ckpt_bytes, status=502)
    with pytest.raises(DownloadError, match=r"HTTP 502 .*gave up after 3 attempts"):
        hub.download(entry, opts(retries=2))
    assert len(http_server.gets(url_path(entry))) == 3


@pytest.mark.parametrize("status", [404, 403])
def test_404_and_403_are_not_retried(zoo, http_server, ckpt_bytes, status):
    entry = zoo.add(f"m_{status}", ckpt_bytes, status=status)
    with pytest.raises(DownloadError, match=f"HTTP {status}") as err:
        hub.download(entry, opts())
    assert "psegzoo import" in str(err.value)
    assert len(http_server.gets(url_path(entry))) == 1


def test_refused_connection_and_unknown_host_fail_at_once(zoo, ckpt_bytes, monkeypatch):
    """No backoff for a host that is not there: with 10 s waits between tries, both end in well under a second."""
    monkeypatch.setenv("PSEGZOO_BACKOFF", "10")
    refused = f"http://127.0.0.1:{free_port()}/x/m_refused.pth"
    unknown = "http://download.psegzoo-test.invalid/x/m_refused.pth"  # .invalid never resolves
    entry = zoo.add("m_refused", ckpt_bytes, url=refused, weights={"urls": [unknown]})
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        hub.download(entry, opts())
    assert time.monotonic() - t0 < 3
    msg = str(err.value)
    assert f"{refused}: connection refused" in msg and f"{unknown}: host name not found" in msg
    assert "original host 127.0.0.1 is unreachable" in msg and "psegzoo import FILE|DIR" in msg


def test_stall_fails_within_read_timeout_then_resumes(zoo, http_server, ckpt_bytes):
    # 100 kB then silence; then silence right after the headers (no progress: counts as a failure)
    stalls = [{"stall_after": 100_000, "stall": 30}, {"stall_after": 0, "stall": 30}]
    entry = zoo.add("m_stall", ckpt_bytes, etag='"s"', plan=stalls)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="read timeout"):
        hub.download(entry, opts(read_timeout=0.5, retries=1))
    assert time.monotonic() - t0 < 5  # two attempts of ~0.5 s each, not 30 s
    assert hub.download(entry, opts(read_timeout=0.5)).read_bytes() == ckpt_bytes
    assert [g.header("Range") for g in http_server.gets(url_path(entry))] == [None, "bytes=100000-", "bytes=100000-"]


def test_redirects_are_followed_and_bounded(zoo, http_server, ckpt_bytes):
    entry = zoo.add("m_redirect", ckpt_bytes, url=http_server.url("/moved.pth"))
    http_server.add("/moved.pth", b"", redirect_to=http_server.url(url_path(entry)))
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert len(http_server.gets("/moved.pth")) == 1 and len(http_server.gets(url_path(entry))) == 1
    looping = zoo.add("m_loop", ckpt_bytes, url=http_server.url("/loop.pth"))
    http_server.add("/loop.pth", b"", redirect_to=http_server.url("/loop.pth"))
    with pytest.raises(DownloadError, match="more than 10 redirects"):
        hub.download(looping, opts())
    assert len(http_server.gets("/loop.pth")) == 11  # the request and 10 redirects, never retried


# --------------------------------------------------------------------------------------------
# Bounds: encodings, sizes, speed, time
# --------------------------------------------------------------------------------------------


def test_gzip_label_on_raw_bytes_hashes_raw_bytes(zoo, http_server, ckpt_bytes):
    """A server labels the file gzip: psegzoo asks for identity and keeps the raw bytes."""
    entry = zoo.add("m_gz_label", ckpt_bytes, gzip="label")
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert http_server.gets(url_path(entry))[0].header("Accept-Encoding") == "identity"


def test_gzip_compressed_despite_identity_is_decoded_and_verified(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_gz_real", ckpt_bytes, gzip="compress")
    assert hub.download(entry, opts()).read_bytes() == ckpt_bytes
    assert cache_listing(hub_env) == [f"checkpoints/{entry.weights.file}", f"records/{entry.weights.file}.json"]


def test_first_use_trusts_the_decoded_file_when_the_server_gzips_it(zoo, ckpt_bytes):
    entry = zoo.add("m_tofu_gzip", ckpt_bytes, prefix=None, gzip="compress")
    f = hub.fetch(entry, opts(allow_unverified=True))
    assert f.path.read_bytes() == ckpt_bytes and hub.trusted_sha256(entry) == sha(ckpt_bytes)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """64 kB of gzip that inflates to 50 MB."""
    return b"\0" * 50_000_000


def test_a_gzip_bomb_is_never_inflated_past_the_size_limit(zoo, ckpt_bytes, bomb, hub_env, monkeypatch):
    monkeypatch.setenv("PSEGZOO_MAX_SIZE", "5000000")
    unverified = zoo.add("m_bomb", bomb, prefix=None, gzip="compress")
    with pytest.raises(DownloadError, match="cannot be decoded within the size limit"):
        hub.download(unverified, opts(allow_unverified=True))
    assert hub.trusted_sha256(unverified) is None and cache_listing(hub_env) == []
    hashed = zoo.add("m_bomb_hashed", ckpt_bytes)
    zoo.server.add(url_path(hashed), bomb, gzip="compress")
    with pytest.raises(DownloadError, match="does not match the published hash prefix"):
        hub.download(hashed, opts())
    assert cache_listing(hub_env) == []
    # the decoder itself stops at the cap (plus one chunk at most), whatever the stream says
    src, dst = hub_env.parent / "bomb.gz", hub_env.parent / "bomb.out"
    src.write_bytes(gzip.compress(bomb, mtime=0))
    assert transfer.decode(src, dst, "gzip", transfer.Limits(None, 1_000_000)) is None and not dst.exists()
    assert transfer.decode(src, dst, "gzip", transfer.Limits(None, 60_000_000)).size == len(bomb)


def test_unknown_size_is_capped_and_a_published_size_is_exact(zoo, ckpt_bytes, hub_env, monkeypatch):
    big = ckpt_bytes * 3
    monkeypatch.setenv("PSEGZOO_MAX_SIZE", str(len(ckpt_bytes)))
    no_length = zoo.add("m_no_length", big, prefix=None, no_length=True)
    with pytest.raises(DownloadError, match="received more than the size limit"):
        hub.download(no_length, opts(allow_unverified=True))
    announced = zoo.add("m_announced", big, prefix=None)
    with pytest.raises(DownloadError, match="more than the size limit"):
        hub.download(announced, opts(allow_unverified=True))
    assert len(zoo.server.gets(url_path(announced))) == 1  # refused from the headers, not retried
    sized = zoo.add("m_sized", ckpt_bytes, weights={"size": len(ckpt_bytes) + 1})
    with pytest.raises(DownloadError, match=f"the manifest says {len(ckpt_bytes) + 1}"):
        hub.download(sized, opts())
    assert cache_listing(hub_env) == []
    exact = zoo.add("m_exact", ckpt_bytes, no_length=True, weights={"size": len(ckpt_bytes)})
    monkeypatch.setenv("PSEGZOO_MAX_SIZE", "1000")  # the published size wins over the cap
    assert hub.download(exact, opts()).read_bytes() == ckpt_bytes


def test_a_drip_fails_the_speed_rule_instead_of_taking_forever(zoo, http_server, ckpt_bytes):
    """100 bytes every 20 ms (5 kB/s) never trips a 5 s read timeout; the speed rule ends each try."""
    entry = zoo.add("m_drip", ckpt_bytes, plan=[{"throttle": 0.02, "block": 100}] * 3)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"slower than 50.0 kB/s for 0.5 s"):
        hub.download(entry, opts(speed_limit=50_000, speed_time=0.5, retries=1))
    assert time.monotonic() - t0 < 5  # at 5 kB/s the whole file would take about 7 minutes
    assert len(http_server.gets(url_path(entry))) == 2


def test_deadline_bounds_the_whole_fetch(zoo, ckpt_bytes, hub_env):
    entry = zoo.add("m_deadline", ckpt_bytes, plan=[{"throttle": 0.2}] * 5)
    with FileServer() as slow_mirror:
        slow_mirror.add(url_path(entry), ckpt_bytes, plan=[{"throttle": 0.2}] * 5)
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match="deadline of 1 s"):
            hub.download(entry, opts(deadline=1, mirrors=(slow_mirror.base,)))
        assert time.monotonic() - t0 < 3
    assert not hub.checkpoint_path(entry).exists()


class _BrokenHash:
    """A hash whose update fails, as hashing a chunk may (MemoryError): the stream must stop, not wait."""

    def update(self, chunk: bytes) -> None:
        raise MemoryError("no memory for this chunk")

    def hexdigest(self) -> str:  # pragma: no cover - never reached
        return ""


def test_a_dead_hashing_thread_is_an_error_never_an_endless_wait():
    import threading

    hasher = transfer.StreamHasher(_BrokenHash())
    outcome: list[BaseException | None] = []

    def feed() -> None:
        try:
            for _ in range(100):  # more chunks than the bounded queue holds
                hasher.update(b"x" * 1024)
            hasher.hexdigest()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=feed, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "put() blocked on the queue of a dead hashing thread"
    assert isinstance(outcome[0], DownloadError) and "no memory for this chunk" in str(outcome[0])
