"""The RANSAC-PnP op (tf_ops.ransac_pnp) and its framework-free core (through the ctypes harness).

Synthetic problems (random poses of a 100-300 mm object at 300-1500 mm, K of the LINEMOD camera, Gaussian pixel
noise, outliers uniform in the image) are solved within 1 degree and 1 % of the depth; the result agrees with
OpenCV's solvePnPRansac; bad inputs give InvalidArgument or ok = False, never a crash; results are deterministic.
Needs the built op (`make build-ops`); OpenCV (opencv-python-headless) only for the comparison test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tf_ops.ransac_pnp.python import harness

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LINEMOD's camera (640 x 480).
K_LM = np.array([[572.4114, 0.0, 325.2611], [0.0, 573.57043, 242.04899], [0.0, 0.0, 1.0]], np.float32)
WIDTH_PX, HEIGHT_PX = 640, 480
# Accuracy asked of a recovered pose.
MAX_ROTATION_ERROR_DEG = 1.0
MAX_TRANSLATION_ERROR_REL_DEPTH = 0.01


def make_problem(rng, n: int, outlier_fraction: float, noise_px: float = 1.5, K=K_LM):
    """One synthetic item: (pixels [N, 2] f32, coords_mm [N, 3] f32, R [3, 3], t_mm [3], is_outlier [N]).

    Object: points in a box 100-300 mm wide; pose: random rotation, depth 300-1500 mm, centre projecting inside
    the image; inliers get N(0, noise_px) pixel noise, outliers a pixel uniform in the image.
    """
    size = rng.uniform(100.0, 300.0)
    coords = rng.uniform(-0.5, 0.5, (n, 3)) * size
    R = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    z = rng.uniform(300.0, 1500.0)
    centre_px = rng.uniform([0.25 * WIDTH_PX, 0.25 * HEIGHT_PX], [0.75 * WIDTH_PX, 0.75 * HEIGHT_PX])
    t = np.linalg.inv(K.astype(np.float64)) @ np.array([centre_px[0], centre_px[1], 1.0]) * z
    cam = coords @ R.T + t
    p = cam @ K.astype(np.float64).T
    pixels = p[:, :2] / p[:, 2:] + rng.normal(0.0, noise_px, (n, 2))
    is_outlier = rng.random(n) < outlier_fraction
    pixels[is_outlier] = rng.uniform([0, 0], [WIDTH_PX, HEIGHT_PX], (int(is_outlier.sum()), 2))
    return pixels.astype(np.float32), coords.astype(np.float32), R, t, is_outlier


def make_batch(rng, b, n, outlier_fraction, noise_px=1.5):
    items = [make_problem(rng, n, outlier_fraction, noise_px) for _ in range(b)]
    return tuple(np.stack([it[k] for it in items]) for k in range(5))


def rotation_error_deg(R_a, R_b) -> np.ndarray:
    cos = (np.trace(np.swapaxes(R_a, -1, -2) @ R_b, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pose_errors(R, t, R_gt, t_gt):
    """(rotation error in degrees [B], translation error relative to the true depth [B])."""
    return rotation_error_deg(R, R_gt), np.linalg.norm(t - t_gt, axis=-1) / t_gt[..., 2]


def reprojection_errors_px(R, t, coords, pixels, K=K_LM):
    cam = coords.astype(np.float64) @ R.T.astype(np.float64) + t
    p = cam @ K.astype(np.float64).T
    e = np.linalg.norm(p[:, :2] / p[:, 2:] - pixels, axis=1)
    return np.where(cam[:, 2] > 1e-3, e, np.inf)


@pytest.fixture(scope="module")
def ransac_pnp(tf):
    from tf_ops import ransac_pnp as fn

    return fn


# ---------------------------------------------------------------------------------------------------------------
# Core through the ctypes harness (no TensorFlow)


def test_core_p3p_recovers_the_pose_among_its_solutions(core):
    rng = np.random.default_rng(1)
    for _ in range(100):
        pixels, coords, R, t, _ = make_problem(rng, 3, 0.0, noise_px=0.0)
        solutions = core.p3p(pixels, coords, K_LM)
        assert 1 <= len(solutions) <= 4
        for Rs, ts in solutions:  # every solution is a rotation that reprojects the three points
            np.testing.assert_allclose(Rs @ Rs.T, np.eye(3), atol=1e-4)
            assert np.linalg.det(Rs) > 0
            assert reprojection_errors_px(Rs, ts, coords, pixels).max() < 0.05
        best = min(rotation_error_deg(Rs, R) + np.linalg.norm(ts - t) for Rs, ts in solutions)
        assert best < 0.05


def test_core_p3p_degenerate_triangle_has_no_solution(core):
    coords = np.array([[0, 0, 0], [10, 10, 10], [20, 20, 20]], np.float32)  # collinear
    pixels = np.array([[300, 200], [320, 230], [340, 260]], np.float32)
    assert core.p3p(pixels, coords, K_LM) == []
    with pytest.raises(harness.CoreError):
        core.p3p(pixels, coords, np.zeros((3, 3), np.float32))


def test_core_solves_synthetic_problems_and_reports_status(core):
    rng = np.random.default_rng(2)
    pixels, coords, R_gt, t_gt, _ = make_batch(rng, 8, 300, 0.4)
    res = core.ransac_pnp(pixels, coords, K_LM, seed=3)
    assert res["ok"].all() and (res["status"] == harness.ITEM_OK).all()
    rot, trans = pose_errors(res["R"], res["t_mm"], R_gt, t_gt)
    assert rot.max() < MAX_ROTATION_ERROR_DEG and trans.max() < MAX_TRANSLATION_ERROR_REL_DEPTH


def test_core_result_does_not_depend_on_how_the_batch_is_split(core):
    rng = np.random.default_rng(3)
    pixels, coords, *_ = make_batch(rng, 6, 200, 0.3)
    whole = core.ransac_pnp(pixels, coords, K_LM, seed=11)
    parts = [core.ransac_pnp(pixels, coords, K_LM, seed=11, batch_range=(lo, hi)) for lo, hi in ((0, 1), (1, 4), (4, 6))]
    for key in ("R", "t_mm", "inliers", "score", "ok"):
        stitched = np.concatenate([p[key][lo:hi] for p, (lo, hi) in zip(parts, ((0, 1), (1, 4), (4, 6)))])
        np.testing.assert_array_equal(stitched, whole[key], err_msg=key)


def test_core_degenerate_items_give_status_not_errors(core):
    rng = np.random.default_rng(4)
    pixels, coords, *_ = make_batch(rng, 5, 50, 0.0)
    K = np.broadcast_to(K_LM, (5, 3, 3)).copy()
    valid = np.ones((5, 50), bool)
    valid[0, 3:] = False  # 3 valid points
    coords[1] = np.linspace(0, 1, 50)[:, None] * np.array([100.0, 50.0, -20.0], np.float32)  # collinear
    K[2] = [[572.0, 0, 320], [0, 0, 240], [0, 0, 1]]  # singular (fy = 0)
    res = core.ransac_pnp(pixels, coords, K, valid=valid, num_hypotheses=4)
    want = [harness.ITEM_TOO_FEW_POINTS, harness.ITEM_COLLINEAR_POINTS, harness.ITEM_SINGULAR_K, harness.ITEM_OK,
            harness.ITEM_OK]
    assert res["status"].tolist() == want, [core.item_status_string(s) for s in res["status"]]
    # Pure noise and a tiny threshold: no minimal set of 4 agrees on a pose.
    noise = rng.uniform(0, 640, (1, 50, 2)).astype(np.float32)
    res_noise = core.ransac_pnp(noise, coords[4:], K_LM, threshold_px=0.01, num_hypotheses=2)
    assert res_noise["status"].tolist() == [harness.ITEM_NO_HYPOTHESIS]
    for r, b in [(res, 0), (res, 1), (res, 2), (res_noise, 0)]:
        assert not r["ok"][b]
        np.testing.assert_array_equal(r["R"][b], np.eye(3))
        np.testing.assert_array_equal(r["t_mm"][b], 0)
        assert not r["inliers"][b].any() and r["score"][b] == 0


@pytest.mark.parametrize("kwargs", [dict(num_hypotheses=0), dict(threshold_px=0.0), dict(threshold_px=np.nan),
                                    dict(max_refine_iterations=-1), dict(num_hypotheses=10**6)])
def test_core_rejects_bad_parameters(core, kwargs):
    pixels, coords, *_ = make_batch(np.random.default_rng(5), 1, 10, 0.0)
    with pytest.raises(harness.CoreError, match="invalid argument"):
        core.ransac_pnp(pixels, coords, K_LM, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The TensorFlow op


# About 1000 inliers each: with 1-2 px noise, a 100 mm object at 1500 mm (~40 px wide) is then still found within
# 1 degree (its out-of-plane rotation is what the noise limits).
@pytest.mark.parametrize("outlier_fraction,n", [(0.0, 1000), (0.3, 1500), (0.6, 2500)])
def test_recovers_synthetic_poses(ransac_pnp, outlier_fraction, n):
    rng = np.random.default_rng(int(outlier_fraction * 100) + n)
    pixels, coords, R_gt, t_gt, is_outlier = make_batch(rng, 16, n, outlier_fraction,
                                                        noise_px=rng.uniform(1.0, 2.0))
    res = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, seed=7).items()}
    assert res["ok"].all()
    rot, trans = pose_errors(res["R"], res["t_mm"], R_gt, t_gt)
    assert rot.max() < MAX_ROTATION_ERROR_DEG, rot
    assert trans.max() < MAX_TRANSLATION_ERROR_REL_DEPTH, trans
    np.testing.assert_allclose(res["R"] @ np.swapaxes(res["R"], 1, 2), np.broadcast_to(np.eye(3), (16, 3, 3)),
                               atol=1e-5)
    # The inliers are (almost exactly) the true inliers: an outlier may land within the threshold by chance.
    recall = (res["inliers"] & ~is_outlier).sum() / (~is_outlier).sum()
    assert recall > 0.99
    assert (res["inliers"] & is_outlier).sum() <= 0.02 * is_outlier.sum() + 2


def test_score_and_inliers_follow_their_definition(ransac_pnp):
    rng = np.random.default_rng(8)
    pixels, coords, *_ = make_batch(rng, 4, 400, 0.5)
    threshold = 8.0
    res = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, threshold_px=threshold, seed=1).items()}
    beta = 5.0 / threshold
    for b in range(4):
        e = reprojection_errors_px(res["R"][b], res["t_mm"][b], coords[b], pixels[b])
        score = np.sum(1.0 / (1.0 + np.exp(-beta * (threshold - e))))
        np.testing.assert_allclose(res["score"][b], score, rtol=1e-4)
        clear = np.abs(e - threshold) > 1e-2  # away from the boundary float32 and float64 agree
        np.testing.assert_array_equal(res["inliers"][b][clear], (e < threshold)[clear])


def test_agrees_with_opencv_solvepnpransac(ransac_pnp):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(9)
    b = 12
    pixels, coords, R_gt, t_gt, _ = make_batch(rng, b, 500, 0.4)
    res = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, threshold_px=8.0, seed=2).items()}
    compared = 0
    for i in range(b):
        found, rvec, tvec, inliers = cv2.solvePnPRansac(
            coords[i].astype(np.float64), pixels[i].astype(np.float64), K_LM.astype(np.float64), None,
            iterationsCount=500, reprojectionError=8.0, confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE)
        if not found or not res["ok"][i]:
            continue
        R_cv = cv2.Rodrigues(rvec)[0]
        assert rotation_error_deg(res["R"][i], R_cv) < 0.5, i
        assert np.linalg.norm(res["t_mm"][i] - tvec.ravel()) < 0.005 * t_gt[i, 2], i
        compared += 1
    assert compared >= b - 1


def test_padding_with_valid_or_num_valid_changes_nothing(ransac_pnp):
    rng = np.random.default_rng(10)
    pixels, coords, *_ = make_batch(rng, 3, 200, 0.3)
    plain = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, seed=4).items()}
    pad = 57
    garbage_px = rng.uniform(0, 640, (3, pad, 2)).astype(np.float32)
    garbage_px[:, ::3] = np.nan
    pixels_p = np.concatenate([pixels, garbage_px], axis=1)
    coords_p = np.concatenate([coords, rng.normal(0, 100, (3, pad, 3)).astype(np.float32)], axis=1)
    valid = np.concatenate([np.ones((3, 200), bool), np.zeros((3, pad), bool)], axis=1)
    by_mask = {k: v.numpy() for k, v in ransac_pnp(pixels_p, coords_p, K_LM, valid=valid, seed=4).items()}
    by_count = {k: v.numpy() for k, v in
                ransac_pnp(pixels_p, coords_p, K_LM, num_valid=np.full(3, 200, np.int32), seed=4).items()}
    for padded in (by_mask, by_count):
        for key in ("R", "t_mm", "score", "ok"):
            np.testing.assert_array_equal(padded[key], plain[key], err_msg=key)
        np.testing.assert_array_equal(padded["inliers"][:, :200], plain["inliers"])
        assert not padded["inliers"][:, 200:].any()


def test_zero_weight_is_not_sampled_but_is_scored(ransac_pnp):
    rng = np.random.default_rng(11)
    pixels, coords, R_gt, t_gt, is_outlier = make_batch(rng, 4, 300, 0.2)
    weights = np.ones((4, 300), np.float32)
    weights[:, 150:] = 0.0
    res = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, weights=weights, seed=5).items()}
    assert res["ok"].all()
    assert (res["inliers"][:, 150:] & ~is_outlier[:, 150:]).sum() > 0.99 * (~is_outlier[:, 150:]).sum()
    assert (res["score"] > 0.7 * (~is_outlier).sum(axis=1)).all()
    # Only 3 points may be sampled: no minimal set.
    weights[:, 3:] = 0.0
    res = ransac_pnp(pixels, coords, K_LM, weights=weights)
    assert not res["ok"].numpy().any()


def test_weights_on_the_inliers_help_with_80_percent_outliers(ransac_pnp):
    rng = np.random.default_rng(12)
    b = 32
    pixels, coords, R_gt, t_gt, is_outlier = make_batch(rng, b, 2000, 0.8)
    # One hypothesis, so the first minimal set that passes the 4-point check decides. Uniformly, a set is all
    # inliers with probability 0.2^4 ~ 0.0016, and a set of outliers that happens to agree often comes first (about
    # 18 of 32 items come out right); with these weights a set is all inliers with probability ~0.74 (31-32 of 32).
    weights = np.where(is_outlier, 0.02, 1.0).astype(np.float32)

    def successes(w):
        res = {k: v.numpy() for k, v in
               ransac_pnp(pixels, coords, K_LM, weights=w, num_hypotheses=1, max_refine_iterations=3, seed=6).items()}
        rot, trans = pose_errors(res["R"], res["t_mm"], R_gt, t_gt)
        return int((res["ok"] & (rot < MAX_ROTATION_ERROR_DEG) & (trans < MAX_TRANSLATION_ERROR_REL_DEPTH)).sum())

    uniform, weighted = successes(None), successes(weights)
    assert weighted >= b - 2, (uniform, weighted)
    assert uniform <= b - 8, (uniform, weighted)


def test_same_seed_same_outputs_and_thread_count_does_not_matter(ransac_pnp, core):
    rng = np.random.default_rng(13)
    pixels, coords, *_ = make_batch(rng, 8, 300, 0.5)
    a = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, seed=123, max_refine_iterations=0).items()}
    b = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, seed=123, max_refine_iterations=0).items()}
    c = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K_LM, seed=124, max_refine_iterations=0).items()}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["R"], c["R"])  # another seed draws other minimal sets
    # The TF kernel (batch split over its thread pool) equals the core run item by item on one thread.
    single = [core.ransac_pnp(pixels, coords, K_LM, seed=123, max_refine_iterations=0, batch_range=(i, i + 1))
              for i in range(8)]
    for key in ("R", "t_mm", "inliers", "score", "ok"):
        np.testing.assert_array_equal(np.stack([s[key][i] for i, s in enumerate(single)]), a[key], err_msg=key)


def test_not_differentiable(ransac_pnp, tf):
    pixels, coords, *_ = make_batch(np.random.default_rng(14), 2, 50, 0.0)
    pixels_t = tf.constant(pixels)
    with tf.GradientTape() as tape:
        tape.watch(pixels_t)
        res = ransac_pnp(pixels_t, coords, K_LM)
        total = tf.reduce_sum(res["t_mm"]) + tf.reduce_sum(res["score"])
    assert tape.gradient(total, pixels_t) is None


def test_degenerate_items_give_ok_false(ransac_pnp):
    rng = np.random.default_rng(15)
    pixels, coords, *_ = make_batch(rng, 5, 40, 0.0)
    K = np.broadcast_to(K_LM, (5, 3, 3)).copy()
    pixels[0, 2:] = np.nan  # 2 finite points left
    coords[1, :, 1] = np.inf  # no finite 3D point
    coords[2] = np.linspace(-1, 1, 40)[:, None] * np.array([50.0, 10.0, 30.0], np.float32)  # collinear
    K[3] = 0.0  # singular
    pixels[4, :5] = np.inf  # some non-finite: ignored, the rest solve the item
    res = {k: v.numpy() for k, v in ransac_pnp(pixels, coords, K, seed=1).items()}
    assert res["ok"].tolist() == [False, False, False, False, True]
    for b in range(4):
        np.testing.assert_array_equal(res["R"][b], np.eye(3))
        np.testing.assert_array_equal(res["t_mm"][b], np.zeros(3))
        assert not res["inliers"][b].any() and res["score"][b] == 0.0
    assert not res["inliers"][4, :5].any() and res["inliers"][4, 5:].all()


@pytest.mark.parametrize("n", [0, 1, 3])
def test_fewer_than_four_points(ransac_pnp, n):
    pixels, coords, *_ = make_batch(np.random.default_rng(16), 2, max(n, 1), 0.0)
    res = ransac_pnp(pixels[:, :n], coords[:, :n], K_LM)
    assert res["inliers"].shape == (2, n)
    assert not res["ok"].numpy().any()


def test_empty_batch(ransac_pnp):
    res = ransac_pnp(np.zeros((0, 10, 2), np.float32), np.zeros((0, 10, 3), np.float32),
                     np.zeros((0, 3, 3), np.float32))
    assert res["R"].shape == (0, 3, 3) and res["ok"].shape == (0,)


def _bad_calls():
    px, xyz, K = np.zeros((2, 6, 2), np.float32), np.zeros((2, 6, 3), np.float32), np.tile(K_LM, (2, 1, 1))
    w = np.ones((2, 6), np.float32)
    K_nan = K.copy()
    K_nan[1, 0, 2] = np.nan
    w_neg = w.copy()
    w_neg[0, 1] = -1.0
    w_inf = w.copy()
    w_inf[1, 2] = np.inf
    return [
        ("pixels rank", dict(pixels=px[0], coords_mm=xyz, K=K), "pixels must be rank 3"),
        ("pixels last dim", dict(pixels=np.zeros((2, 6, 3), np.float32), coords_mm=xyz, K=K), "pixels"),
        ("coords last dim", dict(pixels=px, coords_mm=np.zeros((2, 6, 2), np.float32), K=K), "coords_mm"),
        ("coords N", dict(pixels=px, coords_mm=np.zeros((2, 5, 3), np.float32), K=K), "coords_mm"),
        ("K shape", dict(pixels=px, coords_mm=xyz, K=np.zeros((2, 3, 4), np.float32)), "K"),
        ("K batch", dict(pixels=px, coords_mm=xyz, K=np.zeros((3, 3, 3), np.float32)), "K"),
        ("K nan", dict(pixels=px, coords_mm=xyz, K=K_nan), "K must be finite"),
        ("weights shape", dict(pixels=px, coords_mm=xyz, K=K, weights=np.ones((2, 5), np.float32)), "weights"),
        ("weights negative", dict(pixels=px, coords_mm=xyz, K=K, weights=w_neg), "weights must be finite and >= 0"),
        ("weights inf", dict(pixels=px, coords_mm=xyz, K=K, weights=w_inf), "weights must be finite and >= 0"),
        ("valid dtype", dict(pixels=px, coords_mm=xyz, K=K, valid=np.ones((2, 6), np.float32)), "valid must be bool"),
        ("valid shape", dict(pixels=px, coords_mm=xyz, K=K, valid=np.ones((2, 7), bool)), "valid"),
        ("pixels dtype", dict(pixels="abc", coords_mm=xyz, K=K), "pixels"),
        ("num_hypotheses", dict(pixels=px, coords_mm=xyz, K=K, num_hypotheses=0), "num_hypotheses"),
        ("threshold", dict(pixels=px, coords_mm=xyz, K=K, threshold_px=-1.0), "threshold_px"),
        ("refine", dict(pixels=px, coords_mm=xyz, K=K, max_refine_iterations=-2), "max_refine_iterations"),
        ("seed", dict(pixels=px, coords_mm=xyz, K=K, seed=1.5), "seed"),
    ]


@pytest.mark.parametrize("label,kwargs,message", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_malformed_inputs_raise_invalid_argument(ransac_pnp, tf, label, kwargs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ransac_pnp(**kwargs)


def test_kernel_checks_shapes_unknown_to_the_graph(tf):
    """With unknown static shapes the shape function cannot check: the kernel's OP_REQUIRES must."""
    from tf_ops.ransac_pnp.python.ops.ransac_pnp_ops import _ops

    spec = [tf.TensorSpec(None, tf.float32)] * 4 + [tf.TensorSpec(None, tf.bool)]
    call = tf.function(lambda p, x, k, w, v: _ops.ransac_pnp(p, x, k, w, v), input_signature=spec)
    good = dict(p=np.zeros((2, 6, 2), np.float32), x=np.zeros((2, 6, 3), np.float32), k=np.tile(K_LM, (2, 1, 1)),
                w=np.ones((2, 6), np.float32), v=np.ones((2, 6), bool))
    out = call(**good)
    assert out[0].shape == (2, 3, 3)
    bad = [dict(p=np.zeros((2, 6), np.float32)), dict(x=np.zeros((2, 6, 4), np.float32)),
           dict(k=np.zeros((2, 3), np.float32)), dict(w=np.ones((3, 6), np.float32)), dict(v=np.ones((2,), bool)),
           dict(p=np.zeros((1, 6, 2), np.float32))]
    for change in bad:
        with pytest.raises(tf.errors.InvalidArgumentError):
            call(**{**good, **change})


