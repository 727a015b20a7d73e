"""Fixtures shared by every test module."""
from __future__ import annotations

from tests.support.eval_data import eval_data
from tests.support.http_server import http_server
from tests.support.hub import ckpt_bytes, hub_env, other_bytes, zoo
from tests.support.mmseg_wheel import mmseg_package

__all__ = ["ckpt_bytes", "eval_data", "http_server", "hub_env", "mmseg_package", "other_bytes", "zoo"]
