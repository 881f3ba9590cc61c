"""Face alignment: a similarity transform maps MTCNN's 5 landmarks onto the standard 5-point
template (the ArcFace 112x112 layout), so crops are upright, centred and scale-normalised.

The transform is the least-squares similarity (Umeyama 1991), what skimage's
``SimilarityTransform.from_estimate`` computes (tests/test_stages.py compares them), written out
here because importing skimage.transform (scipy) is ~0.35 s of every detector actor's start.
OpenCV warps: ``skimage.transform.warp`` converts the whole source image to float64 first (19 MB
for a 1024 px detection image, ~10 ms a face), ``cv2.warpAffine`` reads only the pixels the crop
needs, in uint8.
"""
from __future__ import annotations

import cv2
import numpy as np

# Left eye, right eye, nose tip, left and right mouth corners, in a 112x112 crop.
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def template(size: int, margin: float) -> np.ndarray:
    """Template landmarks for a ``size``-px crop; ``margin`` adds context around the face."""
    unit = TEMPLATE_112 / 112.0 - 0.5
    return (unit / (1.0 + margin) + 0.5) * size


def aligned_crop(image: np.ndarray, landmarks: np.ndarray, box: np.ndarray, size: int,
                 margin: float) -> np.ndarray:
    """Warp the face with ``landmarks`` (5x2, image px) to a ``size``x``size`` uint8 crop.

    Falls back to a square crop around ``box`` (x1,y1,x2,y2) when the landmarks are degenerate.
    """
    matrix = similarity(landmarks, template(size, margin)) if np.isfinite(landmarks).all() else None
    if matrix is None:
        return box_crop(image, box, size, margin)
    return _warp(image, matrix, size, 0)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """3x3 matrix of the similarity (rotation, uniform scale, translation) taking the points ``src``
    (N, 2) closest to ``dst`` in least squares; None when ``src`` is degenerate (all one point)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s ** 2).sum() / len(src)
    if not var > 1e-12:
        return None
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # a rotation, never a mirror
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var
    out = np.eye(3)
    out[:2, :2], out[:2, 2] = scale * rot, mu_d - scale * rot @ mu_s
    return out if np.isfinite(out).all() else None


def _warp(image: np.ndarray, matrix: np.ndarray, size: int, flags: int) -> np.ndarray:
    """Bilinear warp to ``size`` x ``size``, edge pixels repeated (skimage's mode="edge")."""
    return cv2.warpAffine(np.ascontiguousarray(image), matrix[:2].astype(np.float64), (size, size),
                          flags=cv2.INTER_LINEAR | flags, borderMode=cv2.BORDER_REPLICATE)


def box_crop(image: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Square crop centred on ``box`` with ``margin`` context, resized to ``size`` (edge-padded)."""
    x1, y1, x2, y2 = [float(v) for v in box]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1, 1.0) * (1.0 + margin) / 2
    scale = (2 * half) / size
    crop_to_image = np.array([[scale, 0.0, cx - half], [0.0, scale, cy - half]])
    return _warp(image, crop_to_image, size, cv2.WARP_INVERSE_MAP)
