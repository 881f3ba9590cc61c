"""Head pose from 5 landmarks on synthetic faces of known pose (scaled-orthographic projections)."""
from __future__ import annotations

import numpy as np
import pytest

from artextract.stages.pose import MEAN_FACE_5PT, pose_distance, pose_from_landmarks, project, rotation_matrix


def _random_faces(n: int, seed: int, noise_px: float):
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(-40, 40, n), rng.uniform(-25, 25, n), rng.uniform(-45, 45, n)], axis=1)
    scale = rng.uniform(0.6, 3.0, n)  # inter-ocular distance ~38-190 px
    center = rng.uniform(50, 800, (n, 2))
    lm = project(*truth.T, scale=scale, center=center)
    return truth, lm + rng.normal(0, noise_px, lm.shape)


def test_rotation_matrix_is_a_proper_rotation():
    rot = rotation_matrix(np.array([30.0, -10.0]), np.array([-20.0, 5.0]), np.array([40.0, 170.0]))
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0)


def test_exact_recovery_without_noise():
    truth, lm = _random_faces(200, seed=0, noise_px=0.0)
    np.testing.assert_allclose(pose_from_landmarks(lm), truth, atol=1e-6)


def test_recovery_within_tolerance_with_noise():
    truth, lm = _random_faces(500, seed=1, noise_px=0.5)
    err = np.abs(pose_from_landmarks(lm) - truth)
    assert err[:, 0].max() < 8.0   # yaw
    assert err[:, 1].max() < 10.0  # pitch
    assert err[:, 2].max() < 3.0   # roll
    assert err.mean(axis=0).max() < 2.0


def test_sign_conventions_on_hand_made_landmarks():
    frontal = np.array([[40.0, 50.0], [72.0, 50.0], [56.0, 68.0], [43.0, 87.0], [69.0, 87.0]])
    assert np.abs(pose_from_landmarks(frontal[None]))[0, [0, 2]].max() < 1.0
    nose_right = frontal.copy()
    nose_right[2, 0] += 6  # nose tip toward the image's right: the face turns to the image's right
    nose_up = frontal.copy()
    nose_up[2, 1] -= 4  # nose tip closer to the eye line: chin raised, face tilts up
    t = np.radians(15.0)  # rotate the whole face clockwise on screen (y points down)
    rot2d = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    tilted = (frontal - frontal.mean(0)) @ rot2d.T + frontal.mean(0)
    assert tilted[1, 1] > tilted[0, 1]  # the image-right eye is now lower
    yaw, pitch, roll = pose_from_landmarks(np.stack([nose_right, nose_up, tilted])).T
    assert yaw[0] > 10
    assert pitch[1] - pose_from_landmarks(frontal[None])[0, 1] > 5
    assert roll[2] == pytest.approx(15.0, abs=1.0)
    # roll is the eye-line angle for frontal faces
    eye = tilted[1] - tilted[0]
    assert roll[2] == pytest.approx(np.degrees(np.arctan2(eye[1], eye[0])), abs=1.0)


def test_monotonic_in_yaw():
    yaws = np.linspace(-40, 40, 17)
    lm = project(yaws, np.full(17, 10.0), np.full(17, -20.0), scale=1.5, center=(300.0, 200.0))
    est = pose_from_landmarks(lm + np.random.default_rng(2).normal(0, 0.2, lm.shape))[:, 0]
    assert np.all(np.diff(est) > 0)


def test_invariant_to_scale_and_translation():
    truth, lm = _random_faces(20, seed=3, noise_px=0.0)
    np.testing.assert_allclose(pose_from_landmarks(lm * 2.5 + 40.0), pose_from_landmarks(lm), atol=1e-6)


def test_shapes_and_bad_rows():
    lm = project(np.zeros(3), np.zeros(3), np.zeros(3))
    lm[1, 2, 0] = np.nan
    lm[2] = 7.0  # all five points on one pixel
    out = pose_from_landmarks(lm)
    assert out.shape == (3, 3) and np.isnan(out[1:]).all() and np.isfinite(out[0]).all()
    assert pose_from_landmarks(np.zeros((0, 5, 2))).shape == (0, 3)
    with pytest.raises(ValueError):
        pose_from_landmarks(np.zeros((2, 10)))
    assert MEAN_FACE_5PT.shape == (5, 3)


def test_pose_distance():
    a = np.array([10.0, 0.0, 0.0])
    assert pose_distance(a, a) == 0.0
    assert pose_distance(a, np.array([13.0, 4.0, 0.0])) == pytest.approx(5.0)
    assert pose_distance(np.array([0.0, 0.0, 179.0]), np.array([0.0, 0.0, -179.0])) == pytest.approx(
        np.sqrt(0.5 * 4.0))  # roll wraps around
    queries, gallery = np.zeros((2, 1, 3)), np.random.default_rng(0).uniform(-30, 30, (1, 7, 3))
    assert pose_distance(queries, gallery).shape == (2, 7)
