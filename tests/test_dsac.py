"""DSAC's expected pose loss, NG-RANSAC's surrogate and the RGB-D form (pose_net/dsac.py).

The op's own gradient (RANSAC-PnP hypotheses) is checked against finite differences in
tests/test_ransac_pnp_gradient.py; here: the losses' definitions, and that following the gradient of the expected
pose loss moves noisy coordinates towards the truth.
"""

import numpy as np
import pytest
import tensorflow as tf

from pose_core.geometry import random_rotations
from pose_net import dsac


def _problem(batch=2, n=120, noise_mm=0.0, outliers=0.0, seed=0):
    """Model points of a 100-mm object seen at ~500 mm, their pixels under the true pose (f = 500)."""
    rng = np.random.default_rng(seed)
    R = random_rotations(batch, rng).astype(np.float32)
    t = np.stack([rng.uniform(-40, 40, batch), rng.uniform(-40, 40, batch), rng.uniform(450, 550, batch)],
                 1).astype(np.float32)
    K = np.array([[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]], np.float32)
    X = rng.uniform(-50, 50, (batch, n, 3)).astype(np.float32)
    cam = np.einsum("bij,bnj->bni", R, X) + t[:, None]
    uv = np.einsum("ij,bnj->bni", K, cam)
    pixels = (uv[..., :2] / uv[..., 2:]).astype(np.float32)
    coords = X + rng.normal(0, noise_mm, X.shape).astype(np.float32)
    bad = rng.random((batch, n)) < outliers
    coords[bad] = rng.uniform(-50, 50, (int(bad.sum()), 3))
    points = rng.uniform(-50, 50, (64, 3)).astype(np.float32)
    return dict(coords=coords, pixels=pixels, K=np.tile(K[None], [batch, 1, 1]), R=R, t=t, X=X, cam=cam,
                points=points)


def test_soft_clamp_is_continuous_and_shrinks_large_losses():
    x = tf.constant([0.0, 50.0, 100.0, 400.0])
    y = dsac.soft_clamp(x, 100.0).numpy()
    np.testing.assert_allclose(y, [0.0, 50.0, 100.0, 200.0], rtol=1e-6)


@pytest.mark.parametrize("name", dsac.POSE_LOSSES)
def test_pose_losses_are_zero_at_the_truth_and_grow_with_the_error(name):
    p = _problem(batch=1)
    R, t = tf.constant(p["R"]), tf.constant(p["t"])
    angle = np.deg2rad(5.0)
    Rz = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]], np.float32)
    R_hyp = tf.stack([R, R @ Rz, R @ Rz @ Rz], axis=1)  # [1, 3, 3, 3]: 0, 5 and 10 degrees off
    t_hyp = tf.stack([t, t, t], axis=1)
    s = dsac.DsacSettings(pose_loss=name, loss_cut=1e6)
    losses = dsac.pose_losses(R_hyp, t_hyp, R, t, tf.constant(p["K"]), p["points"], 100.0, s).numpy()[0]
    assert losses[0] < 1e-2 * max(losses[2], 1e-3)
    assert 0 < losses[1] < losses[2]
    if name == "angle_translation":
        np.testing.assert_allclose(losses[1:], [5.0, 10.0], rtol=1e-3)


def test_angle_translation_loss_counts_translation_per_mm():
    p = _problem(batch=1)
    R, t = tf.constant(p["R"]), tf.constant(p["t"])
    s = dsac.DsacSettings(pose_loss="angle_translation", translation_weight_per_mm=0.1, loss_cut=1e6)
    loss = dsac.pose_losses(R[:, None], (t + [[30.0, 40.0, 0.0]])[:, None], R, t, p["K"], p["points"], 100.0, s)
    np.testing.assert_allclose(loss.numpy(), [[5.0]], rtol=1e-3)  # |dt| = 50 mm, 0.1 per mm


def test_expected_pose_loss_is_low_on_clean_correspondences_and_high_on_noise():
    p = _problem(batch=2, noise_mm=0.0, outliers=0.2)
    clean = dsac.expected_pose_loss(p["coords"], p["pixels"], p["K"], p["R"], p["t"], p["points"],
                                    num_hypotheses=32, threshold_px=5.0).numpy()
    q = _problem(batch=2, noise_mm=15.0, outliers=0.2)
    noisy = dsac.expected_pose_loss(q["coords"], q["pixels"], q["K"], q["R"], q["t"], q["points"],
                                    num_hypotheses=32, threshold_px=5.0).numpy()
    assert clean.shape == (2,)
    assert np.all(clean < 1.0), clean  # degrees + 0.1 / mm: a near-exact pose
    assert np.all(noisy > 3 * clean), (clean, noisy)


