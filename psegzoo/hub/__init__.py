"""Verified checkpoints and the local cache (never imports torch).

A checkpoint is only ever used after its SHA-256 has been checked (:mod:`.trust`), wherever it came
from: the cache, a copy already on this machine, a mirror, the original URL or an alternative. How
far the check proves the file is its trust level, recorded with it: a full hash pins it, the
8-digit published prefix alone only guards against accidents (docs/trust.md).
One frozen :class:`DownloadOptions` (:mod:`.settings`, the only reader of the environment) is
built at the edge and passed to every call.

==============  ==================================================================
``settings``    DownloadOptions: arguments, then environment, then defaults
``redact``      URLs as shown and stored: no user:password, no query values
``layout``      where each cached file lives; the cache record
``trust``       hash policy and trust levels: published, pinned, recorded, prefix-only
``hashes``      PSEGZOO_HASHES: full hashes in sha256sum format
``redact``      URLs without their credentials, to show or store
``locking``     one process per checkpoint (filelock), waits that reset on progress
``transfer``    HTTP streaming, resume, retry policy, size/speed/time bounds
``sources``     search folders, mirror templates, hf://, the manifest's URLs
``store``       fetch: the cache, local copies, URLs; install
``importing``   import a file or a folder
``maintenance`` cached, remove, verify
``mirroring``   mirror: cached files in the original URL layout for a team
``converted``   converted weights: recorded, verified, written under the lock
==============  ==================================================================
"""
from __future__ import annotations

from pathlib import Path

from ..manifest import Entry
from .converted import converted_file, discard_converted, header_metadata, read_converted, read_header, store_converted
from .failures import RetryPolicy, retry_after_seconds
from .importing import ImportResult, import_checkpoint, import_folder
from .layout import CacheLayout, CacheRecord, ConvertedRecord, weights_of
from .layout import read_record as _read_record
from .maintenance import CachedCheckpoint, VerifyResult, cached, remove, verify
from .mirroring import MirrorResult, mirror
from .settings import DownloadOptions, cache_root, redact
from .sources import candidate_urls as _candidate_urls
from .store import Fetched, checkpoint_path, download, fetch, ways_in
from .trust import file_sha256, normalize_sha256
from .trust import trusted_sha256 as _trusted_sha256

__all__ = [
    "CacheLayout",
    "CacheRecord",
    "CachedCheckpoint",
    "ConvertedRecord",
    "DownloadOptions",
    "Fetched",
    "ImportResult",
    "MirrorResult",
    "RetryPolicy",
    "VerifyResult",
    "cache_root",
    "cached",
    "candidate_urls",
    "checkpoint_path",
    "converted_file",
    "converted_path",
    "discard_converted",
    "download",
    "fetch",
    "file_sha256",
    "header_metadata",
    "import_checkpoint",
    "import_folder",
    "mirror",
    "normalize_sha256",
    "read_converted",
    "read_header",
    "read_record",
    "redact",
    "remove",
    "retry_after_seconds",
    "store_converted",
    "trusted_sha256",
    "verify",
    "ways_in",
]


def _layout(options: DownloadOptions | None) -> CacheLayout:
    return CacheLayout(options.home if options is not None else cache_root())


def converted_path(entry: Entry, options: DownloadOptions | None = None) -> Path:
    """``<root>/converted/<stem>.safetensors``: where ``entry``'s converted weights belong (may not exist)."""
    return _layout(options).converted(weights_of(entry).file)


def read_record(entry: Entry, options: DownloadOptions | None = None) -> CacheRecord | None:
    """The cache record of ``entry``'s checkpoint (full SHA-256, size, origin, converted weights), or None."""
    return _read_record(_layout(options), weights_of(entry).file)


def trusted_sha256(entry: Entry, options: DownloadOptions | None = None) -> str | None:
    """The SHA-256 trusted for ``entry`` on first use, or None (only entries that publish no hash have one)."""
    return _trusted_sha256(_layout(options), entry)


def candidate_urls(entry: Entry, options: DownloadOptions | None = None) -> list[str]:
    """The URLs tried for ``entry``, in order: mirrors, the original URL, the manifest's alternatives."""
    return _candidate_urls(entry, options if options is not None else DownloadOptions())
