"""Test-time augmentation and merging for face detection.

A *view* is an image transform with the inverse that maps its detections back to the original
pixels. Every (detector, view) pair is a *source*; their candidates are merged by weighted NMS
(the cluster around each highest-scoring candidate becomes one face, its box and landmarks the
score-weighted mean of the cluster's members from the sharpest views), and each merged face gets
one calibrated probability from two cues:

- ``vote``: the mean over sources of the best score each gave the face (0 where a source missed
  it): a face that only one view of one detector sees is doubtful;
- ``verify``: MTCNN's O-Net (its last, 48-px face/non-face stage) on a square crop of the box
  (stages/face_verify.py).

``prob = sigmoid(a * vote + b * verify + c)``: a logistic fit of "matches a hand-labelled face at
IoU 0.5" on the dev half of the labelled NGA images (tests/fixtures/nga_faces.csv), so
``faces.min_prob`` means the same for every detector and view set. ``make bench-faces`` refits it
and prints the coefficients next to these.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from artextract.stages.face_detectors import Raw, box_iou

# (a, b, c) per faces.detector, fitted by `make bench-faces` on the dev half (docs/benchmarks.md, Faces).
CALIBRATION: dict[str, tuple[float, float, float]] = {
    "mtcnn": (1.62, 0.51, 0.55),
    "retinaface": (2.92, 2.47, -1.96),
    "ensemble": (3.20, 1.67, -1.58),
}

Inverse = Callable[[Raw], Raw]
_FLIP_ORDER = [1, 0, 2, 4, 3]  # mirrored, the image-left eye/mouth corner becomes the image-right one


def _identity(img: np.ndarray) -> tuple[np.ndarray, Inverse]:
    return img, lambda r: r


def _flip(img: np.ndarray) -> tuple[np.ndarray, Inverse]:
    """Mirror: a profile facing right is seen as one facing left (detectors are not symmetric)."""
    w = img.shape[1]

    def inverse(r: Raw) -> Raw:
        boxes = np.column_stack([w - r.boxes[:, 2], r.boxes[:, 1], w - r.boxes[:, 0], r.boxes[:, 3]])
        pts = r.landmarks[:, _FLIP_ORDER].copy()
        pts[..., 0] = w - pts[..., 0]
        return Raw(boxes, r.scores, pts)
    return np.ascontiguousarray(img[:, ::-1]), inverse


def _halved(img: np.ndarray) -> np.ndarray:
    """Half size by PIL's bilinear (antialiased) filter; a 2-D image stays one channel."""
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR))


def _scaled_back(small: np.ndarray, img: np.ndarray) -> Inverse:
    sx, sy = small.shape[1] / img.shape[1], small.shape[0] / img.shape[0]
    return lambda r: Raw(r.boxes / [sx, sy, sx, sy], r.scores, r.landmarks / [sx, sy])


def _half(img: np.ndarray) -> tuple[np.ndarray, Inverse]:
    """Half size: a face filling the picture outgrows RetinaFace's largest (512 px) anchors."""
    small = _halved(img)
    return small, _scaled_back(small, img)


def _grey_channel(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))


def _grey(img: np.ndarray) -> tuple[np.ndarray, Inverse]:
    """Greyscale with local contrast equalisation (CLAHE): prints, drawings, dark varnish."""
    import cv2

    return cv2.cvtColor(_grey_channel(img), cv2.COLOR_GRAY2RGB), lambda r: r


def _grey_half(img: np.ndarray) -> tuple[np.ndarray, Inverse]:
    """``grey`` then ``half``, pixel for pixel, but resized as one channel (a third of the work:
    PIL filters each channel alike) and made RGB last: 7.5 -> 3.5 ms on a 1024 px image."""
    import cv2

    small = _halved(_grey_channel(img))
    return cv2.cvtColor(small, cv2.COLOR_GRAY2RGB), _scaled_back(small, img)


def _soft_half(img: np.ndarray) -> tuple[np.ndarray, Inverse]:
    """Gaussian blur (sigma = long side / 256: 4 px at 1024) then ``half``: the hatching, stipple
    and cut lines of engravings, woodcuts and lithographs become the tones a photo-trained detector
    knows. Not a default: as a third view it lowered dev recall (docs/benchmarks.md, Faces)."""
    import cv2

    sigma = max(img.shape[:2]) / 256
    small = _halved(cv2.GaussianBlur(img, (0, 0), sigma) if sigma >= 0.5 else img)
    return small, _scaled_back(small, img)


