"""Recall of a freshly built index, and the search parameters (nprobe, k_factor) tuned per build.

Queries are rows of the collection itself, so each one's own vector is excluded from both the exact
and the approximate top-k (else every query would score a free hit and recall would read high).
The tuning walks nprobe up in powers of two and, for an index with refine codes, k_factor up at
each nprobe until the target recall is met, times every point on the same queries, and keeps the
fastest point that meets the target (when none does: the fastest within 0.005 of the best recall). The whole table goes into
index.json so a user can see the trade-off and pick another point at search time.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from artextract.index.exact import exact_search

SearchFn = Callable[[np.ndarray, int, int | None, int | None], tuple[np.ndarray, np.ndarray]]
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
K_FACTORS = (1, 2, 4, 8, 16, 32, 64)


def sample_queries(vectors: np.ndarray, ids: np.ndarray, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, their own ids): ``queries`` rows sampled without replacement."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), min(queries, len(vectors)), replace=False))
    return vectors[rows], ids[rows]


def truth(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, self_ids: np.ndarray, k: int,
          metric: str) -> list[set[int]]:
    """Exact top-k ids of each query, its own id excluded."""
    _, pos = exact_search(vectors, q, min(k + 1, len(vectors)), metric, backend="faiss")
    return [set([int(i) for i in ids[row[row >= 0]] if i != me][:k]) for row, me in zip(pos, self_ids)]


def recall(search: SearchFn, q: np.ndarray, self_ids: np.ndarray, exact: list[set[int]], k: int,
           nprobe: int | None, k_factor: int | None) -> float:
    """recall@k of ``search`` against ``exact`` (own ids excluded from the results too)."""
    _, got = search(q, k + 1, nprobe, k_factor)
    hits = total = 0
    for row, me, want in zip(got, self_ids, exact):
        found = [int(i) for i in row if i >= 0 and i != me][:k]
        hits += len(want & set(found))
        total += len(want)
    return round(hits / max(total, 1), 4)


def _timed(search: SearchFn, q: np.ndarray, k: int, nprobe: int | None, k_factor: int | None) -> float:
    """Median seconds of 3 batched searches (the CPU may be shared: one run is noise)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        search(q, k + 1, nprobe, k_factor)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def nprobe_grid(nlist: int | None) -> list[int | None]:
    """nprobe values to sweep: powers of two below nlist, then nlist itself (capped at 256); [None]
    for an index without IVF lists."""
    if not nlist:
        return [None]
    return sorted({p for p in NPROBES if p < nlist} | {min(nlist, NPROBES[-1])})


def tune(search: SearchFn, q: np.ndarray, self_ids: np.ndarray, exact: list[set[int]], k: int,
         nprobes: list[int | None], k_factors: list[int], target: float
         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(chosen point {nprobe, k_factor, recall, ms_per_query}, every point measured) over the grid
    ``nprobes`` x ``k_factors`` (a fixed parameter is a one-value list)."""
    points: list[dict[str, Any]] = []
    for nprobe in nprobes:
        met_at_first = False
        for i, kf in enumerate(k_factors):
            r = recall(search, q, self_ids, exact, k, nprobe, kf)
            ms = 1000 * _timed(search, q, k, nprobe, kf) / max(len(q), 1)
            points.append({"nprobe": nprobe, "k_factor": kf, "recall": r, "ms_per_query": round(ms, 4)})
            if r >= target:
                met_at_first = i == 0
                break  # a larger k_factor at this nprobe is only slower
        if met_at_first or (points and points[-1]["recall"] >= 0.9999):
            break  # a larger nprobe is only slower
    good = [p for p in points if p["recall"] >= target]
    if not good:  # out of reach: the fastest point within 0.005 of the best recall (it saturates early)
        top = max(p["recall"] for p in points)
        good = [p for p in points if p["recall"] >= top - 0.005]
    return min(good, key=lambda p: p["ms_per_query"]), points
