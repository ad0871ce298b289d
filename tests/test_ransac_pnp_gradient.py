"""The training form of the RANSAC-PnP op (tf_ops.ransac_pnp_hypotheses: every hypothesis, refined) and its
registered gradient w.r.t. the object coordinates (core/derivatives.cc; docs/ransac_pnp.md, "Training form (DSAC)").

Forward: the best-scoring hypothesis recovers the pose and is exactly what ransac_pnp returns. Gradient: against
central finite differences of the whole forward (same seed, so the same minimal sets) through the refined pose, the
score, the minimal-solver pose, and without refinement. Bad inputs: zero gradient where nothing is used, never NaN.
Needs the built op (`make build-ops`).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tf_ops.ransac_pnp.python import harness

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A 640 x 480 camera with f = 500 px; objects of 100 mm at ~500 mm (about 100 px wide).
K_TEST = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]], np.float32)
WIDTH_PX, HEIGHT_PX = 640, 480
THRESHOLD_PX = 10.0
OUTPUT_KEYS = ("R", "t_mm", "score", "minimal_sets", "ok", "R_init", "t_init_mm")


def make_problem(rng, b: int, n: int, outlier_fraction: float, noise_px: float, size_mm: float = 100.0,
                 depth_mm: float = 500.0):
    """(pixels [B, N, 2] f32, coords_mm [B, N, 3] f32, R [B, 3, 3], t_mm [B, 3], is_outlier [B, N]): points in a
    cube of size_mm, a random rotation, the centre ~depth_mm ahead; inliers get N(0, noise_px) pixel noise, outliers
    a pixel uniform in the image."""
    out = []
    for _ in range(b):
        X = rng.uniform(-0.5, 0.5, (n, 3)) * size_mm
        R = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
        t = np.array([rng.uniform(-40, 40), rng.uniform(-40, 40), depth_mm * rng.uniform(0.9, 1.1)])
        p = (X @ R.T + t) @ K_TEST.astype(np.float64).T
        uv = p[:, :2] / p[:, 2:] + rng.normal(0.0, noise_px, (n, 2))
        is_outlier = rng.random(n) < outlier_fraction
        uv[is_outlier] = rng.uniform([0, 0], [WIDTH_PX, HEIGHT_PX], (int(is_outlier.sum()), 2))
        out.append((uv.astype(np.float32), X.astype(np.float32), R, t, is_outlier))
    return tuple(np.stack([o[k] for o in out]) for k in range(5))


def rotation_error_deg(R_a, R_b):
    cos = (np.trace(np.swapaxes(R_a, -1, -2) @ R_b, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def soft_score(R, t, coords, pixels, threshold=THRESHOLD_PX):
    """The documented soft inlier count, in float64."""
    cam = coords.astype(np.float64) @ R.T.astype(np.float64) + t
    p = cam @ K_TEST.astype(np.float64).T
    e = np.linalg.norm(p[:, :2] / p[:, 2:] - pixels, axis=1)
    s = 1.0 / (1.0 + np.exp(-(5.0 / threshold) * (threshold - e)))
    return np.sum(np.where(cam[:, 2] > 1e-3, s, 0.0))


@pytest.fixture(scope="module")
def ops(tf):
    from tf_ops import ransac_pnp, ransac_pnp_hypotheses

    return ransac_pnp, ransac_pnp_hypotheses


def numpy_outputs(res: dict) -> dict:
    return {k: np.asarray(v) for k, v in res.items()}


# ---------------------------------------------------------------------------------------------------------------
# Forward


def test_forward_recovers_the_pose_and_its_best_hypothesis_is_ransac_pnp(ops, core):
    ransac_pnp, ransac_pnp_hypotheses = ops
    rng = np.random.default_rng(0)
    b, n, h = 4, 200, 64
    pixels, coords, R_gt, t_gt, is_outlier = make_problem(rng, b, n, 0.2, noise_px=1.0)
    kwargs = dict(num_hypotheses=h, threshold_px=THRESHOLD_PX, seed=7)
    res = numpy_outputs(ransac_pnp_hypotheses(pixels, coords, K_TEST, **kwargs))
    assert res["R"].shape == (b, h, 3, 3) and res["t_mm"].shape == (b, h, 3) and res["score"].shape == (b, h)
    assert res["minimal_sets"].shape == (b, h, 4) and res["minimal_sets"].dtype == np.int32
    assert res["ok"].shape == (b, h) and res["ok"].dtype == bool
    assert res["R_init"].shape == (b, h, 3, 3) and res["t_init_mm"].shape == (b, h, 3)
    assert res["ok"].all()
    best = np.argmax(res["score"], axis=1)  # first on ties, as the inference op
    R_best, t_best = res["R"][np.arange(b), best], res["t_mm"][np.arange(b), best]
    assert rotation_error_deg(R_best, R_gt).max() < 1.0
    assert (np.linalg.norm(t_best - t_gt, axis=1) / t_gt[:, 2]).max() < 0.01
    # The inference op refines exactly that hypothesis (same draws, same refinement): bit-identical.
    inference = numpy_outputs(ransac_pnp(pixels, coords, K_TEST, **kwargs))
    np.testing.assert_array_equal(R_best, inference["R"])
    np.testing.assert_array_equal(t_best, inference["t_mm"])
    for i in range(b):
        for j in range(h):
            s = res["minimal_sets"][i, j]
            # 4 distinct correspondences that pass the 4-point check under the minimal-solver pose
            assert len(set(s.tolist())) == 4 and (s >= 0).all() and (s < n).all()
            cam = coords[i, s].astype(np.float64) @ res["R_init"][i, j].T.astype(np.float64) + res["t_init_mm"][i, j]
            p = cam @ K_TEST.astype(np.float64).T
            assert np.linalg.norm(p[:, :2] / p[:, 2:] - pixels[i, s], axis=1).max() < THRESHOLD_PX + 1e-3
        # the score is the soft inlier count of the unrefined pose
        for j in range(0, h, 8):
            want = soft_score(res["R_init"][i, j], res["t_init_mm"][i, j], coords[i], pixels[i])
            np.testing.assert_allclose(res["score"][i, j], want, rtol=1e-4)
    np.testing.assert_allclose(res["R"] @ np.swapaxes(res["R"], -1, -2), np.broadcast_to(np.eye(3), (b, h, 3, 3)),
                               atol=1e-5)
    # Same seed, same outputs; the TF kernel (batch over its pool) equals the core item by item.
    again = numpy_outputs(ransac_pnp_hypotheses(pixels, coords, K_TEST, **kwargs))
    other = numpy_outputs(ransac_pnp_hypotheses(pixels, coords, K_TEST, **{**kwargs, "seed": 8}))
    for key in OUTPUT_KEYS:
        np.testing.assert_array_equal(again[key], res[key], err_msg=key)
        single = np.concatenate([core.ransac_pnp_hypotheses(pixels, coords, K_TEST, batch_range=(i, i + 1),
                                                            **kwargs)[key][i:i + 1] for i in range(b)])
        np.testing.assert_array_equal(single, res[key], err_msg=key)
    assert not np.array_equal(other["minimal_sets"], res["minimal_sets"])


def test_hypotheses_that_cannot_be_made_and_padding(ops):
    _, ransac_pnp_hypotheses = ops
    rng = np.random.default_rng(1)
    pixels, coords, *_ = make_problem(rng, 2, 80, 0.0, noise_px=0.5)
    # Pure noise with a tiny threshold: no minimal set passes the 4-point check.
    noise = rng.uniform(0, 640, (1, 80, 2)).astype(np.float32)
    res = numpy_outputs(ransac_pnp_hypotheses(noise, coords[:1], K_TEST, num_hypotheses=3, threshold_px=0.01))
    assert not res["ok"].any()
    np.testing.assert_array_equal(res["minimal_sets"], -1)
    np.testing.assert_array_equal(res["R"], np.broadcast_to(np.eye(3), (1, 3, 3, 3)))
    np.testing.assert_array_equal(res["R_init"], res["R"])
    assert not res["t_mm"].any() and not res["t_init_mm"].any() and not res["score"].any()
    # Padding with valid = False (or num_valid) changes nothing, and the minimal sets index the unpadded arrays.
    plain = numpy_outputs(ransac_pnp_hypotheses(pixels, coords, K_TEST, num_hypotheses=8, seed=3))
    pad = np.concatenate([pixels, np.full((2, 20, 2), np.nan, np.float32)], axis=1)
    pad_x = np.concatenate([coords, rng.normal(0, 50, (2, 20, 3)).astype(np.float32)], axis=1)
    padded = numpy_outputs(ransac_pnp_hypotheses(pad, pad_x, K_TEST, num_valid=[80, 80], num_hypotheses=8, seed=3))
    for key in OUTPUT_KEYS:
        np.testing.assert_array_equal(padded[key], plain[key], err_msg=key)


# ---------------------------------------------------------------------------------------------------------------
# Gradient against central finite differences of the whole forward

# Finite differences: Richardson's extrapolation of central differences, (4 D(h) - D(2h)) / 3 with
# D(h) = (L(X + h) - L(X - h)) / (2h), whose truncation error is O(h^4), at h = 0.05 mm. The op is float32: t ~ 500 mm
# is rounded to 3e-5 mm, R to 6e-8 and the score (~30) to 2e-6, so D(h) carries ~3e-5 / (2h) = 3e-4 of rounding
# against gradients of 0.01-10 (h = 0.01 mm would give several percent), while a plain central difference at 0.05 mm
# would be off by up to ~3 % where P3P moves far points' projections by ~10 px per mm against the sigmoid's scale
# 1 / beta = 2 px (the extrapolation removes that). L and the actual steps (float32(X + h) - float32(X - h)) are
# computed in float64.
FD_STEP_MM = 0.05
# Per coordinate, relative error |g - fd| / (|fd| + 0.05 rms(fd)); the floor keeps coordinates with a (near) zero
# derivative from dividing by ~0. A coordinate passes below the tolerance of its case; at least FD_MIN_PASSING of the
# comparable coordinates (the same minimal sets drawn at all four points) must pass (an inlier set or a P3P branch
# may flip under the perturbation) and the median must be below a fifth of the tolerance.
FD_FLOOR = 0.05
FD_MIN_PASSING = 0.9
# Through the refined pose the backward is DSAC's Gauss-Newton form of the implicit function theorem: it leaves out
# the residuals' second derivatives, a relative error of ~ residual / (f * extent / depth) (measured: the exact
# implicit derivative matches these differences to 1e-3, the Gauss-Newton one to ~2.5 % of their rms at 0.2 px of
# pixel noise, growing with the noise), hence 0.1 px of pixel noise there. Score and minimal solver are exact up to
# the backward's own central differences of P3P (~1e-5); there the pixel noise is 1 px because the soft score is not
# differentiable where a point's reprojection error is 0 (|r|), and finite differences of inliers closer to their
# pixel than the step moves them would be wrong.
FD_TOLERANCE = {"refined_pose": 0.05, "refined_pose_capped": 0.05, "score": 0.01, "minimal_solver_pose": 0.01,
                "unrefined": 0.01}
FD_NOISE_PX = {"refined_pose": 0.1, "refined_pose_capped": 0.1, "score": 1.0, "minimal_solver_pose": 1.0,
               "unrefined": 1.0}
# The capped case refines on every third of its 40 correspondences (max_refine_points = 14: stride ceil(40 / 14)).
CAPPED_REFINE_POINTS = 14


def finite_difference(forward, loss, coords, index, h=FD_STEP_MM):
    """(Richardson-extrapolated central difference of loss(forward(coords)) w.r.t. coords[index], whether all four
    forwards drew the minimal sets (and ok flags) of forward(coords))."""
    base = forward(coords)
    quotients, same = [], True
    for step in (h, 2 * h):
        plus, minus = coords.copy(), coords.copy()
        plus[index] += np.float32(step)
        minus[index] -= np.float32(step)
        res_plus, res_minus = forward(plus), forward(minus)
        quotients.append((loss(res_plus) - loss(res_minus)) / (float(plus[index]) - float(minus[index])))
        same = same and all(np.array_equal(r[key], base[key]) for r in (res_plus, res_minus)
                            for key in ("minimal_sets", "ok"))
    return (4.0 * quotients[0] - quotients[1]) / 3.0, same


def _loss_weights(rng, case: str, b: int, h: int) -> dict:
    w = dict(R=rng.normal(size=(b, h, 3, 3)), t_mm=rng.normal(size=(b, h, 3)), score=rng.normal(size=(b, h)),
             R_init=rng.normal(size=(b, h, 3, 3)), t_init_mm=rng.normal(size=(b, h, 3)))
    keep = {"refined_pose": ("R", "t_mm"), "refined_pose_capped": ("R", "t_mm"), "unrefined": ("R", "t_mm"),
            "score": ("score",),
            "minimal_solver_pose": ("R_init", "t_init_mm")}[case]
    return {k: (v if k in keep else np.zeros_like(v)) for k, v in w.items()}


@pytest.mark.parametrize("case", ["refined_pose", "refined_pose_capped", "score", "minimal_solver_pose",
                                  "unrefined"])
def test_gradient_matches_finite_differences(ops, tf, case):
    """L = sum(wR * R) + sum(wt * t) + sum(ws * score) (+ R_init, t_init terms) with random weights, one group of
    outputs per case; 'unrefined' is the refined pose with max_refine_iterations = 0 (then R = R_init, whose
    gradient goes through the minimal solver); 'refined_pose_capped' refines on every third correspondence only
    (max_refine_points), so the others get exactly 0 from the refined pose."""
    _, ransac_pnp_hypotheses = ops
    rng = np.random.default_rng({"refined_pose": 10, "refined_pose_capped": 14, "score": 11,
                                 "minimal_solver_pose": 12, "unrefined": 13}[case])
    b, n, h = 2, 40, 6
    pixels, coords, *_ = make_problem(rng, b, n, 0.15, noise_px=FD_NOISE_PX[case])
    kwargs = dict(num_hypotheses=h, threshold_px=THRESHOLD_PX, seed=5,
                  max_refine_iterations=0 if case == "unrefined" else 10)
    if case == "refined_pose_capped":
        kwargs["max_refine_points"] = CAPPED_REFINE_POINTS
    w = _loss_weights(rng, case, b, h)

    def loss(res) -> float:
        return float(sum(np.sum(w[k] * np.asarray(res[k], np.float64)) for k in w))

    def forward(x):
        return numpy_outputs(ransac_pnp_hypotheses(pixels, x, K_TEST, **kwargs))

    x = tf.Variable(coords)
    with tf.GradientTape() as tape:
        res = ransac_pnp_hypotheses(pixels, x, K_TEST, **kwargs)
        total = tf.add_n([tf.reduce_sum(tf.constant(w[k], tf.float32) * res[k]) for k in w])
    grad = tape.gradient(total, x).numpy()
    base = numpy_outputs(res)
    assert base["ok"].all()
    assert np.isfinite(grad).all()
    refined = np.any(base["R"] != base["R_init"], axis=(-1, -2))
    assert refined.all() if case != "unrefined" else not refined.any()
    if case == "refined_pose_capped":
        stride = -(-n // CAPPED_REFINE_POINTS)
        candidate = np.arange(n) % stride == 0
        assert np.all(grad[:, ~candidate] == 0) and np.any(grad[:, candidate] != 0)
        uncapped = numpy_outputs(ransac_pnp_hypotheses(pixels, coords, K_TEST, **dict(kwargs, max_refine_points=0)))
        assert not np.allclose(uncapped["t_mm"], base["t_mm"], atol=1e-3)  # the cap changes what is refined on
        np.testing.assert_array_equal(uncapped["R_init"], base["R_init"])  # but not the hypotheses

    # Half the checked coordinates from the minimal sets (the only ones with a minimal-solver term), half at random.
    in_sets = np.unique(np.concatenate([[(i, m) for m in base["minimal_sets"][i].ravel()] for i in range(b)]),
                        axis=0)
    picks = [tuple(in_sets[k]) + (int(rng.integers(3)),) for k in rng.choice(len(in_sets), 20, replace=False)]
    picks += [(int(rng.integers(b)), int(rng.integers(n)), int(rng.integers(3))) for _ in range(20)]
    g, fd, comparable = [], [], []
    for index in picks:
        d, same = finite_difference(forward, loss, coords, index)
        g.append(float(grad[index]))
        fd.append(d)
        comparable.append(same)
    g, fd, comparable = np.array(g), np.array(fd), np.array(comparable)
    assert comparable.mean() >= 0.75
    g, fd = g[comparable], fd[comparable]
    rms = np.sqrt(np.mean(fd**2))
    assert rms > 0 and np.sqrt(np.mean(g**2)) > 0
    rel = np.abs(g - fd) / (np.abs(fd) + FD_FLOOR * rms)
    tol = FD_TOLERANCE[case]
    detail = f"{case}: relative errors {np.round(np.sort(rel)[::-1][:6], 4)}, median {np.median(rel):.2e}"
    assert np.mean(rel <= tol) >= FD_MIN_PASSING, detail
    assert np.median(rel) <= tol / 5, detail


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs


def _gradient(tf, ransac_pnp_hypotheses, pixels, coords, K, **kwargs):
    """(outputs, dL/dcoords) for L = sum(R) + sum(t) + sum(score) + sum(R_init) + sum(t_init)."""
    x = tf.Variable(coords)
    with tf.GradientTape() as tape:
        res = ransac_pnp_hypotheses(pixels, x, K, **kwargs)
        total = tf.add_n([tf.reduce_sum(res[k]) for k in ("R", "t_mm", "score", "R_init", "t_init_mm")])
    return numpy_outputs(res), tape.gradient(total, x).numpy()


def test_unused_correspondences_and_degenerate_items_get_zero_gradient(ops, tf):
    _, ransac_pnp_hypotheses = ops
    rng = np.random.default_rng(20)
    pixels, coords, *_ = make_problem(rng, 5, 60, 0.1, noise_px=0.5)
    K = np.broadcast_to(K_TEST, (5, 3, 3)).copy()
    coords[0, :5] = np.nan  # NaN coordinates: unused
    coords[0, 7, 2] = np.inf
    pixels[0, 10:12] = np.nan  # NaN pixels: unused
    K[1] = 0.0  # singular K
    weights = np.ones((5, 60), np.float32)
    weights[2] = 0.0  # nothing to sample
    valid = np.ones((5, 60), bool)
    valid[3, 3:] = False  # 3 valid correspondences
    valid[4, 50:] = False  # padding
    res, g = _gradient(tf, ransac_pnp_hypotheses, pixels, coords, K, weights=weights, valid=valid,
                       num_hypotheses=8, seed=2)
    assert np.isfinite(g).all()
    assert res["ok"][0].all() and res["ok"][4].all() and not res["ok"][1:4].any()
    np.testing.assert_array_equal(g[0, :5], 0.0)
    np.testing.assert_array_equal(g[0, 7], 0.0)
    np.testing.assert_array_equal(g[0, 10:12], 0.0)
    assert np.count_nonzero(g[0, 12:]) > 0.5 * g[0, 12:].size
    np.testing.assert_array_equal(g[1:4], 0.0)
    np.testing.assert_array_equal(g[4, 50:], 0.0)
    assert np.count_nonzero(g[4, :50]) > 0.5 * g[4, :50].size
    # Fewer than 4 correspondences at all.
    res, g = _gradient(tf, ransac_pnp_hypotheses, pixels[:, :3], coords[:, :3], K_TEST, num_hypotheses=2)
    assert not res["ok"].any() and g.shape == (5, 3, 3) and not g.any()


def test_only_coords_are_differentiated_and_unused_outputs_are_fine(ops, tf):
    _, ransac_pnp_hypotheses = ops
    pixels, coords, *_ = make_problem(np.random.default_rng(21), 2, 50, 0.0, noise_px=0.5)
    px, x, K, w = (tf.Variable(a) for a in (pixels, coords, np.tile(K_TEST, (2, 1, 1)), np.ones((2, 50), np.float32)))
    with tf.GradientTape() as tape:
        res = ransac_pnp_hypotheses(px, x, K, weights=w, num_hypotheses=4)
        total = tf.reduce_sum(res["score"])  # only the score reaches the loss
    g_px, g_x, g_K, g_w = tape.gradient(total, [px, x, K, w])
    assert g_px is None and g_K is None and g_w is None
    assert np.isfinite(g_x.numpy()).all() and np.any(g_x.numpy() != 0.0)

    # The same in a graph (tf.function), where unreached float outputs come as zeros or None.
    @tf.function
    def graph_gradient():
        with tf.GradientTape() as tape:
            res = ransac_pnp_hypotheses(px, x, K, weights=w, num_hypotheses=4)
            total = tf.reduce_sum(res["score"])
        return tape.gradient(total, x)

    np.testing.assert_array_equal(graph_gradient().numpy(), g_x.numpy())


def _bad_calls():
    px, xyz = np.zeros((2, 6, 2), np.float32), np.zeros((2, 6, 3), np.float32)
    K = np.tile(K_TEST, (2, 1, 1))
    return [
        ("pixels rank", dict(pixels=px[0], coords_mm=xyz, K=K), "pixels must be rank 3"),
        ("coords rank", dict(pixels=px, coords_mm=xyz[0], K=K), "coords_mm must be rank 3"),
        ("coords N", dict(pixels=px, coords_mm=np.zeros((2, 5, 3), np.float32), K=K), "coords_mm"),
        ("K rank", dict(pixels=px, coords_mm=xyz, K=np.zeros((2, 2, 3, 3), np.float32)), "K must be rank 3"),
        ("weights rank", dict(pixels=px, coords_mm=xyz, K=K, weights=np.ones(6, np.float32)),
         "weights must be rank 2"),
        ("valid rank", dict(pixels=px, coords_mm=xyz, K=K, valid=np.ones((2, 6, 1), bool)), "valid must be rank 2"),
        ("K nan", dict(pixels=px, coords_mm=xyz, K=np.full((2, 3, 3), np.nan, np.float32)), "K must be finite"),
        ("num_hypotheses", dict(pixels=px, coords_mm=xyz, K=K, num_hypotheses=0), "num_hypotheses"),
        ("max_refine_points", dict(pixels=px, coords_mm=xyz, K=K, max_refine_points=-1), "max_refine_points"),
    ]


@pytest.mark.parametrize("label,kwargs,message", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_malformed_inputs_raise_invalid_argument(ops, tf, label, kwargs, message):
    _, ransac_pnp_hypotheses = ops
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ransac_pnp_hypotheses(**kwargs)


def test_gradient_kernel_checks_its_inputs(ops, tf):
    """The backward op with shapes unknown to the graph: the kernel's checks name the argument."""
    from tf_ops.ransac_pnp.python.ops.ransac_pnp_ops import _ops

    _, ransac_pnp_hypotheses = ops
    pixels, coords, *_ = make_problem(np.random.default_rng(22), 2, 30, 0.0, noise_px=0.5)
    h = 4
    res = numpy_outputs(ransac_pnp_hypotheses(pixels, coords, K_TEST, num_hypotheses=h))
    args = dict(pixels=pixels, coords_mm=coords, k=np.tile(K_TEST, (2, 1, 1)), valid=np.ones((2, 30), bool),
                rotation=res["R"], translation_mm=res["t_mm"], rotation_init=res["R_init"],
                translation_init_mm=res["t_init_mm"], minimal_sets=res["minimal_sets"], ok=res["ok"],
                grad_rotation=np.ones_like(res["R"]), grad_translation_mm=np.ones_like(res["t_mm"]),
                grad_score=np.ones_like(res["score"]), grad_rotation_init=np.zeros_like(res["R"]),
                grad_translation_init_mm=np.zeros_like(res["t_mm"]))
    names = list(args)
    spec = [tf.TensorSpec(None, tf.as_dtype(np.asarray(args[k]).dtype)) for k in names]
    call = tf.function(lambda *a: _ops.ransac_pnp_hypotheses_grad(*a, num_hypotheses=h), input_signature=spec)
    out = call(*[args[k] for k in names]).numpy()
    assert out.shape == (2, 30, 3) and np.isfinite(out).all()
    sets_out_of_range = res["minimal_sets"].copy()
    sets_out_of_range[0, 0, 0] = 30
    for change, message in [(dict(grad_score=np.ones((2, h + 1), np.float32)), "grad_score must have shape"),
                            (dict(rotation=res["R"][:, :, 0]), "rotation must have shape"),
                            (dict(minimal_sets=sets_out_of_range), "minimal_sets must hold 4 distinct indices"),
                            (dict(valid=np.ones((2, 29), bool)), "valid must be")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call(*[{**args, **change}[k] for k in names])


# ---------------------------------------------------------------------------------------------------------------
# The core through the ctypes harness (no TensorFlow)


def test_core_backward_through_the_harness(core):
    rng = np.random.default_rng(30)
    b, n, h = 3, 50, 6
    pixels, coords, *_ = make_problem(rng, b, n, 0.1, noise_px=1.0)
    coords[2, :4] = np.nan
    kwargs = dict(num_hypotheses=h, threshold_px=THRESHOLD_PX, max_refine_iterations=10)
    fw = core.ransac_pnp_hypotheses(pixels, coords, K_TEST, seed=4, **kwargs)
    assert fw["ok"].all() and (fw["status"] == harness.ITEM_OK).all()
    ws = rng.normal(size=(b, h)).astype(np.float32)
    wt = rng.normal(size=(b, h, 3)).astype(np.float32)

    def backward(**kw):
        return core.ransac_pnp_hypotheses_backward(pixels, coords, K_TEST, fw, **{**kwargs, **kw})

    g = backward(grad_score=ws, grad_t_mm=wt)
    assert np.isfinite(g).all() and np.count_nonzero(g) > 0.5 * g.size
    np.testing.assert_array_equal(g[2, :4], 0.0)
    # Deterministic, linear in the upstream gradient, and independent of how the batch is split.
    np.testing.assert_array_equal(backward(grad_score=ws, grad_t_mm=wt), g)
    np.testing.assert_allclose(backward(grad_score=ws) + backward(grad_t_mm=wt), g, rtol=1e-4, atol=1e-5)
    parts = [backward(grad_score=ws, grad_t_mm=wt, batch_range=(lo, hi))[lo:hi] for lo, hi in ((0, 1), (1, 3))]
    np.testing.assert_array_equal(np.concatenate(parts), g)
    assert not backward().any()  # no upstream gradient
    # ok = False hypotheses contribute nothing; a NaN upstream gradient drops its hypothesis, never a NaN out.
    fw_off = {**fw, "ok": fw["ok"].copy()}
    fw_off["ok"][0] = False
    g_off = core.ransac_pnp_hypotheses_backward(pixels, coords, K_TEST, fw_off, grad_score=ws, **kwargs)
    assert not g_off[0].any() and np.array_equal(g_off[1:], backward(grad_score=ws)[1:])
    ws_nan = ws.copy()
    ws_nan[1, 2] = np.nan
    g_nan = backward(grad_score=ws_nan)
    ws_drop = ws.copy()
    ws_drop[1, 2] = 0.0
    assert np.isfinite(g_nan).all()
    np.testing.assert_array_equal(g_nan, backward(grad_score=ws_drop))
    # The score's gradient against finite differences of the core's forward, on item 0.
    picks = [(0, p, k) for p in fw["minimal_sets"][0, :2].ravel() for k in range(3)]
    picks += [(0, p, 0) for p in range(0, n, 5)]
    g_score = backward(grad_score=ws)

    def forward(x):
        return core.ransac_pnp_hypotheses(pixels[:1], x[:1], K_TEST, seed=4, **kwargs)

    def loss(res):
        return float(np.sum(ws[0] * res["score"][0].astype(np.float64)))

    for index in picks:
        fd, same = finite_difference(forward, loss, coords, index)
        assert same and abs(g_score[index] - fd) <= 0.01 * abs(fd) + 1e-3, (index, g_score[index], fd)
    # Malformed calls.
    bad_sets = {**fw, "minimal_sets": fw["minimal_sets"].copy()}
    bad_sets["minimal_sets"][0, 0, 1] = bad_sets["minimal_sets"][0, 0, 0]
    with pytest.raises(harness.CoreError, match="invalid argument"):
        core.ransac_pnp_hypotheses_backward(pixels, coords, K_TEST, bad_sets, grad_score=ws, **kwargs)
    with pytest.raises(harness.CoreError, match="invalid argument"):
        core.ransac_pnp_hypotheses_backward(pixels, coords, K_TEST, fw, grad_score=ws,
                                            **{**kwargs, "threshold_px": -1.0})
    for call in (lambda: core.ransac_pnp_hypotheses(pixels, coords, K_TEST, max_refine_points=-1, **kwargs),
                 lambda: core.ransac_pnp_hypotheses_backward(pixels, coords, K_TEST, fw, grad_t_mm=wt,
                                                             max_refine_points=-1, **kwargs)):
        with pytest.raises(harness.CoreError, match="invalid argument"):
            call()


def test_core_refinement_cap_takes_every_stride_th_used_correspondence(core):
    """max_refine_points counts the *used* correspondences: item 1 has 4 NaN coordinates, so its 46 used ones give
    stride ceil(46 / 20) = 3 from index 4 on; the refined pose's gradient reaches exactly those candidates."""
    rng = np.random.default_rng(31)
    b, n, h, cap = 2, 50, 6, 20
    pixels, coords, *_ = make_problem(rng, b, n, 0.1, noise_px=1.0)
    coords[1, :4] = np.nan
    kwargs = dict(num_hypotheses=h, threshold_px=THRESHOLD_PX, max_refine_iterations=10, max_refine_points=cap)
    fw = core.ransac_pnp_hypotheses(pixels, coords, K_TEST, seed=4, **kwargs)
    assert fw["ok"].all()
    wt = rng.normal(size=(b, h, 3)).astype(np.float32)
    g = core.ransac_pnp_hypotheses_backward(pixels, coords, K_TEST, fw, grad_t_mm=wt, **kwargs)
    for item, used in ((0, np.arange(n)), (1, np.arange(4, n))):
        stride = -(-len(used) // cap)
        candidates = used[::stride]
        others = np.setdiff1d(np.arange(n), candidates)
        assert len(candidates) <= cap
        assert not g[item, others].any() and np.count_nonzero(g[item, candidates]) > 0.5 * g[item, candidates].size
    # A cap at or above the used count is no cap: bit for bit the uncapped forward.
    uncapped = core.ransac_pnp_hypotheses(pixels, coords, K_TEST, seed=4, **{**kwargs, "max_refine_points": 0})
    at_n = core.ransac_pnp_hypotheses(pixels, coords, K_TEST, seed=4, **{**kwargs, "max_refine_points": n})
    for key in ("R", "t_mm", "score", "minimal_sets"):
        np.testing.assert_array_equal(at_n[key], uncapped[key])
