""""Find reproductions of this picture": re-rank a search shortlist by geometric verification.

The embedding's top hits for a face are faces that look alike; a reproduction of the *same* painted
face (another photograph, a print, a detail, a mirrored engraving) also shares its local structure in
one geometric arrangement. ``stages/verify.py`` counts those consistent SIFT matches (inliers); hits
that verify move to the top ordered by inliers, the rest keep the embedding's order. Each hit gets
``inliers`` (and ``verified``) so a user can see why it ranks where it does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from artextract.stages.verify import GeometricVerifier

Key = tuple[str, int]


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
