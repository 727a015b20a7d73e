"""Which fast paths pay on this machine's CPU: measured on request (``psegzoo tune``), else a fixed rule.

Each path is timed against the plain computation it replaces, on the layer shapes where it matters
(a dilated ResNet block and a wide 3x3 convolution for channels-last, a 512-channel 3x3 convolution
for Winograd, PSPNet's head at its real widths for the decomposition), alternating the two and keeping each one's
shortest run (another process on the machine only makes runs longer). A path is kept only where
it is clearly faster (``MARGIN``), so psegzoo is never slower than its plain path.

:func:`tune` measures and records the choice, keyed by what decides it (CPU model and features,
PyTorch version, threads), in a small JSON file given by the caller (the cache root's
``fast_paths.json``). Loading a model only reads that record (:func:`cpu_fast_paths`); without one
it uses :data:`DEFAULTS`, a rule on the CPU's vector features that needs no timing. Nothing here
measures behind the caller's back.
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..psp import PSPHead
from ..resnet import Bottleneck
from . import RECORD_NAME, FastPaths, use_fast_paths
from . import winograd as wg
from . import winograd_mm as wg4

MARGIN = 0.9
"""A fast path is kept when its time is at most this fraction of the plain one."""

REPEATS = 3

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """What the decision depends on: CPU model, its vector features as PyTorch sees them, torch, threads."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{_cpu_name()} | {capability} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _best_pair(plain: Callable[[], Any], fast: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """The shortest time of each of two functions, run alternately after one warm-up each.

    The shortest, not the mean: another process on the machine only ever makes a run longer.
    """
    plain()
    fast()  # warm-up: allocations, oneDNN primitives, transformed weights
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, fn in enumerate((plain, fast)):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]


def _random_(module: torch.nn.Module, g: torch.Generator) -> torch.nn.Module:
    for t in module.state_dict().values():
        if t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    return module


@torch.inference_mode()
def measure(repeats: int = REPEATS) -> dict[str, dict[str, float]]:
    """Seconds of each fast path and of what it replaces, on this CPU: ``{path: {"plain": s, "fast": s}}``.

    Shapes are those of a ResNet-50-D8 model on a 256 x 512 input (stride-8 maps of 32 x 64), with
    fewer channels where the full count would only make the measurement longer.
    """
    g = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    cl = torch.channels_last

    # channels_last: a dilated layer3 block and a wide 3x3 convolution (a head's), NCHW against NHWC
    block = _random_(Bottleneck(1024, 256, 1, 2, None, 1e-5), g).eval()
    block_cl = _random_(Bottleneck(1024, 256, 1, 2, None, 1e-5), g).eval().to(memory_format=cl)  # type: ignore[call-overload]
    x = torch.randn(1, 1024, 32, 64, generator=g)
    wide = torch.randn(256, 2048, 3, 3, generator=g) / 128
    xw = torch.randn(1, 2048, 16, 32, generator=g)
    x_cl, wide_cl, xw_cl = x.contiguous(memory_format=cl), wide.contiguous(memory_format=cl), xw.contiguous(memory_format=cl)
    plain, fast = _best_pair(lambda: (block(x), F.conv2d(xw, wide, None, 1, 1)),
                             lambda: (block_cl(x_cl), F.conv2d(xw_cl, wide_cl, None, 1, 1)), repeats)
    results["channels_last"] = {"plain": plain, "fast": fast}

    # winograd: a 512-channel dilated 3x3 convolution (layer4's), channels-last, direct against F(2x2, 3x3)
    # and against F(4x4, 3x3)
    weight = torch.randn(512, 512, 3, 3, generator=g) / 48
    x4 = torch.randn(1, 512, 24, 48, generator=g).contiguous(memory_format=cl)
    weight_cl = weight.contiguous(memory_format=cl)
    transformed = wg.transform_weight(weight)
    plain, fast = _best_pair(lambda: F.conv2d(x4, weight_cl, None, 1, 2, 2),
                             lambda: wg.conv3x3(x4, transformed, None, (2, 2)), repeats)
    results["winograd"] = {"plain": plain, "fast": fast}
    transformed4 = wg4.transform_weight(weight, 4)
    plain, fast = _best_pair(lambda: F.conv2d(x4, weight_cl, None, 1, 2, 2),
                             lambda: wg4.conv3x3(x4, transformed4, None, (2, 2)), repeats)
    results["winograd_f4"] = {"plain": plain, "fast": fast}

    # decompose: PSPNet's head (2048 channels in, 512 out), concatenation against decomposition
    head = _random_(PSPHead(2048, 512, 19, (1, 2, 3, 6), False), g).eval()
    head_fast = PSPHead(2048, 512, 19, (1, 2, 3, 6), False).eval()
    head_fast.load_state_dict(head.state_dict())
    use_fast_paths(head_fast, FastPaths(decompose=True))
    xh = torch.randn(1, 2048, 24, 48, generator=g)
    plain, fast = _best_pair(lambda: head([xh]), lambda: head_fast([xh]), repeats)
    results["decompose"] = {"plain": plain, "fast": fast}
    return results


def decide(measured: dict[str, dict[str, float]]) -> FastPaths:
    """The paths whose measured time is at most ``MARGIN`` of the plain one (Winograd needs channels-last)."""
    wins = {k: v["fast"] <= MARGIN * v["plain"] for k, v in measured.items()}
    channels_last = wins.get("channels_last", False)
    f2, f4 = wins.get("winograd", False), wins.get("winograd_f4", False)
    if f2 and f4:  # both pay: the faster tile
        f4 = measured["winograd_f4"]["fast"] <= measured["winograd"]["fast"]
    return FastPaths(decompose=wins.get("decompose", False), winograd=channels_last and (f2 or f4),
                     channels_last=channels_last, winograd_f4=channels_last and f4)


__all__ = ["RECORD_NAME", "Choice", "Tuning", "cpu_fast_paths", "decide", "default_fast_paths", "device_fast_paths",
           "measure", "tune"]

DEFAULTS: dict[str, FastPaths] = {
    "AVX512": FastPaths.all(),
    "AVX2": FastPaths.all(),
}
"""The CPU's fast paths without a record, by ``torch.backends.cpu.get_cpu_capability()``.

