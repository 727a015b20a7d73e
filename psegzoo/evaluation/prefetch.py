"""The bounded prefetch of :mod:`psegzoo.prefetch`, where evaluation code has long found it."""
from __future__ import annotations

from ..prefetch import prefetch

__all__ = ["prefetch"]
