"""Splitting a job's inputs into disjoint shards of about equal work.

Pure functions: every process computes the same split from the same list, so no one has to send
anyone a work list. The work of an input is its pixel count (read from the file header, see
:mod:`psegzoo.distributed.tasks`), which is what inference time grows with.
"""
from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Sequence


def split(weights: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``weights`` in ``parts`` disjoint shards with near-equal sums (each sorted).

    Greedy longest-processing-time first: the heaviest remaining input goes to the lightest shard
    (ties: lower index first, lower shard first), so the largest shard exceeds the ideal
    ``sum / parts`` by at most the heaviest single input. Deterministic.
    """
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    shards: list[list[int]] = [[] for _ in range(parts)]
    heap = [(0, shard) for shard in range(parts)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, shard = heapq.heappop(heap)
        shards[shard].append(index)
        heapq.heappush(heap, (load + weights[index], shard))
    return [sorted(s) for s in shards]


def digest(keys: Iterable[str]) -> int:
    """A 63-bit fingerprint of an ordered list of strings: equal on every process that lists the same inputs."""
    h = hashlib.sha256()
    for key in keys:
        data = key.encode("utf-8", "surrogateescape")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return int.from_bytes(h.digest()[:8], "little") >> 1
