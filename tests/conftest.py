"""Fixtures shared by every test module."""
from __future__ import annotations

from tests.support.http_server import http_server

__all__ = ["http_server"]