def test_refinement_cap_reaches_the_op_and_keeps_clean_poses_accurate():
    """max_refine_points (DsacSettings, --dsac_refine_points) refines every hypothesis on a subsample: on noisy
    correspondences the loss changes (a least-squares fit on a quarter of the points: about twice the pose noise),
    on clean ones it stays near 0."""
    q = _problem(batch=2, n=400, noise_mm=3.0, outliers=0.1, seed=5)
    args = (q["coords"], q["pixels"], q["K"], q["R"], q["t"], q["points"])
    every = dsac.expected_pose_loss(*args, num_hypotheses=16, threshold_px=5.0, max_refine_points=0).numpy()
    capped = dsac.expected_pose_loss(*args, num_hypotheses=16, threshold_px=5.0, max_refine_points=100).numpy()
    assert not np.allclose(every, capped) and np.all(capped < 4 * every), (every, capped)
    p = _problem(batch=2, n=400, noise_mm=0.0, outliers=0.1, seed=5)
    clean = dsac.expected_pose_loss(p["coords"], p["pixels"], p["K"], p["R"], p["t"], p["points"],
                                    num_hypotheses=16, threshold_px=5.0, max_refine_points=100).numpy()
    assert np.all(clean < 1.0), clean
    assert dsac.DsacSettings().max_refine_points == dsac.DEFAULT_MAX_REFINE_POINTS > 0


def test_gradient_steps_on_the_expected_pose_loss_lower_it():
    p = _problem(batch=2, n=100, noise_mm=6.0, outliers=0.1, seed=3)
    coords = tf.Variable(p["coords"])
    opt = tf.keras.optimizers.SGD(learning_rate=0.5)

    def loss_fn():
        return tf.reduce_mean(dsac.expected_pose_loss(coords, p["pixels"], p["K"], p["R"], p["t"], p["points"],
                                                      num_hypotheses=32, threshold_px=5.0, seed=1))

    first = float(loss_fn())
    for _ in range(15):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        grad = tape.gradient(loss, coords)
        assert np.all(np.isfinite(grad.numpy()))
        opt.apply_gradients([(grad, coords)])
    last = float(loss_fn())
    assert last < 0.7 * first, (first, last)


def test_images_without_a_hypothesis_get_zero_loss_and_zero_gradient():
    p = _problem(batch=2, n=40)
    valid = np.ones((2, 40), bool)
    valid[1, 3:] = False  # 3 correspondences: no minimal set
    coords = tf.constant(p["coords"])
    with tf.GradientTape() as tape:
        tape.watch(coords)
        pool = dsac.hypothesis_pool(coords, p["pixels"], p["K"], p["R"], p["t"], p["points"], 100.0,
                                    dsac.DsacSettings(num_hypotheses=8), valid=valid)
        total = tf.reduce_sum(pool["loss"])
    grad = tape.gradient(total, coords).numpy()
    assert pool["ok"].numpy().tolist() == [True, False]
    assert pool["loss"].numpy()[1] == 0.0
    assert np.all(grad[1] == 0.0) and np.all(np.isfinite(grad))


def test_nan_coordinates_do_not_reach_the_loss_or_the_gradient():
    p = _problem(batch=1, n=80)
    coords = p["coords"].copy()
    coords[0, :5] = np.nan
    c = tf.constant(coords)
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tf.reduce_sum(dsac.expected_pose_loss(c, p["pixels"], p["K"], p["R"], p["t"], p["points"],
                                                     num_hypotheses=16))
    grad = tape.gradient(loss, c).numpy()
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(grad))


def test_sampling_log_weights_normalise_over_the_valid_correspondences():
    logits = tf.constant([[0.0, 1.0, -2.0, 5.0]])
    valid = tf.constant([[True, True, True, False]])
    lp = dsac.sampling_log_weights(logits, valid).numpy()[0]
    np.testing.assert_allclose(np.exp(lp[:3]).sum(), 1.0, rtol=1e-6)
    assert np.exp(lp[3]) == 0.0
    sig = 1 / (1 + np.exp(-np.array([0.0, 1.0, -2.0])))
    np.testing.assert_allclose(np.exp(lp[:3]), sig / sig.sum(), rtol=1e-5)


