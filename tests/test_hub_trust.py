"""How far a hash check proves a checkpoint: origins versus third parties, prefix-only files, pins.

An 8-digit SHA-256 prefix guards against accidents, not against a forged file (32 bits take minutes
to match). These tests run real transfers on 127.0.0.1, over plain HTTP and over HTTPS with a
certificate made for the test: a forged file is simulated by a pin that shares the served file's
prefix but not its full hash (making a real collision would take minutes per test).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from psegzoo import hub
from psegzoo.errors import DownloadError, VerificationError
from psegzoo.hub.trust import ORIGIN_HTTPS, PINNED, PREFIX_ONLY
from psegzoo.manifest import Entry
from tests.support.cli import cli
from tests.support.http_server import FileServer, self_signed
from tests.support.hub import cache_listing, opts, sha, url_path

PREFIX_WARNING = "hash prefix"


def forged_pin(data: bytes) -> str:
    """A full SHA-256 that shares ``data``'s published 8-digit prefix but is not its hash."""
    real = sha(data)
    return real[:8] + ("0" if real[8] != "0" else "1") + real[9:]


def prefix_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and PREFIX_WARNING in r.getMessage()]


def record_of(home: Path, entry: Entry) -> dict:
    return json.loads((home / "records" / (entry.weights.file + ".json")).read_text())


def as_origin(entry: Entry, url: str) -> Entry:
    """``entry`` as the built-in manifest would describe it: ``url`` is its origin (only Python code that
    builds an Entry can say so; an extra manifest cannot)."""
    return dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, url=url, urls=(), origins=(url,)))


# --------------------------------------------------------------------------------------------
# The predicate of a transfer that may teach a full hash
# --------------------------------------------------------------------------------------------


def test_only_https_with_the_certificate_checked_is_a_verified_transfer():
    from psegzoo.hub.transfer import verified_https

    assert verified_https(["https://download.openmmlab.com/a.pth"], True)
    assert verified_https(["https://a/x", "HTTPS://b/y"], "/etc/ssl/ca.pem")  # a CA bundle: still checked
    assert not verified_https(["https://a/x"], False)  # verification turned off
    assert not verified_https(["http://download.openmmlab.com/a.pth"], True)
    assert not verified_https(["https://a/x", "http://b/y"], True)  # a redirect to plain HTTP
    assert not verified_https(["http://a/x", "https://b/y"], True)
    assert not verified_https([], True)


# --------------------------------------------------------------------------------------------
# Third parties: accepted on the prefix with one warning, recorded as such; --strict refuses
# --------------------------------------------------------------------------------------------


def _serve_mirror(zoo, entry: Entry, data: bytes, tmp_path: Path, how: str) -> hub.DownloadOptions:
    """Options that make a third party of kind ``how`` give ``entry``'s file."""
    if how == "extra manifest URL":
        return opts()
    zoo.server.add(url_path(entry), b"", status=404)  # the manifest's own URL fails: only the mirror has it
    if how == "mirror":
        zoo.server.add("/mirror" + url_path(entry), data)
        return opts(mirrors=(zoo.server.base + "/mirror",))
    if how == "file:// mirror":
        target = tmp_path / "team" / url_path(entry).lstrip("/")
        target.parent.mkdir(parents=True)
        target.write_bytes(data)
        return opts(mirrors=((tmp_path / "team").as_uri(),))
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / entry.weights.file).write_bytes(data)
    return opts(search=(shelf,))


THIRD_PARTIES = ["extra manifest URL", "mirror", "file:// mirror", "copy on disk"]


@pytest.mark.parametrize("how", THIRD_PARTIES)
def test_a_third_party_file_on_the_prefix_alone_warns_once_and_is_recorded(zoo, hub_env, ckpt_bytes, tmp_path,
                                                                          caplog, how):
    entry = zoo.add("m_third", ckpt_bytes)
    options = _serve_mirror(zoo, entry, ckpt_bytes, tmp_path, how)
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        first = hub.fetch(entry, options)
        again = hub.fetch(entry, options)  # from the cache: nothing new enters, nothing more is said
    assert first.trust == PREFIX_ONLY and again.trust == PREFIX_ONLY and again.source == "cache"
    (line,) = prefix_warnings(caplog)
    assert "\n" not in line and entry.name in line and sha(ckpt_bytes)[:8] in line
    assert f"--sha256 {sha(ckpt_bytes)}" in line and "PSEGZOO_HASHES" in line and "--strict" in line
    rec = record_of(hub_env, entry)
    assert rec["trust"] == PREFIX_ONLY and rec["url"] == first.url and rec["sha256"] == sha(ckpt_bytes)
    assert hub.trusted_sha256(entry) is None  # nothing learned from a third party


