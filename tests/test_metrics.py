"""Known-answer tests of ADD, ADD-S, recall and the accuracy curve."""
import numpy as np
import pytest

from pose_core import geometry as g
from pose_core import metrics as m


@pytest.fixture
def points():
    return np.random.default_rng(1).uniform(-50, 50, size=(500, 3))


def test_identity_pose_gives_zero(points):
    R, t = g.random_rotations(1, np.random.default_rng(2))[0], np.array([10.0, -5.0, 800.0])
    assert m.add(R, t, R, t, points) == 0.0
    assert m.add_s(R, t, R, t, points) == 0.0


@pytest.mark.parametrize("d", [0.5, 3.0, 17.25])
def test_translation_offset_gives_add_equal_offset(points, d):
    R = np.eye(3)
    t = np.array([0.0, 0.0, 700.0])
    direction = np.array([1.0, 2.0, -2.0]) / 3.0
    assert np.isclose(m.add(R, t + d * direction, R, t, points), d)


def test_symmetric_rotation_add_s_near_zero_add_large(builtin_models):
    from pose_core.mesh import load_mesh

    mesh = load_mesh(builtin_models / "obj_000003.ply")  # body of revolution about z
    pts = g.sample_model_points(mesh, 2000, seed=0)
    R_gt, t = np.eye(3), np.array([0.0, 0.0, 600.0])
    R_est = g.axis_angle_to_matrix([0, 0, 1], np.radians(60))
    e_add = m.add(R_est, t, R_gt, t, pts)
    e_adds = m.add_s(R_est, t, R_gt, t, pts)
    diameter = 160.0
    assert e_adds < 0.02 * diameter  # the gap is the spacing of the sampled points
    assert e_add > 0.2 * diameter
    assert m.pose_error(R_est, t, R_gt, t, pts, symmetric=True) == e_adds
    # On the mesh's own vertices (64 sections), a rotation by 10 sections maps the vertex set onto itself.
    R_exact = g.axis_angle_to_matrix([0, 0, 1], 10 * 2 * np.pi / 64)
    assert m.add_s(R_exact, t, R_gt, t, mesh.vertices) < 1e-4  # float32 PLY storage
    assert m.add(R_exact, t, R_gt, t, mesh.vertices) > 0.1 * diameter


def test_add_s_is_closest_point_by_brute_force(points):
    rng = np.random.default_rng(5)
    R_est = g.random_rotations(1, rng)[0]
    t_est = np.array([3.0, 1.0, 505.0])
    est = points @ R_est.T + t_est
    gt = points + np.array([0, 0, 500.0])
    brute = np.sqrt(((gt[:, None, :] - est[None, :, :]) ** 2).sum(-1)).min(axis=1).mean()
    assert np.isclose(m.add_s(R_est, t_est, np.eye(3), [0, 0, 500.0], points), brute)
    assert m.add_s(R_est, t_est, np.eye(3), [0, 0, 500.0], points) <= m.add(R_est, t_est, np.eye(3), [0, 0, 500], points)


def test_recall_is_strictly_below_ten_percent():
    diameter = 200.0  # threshold 20 mm
    errors = np.array([0.0, 19.999, 20.0, 20.001, 100.0])
    assert m.is_correct(errors, diameter).tolist() == [True, True, False, False, False]
    assert m.recall(errors, diameter) == pytest.approx(2 / 5)
    assert m.recall([], diameter) == 0.0
    assert m.recall(errors, diameter, threshold_frac=0.5) == pytest.approx(4 / 5)


def test_accuracy_curve_monotone_and_consistent():
    errors = np.random.default_rng(0).uniform(0, 100, size=300)
    th, acc = m.accuracy_vs_threshold(errors, diameter_mm=150.0)
    assert th[0] == 0.0 and acc[0] == 0.0
    assert np.all(np.diff(acc) >= 0)
    i = int(np.argmin(np.abs(th - 0.1)))
    assert acc[i] == m.recall(errors, 150.0, th[i])


def test_batch_versions_match(points):
    rng = np.random.default_rng(3)
    R1, R2 = g.random_rotations(4, rng), g.random_rotations(4, rng)
    t1, t2 = rng.normal(size=(4, 3)) * 10 + [0, 0, 500], rng.normal(size=(4, 3)) * 10 + [0, 0, 500]
    assert np.allclose(m.add_batch(R1, t1, R2, t2, points), [m.add(a, b, c, d, points) for a, b, c, d in zip(R1, t1, R2, t2)])
    assert np.allclose(m.add_s_batch(R1, t1, R2, t2, points), [m.add_s(a, b, c, d, points) for a, b, c, d in zip(R1, t1, R2, t2)])
