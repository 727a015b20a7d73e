"""Data kept outside the repository (zoo tables, reference specs, mmsegmentation's configs).

Each is looked up in a directory named by an environment variable, else in the folders above the
checkout (``../shared`` from the main checkout, ``../../shared`` from a worktree). Tests that need
such data skip when it is absent, except under CI (``CI`` set): there a missing folder is a
failure, so a broken set-up can never pass as a run of skipped tests.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_ENV = "PSEGZOO_TEST_SHARED"
MMSEG_ENV = "PSEGZOO_TEST_MMSEG"


def _search_up(*relative: str) -> Path:
    """The first ``<ancestor>/<relative>`` that exists, else the one beside the checkout."""
    for ancestor in REPO.parents:
        candidate = ancestor.joinpath(*relative)
        if candidate.exists():
            return candidate
    return REPO.parent.joinpath(*relative)


def shared_dir() -> Path:
    """The folder holding ``zoo/`` and ``reference/``."""
    env = os.environ.get(SHARED_ENV, "").strip()
    return Path(env) if env else _search_up("shared")


def mmseg_dir() -> Path:
    """mmsegmentation 1.2.2's package folder (holding ``.mim/configs`` and ``datasets``)."""
    env = os.environ.get(MMSEG_ENV, "").strip()
    return Path(env) if env else _search_up("ref", "mmseg", "mmseg")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needs(path: Path, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a test that reads ``path``: skipped when it is absent, failed when absent under CI."""

    def decorate(test: Callable[..., Any]) -> Callable[..., Any]:
        if path.exists():
            return test
        if in_ci():

            @functools.wraps(test)
            def missing(*args: Any, **kwargs: Any) -> None:
                pytest.fail(f"{what} not found at {path} (CI is set, so missing data fails the test; "
                            f"set {SHARED_ENV} or {MMSEG_ENV})")

            return missing
        return pytest.mark.skip(reason=f"{what} not found at {path}")(test)

    return decorate