@pytest.mark.parametrize("how", THIRD_PARTIES)
def test_strict_mode_refuses_a_third_party_file_on_the_prefix_alone(zoo, hub_env, ckpt_bytes, tmp_path, how,
                                                                     monkeypatch):
    entry = zoo.add("m_strict", ckpt_bytes)
    options = _serve_mirror(zoo, entry, ckpt_bytes, tmp_path, how)
    monkeypatch.setenv("PSEGZOO_STRICT", "1")  # read once, when the options are built
    options = dataclasses.replace(options, strict=hub.DownloadOptions().strict)
    assert options.strict
    with pytest.raises(DownloadError) as err:
        hub.fetch(entry, options)
    message = str(err.value)
    assert "\n" not in message and "strict mode" in message and "strict=True" in message
    assert "--strict" in err.value.cli_message() and "sha256=HEX" in message
    assert not hub.checkpoint_path(entry).exists() and not any(p.startswith("checkpoints/") for p in cache_listing(hub_env))


def test_strict_mode_does_not_use_a_prefix_only_file_cached_before(zoo, http_server, hub_env, ckpt_bytes):
    entry = zoo.add("m_cached_before", ckpt_bytes)
    path = hub.download(entry, opts())
    http_server.add(url_path(entry), b"", status=404)
    with pytest.raises(DownloadError, match="the cached copy was kept but not used: only its published 8-digit"):
        hub.fetch(entry, opts(strict=True))
    assert path.read_bytes() == ckpt_bytes  # kept, for a later run without strict mode


def test_import_of_a_prefix_only_file_warns_and_strict_refuses_it(zoo, http_server, hub_env, ckpt_bytes, tmp_path,
                                                                  caplog):
    entry = zoo.add("m_import", ckpt_bytes)
    src = tmp_path / entry.weights.file
    src.write_bytes(ckpt_bytes)
    with pytest.raises(VerificationError, match="strict mode") as err:
        hub.import_checkpoint(src, options=opts(strict=True))
    assert "\n" not in str(err.value) and not hub.checkpoint_path(entry).exists()
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        result = hub.import_checkpoint(src, options=opts())
    assert result.status == "imported" and result.trust == PREFIX_ONLY and len(prefix_warnings(caplog)) == 1
    assert record_of(hub_env, entry)["url"] == src.resolve().as_uri()
    assert http_server.requests == []


# --------------------------------------------------------------------------------------------
# Full hashes: --sha256, PSEGZOO_HASHES (what psegzoo mirror writes); a forged prefix match is refused
# --------------------------------------------------------------------------------------------


def test_a_full_pin_makes_a_third_party_file_pinned_and_refuses_a_prefix_match(zoo, http_server, hub_env, ckpt_bytes,
                                                                                caplog):
    entry = zoo.add("m_full_pin", ckpt_bytes)
    with pytest.raises(DownloadError, match="does not match the pinned hash"):
        hub.fetch(entry, opts(sha256=forged_pin(ckpt_bytes)))  # the served file only shares the prefix
    assert not hub.checkpoint_path(entry).exists()
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        f = hub.fetch(entry, opts(sha256=sha(ckpt_bytes), strict=True))
    assert f.trust == PINNED and prefix_warnings(caplog) == [] and record_of(hub_env, entry)["trust"] == PINNED


@pytest.mark.parametrize("where", ["file", "url"])
def test_hashes_list_pins_files_and_refuses_a_forged_prefix_match(zoo, http_server, hub_env, ckpt_bytes, other_bytes,
                                                                  tmp_path, monkeypatch, caplog, where):
    forged = zoo.add("m_listed_forged", ckpt_bytes)
    good = zoo.add("m_listed_good", other_bytes)
    text = (f"# a comment, as psegzoo verify --hashes writes\n\n{forged_pin(ckpt_bytes)}  some/dir/{forged.weights.file}\n"
            f"{sha(other_bytes).upper()} *{good.weights.file}\n")
    if where == "file":
        (tmp_path / "sums.txt").write_text(text)
        monkeypatch.setenv("PSEGZOO_HASHES", str(tmp_path / "sums.txt"))
    else:
        http_server.add("/lists/sums.txt", text.encode())
        monkeypatch.setenv("PSEGZOO_HASHES", http_server.url("/lists/sums.txt"))
    with pytest.raises(DownloadError) as err:
        hub.fetch(forged, opts())
    assert "does not match the SHA-256 listed in PSEGZOO_HASHES" in str(err.value)
    assert not hub.checkpoint_path(forged).exists()
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        f = hub.fetch(good, opts(strict=True))
    assert f.trust == PINNED and prefix_warnings(caplog) == []
    # the list also pins what is already cached: a contradicting --sha256 is refused before any transfer
    gets = len(http_server.requests)
    with pytest.raises(VerificationError, match="contradicts") as err:
        hub.fetch(good, opts(sha256=forged_pin(other_bytes)))
    assert "listed in PSEGZOO_HASHES" in str(err.value) and forged_pin(other_bytes) in str(err.value)
    assert len(http_server.requests) == gets