The decomposition always does less arithmetic (PSPNet's bottleneck loses half its input channels),
so it is on everywhere. Channels-last is on where oneDNN has vector kernels for it (AVX2, AVX-512).
Winograd F(4x4, 3x3) (``winograd`` with ``winograd_f4``) turns the wide 3x3 convolutions, dilated
ones included, into a few large matrix products with 4x fewer multiplications: it is what makes
PSPNet R-50-D8 1.23x faster than decomposition and channels-last alone on the AVX2 reference CPU
(docs/cpu-performance.md), and it rests on matrix products, which every x86-64 vector unit runs near
its peak. F(2x2, 3x3) alone is never a default: its many small transforms lose on 2 threads.
``psegzoo tune`` measures and may record another choice."""

FALLBACK = FastPaths(decompose=True)
"""The paths for a CPU family missing from :data:`DEFAULTS` (no AVX2, ARM, POWER, s390x)."""

BUSY_FRACTION = 0.5
"""A measurement is not trusted when the 1-minute load average is above this fraction of the CPUs."""


def default_fast_paths(capability: str | None = None) -> FastPaths:
    """The rule's choice for a CPU with ``capability`` (default: this one's); no timing."""
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    return DEFAULTS.get(capability, FALLBACK)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write the record atomically; a folder that cannot be written is the caller's error to report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _paths_of(entry: Any) -> FastPaths | None:
    """The choice kept in one record entry, or None when the entry is not one psegzoo wrote."""
    if not isinstance(entry, dict) or not isinstance(entry.get("decided"), dict):
        return None
    try:
        return FastPaths(**entry["decided"])
    except TypeError:
        return None


@dataclass(frozen=True)
class Choice:
    """The CPU's fast paths and where they come from: ``"record"`` (``psegzoo tune``) or ``"rule"``."""

    paths: FastPaths
    source: str
    key: str
    measured: dict[str, dict[str, float]] | None = None

    def describe(self) -> str:
        if self.source == "record":
            return f"{self.paths} (measured by psegzoo tune)"
        return f"{self.paths} (the default for this CPU; 'psegzoo tune' measures which pay)"


def cpu_fast_paths(record: Path | None = None) -> Choice:
    """The fast paths for this CPU: the choice recorded in ``record`` for this machine, else the rule's
    (:func:`default_fast_paths`). Reads a file and nothing more: it never measures."""
    key = machine_key()
    entry = _read(record).get(key) if record is not None else None
    paths = _paths_of(entry)
    if paths is None:
        return Choice(default_fast_paths(), "rule", key)
    measured = entry.get("measured") if isinstance(entry, dict) else None
    return Choice(paths, "record", key, measured if isinstance(measured, dict) else None)


@dataclass(frozen=True)
class Tuning:
    """What :func:`tune` measured, what it chose, and whether it was recorded (and if not, why)."""

    key: str
    measured: dict[str, dict[str, float]]
    chosen: FastPaths
    load: tuple[float, float]
    cpus: int
    busy: bool
    record: Path | None
    recorded: bool


def load_average() -> tuple[float, int]:
    """The 1-minute load average (0 where the system has none) and the number of CPUs."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = 0.0
    return load, os.cpu_count() or 1


def is_busy(load: float, cpus: int) -> bool:
    """Whether other work loads the CPUs too much for timings to be trusted."""
    return load > BUSY_FRACTION * cpus


def tune(record: Path | None, *, force: bool = False, repeats: int = REPEATS) -> Tuning:
    """Measure which fast paths pay on this CPU and record the choice in ``record`` (a JSON file).

    The load average is read before measuring (the measurement's own work would raise it after);
    when it says the machine was busy the result is not recorded unless ``force``. Raises ``OSError`` when the record cannot be written.
    """
    before, cpus = load_average()
    measured = measure(repeats)
    after, _ = load_average()
    chosen = decide(measured)
    busy = is_busy(before, cpus)
    recorded = False
    key = machine_key()
    if record is not None and (force or not busy):
        data = _read(record)
        data[key] = {"measured": measured, "decided": asdict(chosen), "when": time.strftime("%Y-%m-%d"),
                     "load": [before, after], "cpus": cpus, "forced": bool(force and busy)}
        _write(record, data)
        recorded = True
    return Tuning(key, measured, chosen, (before, after), cpus, busy, record, recorded)


def device_fast_paths(device: torch.device) -> FastPaths:
    """The fast paths for a GPU: the decomposition and channels-last on CUDA; the decomposition on MPS.
    (Winograd here is a CPU algorithm.) For the CPU see :func:`cpu_fast_paths`."""
    if device.type == "cuda":
        return FastPaths(decompose=True, channels_last=True)
    return FastPaths(decompose=True)
