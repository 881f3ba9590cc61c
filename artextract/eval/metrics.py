"""Classification metrics over numpy arrays, with unknown labels (-1) masked out.

Everything returned is plain Python (int/float/str/dict/None) so it can go straight into JSON.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report,
                             confusion_matrix, f1_score, top_k_accuracy_score)

TOP_KS = (3, 5)
HEADLINE_KEYS = ("accuracy", "top3", "top5", "balanced_accuracy", "macro_f1", "weighted_f1")


def _plain(x: Any) -> Any:
    """Recursively turn numpy scalars/arrays into plain Python values (JSON-serialisable)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    return x


def _check(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(classes)):
        raise ValueError(f"probs must be (N, C) = ({len(y_true)}, {len(classes)}), got {probs.shape}")
    if len(y_true) and y_true.max(initial=-1) >= len(classes):
        raise ValueError(f"y_true has label {int(y_true.max())} >= C={len(classes)}")
    return y_true, probs


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of rows (N,) whose true label is among the k highest of probs (N, C); 1.0 when C <= k."""
    n_classes = probs.shape[1]
    if n_classes <= k:
        # Every class is inside the top k, so the answer is trivially 1.0. Keeping the key (rather
        # than omitting it) keeps the metrics schema identical across tasks with few classes.
        return 1.0
    # labels= makes sklearn accept y_true that lacks some classes (it would otherwise infer C
    # from y_true and reject probs with more columns).
    return float(top_k_accuracy_score(y_true, probs, k=k, labels=np.arange(n_classes)))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Metrics for one task from y_true (N,) int (-1 = unknown, excluded) and probs (N, C).

    Keys: n, accuracy, top3, top5 (1.0 when C <= k), balanced_accuracy (over classes present in
    y_true), macro_f1 / weighted_f1 (over the classes present in y_true OR in the predictions, so
    never-seen, never-predicted classes do not drag the macro average to 0), per_class
    ({class: {precision, recall, f1-score, support}} over all C classes) and report (text).
    With no labelled rows, n=0 and every metric is None.
    """
    y_true, probs = _check(y_true, probs, classes)
    mask = y_true >= 0
    n = int(mask.sum())
    if n == 0:
        out: dict[str, Any] = {"n": 0, **{k: None for k in HEADLINE_KEYS}, "per_class": {}, "report": ""}
        return out
    yt, pr = y_true[mask], probs[mask]
    yp = pr.argmax(axis=1)
    all_labels = np.arange(len(classes))
    seen = np.union1d(yt, yp)
    with warnings.catch_warnings():
        # balanced_accuracy warns when predictions contain classes absent from y_true; that is
        # expected on small eval splits and the definition (mean recall over true classes) holds.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out = {
            "n": n,
            "accuracy": float(accuracy_score(yt, yp)),
            **{f"top{k}": top_k_accuracy(yt, pr, k) for k in TOP_KS},
            "balanced_accuracy": float(balanced_accuracy_score(yt, yp)),
            "macro_f1": float(f1_score(yt, yp, labels=seen, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(yt, yp, labels=seen, average="weighted", zero_division=0)),
        }
        rep = classification_report(yt, yp, labels=all_labels, target_names=list(classes),
                                    zero_division=0, output_dict=True)
        text = classification_report(yt, yp, labels=all_labels, target_names=list(classes),
                                     zero_division=0, digits=3)
    # Keep only the per-class rows; the averages are already headline keys above.
    out["per_class"] = _plain({name: rep[name] for name in classes if name in rep})
    out["report"] = text
    return out


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix (C, C) int64, rows = true class, cols = predicted; rows with y_true < 0 dropped."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    mask = y_true >= 0
    if not mask.any() or n_classes == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return confusion_matrix(y_true[mask], y_pred[mask], labels=np.arange(n_classes)).astype(np.int64)
