"""Find paintings worth a second look: embeddings far from their labelled class, and confident
mispredictions (often label noise in scraped art datasets)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.ensemble import IsolationForest

EPS = 1e-9
MIN_ROBUST = 3      # a median/MAD of fewer members says nothing
MIN_FOREST = 8      # IsolationForest needs a handful of samples to isolate anything

# (row, score, distance or None) for each member of one class.
Scored = list[tuple[int, float, "float | None"]]


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS)


def _robust_distance(x: np.ndarray, rows: np.ndarray, seed: int) -> Scored:
    """Robust z-score of each member's cosine distance to the class's coordinate-wise median."""
    if len(rows) < MIN_ROBUST:
        return []
    # The median is not dragged towards mislabelled members the way a mean would be.
    centre = np.median(x, axis=0)
    centre = centre / (np.linalg.norm(centre) + EPS)
    dist = 1.0 - x @ centre
    med = np.median(dist)
    mad = np.median(np.abs(dist - med))
    # 1.4826 * MAD estimates the standard deviation for normal data, so z reads like a z-score.
    z = (dist - med) / (1.4826 * mad + EPS)
    return [(int(r), float(s), float(d)) for r, s, d in zip(rows, z, dist)]


def _isolation_forest(x: np.ndarray, rows: np.ndarray, seed: int) -> Scored:
    """Negated IsolationForest score_samples within the class (higher = more anomalous)."""
    if len(rows) < MIN_FOREST:
        return []
    forest = IsolationForest(random_state=seed).fit(x)
    score = -forest.score_samples(x)
    return [(int(r), float(s), None) for r, s in zip(rows, score)]


OUTLIER_METHODS: dict[str, Callable[[np.ndarray, np.ndarray, int], Scored]] = {
    "robust_distance": _robust_distance,
    "isolation_forest": _isolation_forest,
}


def class_distance_outliers(embeddings: np.ndarray, y_true: np.ndarray, classes: list[str], top: int,
                            method: str = "robust_distance", seed: int = 0) -> list[dict]:
    """Top rows whose embedding (N, D) lies far from its labelled class (y_true (N,), -1 ignored).

    Returns up to ``top`` dicts {"row", "label", "score", "distance"} sorted by score descending;
    distance is the cosine distance to the class centre (robust_distance) or None.
    """
    try:
        score_class = OUTLIER_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown outlier method {method!r}; choose from {sorted(OUTLIER_METHODS)}") from None
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if len(y_true) != len(embeddings):
        raise ValueError(f"embeddings has {len(embeddings)} rows but y_true has {len(y_true)}")
    if top <= 0 or len(y_true) == 0:
        return []
    # Cosine geometry for both methods: pooled features differ mostly in direction, not norm.
    x = _l2_normalise(embeddings)
    scored: list[tuple[int, float, float | None, int]] = []
    for c in np.unique(y_true[y_true >= 0]):
        rows = np.flatnonzero(y_true == c)
        scored += [(r, s, d, int(c)) for r, s, d in score_class(x[rows], rows, seed)]
    scored.sort(key=lambda t: (-t[1], t[0]))
    return [{"row": r, "label": classes[c], "score": s, "distance": d} for r, s, d, c in scored[:top]]


def confident_mispredictions(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                             min_prob: float, top: int) -> list[dict]:
    """Up to ``top`` labelled rows predicted wrongly with max prob >= min_prob, by prob descending.

    y_true (N,) int with -1 unknown, probs (N, C). Each dict: row, label, predicted, prob, prob_true.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0 or top <= 0:
        return []
    pred = probs.argmax(axis=1)
    pmax = probs.max(axis=1)
    rows = np.flatnonzero((y_true >= 0) & (pred != y_true) & (pmax >= min_prob))
    # Stable sort on -prob keeps ties in row order, so the output is deterministic.
    rows = rows[np.argsort(-pmax[rows], kind="stable")][:top]
    return [{"row": int(r), "label": classes[y_true[r]], "predicted": classes[pred[r]],
             "prob": float(pmax[r]), "prob_true": float(probs[r, y_true[r]])} for r in rows]