def test_ng_ransac_gradient_raises_the_weights_of_the_better_pool():
    logits = tf.Variable(tf.zeros([1, 6]))
    valid = tf.ones([1, 6], tf.bool)
    good = {"loss": tf.constant([1.0]), "minimal_sets": tf.constant([[[0, 1, 2, 3]]], tf.int32)}
    bad = {"loss": tf.constant([5.0]), "minimal_sets": tf.constant([[[2, 3, 4, 5]]], tf.int32)}
    with tf.GradientTape() as tape:
        lp = dsac.sampling_log_weights(logits, valid)
        surrogate = tf.reduce_sum(dsac.ng_ransac_surrogate(lp, [good, bad]))
    step = -tape.gradient(surrogate, logits).numpy()[0]  # gradient descent direction
    assert step[0] > 0 and step[1] > 0  # drawn only by the low-loss pool: more likely
    assert step[4] < 0 and step[5] < 0  # drawn only by the high-loss pool: less likely
    with pytest.raises(ValueError, match="at least 2 pools"):
        dsac.ng_ransac_surrogate(lp, [good])


def test_kabsch_and_the_triplet_alignment_recover_a_rigid_transform():
    from pose_net.coordinates import kabsch, triplet_alignment

    p = _problem(batch=2, n=10)
    R, t = kabsch(tf.constant(p["X"]), tf.constant(p["cam"], tf.float32))
    np.testing.assert_allclose(R.numpy(), p["R"], atol=1e-4)
    np.testing.assert_allclose(t.numpy(), p["t"], atol=1e-2)
    R3, t3 = triplet_alignment(tf.constant(p["X"][:, :3]), tf.constant(p["cam"][:, :3], tf.float32))
    np.testing.assert_allclose(R3.numpy(), p["R"], atol=1e-4)
    np.testing.assert_allclose(t3.numpy(), p["t"], atol=2e-2)


def test_rgbd_minimal_sets_are_distinct_valid_points():
    """Gumbel top-3: three different correspondences per hypothesis, all valid, every valid one drawn."""
    from pose_net.coordinates import rgbd_minimal_sets

    valid = np.zeros((2, 40), bool)
    valid[0, [1, 5, 7, 20, 33]] = True
    valid[1, 10:30] = True
    sets = rgbd_minimal_sets(tf.constant(valid), num_hypotheses=200, seed=3).numpy()
    assert sets.shape == (2, 200, 3)
    for b in range(2):
        assert np.all(valid[b][sets[b]])
        assert np.all((sets[b, :, 0] != sets[b, :, 1]) & (sets[b, :, 1] != sets[b, :, 2])
                      & (sets[b, :, 0] != sets[b, :, 2]))
        assert set(np.unique(sets[b])) == set(np.flatnonzero(valid[b]))


def test_rgbd_expected_pose_loss_is_differentiable_and_low_on_clean_points():
    p = _problem(batch=2, n=60, outliers=0.2)
    coords = tf.constant(p["coords"])
    with tf.GradientTape() as tape:
        tape.watch(coords)
        loss = dsac.expected_pose_loss_rgbd(coords, p["cam"], p["R"], p["t"], p["points"], 100.0,
                                            num_hypotheses=32)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, coords).numpy()
    assert np.all(loss.numpy() < 0.02), loss.numpy()  # ADD / diameter
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
    noisy = dsac.expected_pose_loss_rgbd(coords + np.random.default_rng(0).normal(0, 10, p["coords"].shape)
                                         .astype(np.float32), p["cam"], p["R"], p["t"], p["points"], 100.0,
                                         num_hypotheses=32)
    assert np.all(noisy.numpy() > loss.numpy())


def test_rgbd_loss_gradient_is_finite_for_degenerate_sets():
    """Only three valid points, two of them at the same place, and images with none: every minimal set is
    degenerate or repeated; the loss and its gradient stay finite (no SVD of a rank-1 set in the minimal solver)."""
    p = _problem(batch=2, n=20)
    coords = p["coords"].copy()
    coords[0, 1] = coords[0, 0]
    valid = np.zeros((2, 20), bool)
    valid[0, :3] = True
    coords = tf.constant(coords)
    with tf.GradientTape() as tape:
        tape.watch(coords)
        loss = dsac.expected_pose_loss_rgbd(coords, p["cam"], p["R"], p["t"], p["points"], 100.0,
                                            valid=tf.constant(valid), num_hypotheses=16)
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, coords).numpy()
    assert np.all(np.isfinite(loss.numpy())) and np.all(np.isfinite(grad))
