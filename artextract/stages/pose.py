"""Head pose (yaw, pitch, roll in degrees) from MTCNN's 5 landmarks, by a scaled-orthographic fit.

Landmarks are (x, y) image pixels (x right, y down) in MTCNN order: eye at image left, eye at
image right, nose tip, mouth corner at image left, mouth corner at image right.

Method: fit ``x_i = s * R[:2] @ X_i + t`` to a 3D mean-face 5-point model ``X`` by linear least
squares (an affine camera has 8 unknowns, 5 points give 10 equations; the model is not coplanar
because the nose protrudes), project the 2x3 affine block onto the nearest scaled rotation rows
(SVD), complete R with a cross product and read the Euler angles. Vectorised over faces.

Sign conventions (``R = Rz(roll) @ Rx(pitch) @ Ry(yaw)`` acting on the model in camera axes):
  yaw   > 0: the face turns toward the image's right (nose tip moves right; subject's own left);
  pitch > 0: the face tilts up, chin raised (nose tip moves up in the image);
  roll  > 0: the eye line turns clockwise on screen (the image-right eye is lower).
Accuracy on real faces is limited by how far a face departs from the mean model (identity,
expression, perspective); treat yaw/pitch as coarse (±10°) cues for re-ranking, not measurements.
"""
from __future__ import annotations

import numpy as np

# Mean face in millimetres, camera axes (x right, y down, z away from the camera), origin at the
# eye midpoint. x/y follow the ArcFace 112x112 5-point template scaled to a 64 mm inter-ocular
# distance; depths (nose tip 30 mm, mouth corners 10 mm in front of the eye centres) are typical
# anthropometric values.
MEAN_FACE_5PT = np.array([
    [-32.0, 0.0, 0.0],    # eye, image left
    [32.0, 0.0, 0.0],     # eye, image right
    [0.0, 36.5, -30.0],   # nose tip
    [-26.5, 74.0, -10.0],  # mouth corner, image left
    [26.5, 74.0, -10.0],   # mouth corner, image right
])


def rotation_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Angles in degrees (N,) each -> rotations (N,3,3) ``Rz(roll) @ Rx(pitch) @ Ry(yaw)`` (module docstring)."""
    y, p, r = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    o, z = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([np.stack([cy, z, -sy], -1), np.stack([z, o, z], -1), np.stack([sy, z, cy], -1)], -2)
    rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cp, sp], -1), np.stack([z, -sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, z], -1), np.stack([sr, cr, z], -1), np.stack([z, z, o], -1)], -2)
    return rz @ rx @ ry


def project(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray, scale: np.ndarray | float = 1.0,
            center: np.ndarray | tuple[float, float] = (0.0, 0.0), model: np.ndarray = MEAN_FACE_5PT) -> np.ndarray:
    """Scaled-orthographic image landmarks (N,5,2) of ``model`` posed by degrees (N,) each."""
    rot = rotation_matrix(yaw, pitch, roll)
    pts = np.einsum("nij,kj->nki", rot[:, :2], model)
    return np.asarray(scale, dtype=np.float64).reshape(-1, 1, 1) * pts + np.asarray(center).reshape(-1, 1, 2)


def _euler(rot: np.ndarray) -> np.ndarray:
    # Inverse of rotation_matrix: row 2 = [cp*sy, -sp, cp*cy]; column 1 = [-sr*cp, cr*cp, -sp].
    yaw = np.arctan2(rot[:, 2, 0], rot[:, 2, 2])
    pitch = np.arctan2(-rot[:, 2, 1], np.hypot(rot[:, 2, 0], rot[:, 2, 2]))
    roll = np.arctan2(-rot[:, 0, 1], rot[:, 1, 1])
    return np.rad2deg(np.stack([yaw, pitch, roll], axis=1))


def pose_from_landmarks(landmarks: np.ndarray, model: np.ndarray = MEAN_FACE_5PT) -> np.ndarray:
    """(N,5,2) MTCNN landmarks in pixels -> (N,3) [yaw, pitch, roll] degrees; NaN rows for bad input."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must be (N, 5, 2), got {pts.shape}")
    out = np.full((len(pts), 3), np.nan)
    ok = np.isfinite(pts).all(axis=(1, 2))
    if not ok.any():
        return out
    x = pts[ok] - pts[ok].mean(axis=1, keepdims=True)          # (n,5,2)
    m = model - model.mean(axis=0)                               # (5,3)
    # Least squares for the affine block A (2x3): x_k = A m_k  =>  A^T = pinv(m) @ x.
    affine = np.einsum("jk,nkc->ncj", np.linalg.pinv(m), x)     # (n,2,3)
    u, s, vt = np.linalg.svd(affine, full_matrices=False)
    rows = u @ vt                                                # nearest 2x3 with orthonormal rows
    rot = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], axis=1)
    euler = _euler(rot)
    # Collapsed landmarks (all on a point or a line) have no defined pose: NaN, not a random angle.
    euler[s[:, 1] <= 1e-6 * np.maximum(s[:, 0], 1e-300)] = np.nan
    out[ok] = euler
    return out


def pose_distance(a: np.ndarray, b: np.ndarray, weights: tuple[float, float, float] = (1.0, 1.0, 0.5)) -> np.ndarray:
    """Weighted L2 distance in degrees between poses (...,3) and (...,3), broadcasting; roll wraps at ±180.

    Roll gets half weight by default because aligned crops already undo most of it.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    diff = (diff + 180.0) % 360.0 - 180.0
    return np.sqrt((np.asarray(weights) * diff**2).sum(axis=-1))
