"""Loopback download throughput: psegzoo.hub.fetch against curl on the same file.

    python benchmarks/bench_download.py [--size-mb 200] [--repeat 5]

A random file is served from a temporary directory by a separate server process (sendfile, so
the server is not the bottleneck) on 127.0.0.1. psegzoo's time covers everything it does before
handing the file over: the lock, looking for local copies, streaming into ``.part``, hashing while
streaming, verifying the SHA-256, fsync, the cache record and the atomic rename. curl only writes
the bytes (``curl -s -o``). The goal is psegzoo >= 80% of curl's throughput.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psegzoo import hub
from psegzoo.manifest import Weights, load_manifest


def _serve(directory: str, port_queue) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            path = Path(directory) / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as f:
                self.connection.sendfile(f)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def _measure(fn, cleanup, who: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``fn`` (CPU of this process, or of the children it waited for)."""
    cleanup()  # deleting the previous copy is not part of the timing
    r0 = resource.getrusage(who)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(who)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _line(label: str, runs: list[tuple[float, float]], mb: float) -> str:
    wall = statistics.median(t for t, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    walls = ", ".join(f"{t:.3f}" for t, _ in runs)
    return f"{label + ':':22s}{wall:.3f} s  {mb / wall:8.1f} MB/s  CPU {cpu:.3f} s  (runs: {walls})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="psegzoo-bench-"))
    try:
        serve_dir = work / "www"
        serve_dir.mkdir()
        name = "bench_checkpoint_20240101_000000-00000000.pth"
        data_path = serve_dir / name
        size = args.size_mb * 1024 * 1024
        h = hashlib.sha256()
        with open(data_path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 8 << 20))
                f.write(block)
                h.update(block)
                left -= len(block)
        digest = h.hexdigest()

        queue = multiprocessing.Queue()
        server = multiprocessing.Process(target=_serve, args=(str(serve_dir), queue), daemon=True)
        server.start()
        url = f"http://127.0.0.1:{queue.get(timeout=30)}/{name}"

        options = hub.DownloadOptions(home=work / "home", progress=False, torch_home=work / "torch", mim_dir=work / "mim",
                                      search=(), mirrors=())
        template = next(e for e in load_manifest().models if e.weights is not None)
        entry = dataclasses.replace(
            template, name="bench_checkpoint", weights=Weights(url=url, file=name, sha256_prefix=digest[:8])
        )

        def run_psegzoo() -> None:
            got = hub.fetch(entry, options)
            if not got.downloaded or got.sha256 != digest:
                raise RuntimeError("psegzoo did not download and verify the file")

        curl = shutil.which("curl")
        out = work / "curl.out"

        def run_curl() -> None:
            subprocess.run([curl, "-s", "-o", str(out), url], check=True)

        def clean_psegzoo() -> None:
            hub.remove(entry, options=options)

        def clean_curl() -> None:
            out.unlink(missing_ok=True)

        ours: list[tuple[float, float]] = []
        theirs: list[tuple[float, float]] = []
        _measure(run_psegzoo, clean_psegzoo, resource.RUSAGE_SELF)  # warm the page cache and code paths
        for _ in range(args.repeat):  # interleaved, so a change in machine load hits both alike
            ours.append(_measure(run_psegzoo, clean_psegzoo, resource.RUSAGE_SELF))
            if curl:
                theirs.append(_measure(run_curl, clean_curl, resource.RUSAGE_CHILDREN))
        assert hub.checkpoint_path(entry, options).stat().st_size == size
        mb = size / 1e6
        load = os.getloadavg()[0]
        print(f"file: {size / 2**20:.0f} MiB on loopback, {args.repeat} runs each (median); load average {load:.2f}")
        print(_line("psegzoo.hub.fetch", ours, mb))
        if curl:
            print(_line("curl -s -o", theirs, mb))
            ratio = statistics.median(t for t, _ in theirs) / statistics.median(t for t, _ in ours)
            print(f"psegzoo throughput / curl throughput: {ratio:.0%} (goal: >= 80%)")
        else:
            print("curl not found: no comparison")
        server.terminate()
        server.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