def _rotate(degrees: float) -> Callable[[np.ndarray], tuple[np.ndarray, Inverse]]:
    """Rotate about the centre (reflected borders): heads tilted by about ``degrees``."""
    def view(img: np.ndarray) -> tuple[np.ndarray, Inverse]:
        import cv2

        h, w = img.shape[:2]
        fwd = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        back = cv2.invertAffineTransform(fwd)
        out = cv2.warpAffine(img, fwd, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

        def inverse(r: Raw) -> Raw:
            pts = r.landmarks @ back[:, :2].T + back[:, 2]
            centre = ((r.boxes[:, :2] + r.boxes[:, 2:]) / 2) @ back[:, :2].T + back[:, 2]
            half = (r.boxes[:, 2:] - r.boxes[:, :2]) / 2  # an upright box of the same size around the face
            return Raw(np.concatenate([centre - half, centre + half], 1), r.scores, pts)
        return out, inverse
    return view


VIEWS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, Inverse]]] = {
    "identity": _identity, "flip": _flip, "half": _half, "grey": _grey,
    # The default second view: on the labelled dev half it votes as well as full-size grey (prints
    # and drawings at half size still have their faces above RetinaFace's 16 px anchors) and
    # costs a quarter of the pixels (docs/benchmarks.md, Faces).
    "grey-half": _grey_half,
    "soft-half": _soft_half,
    "rot+15": _rotate(15.0), "rot-15": _rotate(-15.0),
}


def weighted_nms(parts: list[Raw], iou: float, resolution: list[float] | None = None) -> tuple[Raw, np.ndarray]:
    """Merge candidates of ``len(parts)`` sources: (merged faces, vote per face).

    Greedy by score: the best unassigned candidate and every unassigned one overlapping it by
    ``iou`` form a face; its raw score is their maximum and its vote the mean over sources of each
    source's best score in the cluster. Its box and landmarks are the score-weighted mean of the
    members at the sharpest resolution among those scoring at least half the best (``resolution``:
    each source's pixels per original pixel, 1 for all by default): a half-size view's landmarks are
    half as precise, and averaging them in moved the head pose of a test portrait by 15 degrees;
    but a face larger than RetinaFace's 512 px anchors is seen well only at half size.
    """
    boxes = np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4))
    if len(boxes) == 0:
        return Raw.empty(), np.zeros(0)
    scores = np.concatenate([p.scores for p in parts])
    points = np.concatenate([p.landmarks for p in parts])
    source = np.concatenate([np.full(len(p.scores), k) for k, p in enumerate(parts)])
    resolution = [1.0] * len(parts) if resolution is None else resolution
    if len(resolution) != len(parts):
        raise ValueError(f"weighted_nms: {len(resolution)} resolutions for {len(parts)} sources")
    sharp = np.asarray(resolution, np.float64)[source]
    overlap = box_iou(boxes, boxes)
    free = np.ones(len(boxes), bool)
    out_b, out_p, out_s, votes = [], [], [], []
    for i in np.argsort(-scores, kind="stable"):
        if not free[i]:
            continue
        members = np.union1d(np.flatnonzero(free & (overlap[i] >= iou)), [i])  # i even if degenerate (IoU 0 or NaN)
        free[members] = False
        # the sharpest resolution among members nearly as sure as the best: a full-size view's weak
        # box of a face too large for its anchors must not override the half view's confident one
        sure = members[scores[members] >= 0.5 * scores[members].max()]
        where = members[sharp[members] == sharp[sure].max()]
        w = scores[where] / scores[where].sum()
        out_b.append(w @ boxes[where])
        out_p.append(np.tensordot(w, points[where], axes=1))
        out_s.append(scores[members].max())
        best = np.zeros(len(parts))
        np.maximum.at(best, source[members], scores[members])
        votes.append(best.mean())
    return Raw(np.array(out_b), np.array(out_s), np.array(out_p)), np.array(votes)


def calibrated(coef: tuple[float, float, float], vote: np.ndarray, verify: np.ndarray) -> np.ndarray:
    """The one probability ``faces.min_prob`` is compared with (module docstring); ``coef`` is a
    detector's CALIBRATION entry (the benchmark passes refitted ones)."""
    a, b, c = coef
    return 1.0 / (1.0 + np.exp(-(a * np.asarray(vote) + b * np.asarray(verify) + c)))
