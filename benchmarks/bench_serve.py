"""Requests per second and latency of ``psegzoo serve`` against calling ``Segmenter.predict`` directly.

One process: a synthetic PSPNet R-18-D8 (tests/support/synth.py) is loaded once; the same PNGs are
segmented at each concurrency (``--concurrency``, default 1, 4 and 16 clients at a time):

* ``direct``  client threads call ``Segmenter.predict(path)`` on the shared model (read, predict);
* ``served``  client threads POST the PNG bytes to a uvicorn server in a thread of this process
  (``psegzoo.serve.make_server``, label PNG answers), whose batcher groups concurrent requests.

Each level sends ``--requests`` requests after one warm-up round; p50/p99 are per-request latencies.
The served figures include the HTTP clients running in the same process (they share its GIL), so
the overhead they show is an upper bound. The mean batch comes from the server's ``/metrics``.

    python benchmarks/bench_serve.py                       # CPU: 48 requests per level, 128x256 images
    python benchmarks/bench_serve.py --device cuda --size 512x1024 --scale 1024x512 --requests 256
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import parse_size  # noqa: E402


def level(call: Callable[[int], Any], requests: int, concurrency: int) -> dict[str, float]:
    """``requests`` calls of ``call(i)`` from ``concurrency`` threads: rate and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t0 = time.perf_counter()
        call(i)
        with lock:
            latencies.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up round
        latencies.clear()
        t0 = time.perf_counter()
        list(pool.map(one, range(requests)))
        seconds = time.perf_counter() - t0
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return {"rps": requests / seconds, "p50": statistics.median(latencies) * 1000, "p99": p99 * 1000}


def batch_totals(url: str) -> tuple[float, float]:
    import requests

    count = total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("psegzoo_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("psegzoo_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="distinct PNGs, sent in turn (default 16)")
    parser.add_argument("--size", default="128x256", type=parse_size, help="image HxW (default 128x256)")
    parser.add_argument("--scale", default="256x128", type=parse_size, help="test scale LONGxSHORT (default 256x128)")
    parser.add_argument("--requests", type=int, default=48, help="requests per level after the warm-up (default 48)")
    parser.add_argument("--concurrency", default="1,4,16", help="clients at a time, comma-separated (default 1,4,16)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default 8)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms (default 5)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    import requests

    import psegzoo
    from benchmarks.common import random_pngs, synthetic_weights
    from tests.support.hub import free_port
    from tests.support.served import MMSEG_BASE

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        seg = psegzoo.load(MMSEG_BASE, weights=synthetic_weights(tmp), device=args.device)
        files = random_pngs(tmp / "images", args.images, args.size)
        bodies = [f.read_bytes() for f in files]
        scale = f"{args.scale[0]}x{args.scale[1]}"
        port = free_port()
        settings = psegzoo.serve.ServeSettings.from_args(models=(MMSEG_BASE,), port=port, max_batch=args.max_batch,
                                                         max_wait_ms=args.max_wait_ms, queue=1024, environ={})
        server = psegzoo.serve.make_server(settings, {MMSEG_BASE: seg})
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        sessions = threading.local()

        def direct(i: int) -> None:
            seg.predict(files[i % len(files)], scale=args.scale, keep_scores=False)

        def served(i: int) -> None:
            session = getattr(sessions, "s", None) or requests.Session()
            sessions.s = session
            response = session.post(f"{url}/v1/predict", params={"scale": scale}, data=bodies[i % len(bodies)],
                                    headers={"Content-Type": "image/png"}, timeout=300)
            response.raise_for_status()

        print(f"{args.requests} requests per level, {args.images} PNGs of {args.size[0]}x{args.size[1]}, "
              f"scale {scale}, device {seg.device}, max-batch {args.max_batch}, max-wait {args.max_wait_ms} ms")
        print(f"{'clients':>7}  {'kind':<7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10}")
        for concurrency in levels:
            for kind, call in (("direct", direct), ("served", served)):
                before = batch_totals(url)
                got = level(call, args.requests, concurrency)
                after = batch_totals(url)
                forwards = after[0] - before[0]
                mean = f"{(after[1] - before[1]) / forwards:.2f}" if kind == "served" and forwards else "-"
                print(f"{concurrency:>7}  {kind:<7} {got['rps']:>7.1f} {got['p50']:>8.1f} {got['p99']:>8.1f} {mean:>10}",
                      flush=True)
        server.should_exit = True
        thread.join(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
