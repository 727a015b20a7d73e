"""Exception types raised by psegzoo.

Every error a user can cause derives from :class:`PsegzooError`; the CLI prints its message
on one line and exits non-zero. Messages say which name/file/value is wrong and what to do next.
"""
from __future__ import annotations


class PsegzooError(Exception):
    """Base class of every error psegzoo raises on purpose."""


class ManifestError(PsegzooError):
    """A manifest file (built-in or extra) is malformed or breaks the schema."""


class UnknownModelError(PsegzooError, LookupError):
    """A model name or alias matches no entry (the message lists the closest names)."""


class NoWeightsError(PsegzooError):
    """The entry exists but publishes no weights file."""


class DownloadError(PsegzooError):
    """Fetching a checkpoint failed on every URL tried (the message lists each URL and why)."""


class VerificationError(PsegzooError):
    """A file's hash or size does not match what the manifest or cache record expects."""


class UnverifiedWeightsError(PsegzooError):
    """The entry has no published hash and the user has not allowed an unverified download."""


class OfflineError(PsegzooError):
    """Offline mode is on and the checkpoint is not in the cache."""


class CacheError(PsegzooError):
    """The local cache cannot be used (lock, permissions, disk space, unsafe path)."""


class CheckpointError(PsegzooError):
    """A checkpoint file cannot be read safely or does not fit the architecture."""


class ImageError(PsegzooError):
    """An input image is missing, unreadable, truncated, too large or empty."""


class PredictionError(PsegzooError):
    """Prediction settings are invalid (e.g. stride larger than crop)."""


class OutputError(PsegzooError):
    """A result cannot be written (unwritable folder, full disk, or a format that cannot hold it)."""
