"""Fixtures shared by every test module."""
from __future__ import annotations

from tests.support.eval_data import eval_data
from tests.support.http_server import http_server

__all__ = ["eval_data", "http_server"]