def test_fuzz_never_crashes(ransac_pnp, tf):
    """Random shapes (sometimes inconsistent) and values (NaN, inf, huge, zero, duplicates): a result with the
    documented invariants, or InvalidArgumentError. A crash would kill the test process."""
    rng = np.random.default_rng(17)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30, 1e-30], np.float32)
    for trial in range(120):
        b, n = int(rng.integers(0, 4)), int(rng.integers(0, 40))
        shape_px = [b, n, 2] if rng.random() > 0.1 else list(rng.integers(0, 4, rng.integers(1, 5)))
        shape_x = [b, n, 3] if rng.random() > 0.1 else [b, max(n - 1, 0), 3]
        pixels = rng.uniform(-100, 700, shape_px).astype(np.float32)
        coords = rng.normal(0, 200, shape_x).astype(np.float32)
        K = np.tile(K_LM, (b, 1, 1)) * rng.uniform(0.0, 2.0, (b, 1, 1)).astype(np.float32)
        for a in (pixels, coords, K):
            if a.size and rng.random() < 0.3:
                a.flat[rng.integers(0, a.size, max(1, a.size // 10))] = rng.choice(specials)
        if rng.random() < 0.2 and n > 0 and pixels.ndim == 3 and pixels.shape[1] > 0:
            pixels[:] = pixels[:, :1]  # all correspondences at one pixel
        kwargs = {}
        if rng.random() < 0.3:
            kwargs["weights"] = rng.choice([0.0, 1.0, 5.0, -1.0 if rng.random() < 0.1 else 2.0],
                                           (b, n)).astype(np.float32)
        if rng.random() < 0.3:
            kwargs["valid"] = rng.random((b, n)) < 0.7
        try:
            res = ransac_pnp(pixels, coords, K, num_hypotheses=int(rng.integers(1, 8)),
                             threshold_px=float(rng.uniform(0.5, 20)), seed=trial, max_refine_iterations=2, **kwargs)
        except tf.errors.InvalidArgumentError:
            continue
        res = {k: v.numpy() for k, v in res.items()}
        assert res["R"].shape == (b, 3, 3) and res["inliers"].shape == (b, n)
        for i in range(b):
            if res["ok"][i]:
                assert np.isfinite(res["R"][i]).all() and np.isfinite(res["t_mm"][i]).all()
                np.testing.assert_allclose(res["R"][i] @ res["R"][i].T, np.eye(3), atol=1e-4)
                assert res["score"][i] >= 0
            else:
                np.testing.assert_array_equal(res["R"][i], np.eye(3))
                assert not res["inliers"][i].any()


def test_missing_library_gives_a_clear_import_error():
    code = (
        "import pathlib\n"
        "orig = pathlib.Path.is_file\n"
        "pathlib.Path.is_file = lambda self: False if self.name == '_ransac_pnp_ops.so' else orig(self)\n"
        "try:\n"
        "    from tf_ops import ransac_pnp\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "IMPORT-ERROR:" in out.stdout and "make build-ops" in out.stdout, out.stdout + out.stderr
