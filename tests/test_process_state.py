"""Library code leaves the process as it found it; settings are read in the settings modules.

Thread counts, seeds, default dtypes and the GPU's peak-memory counters belong to the program (in
psegzoo, the command line in ``psegzoo/cli``); cuDNN flags are set only in a scope that restores
them. Checked two ways: a scan of the source (every module outside ``psegzoo/cli``) and a prediction
through the API that must leave torch's settings as they were.
"""
from __future__ import annotations

import ast
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import psegzoo
from psegzoo import predictor
from psegzoo.devices import DTYPES
from psegzoo.errors import DatasetError, PsegzooError, check_count
from psegzoo.predictor.cuda import cudnn_benchmark
from tests.support.media import NAME, image, served  # noqa: F401

PKG = Path(__file__).resolve().parents[1] / "psegzoo"
LIBRARY = sorted(p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] != "cli")

PROCESS_WIDE = {
    "set_num_threads", "set_num_interop_threads", "set_flush_denormal", "manual_seed", "manual_seed_all", "seed",
    "set_rng_state", "set_default_dtype", "set_default_device", "set_default_tensor_type",
    "use_deterministic_algorithms", "set_float32_matmul_precision", "set_printoptions", "set_anomaly_enabled",
    "reset_peak_memory_stats", "reset_max_memory_allocated", "reset_accumulated_memory_stats",
    "set_per_process_memory_fraction",
}
"""torch calls that change the whole process (called on ``torch`` or one of its modules)."""
SCOPED_CALLS = {"set_grad_enabled"}
"""torch calls that are process-wide as a statement, scoped as a ``with`` (they restore on exit)."""


def _dotted(node: ast.AST) -> str:
    """``torch.backends.cudnn.benchmark`` for that attribute chain ('' when it is not a plain chain)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def _restoring_scope(func: ast.AST) -> set[str]:
    """The attributes a ``@contextmanager`` function puts back in a ``finally`` around its ``yield``."""
    if not isinstance(func, ast.FunctionDef) or not any("contextmanager" in ast.unparse(d) for d in func.decorator_list):
        return set()
    restored = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Try) and any(isinstance(n, ast.Yield) for b in node.body for n in ast.walk(b)):
            for stmt in node.finalbody:
                for n in ast.walk(stmt):
                    if isinstance(n, ast.Assign):
                        restored.update(_dotted(t) for t in n.targets)
    return restored


def process_state_changes(source: str) -> list[str]:
    """Where ``source`` changes torch's process-wide state outside a scope that restores it."""
    tree = ast.parse(source)
    scoped = {id(n.context_expr) for n in ast.walk(tree) if isinstance(n, ast.withitem)}
    found: set[str] = set()

    def visit(node: ast.AST, restored: set[str]) -> None:
        if isinstance(node, ast.FunctionDef):
            restored = restored | _restoring_scope(node)
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name.startswith("torch.") and (last in PROCESS_WIDE or (last in SCOPED_CALLS and id(node) not in scoped)):
                found.add(f"line {node.lineno}: {name}()")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                name = _dotted(target)
                if name.startswith("torch.") and name not in restored:
                    found.add(f"line {node.lineno}: {name} = ...")
        for child in ast.iter_child_nodes(node):
            visit(child, restored)

    visit(tree, set())
    return sorted(found, key=lambda text: int(text.split()[1].rstrip(":")))