def test_a_cached_file_that_a_listed_hash_contradicts_is_not_used_nor_deleted(zoo, hub_env, ckpt_bytes, tmp_path,
                                                                              monkeypatch):
    entry = zoo.add("m_listed_later", ckpt_bytes)
    path = hub.download(entry, opts())
    (tmp_path / "sums.txt").write_text(f"{forged_pin(ckpt_bytes)}  {entry.weights.file}\n")  # a typo, or a forgery
    monkeypatch.setenv("PSEGZOO_HASHES", str(tmp_path / "sums.txt"))
    with pytest.raises(DownloadError, match="the cached copy was kept: its SHA-256 .* SHA-256 listed in PSEGZOO_HASHES"):
        hub.fetch(entry, opts())
    (result,) = hub.verify(entry, options=opts())
    assert result.status == "ok" and path.read_bytes() == ckpt_bytes


def test_a_bad_hashes_list_is_a_one_line_error(zoo, ckpt_bytes, tmp_path, monkeypatch):
    entry = zoo.add("m_bad_list", ckpt_bytes)
    (tmp_path / "sums.txt").write_text(f"{sha(ckpt_bytes)}  a.pth\nnot a hash line\n")
    monkeypatch.setenv("PSEGZOO_HASHES", str(tmp_path / "sums.txt"))
    with pytest.raises(VerificationError, match="line 2 is not") as err:
        hub.fetch(entry, opts())
    assert "\n" not in str(err.value)
    monkeypatch.setenv("PSEGZOO_HASHES", str(tmp_path / "missing.txt"))
    with pytest.raises(VerificationError, match="cannot read PSEGZOO_HASHES"):
        hub.fetch(entry, opts())


def test_the_mirror_folders_sha256sums_is_a_hashes_list(zoo, http_server, hub_env, ckpt_bytes, tmp_path, monkeypatch):
    entry = zoo.add("m_team", ckpt_bytes)
    hub.download(entry, opts())
    team = tmp_path / "team"
    hub.mirror(team, [entry.name], options=opts())
    sums = (team / "SHA256SUMS").read_text()
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=team, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "colleague"))
    monkeypatch.setenv("PSEGZOO_HASHES", str(team / "SHA256SUMS"))
    f = hub.fetch(entry, opts(mirrors=(team.as_uri(),), offline=True, strict=True))
    assert f.trust == PINNED and sha(ckpt_bytes) in sums


# --------------------------------------------------------------------------------------------
# Origins: plain HTTP is never pinned; HTTPS with a valid certificate teaches the full hash
# --------------------------------------------------------------------------------------------


def test_an_extra_manifest_url_is_never_an_origin(zoo, ckpt_bytes):
    entry = zoo.add("m_claims", ckpt_bytes, weights={"origins": ["placeholder"]})
    assert entry.weights.origins == () and not entry.weights.is_origin(entry.weights.url)


def test_an_origin_over_plain_http_is_not_pinned(zoo, http_server, hub_env, ckpt_bytes, caplog):
    base = zoo.add("m_origin_http", ckpt_bytes)
    entry = as_origin(base, http_server.url(url_path(base)))
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        f = hub.fetch(entry, opts())
    assert f.trust == PREFIX_ONLY and len(prefix_warnings(caplog)) == 1
    assert hub.trusted_sha256(entry) is None and not (hub_env / "trusted").exists()
    with pytest.raises(DownloadError, match="strict mode"):
        hub.fetch(entry, opts(strict=True, force=True))


@pytest.fixture
def https_server(tmp_path):
    server = FileServer(tls=self_signed(tmp_path))
    try:
        yield server
    finally:
        server.close()


