"""Data flows one way: each module imports only the psegzoo modules to its left."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "psegzoo"

# module -> psegzoo modules it may import (its left); third-party limits where they matter.
ALLOWED = {
    "errors": set(),
    "settings": {"errors"},
    "units": set(),
    "files": set(),
    "devices": {"errors"},
    "heap": {"errors", "settings"},
    "manifest": {"units", "errors", "files", "settings"},
    "hub": {"units", "errors", "files", "manifest", "settings"},
    "convert": {"units", "errors", "files", "manifest"},
    "models": {"units", "errors", "manifest", "models"},
    "images": {"units", "errors", "settings"},
    "outputs": {"units", "errors", "files"},
    "predictor": {"units", "errors", "manifest", "devices"},
    "prefetch": set(),
    "video": {"units", "errors", "files", "images", "outputs"},
    "api": {"units", "errors", "devices", "files", "prefetch", "manifest", "hub", "convert", "models", "images", "outputs",
            "predictor", "__init__"},
    "bench": {"units", "errors", "devices", "files", "manifest", "hub", "models", "predictor", "api"},
    "evaluation": {"units", "errors", "devices", "files", "prefetch", "manifest", "hub", "images", "outputs", "predictor", "api",
                   "evaluation"},
    "export": {"units", "errors", "devices", "files", "manifest", "hub", "convert", "models", "images", "outputs", "predictor", "api",
               "__init__"},
    "distributed": {"units", "errors", "devices", "files", "prefetch", "manifest", "hub", "convert", "models", "images", "outputs",
                    "predictor", "video", "api"},
    "serve": {"units", "errors", "devices", "files", "manifest", "hub", "images", "outputs", "predictor", "api", "__init__"},
    "cli": {"__init__"},
}
NO_TORCH = {"heap", "settings", "units", "errors", "files", "devices", "prefetch", "manifest", "hub", "images", "outputs", "video", "cli"}
STDLIB_ONLY = {"heap", "settings", "units", "errors", "files", "devices", "prefetch", "manifest"}


def _module_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(psegzoo top-level modules, top-level third-party packages) imported by one file.

    Relative imports are resolved against the file's own package, so ``from .common import x``
    inside ``psegzoo/cli/`` counts as ``cli`` and ``from .. import errors`` as ``errors``.
    """
    ours, theirs = set(), set()
    package = list(path.relative_to(PKG).parts[:-1])  # [] for psegzoo/x.py, ["cli"] for psegzoo/cli/x.py
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top = (node.module or "").split(".")[0]
                if top == "psegzoo":
                    rest = (node.module or "").split(".")[1:]
                    ours.add(rest[0] if rest else "__init__")
                else:
                    theirs.add(top)
                continue
            base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
            if base:
                ours.add(base[0])
            elif node.module:
                ours.add(node.module.split(".")[0])
            else:
                ours.update("__init__" if a.name == "__version__" else a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "psegzoo":
                    parts = alias.name.split(".")
                    ours.add(parts[1] if len(parts) > 1 else "__init__")
                else:
                    theirs.add(top)
    return ours, theirs


FILES = sorted(p for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py") or p.parent != PKG)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_flow_left_to_right(path):
    module = _module_of(path)
    ours, theirs = _imports(path)
    ours.discard(module)
    assert ours <= ALLOWED[module], f"{path.name} imports {sorted(ours - ALLOWED[module])}"
    if module in NO_TORCH:
        assert not theirs & {"torch", "safetensors"}, f"{path.name} must not import torch"
    if module in STDLIB_ONLY:
        assert theirs <= set(sys.stdlib_module_names) | {"__future__"}, f"{path.name} imports {theirs}"


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_fcntl_anywhere(path):
    """Locks come from filelock: the package must import on Windows, where there is no fcntl."""
    _, theirs = _imports(path)
    assert "fcntl" not in theirs and "msvcrt" not in theirs, path


def test_no_openmmlab_imports():
    for path in PKG.rglob("*.py"):
        _, theirs = _imports(path)
        assert not theirs & {"mmcv", "mmengine", "mmseg", "mmsegmentation", "ssseg"}, path


def test_errors_name_options_for_their_audience():
    """One message, two renderings: Python callers see keyword arguments, the CLI sees flags."""
    from psegzoo.errors import ImageError, option

    exc = ImageError(f"image too large; raise the limit with {option('max_pixels=N', '--max-pixels N')}")
    assert str(exc) == "image too large; raise the limit with max_pixels=N"
    assert exc.cli_message() == "image too large; raise the limit with --max-pixels N"
