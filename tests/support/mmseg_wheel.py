"""mmsegmentation 1.2.2's configs and dataset classes, read as data by the manifest builder tests.

Looked up, in order: ``$PSEGZOO_TEST_MMSEG``; ``ref/mmseg/mmseg`` in a folder above the checkout;
a copy unpacked earlier into the user cache; else the pinned wheel is fetched from PyPI with
``pip download`` (the package is never installed or imported, only its ``.py`` files are read),
checked against its published sha256 and unpacked there. Where none of these works the test is
skipped, and under CI it fails, so a broken set-up never passes as skipped.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.support.shared import MMSEG_ENV, in_ci, mmseg_dir

VERSION = "1.2.2"
WHEEL = f"mmsegmentation-{VERSION}-py3-none-any.whl"
SHA256 = "dadf62bba00a65947d71b08471bc1fe2fee8e2d6eb740381eecd03991e204b47"
# What the builder reads: the configs (in .mim) and the METAINFO of the dataset classes.
WANTED = ("mmseg/.mim/configs/", "mmseg/datasets/")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "psegzoo-tests" / f"mmsegmentation-{VERSION}"


def _unpack(wheel: Path, target: Path) -> None:
    """Extract the wanted members (the configs and dataset classes) of ``wheel`` into ``target``."""
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(WANTED) and not name.endswith("/") and ".." not in name.split("/"):
                zf.extract(name, target)


def _download(into: Path) -> tuple[Path | None, str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "-q", "-d", str(into), f"mmsegmentation=={VERSION}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip download failed: {exc}"
    wheel = into / WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"pip download failed: {tail}"
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != SHA256:
        return None, f"{WHEEL} from PyPI has sha256 {digest}, expected {SHA256}"
    return wheel, ""


def locate() -> tuple[Path | None, str]:
    """The mmseg package folder (holding ``.mim/configs`` and ``datasets``), or why there is none."""
    found = mmseg_dir()
    if (found / ".mim" / "configs").is_dir():
        return found, ""
    if os.environ.get(MMSEG_ENV, "").strip():
        return None, f"${MMSEG_ENV}={found} has no .mim/configs"
    root = _cache_root()
    cached = root / "mmseg"
    if (cached / ".mim" / "configs").is_dir():
        return cached, ""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable user cache: unpack for this session only
        root = Path(tempfile.mkdtemp(prefix="psegzoo-tests-mmseg-"))
        cached = root / "mmseg"
    with tempfile.TemporaryDirectory() as tmp:
        wheel, why = _download(Path(tmp))
        if wheel is None:
            return None, why
        staging = Path(tempfile.mkdtemp(prefix=".mmseg-", dir=root))
        _unpack(wheel, staging / "unpacked")
        try:
            os.replace(staging / "unpacked" / "mmseg", cached)
        except OSError:
            if not cached.is_dir():  # another session unpacked it first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return cached, ""


@pytest.fixture(scope="session")
def mmseg_package() -> Path:
    path, why = locate()
    if path is None:
        message = f"mmsegmentation {VERSION}'s configs are not available ({why}); set {MMSEG_ENV}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path
