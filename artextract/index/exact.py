"""Exact k-NN and the exact merge of per-shard top-k lists: the reference every index is measured
against, and the merge every reader (in-process or Ray actors) uses.

Scores are inner products (metric "ip", higher is better) or squared L2 distances (metric "l2",
lower is better). Ties are broken by ascending id so results are deterministic across shardings.
"""
from __future__ import annotations

import functools

import faiss
import numpy as np

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")


def as_f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def torch_exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, device: str = "cpu",
                       chunk: int = 65536, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of (q,d) queries over (n,d) vectors with torch (matmul + topk over database
    chunks of ``chunk`` rows); returns (scores (q,k) float32, row positions (q,k) int64, -1 = none)."""
    import torch

    _check_metric(metric)
    q = torch.from_numpy(as_f32(queries)).to(device)
    best_s = torch.empty((q.shape[0], 0), dtype=torch.float32, device=device)
    best_i = torch.empty((q.shape[0], 0), dtype=torch.int64, device=device)
    largest = metric == "ip"
    for start in range(0, len(vectors), chunk):
        x = torch.from_numpy(as_f32(vectors[start:start + chunk])).to(device)
        s = q @ x.T
        if metric == "l2":  # ||q-x||^2 = |q|^2 + |x|^2 - 2 q.x
            s = (q * q).sum(1, keepdim=True) + (x * x).sum(1)[None, :] - 2 * s
        ts, ti = torch.topk(s, min(k, s.shape[1]), dim=1, largest=largest)
        best_s = torch.cat([best_s, ts], 1)
        best_i = torch.cat([best_i, ti + start], 1)
        best_s, order = torch.topk(best_s, min(k, best_s.shape[1]), dim=1, largest=largest)
        best_i = torch.gather(best_i, 1, order)
    scores, idx = best_s.cpu().numpy(), best_i.cpu().numpy()
    if scores.shape[1] < k:  # fewer vectors than k
        pad = k - scores.shape[1]
        fill = -np.inf if largest else np.inf
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=fill)
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32), idx.astype(np.int64)


@functools.lru_cache(maxsize=1)
def use_torch() -> bool:
    # Importing torch costs seconds: checked once per process, only when backend='auto'.
    if hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip",
                 backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact reference top-k: (scores (q,k), row positions (q,k)). backend "auto" uses torch on CUDA
    when faiss has no GPU support, else faiss IndexFlatIP / IndexFlatL2 on CPU."""
    _check_metric(metric)
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', not {backend!r}")
    if backend == "torch" or (backend == "auto" and use_torch()):
        return torch_exact_search(vectors, queries, k, device="cuda" if backend == "auto" else "cpu",
                                  metric=metric)
    index = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    index.add(as_f32(vectors))
    scores, idx = index.search(as_f32(queries), k)
    return scores, idx


def merge_topk(scores: list[np.ndarray], ids: list[np.ndarray], k: int,
               metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact merge of per-shard (q,k_i) results into (q,k): best score first, ties by ascending id;
    missing results have id -1."""
    s = np.concatenate(scores, axis=1).astype(np.float32)
    i = np.concatenate(ids, axis=1).astype(np.int64)
    bad = i < 0
    worst = -np.inf if metric == "ip" else np.inf
    s = np.where(bad, worst, s)
    tie = np.where(bad, np.iinfo(np.int64).max, i)
    primary = -s if metric == "ip" else s
    order = np.lexsort((tie, primary), axis=-1)[:, :k]
    s, i = np.take_along_axis(s, order, 1), np.take_along_axis(np.where(bad, -1, i), order, 1)
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=worst)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return s, i