def test_an_origin_over_verified_https_is_learned_and_pins_later_sources(zoo, http_server, https_server, hub_env,
                                                                         ckpt_bytes, tmp_path, monkeypatch, caplog):
    base = zoo.add("m_origin_https", ckpt_bytes)
    # the first answer breaks off: the file is finished by a resumed request, over HTTPS as well
    https_server.add(url_path(base), ckpt_bytes, etag='"v1"', plan=[{"drop_after": 300_000}])
    entry = as_origin(base, https_server.url(url_path(base)))
    with pytest.raises(DownloadError, match="certificate|TLS|SSL"):
        hub.fetch(entry, opts(retries=0))  # a certificate the client does not trust is refused outright
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "loopback-cert.pem"))
    with caplog.at_level(logging.WARNING, logger="psegzoo"):
        f = hub.fetch(entry, opts())
    assert f.trust == ORIGIN_HTTPS and prefix_warnings(caplog) == []
    assert https_server.gets(url_path(base))[-1].header("Range") == "bytes=300000-"
    assert record_of(hub_env, entry)["trust"] == ORIGIN_HTTPS
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)  # recorded: pinned from now on
    trust_file = (hub_env / "trusted" / f"{entry.name}.sha256").read_text()
    assert "origin over verified HTTPS" in trust_file and https_server.url(url_path(base)) in trust_file
    # a third party now gives a pinned file, accepted in strict mode without a warning
    hub.remove(entry, options=opts())
    mirror = dataclasses.replace(entry, weights=dataclasses.replace(entry.weights, url=http_server.url(url_path(base)),
                                                                    origins=()))
    g = hub.fetch(mirror, opts(strict=True))
    assert g.trust == PINNED and "hash recorded from its origin over HTTPS" in g.verified_by
    # and a pin that disagrees with the learned hash is refused: the recorded hash is never re-learned
    with pytest.raises(VerificationError, match="contradicts the hash recorded from its origin over HTTPS"):
        hub.fetch(entry, opts(sha256=forged_pin(ckpt_bytes)))
    assert hub.trusted_sha256(entry) == sha(ckpt_bytes)


# --------------------------------------------------------------------------------------------
# What the user sees: cache, verify, verify --hashes, --strict on the command line
# --------------------------------------------------------------------------------------------


def test_cache_and_verify_show_the_trust_level_and_verify_hashes_feeds_sha256sum(zoo, http_server, hub_env, ckpt_bytes,
                                                                               other_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    third = zoo.add("m_show_third", ckpt_bytes)
    pinned = zoo.add("m_show_pinned", other_bytes)
    cli("download", third.name)
    cli("download", pinned.name, "--sha256", sha(other_bytes))
    listing = json.loads(cli("cache", "--json").output)
    trust = {row["name"]: row["trust"] for row in listing["checkpoints"]}
    assert trust == {third.name: PREFIX_ONLY, pinned.name: PINNED}
    table = cli("cache").output
    assert PREFIX_ONLY in table and PINNED in table
    verify = cli("verify").output
    assert f"{PREFIX_ONLY} from {http_server.url(url_path(third))}" in verify
    out = cli("verify", "--hashes").output
    lines = out.splitlines()
    assert all(line.startswith("#") or len(line.split("  ", 1)[0]) == 64 for line in lines)
    assert f"# {third.name}: {PREFIX_ONLY}, from {http_server.url(url_path(third))}" in lines
    assert f"{sha(other_bytes)}  {hub.checkpoint_path(pinned)}" in lines
    (tmp_path / "sums").write_text(out)
    check = subprocess.run(["sha256sum", "-c", "--strict", str(tmp_path / "sums")], capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 2, check.stdout + check.stderr
    # and it is a PSEGZOO_HASHES list: a colleague's cache pins both
    monkeypatch.setenv("PSEGZOO_HOME", str(tmp_path / "colleague"))
    monkeypatch.setenv("PSEGZOO_HASHES", str(tmp_path / "sums"))
    cli("download", third.name, "--strict")
    assert json.loads(cli("cache", "--json").output)["checkpoints"][0]["trust"] == PINNED


def test_strict_on_the_command_line_is_one_clean_line(zoo, hub_env, ckpt_bytes, tmp_path):
    entry = zoo.add("m_cli_strict", ckpt_bytes)
    result = cli("download", entry.name, "--strict", code=1)
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error:") and "--strict" in line and "strict=True" not in line
    src = tmp_path / "stash" / entry.weights.file
    src.parent.mkdir()
    src.write_bytes(ckpt_bytes)
    result = cli("import", str(src), "--strict", code=1)
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error:") and "strict mode" in line
    folder = cli("import", str(src.parent), "--strict", code=1)
    assert "1 refused" in folder.stdout and "strict mode" in folder.stderr and not hub.checkpoint_path(entry).exists()
    result = cli("import", str(src))
    assert f"only the 8-digit hash prefix {sha(ckpt_bytes)[:8]} vouches for" in result.output
    assert os.path.exists(hub.checkpoint_path(entry))
