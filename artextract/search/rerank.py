"""Re-ranking a search shortlist: by head pose ("similar poses") and by geometric verification
("find reproductions of this picture"). Both take and return hits in the one hit schema of
:mod:`artextract.search.service` (rank, image_id, face_idx, score, ...), in place of the shortlist.

Pose is the (yaw, pitch, roll) in degrees that preprocess estimates from the detector's five
landmarks (stages/pose.py). The distance is Euclidean over the three angles; hits or queries without
a pose (whole paintings, degenerate landmarks -> NaN) are kept by ``filter`` and ranked last by
``rerank`` only when the query has a pose at all.

Copies: the embedding's top hits for a face are faces that look alike; a reproduction of the *same*
painted face (another photograph, a print, a detail, a mirrored engraving) also shares its local
structure in one geometric arrangement. ``stages/verify.py`` counts those consistent SIFT matches
(inliers); hits that verify move to the top ordered by inliers, the rest keep the embedding's order.
Each hit gets ``inliers`` (and ``verified``) so a user can see why it ranks where it does.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from artextract.core.registry import Registry
from artextract.stages.verify import GeometricVerifier

Key = tuple[str, int]

Pose = tuple[float, float, float]
# (hits with "score" and "pose_distance_deg", max_deg, weight) -> hits in their new order
POSE_MODES: Registry[Callable[[list[dict[str, Any]], float, float], list[dict[str, Any]]]] = Registry("pose mode")


def pose_distance(a: Pose | None, b: Pose | None) -> float | None:
    """Degrees between two (yaw, pitch, roll) poses; None when either is unknown."""
    if a is None or b is None or any(v is None or math.isnan(v) for v in (*a, *b)):
        return None
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


@POSE_MODES.register("filter")
def _filter(hits: list[dict[str, Any]], max_deg: float, weight: float) -> list[dict[str, Any]]:
    return [h for h in hits if h["pose_distance_deg"] is None or h["pose_distance_deg"] <= max_deg]


@POSE_MODES.register("rerank")
def _rerank(hits: list[dict[str, Any]], max_deg: float, weight: float) -> list[dict[str, Any]]:
    # score - weight * distance/90deg: at weight 1, a face turned 90 degrees away loses a full unit
    # of cosine similarity; unknown poses get the largest penalty seen so they never jump ahead.
    known = [h["pose_distance_deg"] for h in hits if h["pose_distance_deg"] is not None]
    worst = max(known, default=0.0)
    for h in hits:
        d = h["pose_distance_deg"] if h["pose_distance_deg"] is not None else worst
        h["pose_score"] = round(h["score"] - weight * d / 90.0, 6)
    return sorted(hits, key=lambda h: -h["pose_score"])


def apply_pose(hits: list[dict[str, Any]], query_pose: Pose | None, poses: dict[tuple[str, int], Pose],
               mode: str, k: int, max_deg: float = 20.0, weight: float = 0.5) -> list[dict[str, Any]]:
    """Annotate hits with their pose distance to ``query_pose``, apply ``mode``, keep k, renumber ranks."""
    for h in hits:
        d = pose_distance(query_pose, poses.get((h["image_id"], h["face_idx"])))
        h["pose_distance_deg"] = None if d is None else round(d, 2)
    if query_pose is None or any(math.isnan(v) for v in query_pose):
        out = hits  # nothing to compare against: similarity order stands
    else:
        out = POSE_MODES[mode](hits, max_deg, weight)
    out = out[:k]
    for r, h in enumerate(out):
        h["rank"] = r + 1
    return out


def hit_image(key: Key, crops: dict[Key, bytes], wholes: dict[str, bytes]) -> bytes | None:
    """A hit's pixels: its face crop, or the whole painting for whole-image keys (face_idx -1)."""
    return crops.get(key) if key[1] >= 0 and key in crops else wholes.get(key[0])


def apply_copies(results: list[dict[str, Any]], query_jpegs: list[bytes | None], crops: dict[Key, bytes],
                 wholes: dict[str, bytes], k: int, min_inliers: int, higher_is_better: bool) -> dict[str, int]:
    """Re-rank every result's hits in place (keeping k); returns counts for the summary."""
    verifier = GeometricVerifier(min_inliers=min_inliers)
    counts = {"verified_hits": 0, "checked_hits": 0, "queries_without_pixels": 0}
    for res, qjpeg in zip(results, query_jpegs):
        hits = res["hits"]
        images = [hit_image((h["image_id"], h["face_idx"]), crops, wholes) for h in hits]
        if qjpeg is None or not hits:
            counts["queries_without_pixels"] += qjpeg is None
            res["hits"] = hits[:k]
            continue
        raw = np.array([[h["score"] for h in hits]], np.float64)
        scores = raw if higher_is_better else -raw
        # Hits without pixels (no crop stored) cannot verify: they keep their embedding order.
        checkable = [i for i, im in enumerate(images) if im is not None]
        new, inl = verifier.rerank(scores[:, checkable], [qjpeg], [images[i] for i in checkable],
                                   top_k=len(checkable))
        full = scores[0].copy()
        full[checkable] = new[0]
        column = {i: c for c, i in enumerate(checkable)}  # hit position -> column of new/inl
        for i, h in enumerate(hits):
            h["inliers"] = int(inl[0, column[i]]) if i in column else None
            h["verified"] = bool(h["inliers"] is not None and h["inliers"] >= min_inliers)
        counts["checked_hits"] += len(checkable)
        order = np.argsort(-full, kind="stable")[:k]
        res["hits"] = [dict(hits[i], rank=r + 1) for r, i in enumerate(order)]
        counts["verified_hits"] += sum(h["verified"] for h in res["hits"])
    return counts
