"""Which fast paths pay on this machine's CPU: measured once, remembered per machine.

Each path is timed against the plain computation it replaces, on the layer shapes where it matters
(a dilated ResNet block and a wide 3x3 convolution for channels-last, a 512-channel 3x3 convolution
for Winograd, PSPNet's head at its real widths for the decomposition), alternating the two and keeping each one's
shortest run (another process on the machine only makes runs longer). A path is kept only where
it is clearly faster (``MARGIN``), so psegzoo is never slower than its plain path.

The result is keyed by what decides it (CPU model and features, PyTorch version, threads) and kept
in a small JSON file given by the caller (``psegzoo.load`` uses the cache root), so the measurement
(a few seconds) runs once per machine.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..psp import PSPHead
from ..resnet import Bottleneck
from . import FastPaths, use_fast_paths
from . import winograd as wg

log = logging.getLogger(__name__)

MARGIN = 0.9
"""A fast path is kept when its time is at most this fraction of the plain one."""

REPEATS = 3

_memo: dict[str, dict[str, Any]] = {}


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
    weight = torch.randn(512, 512, 3, 3, generator=g) / 48
    x4 = torch.randn(1, 512, 24, 48, generator=g).contiguous(memory_format=cl)
    weight_cl = weight.contiguous(memory_format=cl)
    transformed = wg.transform_weight(weight)
    plain, fast = _best_pair(lambda: F.conv2d(x4, weight_cl, None, 1, 2, 2),
                             lambda: wg.conv3x3(x4, transformed, None, (2, 2)), repeats)
    results["winograd"] = {"plain": plain, "fast": fast}

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
    return FastPaths(decompose=wins.get("decompose", False), winograd=channels_last and wins.get("winograd", False),
                     channels_last=channels_last)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only means measuring again next time
        log.debug("cannot record the fast-path measurement in %s: %s", path, exc)


def _busy() -> bool:
    """Whether other work already loads the CPUs (then a measurement is not worth remembering)."""
    try:
        return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    except OSError:
        return False


def cpu_fast_paths(record: Path | None = None) -> tuple[FastPaths, dict[str, Any]]:
    """The fast paths that pay on this CPU, and the measurement behind them.

    Read from ``record`` (a JSON file) when this machine was measured before, else measured now (a
    few seconds) and written there, unless the machine was busy (its load average above half its
    CPUs), which makes timings unreliable: then the choice holds for this process only.
    """
    key = machine_key()
    entry = _memo.get(key)
    if entry is None and record is not None:
        entry = _read(record).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("measured"), dict):
        log.info("measuring which exact speed-ups pay on this CPU (once per machine, a few seconds)")
        busy = _busy()
        measured = measure()
        entry = {"measured": measured, "decided": asdict(decide(measured)), "when": time.strftime("%Y-%m-%d")}
        if record is not None and not busy:
            data = _read(record)
            data[key] = entry
            _write(record, data)
        elif busy:
            log.info("the machine was busy while measuring; the choice is kept for this process only")
    _memo[key] = entry
    try:
        paths = FastPaths(**entry["decided"])
    except TypeError:
        paths = decide(entry["measured"])
    return paths, entry


def device_fast_paths(device: torch.device) -> FastPaths:
    """The fast paths for a GPU: the decomposition and channels-last on CUDA; the decomposition on MPS.
    (Winograd here is a CPU algorithm.) For the CPU see :func:`cpu_fast_paths`."""
    if device.type == "cuda":
        return FastPaths(decompose=True, channels_last=True)
    return FastPaths(decompose=True)
