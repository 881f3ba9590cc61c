"""Retrieval metrics over L2-normalised embeddings (numpy only, Ray-free).

Conventions
    X        (N, D) float32 unit vectors; similarity is the inner product (= cosine).
    labels   (N,) ints or strings; ``None``, NaN or the int ``-1`` mark an unlabelled row.
    groups   optional (N,) keys (e.g. image_id). A query never retrieves a row of its own group, and
             rows of its own group do not count as relevant either: several faces of one painting
             share the painting's label, so finding a sibling face would be trivially "correct".
             Without ``groups`` only the query row itself is excluded.
    rel      (Q, K) bool: ``rel[q, i]`` = the i-th neighbour (rank i + 1) of query q is relevant.

A query is a labelled row; it is *skipped* (and counted) when no other retrievable row shares its
label (R = 0), since precision/recall/MAP@R are undefined for it.

Ranking rule (every metric, MRR included): descending score, ties broken by ascending row index.
Scores are computed in float64 and rounded to ``SCORE_DECIMALS`` decimals, so scores that are equal
in exact arithmetic (duplicate vectors: several reproductions of one work) are equal bit for bit,
whatever the BLAS kernel or the block size; otherwise 1-ulp noise would decide which duplicate ranks
first, and P@1 / MAP@R would move with ``budget``.

The full (N, N) similarity matrix is never held: queries are processed in blocks of
``budget // (2N)`` rows so a block's float64 scores stay around ``budget`` float32 values' worth.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

DEFAULT_BUDGET = 1 << 22  # float32 scores' worth of memory per block (16 MiB)
SCORE_DECIMALS = 9  # cosines in [-1, 1]: float64 noise (~1e-16) never reaches the 9th decimal


# ----------------------------------------------------------------------------------- encodings

def encode_labels(labels: Sequence | np.ndarray) -> np.ndarray:
    """(N,) labels -> (N,) int64 codes, -1 for unlabelled (None, NaN, -1)."""
    arr = np.asarray(labels, dtype=object).ravel()
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v))
                        or (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v == -1)
                        for v in arr], bool)
    codes = np.full(len(arr), -1, np.int64)
    if (~missing).any():
        # str() so mixed int/str label columns still sort; equal labels give equal codes.
        _, inv = np.unique(np.array([str(v) for v in arr[~missing]]), return_inverse=True)
        codes[~missing] = inv
    return codes


def encode_groups(groups: Sequence | np.ndarray | None) -> np.ndarray | None:
    """(N,) group keys -> (N,) int64 codes (None passes through)."""
    if groups is None:
        return None
    _, inv = np.unique(np.asarray([str(g) for g in np.asarray(groups, dtype=object).ravel()]),
                       return_inverse=True)
    return inv.astype(np.int64)


def relevant_counts(codes: np.ndarray, gcodes: np.ndarray | None = None) -> np.ndarray:
    """(N,) R per row: other rows with the same label outside the row's group (0 for unlabelled)."""
    out = np.zeros(len(codes), np.int64)
    lab = codes >= 0
    if not lab.any():
        return out
    per_label = np.bincount(codes[lab])
    if gcodes is None:
        same = np.ones(lab.sum(), np.int64)  # only the row itself is excluded
    else:
        pair = codes[lab] * (int(gcodes.max()) + 1) + gcodes[lab]
        _, inv, cnt = np.unique(pair, return_inverse=True, return_counts=True)
        same = cnt[inv]
    out[lab] = per_label[codes[lab]] - same
    return out


# ------------------------------------------------------------------------------ exact search

