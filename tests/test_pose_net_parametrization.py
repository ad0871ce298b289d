"""The crop geometry and the pose parametrisation of the network's heads round-trip exactly."""
import numpy as np
import pytest
import tensorflow as tf

from pose_core import geometry as g
from pose_net import parametrization as p


@pytest.fixture
def poses():
    rng = np.random.default_rng(0)
    B = 64
    R = g.random_rotations(B, rng).astype(np.float32)
    t = np.stack([rng.uniform(-150, 150, B), rng.uniform(-150, 150, B), rng.uniform(400, 1600, B)], 1)
    K = np.tile(g.intrinsics(1066.8, 1067.5, 313.0, 241.3)[None], (B, 1, 1))
    centers = rng.uniform(100, 400, (B, 2))
    sizes = rng.uniform(40, 300, B)
    return [np.asarray(a, np.float32) for a in (R, t, K, centers, sizes)]


def test_translation_target_round_trip(poses):
    R, t, K, c, s = poses
    target = p.translation_to_target(t, K, c, s, 180.0)
    back = p.target_to_translation(target, K, c, s, 180.0).numpy()
    assert np.allclose(back, t, rtol=1e-4, atol=1e-2)


def test_translation_target_is_scale_invariant(poses):
    # Moving the object 2x farther along its ray halves its image; a crop half the size shows it as before:
    # the depth term is unchanged and the centre offset (same pixel, half the crop) doubles.
    R, t, K, c, s = poses
    K0 = K.copy()
    K0[:, 0, 2] = K0[:, 1, 2] = 0.0
    c0 = np.zeros_like(c)
    a = p.translation_to_target(t, K0, c0, s, 180.0).numpy()
    b = p.translation_to_target(t * 2.0, K0, c0, s / 2.0, 180.0).numpy()
    assert np.allclose(a[:, 2], b[:, 2], rtol=1e-5)
    assert np.allclose(b[:, :2], 2 * a[:, :2], rtol=1e-4, atol=1e-5)


def test_allocentric_round_trip_and_ray(poses):
    R, t, *_ = poses
    R_allo = p.egocentric_to_allocentric(R, t)
    assert np.allclose(p.allocentric_to_egocentric(R_allo, t).numpy(), R, atol=1e-5)
    ray = p.ray_rotation(t).numpy()
    assert np.allclose(ray[:, :, 2], t / np.linalg.norm(t, axis=1, keepdims=True), atol=1e-6)
    assert np.allclose(np.linalg.det(ray), 1.0, atol=1e-5)
    # on the optical axis allocentric and egocentric agree
    t_axis = np.tile([[0, 0, 700.0]], (len(R), 1)).astype(np.float32)
    assert np.allclose(p.egocentric_to_allocentric(R, t_axis).numpy(), R, atol=1e-6)


def test_quaternion_matches_pose_core(poses):
    R = poses[0]
    q = g.matrix_to_quaternion(R).astype(np.float32)
    assert np.allclose(p.quaternion_to_matrix(q).numpy(), R, atol=1e-5)
    assert np.all(p.canonical_quaternion(-q).numpy()[:, 0] >= 0)


def test_crop_intrinsics_match_crop_and_resize():
    # A bright pixel lands, in the resized crop, where K_crop projects its centre.
    H, W, S = 96, 120, 32
    rng = np.random.default_rng(3)
    for _ in range(20):
        r, c = rng.integers(20, 70), rng.integers(20, 90)
        img = np.zeros((1, H, W, 1), np.float32)
        img[0, r, c, 0] = 1.0
        center = np.array([[c + rng.uniform(-8, 8), r + rng.uniform(-8, 8)]], np.float32)
        size = np.array([rng.uniform(20, 40)], np.float32)
        boxes = p.crop_boxes_normalized(center, size, S, (H, W))
        crop = tf.image.crop_and_resize(img, boxes, [0], [S, S], method="bilinear").numpy()[0, :, :, 0]
        K_crop = p.crop_intrinsics(np.eye(3, dtype=np.float32)[None], center, size, S).numpy()[0]
        u, v, _ = K_crop @ np.array([c, r, 1.0])
        # the bilinear footprint's centre of mass is the projected point
        rows, cols = np.mgrid[0:S, 0:S]
        assert crop.sum() > 0
        assert abs((crop * cols).sum() / crop.sum() - u) < 0.6 and abs((crop * rows).sum() / crop.sum() - v) < 0.6


def test_box_target_round_trip(poses):
    _, _, _, c, s = poses
    rng = np.random.default_rng(1)
    boxes = np.concatenate([rng.uniform(0, 500, (len(s), 2)), rng.uniform(5, 200, (len(s), 2))], 1).astype(np.float32)
    target = p.box_to_crop_target(boxes, c, s)
    assert np.allclose(p.crop_target_to_box(target, c, s).numpy(), boxes, atol=1e-3)
    # a box equal to the roi crop's own square sits in the middle of the crop
    center, size = p.roi_crop_from_box(boxes, 1.0)
    tgt = p.box_to_crop_target(boxes, center, size).numpy()
    assert np.allclose((tgt[:, 0] + tgt[:, 2]) / 2, 0.5, atol=1e-4)
