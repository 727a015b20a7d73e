"""The service's counters in Prometheus's text format (written here: no client library needed).

Requests by endpoint and status, request latency, batch sizes and queue depth. Updated from the
event loop and from the model's worker thread, so every change holds one lock.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {_num(self.sum)}", f"{name}_count{suffix} {self.count}"]
        return out


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) and not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """What ``GET /metrics`` reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, Histogram] = {}
        self._batches: dict[str, Histogram] = {}
        self._queue_depth = 0
        self._rejected = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(endpoint, status)] += 1
            self._latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, model: str, size: int) -> None:
        with self._lock:
            self._batches.setdefault(model, Histogram(BATCH_BUCKETS)).observe(size)

    def queue_depth(self, depth: int) -> None:
        with self._lock:
            self._queue_depth = depth

    def rejected(self) -> None:
        with self._lock:
            self._rejected += 1

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        with self._lock:
            lines = ["# HELP psegzoo_requests_total HTTP requests answered, by endpoint and status.",
                     "# TYPE psegzoo_requests_total counter"]
            lines += [f'psegzoo_requests_total{{endpoint="{_escape(e)}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self._requests.items())]
            lines += ["# HELP psegzoo_request_seconds Time from request to answer, by endpoint.",
                      "# TYPE psegzoo_request_seconds histogram"]
            for endpoint, hist in sorted(self._latency.items()):
                lines += hist.lines("psegzoo_request_seconds", f'endpoint="{_escape(endpoint)}"')
            lines += ["# HELP psegzoo_batch_size Images per forward on the device, by model.",
                      "# TYPE psegzoo_batch_size histogram"]
            for model, hist in sorted(self._batches.items()):
                lines += hist.lines("psegzoo_batch_size", f'model="{_escape(model)}"')
            lines += ["# HELP psegzoo_queue_depth Images waiting for the device now.",
                      "# TYPE psegzoo_queue_depth gauge", f"psegzoo_queue_depth {self._queue_depth}",
                      "# HELP psegzoo_queue_rejected_total Requests refused with 503 because the queue was full.",
                      "# TYPE psegzoo_queue_rejected_total counter", f"psegzoo_queue_rejected_total {self._rejected}"]
        return "\n".join(lines) + "\n"


ENDPOINTS = ("/", "/healthz", "/metrics", "/v1/models", "/v1/predict")


class MetricsMiddleware:
    """Counts every HTTP answer (status, latency) by endpoint; unknown paths count as ``other``."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "/static" if path.startswith("/static/") else "other"
        start = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.request(endpoint, status, time.perf_counter() - start)