def _blocks(X: np.ndarray, rows: np.ndarray, gcodes: np.ndarray | None,
            budget: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (query rows (c,), float64 scores (c, N)) with self and same-group entries set to -inf."""
    n = len(X)
    X64 = X.astype(np.float64)
    step = max(1, budget // max(2 * n, 1))
    for s in range(0, len(rows), step):
        q = rows[s:s + step]
        S = np.round(X64[q] @ X64.T, SCORE_DECIMALS)
        S[np.arange(len(q)), q] = -np.inf
        if gcodes is not None:
            S[gcodes[q][:, None] == gcodes[None, :]] = -np.inf
        yield q, S


def _top(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of S, sorted by descending score then ascending column (exact ties included:
    argpartition alone would keep an arbitrary subset of the ties straddling rank k)."""
    k = min(k, S.shape[1])
    if k >= S.shape[1]:
        order = np.argsort(-S, axis=1, kind="stable")
        return np.take_along_axis(S, order, 1), order
    kth = -np.partition(-S, k - 1, axis=1)[:, k - 1]  # the k-th largest score of each row
    vals, idx = np.empty((len(S), k), S.dtype), np.empty((len(S), k), np.int64)
    for r in range(len(S)):
        cand = np.flatnonzero(S[r] >= kth[r])  # everything above the k-th score, and all its ties
        pick = cand[np.argsort(-S[r, cand], kind="stable")[:k]]  # stable: ties keep ascending column
        vals[r], idx[r] = S[r, pick], pick
    return vals, idx


def knn(X: np.ndarray, k: int, groups: Sequence | np.ndarray | None = None,
        rows: np.ndarray | None = None, budget: int = DEFAULT_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN of ``rows`` (default all N) over X, excluding self and same-group rows;
    returns (scores (Q,k) float32, row indices (Q,k) int64); missing neighbours are (-inf, -1)."""
    X = np.ascontiguousarray(X, np.float32)
    rows = np.arange(len(X)) if rows is None else np.asarray(rows, np.int64)
    gcodes = encode_groups(groups)
    scores = np.full((len(rows), k), -np.inf, np.float32)
    idx = np.full((len(rows), k), -1, np.int64)
    pos = 0
    for q, S in _blocks(X, rows, gcodes, budget):
        v, i = _top(S, k)
        ok = np.isfinite(v)
        scores[pos:pos + len(q), :v.shape[1]] = np.where(ok, v, -np.inf)
        idx[pos:pos + len(q), :v.shape[1]] = np.where(ok, i, -1)
        pos += len(q)
    return scores, idx


# ---------------------------------------------------------------------- metrics on a rel matrix

def _precision(rel: np.ndarray, k: int) -> np.ndarray:
    return rel[:, :k].sum(1) / k  # fewer than k neighbours count as misses


def _recall(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return rel[:, :k].sum(1) / np.maximum(n_relevant, 1)


def _hit(rel: np.ndarray, k: int) -> np.ndarray:
    return rel[:, :k].any(1).astype(np.float64)


def _ap_at_r(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    # MAP@R (Musgrave et al. 2020): (1/R) sum_{i<=R} P@i * rel_i; ranks beyond rel's columns are misses.
    cols = np.arange(rel.shape[1])
    inside = rel & (cols[None, :] < n_relevant[:, None])
    prec_i = np.cumsum(inside, 1) / (cols + 1)
    return (prec_i * inside).sum(1) / np.maximum(n_relevant, 1)


def _reciprocal_rank(rel: np.ndarray) -> np.ndarray:
    first = np.argmax(rel, axis=1)
    return np.where(rel.any(1), 1.0 / (first + 1), 0.0)


def precision_at_k(rel: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant among the top k) / k; rel (Q, >=k) bool."""
    return float(_precision(np.asarray(rel, bool), k).mean()) if len(rel) else float("nan")


def recall_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant in top k) / R, R = (Q,) relevant items per query."""
    return float(_recall(np.asarray(rel, bool), np.asarray(n_relevant), k).mean()) if len(rel) else float("nan")


def hit_rate_at_k(rel: np.ndarray, k: int) -> float:
    """Fraction of queries with at least one relevant item in the top k."""
    return float(_hit(np.asarray(rel, bool), k).mean()) if len(rel) else float("nan")


def map_at_r(rel: np.ndarray, n_relevant: np.ndarray) -> float:
    """MAP@R (Musgrave et al. 2020): rel (Q, >=max R) ranked relevance, n_relevant (Q,) R per query."""
    return float(_ap_at_r(np.asarray(rel, bool), np.asarray(n_relevant)).mean()) if len(rel) else float("nan")


def mean_reciprocal_rank(rel: np.ndarray) -> float:
    """Mean of 1 / rank of the first relevant item among rel's columns (0 when none is there)."""
    return float(_reciprocal_rank(np.asarray(rel, bool)).mean()) if len(rel) else float("nan")


# ---------------------------------------------------------------------------- the whole report

def retrieval_metrics(X: np.ndarray, labels: Sequence | np.ndarray, ks: Sequence[int] = (1, 5, 10),
                      groups: Sequence | np.ndarray | None = None,
                      budget: int = DEFAULT_BUDGET) -> dict[str, float | int | bool]:
    """P@k, R@k, hit_rate@k for each k, MAP@R and exact MRR (over the full ranking) of all labelled
    queries with R > 0, plus counts (labelled, queries, skipped_queries); plain Python numbers."""
    X = np.ascontiguousarray(X, np.float32)
    codes, gcodes = encode_labels(labels), encode_groups(groups)
    R = relevant_counts(codes, gcodes)
    labelled = codes >= 0
    rows = np.flatnonzero(labelled & (R > 0))
    ks = sorted({int(k) for k in ks})
    acc: dict[str, list[np.ndarray]] = {}

    def add(name: str, v: np.ndarray) -> None:
        acc.setdefault(name, []).append(v)

    for q, S in _blocks(X, rows, gcodes, budget):
        rel_full = (codes[None, :] == codes[q][:, None]) & np.isfinite(S)
        # Enough ranks for the largest k and for every query's R (MAP@R looks at the top R).
        _, top = _top(S, max(max(ks), int(R[q].max())))
        rel = np.take_along_axis(rel_full, top, 1)
        for k in ks:
            add(f"precision@{k}", _precision(rel, k))
            add(f"recall@{k}", _recall(rel, R[q], k))
            add(f"hit_rate@{k}", _hit(rel, k))
        add("map@r", _ap_at_r(rel, R[q]))
        # Exact rank of the first relevant item under the ranking rule: 1 + non-relevant rows ranked
        # before it (a higher score, or the same score at a lower row index).
        best = np.where(rel_full, S, -np.inf).max(1)
        cols = np.arange(S.shape[1])
        first = np.where(rel_full & (S == best[:, None]), cols, S.shape[1]).min(1)
        before = (S > best[:, None]) | ((S == best[:, None]) & (cols[None, :] < first[:, None]))
        rank = 1 + (before & ~rel_full).sum(1)
        add("mrr", 1.0 / rank)
    out: dict[str, float | int | bool] = {
        "labelled": int(labelled.sum()), "queries": int(len(rows)),
        "skipped_queries": int((labelled & (R == 0)).sum()), "classes": int(len(np.unique(codes[labelled]))),
        "exclude_same_group": groups is not None}
    for name, parts in acc.items():
        out[name] = float(np.concatenate(parts).mean())
    return out


def cosine_distributions(X: np.ndarray, labels: Sequence | np.ndarray, max_pairs: int = 100_000,
                         seed: int = 0, groups: Sequence | np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Random pairs of labelled rows, drawn with replacement: (cosines of same-label pairs, of
    different-label pairs), each (<= max_pairs,) float32; pairs within one group are never drawn."""
    X = np.ascontiguousarray(X, np.float32)
    codes, gcodes = encode_labels(labels), encode_groups(groups)
    g = np.arange(len(X)) if gcodes is None else gcodes
    rng = np.random.default_rng(seed)
    lab = np.flatnonzero(codes >= 0)
    pos_i: list[np.ndarray] = []
    pos_j: list[np.ndarray] = []
    neg_i: list[np.ndarray] = []
    neg_j: list[np.ndarray] = []
    # Same-label partner: rows sorted by label, partner = another position inside the label's run.
    order = lab[np.argsort(codes[lab], kind="stable")]
    if len(order):
        _, start, size = np.unique(codes[order], return_index=True, return_counts=True)
        run_start = np.repeat(start, size)
        run_size = np.repeat(size, size)
        eligible = np.flatnonzero(run_size > 1)
    else:
        eligible = np.zeros(0, np.int64)
    # A few rounds of rejection sampling: same-group pairs and (for negatives) same labels are redrawn.
    for _ in range(8):
        if len(eligible) and sum(map(len, pos_i)) < max_pairs:
            a = rng.choice(eligible, max_pairs)
            off = a - run_start[a]
            b = run_start[a] + (off + rng.integers(1, run_size[a])) % run_size[a]
            i, j = order[a], order[b]
            keep = g[i] != g[j]
            pos_i.append(i[keep])
            pos_j.append(j[keep])
        if len(lab) > 1 and sum(map(len, neg_i)) < max_pairs:
            i, j = rng.choice(lab, max_pairs), rng.choice(lab, max_pairs)
            keep = (codes[i] != codes[j]) & (g[i] != g[j])
            neg_i.append(i[keep])
            neg_j.append(j[keep])

    def scores(ii: list[np.ndarray], jj: list[np.ndarray]) -> np.ndarray:
        if not ii:
            return np.zeros(0, np.float32)
        i, j = np.concatenate(ii)[:max_pairs], np.concatenate(jj)[:max_pairs]
        return np.einsum("nd,nd->n", X[i], X[j]).astype(np.float32)

    return scores(pos_i, pos_j), scores(neg_i, neg_j)