def test_the_scan_finds_what_it_looks_for():
    """The scanner itself: each kind of change is found; a restoring context manager and a local
    generator's seed are not changes of the process."""
    leaky = (
        "import torch\n"
        "torch.backends.cudnn.benchmark = True\n"
        "def f(dev):\n"
        "    torch.set_num_threads(2)\n"
        "    torch.cuda.reset_peak_memory_stats(dev)\n"
        "    torch.manual_seed(0)\n"
        "    torch.set_grad_enabled(False)\n"
        "    torch.backends.cuda.matmul.allow_tf32 = True\n"
    )
    assert [line.split(": ")[1] for line in process_state_changes(leaky)] == [
        "torch.backends.cudnn.benchmark = ...", "torch.set_num_threads()", "torch.cuda.reset_peak_memory_stats()",
        "torch.manual_seed()", "torch.set_grad_enabled()", "torch.backends.cuda.matmul.allow_tf32 = ...",
    ]
    clean = (
        "import contextlib, torch\n"
        "@contextlib.contextmanager\n"
        "def scoped():\n"
        "    before = torch.backends.cudnn.benchmark\n"
        "    torch.backends.cudnn.benchmark = True\n"
        "    try:\n"
        "        yield\n"
        "    finally:\n"
        "        torch.backends.cudnn.benchmark = before\n"
        "def g():\n"
        "    gen = torch.Generator().manual_seed(0)\n"
        "    with torch.set_grad_enabled(False):\n"
        "        return gen\n"
    )
    assert process_state_changes(clean) == []
    unrestored = clean.replace("        torch.backends.cudnn.benchmark = before\n", "        pass\n")
    assert process_state_changes(unrestored) == ["line 5: torch.backends.cudnn.benchmark = ..."]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PKG)))
def test_library_modules_set_no_process_wide_torch_state(path):
    assert process_state_changes(path.read_text()) == [], f"{path.relative_to(PKG)} changes the process"


def test_cudnn_flag_is_the_programs_outside_the_scope():
    before = torch.backends.cudnn.benchmark
    try:
        for program in (False, True):
            torch.backends.cudnn.benchmark = program
            with cudnn_benchmark():
                assert torch.backends.cudnn.benchmark is True
                with cudnn_benchmark():  # nested
                    assert torch.backends.cudnn.benchmark is True
                assert torch.backends.cudnn.benchmark is True
            assert torch.backends.cudnn.benchmark is program
            with cudnn_benchmark(False):  # off: left alone
                assert torch.backends.cudnn.benchmark is program
        # Scopes of several threads that overlap: the last one out restores the program's value.
        torch.backends.cudnn.benchmark = False
        inside, leave = threading.Barrier(4), threading.Event()

        def scoped():
            with cudnn_benchmark():
                inside.wait(timeout=30)
                leave.wait(timeout=30)

        threads = [threading.Thread(target=scoped) for _ in range(3)]
        for t in threads:
            t.start()
        inside.wait(timeout=30)
        assert torch.backends.cudnn.benchmark is True
        leave.set()
        for t in threads:
            t.join(timeout=30)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def _torch_settings() -> dict:
    return {"threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
            "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.enabled,
                      torch.backends.cudnn.allow_tf32),
            "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled(),
            "matmul": torch.get_float32_matmul_precision(), "deterministic": torch.are_deterministic_algorithms_enabled()}


def test_a_prediction_through_the_api_leaves_torch_settings_as_they_were(served):  # noqa: F811
    before = _torch_settings()
    threads = max(1, before["threads"] - 1) if before["threads"] > 1 else 2  # a count psegzoo would not choose
    cudnn = torch.backends.cudnn.benchmark
    try:
        torch.set_num_threads(threads)
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            expected = _torch_settings()
            seg = psegzoo.load(NAME, device="cpu", download=psegzoo.DownloadOptions(mirrors=[served.mirror], progress=False))
            seg.predict(image(1, 40, 60))
            seg.predict(image(2, 70, 50), mode="slide", crop_size=(32, 32), stride=(24, 24))
            list(seg.predict_many([image(3, 40, 60), image(4, 40, 60)], batch_size=2))
            assert _torch_settings() == expected
    finally:
        torch.set_num_threads(before["threads"])
        torch.backends.cudnn.benchmark = cudnn


# --------------------------------------------------------------------------------------------
# Settings read in the settings modules; one check of counts; one table of precision names
# --------------------------------------------------------------------------------------------

SETTINGS_MODULES = {"settings.py", "hub/settings.py", "predictor/settings.py", "serve/settings.py",
                    "distributed/environ.py"}
"""Where environment variables are read (``distributed/environ.py``: torchrun's, into a frozen ``Launch``)."""


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PKG)))
def test_environment_is_read_in_the_settings_modules_only(path):
    where = path.relative_to(PKG).as_posix()
    reads = [node.lineno for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and _dotted(node) in ("os.environ", "os.getenv", "os.environb")]
    assert where in SETTINGS_MODULES or reads == [], f"{where} reads the environment on lines {reads}"


