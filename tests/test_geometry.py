"""Geometry round trips on random inputs and the camera convention."""
import numpy as np
import pytest

from pose_core import PoseInputError
from pose_core import geometry as g


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_quaternion_matrix_round_trip(rng):
    q = g.canonical_quaternion(rng.normal(size=(500, 4)))
    R = g.quaternion_to_matrix(q)
    assert np.allclose(R @ np.swapaxes(R, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    q_back = g.matrix_to_quaternion(R)
    assert np.all(q_back[:, 0] >= 0)
    assert np.allclose(q_back, q, atol=1e-10)


def test_matrix_quaternion_round_trip(rng):
    R = g.random_rotations(500, rng)
    assert np.allclose(g.quaternion_to_matrix(g.matrix_to_quaternion(R)), R, atol=1e-12)


def test_quaternion_is_w_first():
    # 90 degrees about z: w = cos(45), z = sin(45)
    q = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    assert np.allclose(g.quaternion_to_matrix(q), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)


def test_canonical_sign():
    q = np.array([-0.5, 0.5, 0.5, 0.5])
    assert np.allclose(g.canonical_quaternion(q), [0.5, -0.5, -0.5, -0.5])
    assert np.allclose(g.quaternion_to_matrix(q), g.quaternion_to_matrix(-q))


def test_random_rotations_are_uniform(rng):
    # Under the Haar measure, each column of R is uniform on the sphere: mean ~ 0, E[x^2] = 1/3.
    R = g.random_rotations(20000, rng)
    assert np.abs(R.mean(axis=0)).max() < 0.02
    assert np.allclose((R ** 2).mean(axis=0), 1 / 3, atol=0.01)


def test_bad_shapes_are_named():
    with pytest.raises(PoseInputError, match="4 components"):
        g.quaternion_to_matrix(np.zeros(3))
    with pytest.raises(PoseInputError, match="3x3"):
        g.matrix_to_quaternion(np.eye(4))


def test_projection_opencv_convention():
    K = g.intrinsics(500, 500, 320, 240)
    pts = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]], dtype=float)
    uv, z = g.project_points(pts, np.eye(3), np.array([0, 0, 1000.0]), K)
    assert np.allclose(uv[0], [320, 240])
    assert uv[1, 0] > 320 and np.isclose(uv[1, 1], 240)  # +x goes right
    assert uv[2, 1] > 240  # +y goes down
    assert np.allclose(z, 1000)


def test_project_then_box(rng):
    K = g.intrinsics(600, 610, 64, 60)
    for _ in range(50):
        pts = rng.uniform(-50, 50, size=(200, 3))
        R = g.random_rotations(1, rng)[0]
        t = np.array([*rng.uniform(-30, 30, 2), rng.uniform(600, 1200)])
        uv, z = g.project_points(pts, R, t, K)
        assert np.all(z > 0)
        box = g.bbox_from_points(uv)
        assert np.all(uv[:, 0] >= box[0] - 1e-9) and np.all(uv[:, 0] <= box[0] + box[2] + 1e-9)
        assert np.all(uv[:, 1] >= box[1] - 1e-9) and np.all(uv[:, 1] <= box[1] + box[3] + 1e-9)
        # the box is tight: some point touches each side
        assert np.isclose(uv[:, 0].min(), box[0]) and np.isclose(uv[:, 1].max(), box[1] + box[3])
        # manual projection agrees
        cam = pts @ R.T + t
        assert np.allclose(uv, np.stack([600 * cam[:, 0] / cam[:, 2] + 64, 610 * cam[:, 1] / cam[:, 2] + 60], 1))


def test_box_clipping_and_empty():
    uv = np.array([[-10, 5], [50, 200], [np.nan, 3]])
    assert np.allclose(g.bbox_from_points(uv, image_size_hw=(100, 40)), [0, 5, 40, 95])
    assert np.allclose(g.bbox_from_points(np.zeros((0, 2))), 0)


def test_bbox_from_mask():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert np.allclose(g.bbox_from_mask(mask), [3, 2, 6, 3])
    assert np.allclose(g.bbox_from_mask(np.zeros((4, 4))), 0)


def test_opengl_camera_pose_flips_y_and_z():
    # A point in front of the OpenCV camera (z > 0) lies at negative z in the OpenGL camera frame.
    cam_pose = g.opengl_camera_pose()
    p_cv = np.array([1.0, 2.0, 5.0, 1.0])
    p_gl = np.linalg.inv(cam_pose) @ p_cv
    assert np.allclose(p_gl[:3], [1.0, -2.0, -5.0])


def test_sample_model_points_deterministic():
    import trimesh

    mesh = trimesh.creation.box(extents=(10, 20, 30))
    a = g.sample_model_points(mesh, 300, seed=3)
    b = g.sample_model_points(mesh, 300, seed=3)
    assert a.shape == (300, 3) and np.array_equal(a, b)
    assert np.all(np.abs(a) <= np.array([5, 10, 15]) + 1e-9)


def _box_scene(rng):
    points = rng.normal(size=(600, 3)) * np.array([30.0, 15.0, 10.0])  # a box of about 100 px at 600 mm
    R = g.random_rotations(1, rng)[0]
    t = np.array([25.0, -15.0, 600.0])
    K = g.intrinsics(500.0, 500.0, 320.0, 240.0)
    uv, _ = g.project_points(points, R, t, K)
    return points, R, t, K, g.bbox_from_points(uv)


def test_translation_from_box_recovers_the_translation(rng):
    for _ in range(5):
        points, R, t, K, box = _box_scene(rng)
        start = t * np.array([1.1, 0.9, 1.25]) + np.array([10.0, -8.0, 0.0])
        t_box, ok = g.translation_from_box(points, R, box, K, start, (480, 640))
        assert ok
        np.testing.assert_allclose(t_box, t, atol=1e-3)


def test_translation_from_box_leaves_out_sides_at_the_image_border(rng):
    points, R, t, K, box = _box_scene(rng)
    uv, _ = g.project_points(points, R, t, K)
    # an image that ends inside the object on the right: the clipped box's right side is the border
    hw = (480, int(box[0] + 0.7 * box[2]))
    clipped = g.bbox_from_points(uv, hw)
    assert clipped[0] + clipped[2] == hw[1]
    t_box, ok = g.translation_from_box(points, R, clipped, K, t * 1.1, hw)
    assert ok  # three sides left: still determined
    np.testing.assert_allclose(t_box, t, atol=1e-3)
    # cut at the bottom as well: two sides left, the start is returned untouched
    hw2 = (int(box[1] + 0.7 * box[3]), hw[1])
    t_box, ok = g.translation_from_box(points, R, g.bbox_from_points(uv, hw2), K, t * 1.1, hw2)
    assert not ok
    np.testing.assert_array_equal(t_box, t * 1.1)


def test_translation_from_box_refuses_what_it_cannot_solve(rng):
    points, R, t, K, box = _box_scene(rng)
    for bad_box, start in [(np.zeros(4), t), (box, np.array([0.0, 0.0, np.nan])), (np.full(4, np.nan), t)]:
        t_box, ok = g.translation_from_box(points, R, bad_box, K, start)
        assert not ok
        np.testing.assert_array_equal(t_box, start)
