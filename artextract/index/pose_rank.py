""""Similar poses": filter or re-rank face hits by head-pose distance to the query face.

Pose is the (yaw, pitch, roll) in degrees that preprocess estimates from MTCNN's five landmarks
(stages/pose.py). The distance is Euclidean over the three angles; hits or queries without a pose
(whole paintings, degenerate landmarks -> NaN) are kept by ``filter`` and ranked last by ``rerank``
only when the query has a pose at all.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from artextract.models.registry import Registry

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