def test_index_and_pixel_limit_come_from_the_settings(monkeypatch, tmp_path):
    extra = [tmp_path / "a.json", tmp_path / "b.json"]
    monkeypatch.setenv("PSEGZOO_INDEX", f"{extra[0]}{os.pathsep}{extra[1]}")
    assert psegzoo.manifest.extra_index_paths() == tuple(extra) == psegzoo.DownloadOptions().index
    monkeypatch.setenv("PSEGZOO_MAX_PIXELS", "1_000")
    assert psegzoo.images.max_pixels_limit() == 1000 and psegzoo.images.max_pixels_limit(7) == 7
    monkeypatch.setenv("PSEGZOO_MAX_PIXELS", "0")
    with pytest.raises(psegzoo.ImageError, match="PSEGZOO_MAX_PIXELS must be a positive number of pixels, got 0"):
        psegzoo.images.max_pixels_limit()


@pytest.mark.parametrize(("value", "kwargs", "message"), [
    (0, {}, "n must be a positive integer, got 0"),
    (True, {}, "n must be a positive integer, got True"),
    (2.0, {}, "n must be a positive integer, got 2.0"),
    ("3", {}, "n must be a positive integer, got '3'"),
    (None, {}, "n must be a positive integer, got None"),
    (-1, {"minimum": 0, "unit": "number of threads"}, r"n must be a number of threads \(0 or more\), got -1"),
    (0, {"none": True, "unit": "number of images"}, "n must be a positive number of images or None, got 0"),
])
def test_counts_are_checked_one_way(value, kwargs, message):
    with pytest.raises(DatasetError, match=f"^{message}$"):
        check_count(value, "n", DatasetError, **kwargs)


def test_counts_that_pass_come_back_as_ints():
    assert check_count(3, "n") == 3 and check_count(np.int64(4), "n") == 4 and check_count(0, "n", minimum=0) == 0
    assert check_count(None, "n", none=True) is None
    with pytest.raises(PsegzooError):
        check_count(0, "n")


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_precision_name_means_the_same_to_load_predict_and_evaluate(name):
    """One table: a name load() takes as a dtype is one autocast takes, and evaluate agrees with predict."""
    from psegzoo.api.loading import _pick_dtype
    from psegzoo.evaluation.runner import _amp_name

    dtype = _pick_dtype(name)
    assert dtype == getattr(torch, DTYPES[name])
    amp = predictor.autocast_dtype(name, "cuda")
    assert amp == (None if dtype == torch.float32 else dtype)
    assert _amp_name(name) == (None if amp is None else DTYPES[name])
    assert _pick_dtype(name.upper()) == dtype


def test_peak_memory_is_read_without_resetting_and_tightened_by_earlier_exact_readings():
    """The counters' arithmetic (on a CPU, with the readings a GPU would give): a block that raised the
    process's peak is measured exactly; one that stayed under an earlier peak gets an upper bound,
    which an exact reading of the same input on the same model replaces."""
    from psegzoo.predictor.cuda import PeakMeter, item_bytes

    def reading(start: int, before: int, after: int) -> PeakMeter:
        meter = PeakMeter(torch.device("cuda"))
        meter.start, meter.before, meter.after = start, before, after
        return meter

    model, other = torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)
    fresh = reading(start=1000, before=1000, after=1600)  # a new peak: 600 bytes for this block
    assert fresh.exact and fresh.bytes == 600
    assert item_bytes(model, "window", fresh) == 600
    stale = reading(start=1000, before=9000, after=9000)  # under an earlier peak: at most 8000
    assert not stale.exact and stale.bytes == 8000
    assert item_bytes(model, "window", stale) == 600  # the exact reading of this input stands
    assert item_bytes(other, "window", stale) == 8000  # another model: only the bound is known
    assert item_bytes(model, "image", reading(1000, 1000, 5000), items=4, extra=400) == 1100  # (4000 + 400) / 4
