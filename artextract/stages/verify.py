"""Geometric verification: do two images show the *same picture*, not just a similar one?

An embedding ranks look-alikes: every painted face resembles every other one a little, so among
many similar sitters a reproduction's own original is often second or third. A reproduction (crop,
rescale, small rotation, mirror, colour change, blur, JPEG) also keeps the original's *local
structure in the same geometric arrangement*. SIFT keypoints (scikit-image) matched with Lowe's
ratio test, then a RANSAC similarity transform, count the matches that agree on one placement
(inliers): a handful for unrelated images, tens for a copy. Re-ranking the embedding's top-K by
inliers is the classic "spatial verification" step of image retrieval (Philbin et al., CVPR 2007).

SIFT works on grey levels, so greyscale and colour-jittered copies verify too; a mirrored copy is
matched through the mirrored query's features. Ray-free, CPU-only, deterministic (seeded RANSAC).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class LocalFeatures:
    """SIFT keypoints as (x, y) pixel coordinates of the (resized) image, and their descriptors."""

    xy: np.ndarray  # (N, 2) float
    descriptors: np.ndarray  # (N, 128) uint8

    def __len__(self) -> int:
        return len(self.xy)


EMPTY = LocalFeatures(np.zeros((0, 2)), np.zeros((0, 128), np.uint8))


class GeometricVerifier:
    """Inlier counts between JPEG images, and re-ranking of a shortlist by them.

    ``max_side`` bounds the work per image (SIFT cost grows with pixels; face crops are ~160 px).
    ``min_inliers`` is the count from which a pair counts as verified. On the NGA benchmark
    (docs/benchmarks.md) a copy's own original reached 5-60 inliers (median ~20) and unrelated
    faces 0-4, once 6: verified candidates are therefore ordered *by inliers*, so a chance 5-6 only
    wins where the true original is missing from the shortlist or verifies even more weakly.
    """

    def __init__(self, max_side: int = 256, ratio: float = 0.85, residual_px: float = 4.0,
                 max_trials: int = 200, min_inliers: int = 5, mirror: bool = True, seed: int = 0) -> None:
        self.max_side, self.ratio, self.residual_px = max_side, ratio, residual_px
        self.max_trials, self.min_inliers, self.mirror, self.seed = max_trials, min_inliers, mirror, seed

    def _grey(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L")
            if max(im.size) > self.max_side:
                im.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.float32) / 255.0

    def features(self, data: bytes, mirrored: bool = False) -> LocalFeatures:
        """SIFT features of a JPEG (of its left-right mirror image with ``mirrored``)."""
        from skimage.feature import SIFT

        grey = self._grey(data)
        if mirrored:
            grey = np.ascontiguousarray(grey[:, ::-1])
        sift = SIFT()
        try:
            sift.detect_and_extract(grey)
        except RuntimeError:  # skimage raises when an image (flat, tiny) yields no keypoint
            return EMPTY
        # skimage keypoints are (row, col): store (x, y) for the transform estimate.
        return LocalFeatures(sift.keypoints[:, ::-1].astype(np.float64), sift.descriptors)

    def inliers(self, a: LocalFeatures, b: LocalFeatures) -> int:
        """Matches of ``a`` and ``b`` consistent with one similarity transform (0 when too few)."""
        from skimage.feature import match_descriptors
        from skimage.measure import ransac
        from skimage.transform import SimilarityTransform

        if len(a) < 3 or len(b) < 3:
            return 0
        m = match_descriptors(a.descriptors, b.descriptors, cross_check=True, max_ratio=self.ratio)
        if len(m) < 3:
            return 0
        n = len(m)
        # n matches hold only n(n-1)/2 distinct 2-point samples: more trials than ~2x that redraw the
        # same ones. stop_probability ends early once a sample explains most matches (a real copy).
        _, inl = ransac((a.xy[m[:, 0]], b.xy[m[:, 1]]), SimilarityTransform, min_samples=2,
                        residual_threshold=self.residual_px, max_trials=min(self.max_trials, n * (n - 1)),
                        stop_probability=0.999, rng=self.seed)
        return 0 if inl is None else int(inl.sum())

    def query_features(self, data: bytes) -> list[LocalFeatures]:
        """The query's features, plus its mirror's when ``mirror`` (a flipped print is still a copy)."""
        return [self.features(data)] + ([self.features(data, mirrored=True)] if self.mirror else [])

    def best_inliers(self, query: list[LocalFeatures], ref: LocalFeatures) -> int:
        """Most inliers over the query's views. The mirror is skipped once the plain view is clearly
        verified (3x min_inliers): chance alignments of a mirrored face reach ~min_inliers, so a
        weaker plain count must not stop the mirror, which is the right view then (7 vs 74 seen)."""
        best = 0
        for q in query:
            best = max(best, self.inliers(q, ref))
            if best >= 3 * self.min_inliers:
                break
        return best

    def rerank(self, scores: np.ndarray, queries: list[bytes], references: list[bytes],
               top_k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Re-score each query's top-``top_k`` references (by ``scores`` (Q, R), higher = better).

        Verified references (>= ``min_inliers``) move above every unverified one, ordered by inliers;
        the rest keep their scores, so ranks beyond ``top_k`` never change. Returns the new (Q, R)
        scores and the (Q, R) inlier counts (-1 where not verified). Reference features are
        computed once, on first use.
        """
        new = scores.astype(np.float64).copy()
        inl = np.full(scores.shape, -1, np.int32)
        cache: dict[int, LocalFeatures] = {}
        lo = float(scores.min()) if scores.size else 0.0
        above = float(scores.max()) + 1.0 if scores.size else 1.0
        for qi, q in enumerate(queries):
            qf = self.query_features(q)
            for r in np.argsort(-scores[qi], kind="stable")[:top_k]:
                if r not in cache:
                    cache[r] = self.features(references[r])
                inl[qi, r] = self.best_inliers(qf, cache[r])
                if inl[qi, r] >= self.min_inliers:
                    # Equal inlier counts keep the embedding's order: its score adds a fraction < 0.5.
                    new[qi, r] = above + inl[qi, r] + 0.5 * (scores[qi, r] - lo) / (above - lo)
        return new, inl
