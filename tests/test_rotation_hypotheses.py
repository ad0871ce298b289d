"""The direct head's rotation hypotheses (--rotation_hypotheses M): anchors spread over SO(3), a winner-takes-all
term that trains the best hypothesis and a score that learns to pick it (a trained model with hypotheses is
evaluated in test_pose_net.py)."""

import numpy as np
import pytest

from pose_core.geometry import rotation_angle_deg


def test_anchors_are_spread_and_each_hypothesis_starts_at_its_anchor():
    import tensorflow as tf

    from pose_net import parametrization as param
    from pose_net.model import build_direct_head, rotation_anchors

    anchors = rotation_anchors(8)
    assert np.allclose(anchors[0], np.eye(3))
    assert np.allclose(np.einsum("nji,njk->nik", anchors, anchors), np.eye(3), atol=1e-5)
    closest = min(rotation_angle_deg(anchors[i], anchors[j]) for i in range(8) for j in range(i + 1, 8))
    assert closest > 90.0  # 8 random rotations are often within 40 degrees of each other
    head = build_direct_head((4, 4, 16), rotation_repr="6d", rotation_hypotheses=8)
    out = head(tf.random.normal([3, 4, 4, 16], seed=0))
    assert out["rotation_hypotheses"].shape == (3, 8, 6) and out["rotation_logits"].shape == (3, 8)
    for k in range(8):
        R = param.rotation_matrix(out["rotation_hypotheses"][:, k]).numpy()
        assert max(rotation_angle_deg(R, anchors[k])) < 25.0, k
    # the output rotation is the best-scored hypothesis
    best = np.argmax(np.asarray(out["rotation_logits"]), axis=-1)
    assert np.allclose(np.asarray(out["rotation"]), np.asarray(out["rotation_hypotheses"])[np.arange(3), best])


def test_hypotheses_need_the_6d_representation():
    from pose_net.model import build_direct_head

    with pytest.raises(ValueError, match="rotation_hypotheses"):
        build_direct_head((4, 4, 16), rotation_repr="quaternion", rotation_hypotheses=4)
    with pytest.raises(ValueError, match="rotation_hypotheses"):
        build_direct_head((4, 4, 16), rotation_repr="6d", rotation_hypotheses=0)


def test_winner_takes_all_trains_the_best_hypothesis_and_teaches_the_score():
    import tensorflow as tf

    from pose_net import losses
    from pose_net.model import rotation_anchors
    from pose_net.parametrization import matrix_to_six_d

    rng = np.random.default_rng(0)
    points = rng.normal(size=(64, 3)).astype(np.float32) * 40.0
    anchors = rotation_anchors(4)
    R_true = (anchors[2] @ np.asarray([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]],
                                      np.float32)).astype(np.float32)  # 11 degrees from anchor 2
    six_d = tf.Variable(matrix_to_six_d(anchors)[None])
    logits = tf.Variable(np.zeros((1, 4), np.float32))
    with tf.GradientTape() as tape:
        hyp, sel, output_term = losses.rotation_hypotheses_loss(six_d, logits, tf.constant(R_true[None]), points,
                                                                100.0, False)
        total = hyp[0] + sel[0]
    g_hyp, g_logits = tape.gradient(total, [six_d, logits])
    per = [float(losses.rotation_point_matching_loss(tf.constant(anchors[k:k + 1]), tf.constant(R_true[None]),
                                                     points, 100.0)[0]) for k in range(4)]
    assert int(np.argmin(per)) == 2
    expected = (1 - losses.ROTATION_WTA_SPREAD) * per[2] + losses.ROTATION_WTA_SPREAD * np.mean(per)
    assert float(hyp[0]) == pytest.approx(expected, rel=1e-4)
    assert float(sel[0]) == pytest.approx(np.log(4.0), rel=1e-5)  # uniform scores
    assert float(output_term[0]) == pytest.approx(per[0], rel=1e-4)  # ... whose argmax, the output, is the first
    norms = np.linalg.norm(g_hyp.numpy()[0], axis=-1)
    assert norms[2] > 5 * max(norms[k] for k in (0, 1, 3))  # the winner gets nearly all of the gradient
    g = g_logits.numpy()[0]
    assert g[2] < 0 and all(g[k] > 0 for k in (0, 1, 3))  # descent raises the winner's score
    # symmetric objects: the ADD-S form decides the winner
    hyp_s, _, _ = losses.rotation_hypotheses_loss(six_d, logits, tf.constant(R_true[None]), points, 100.0, True)
    assert 0.0 < float(hyp_s[0]) <= float(hyp[0]) + 1e-6


def test_symmetric_term_from_a_subset_of_sources_estimates_the_full_add_s():
    import tensorflow as tf

    from pose_net import losses
    from pose_net import parametrization as param

    rng = np.random.default_rng(1)
    angle, height = rng.uniform(0.0, 2.0 * np.pi, 512), rng.uniform(-60.0, 60.0, 512)
    points = np.stack([40.0 * np.cos(angle), 40.0 * np.sin(angle), height], -1).astype(np.float32)  # a can's side
    R_true = param.six_d_to_matrix(tf.constant(rng.normal(size=(16, 6)), tf.float32))
    R_pred = param.six_d_to_matrix(tf.constant(rng.normal(size=(16, 6)), tf.float32))
    full = losses.rotation_point_matching_loss_symmetric(R_pred, R_true, points, 150.0).numpy()
    sub = losses.rotation_point_matching_loss_symmetric(R_pred, R_true, points, 150.0,
                                                        losses.SYMMETRIC_HYPOTHESIS_SOURCE_POINTS).numpy()
    assert full.shape == sub.shape == (16,)
    assert np.all(full > 0.02)  # random rotations of a can are off, less so about its axis
    assert np.mean(np.abs(sub - full) / full) < 0.1  # the same loss, estimated from fewer sources
    assert np.corrcoef(sub, full)[0, 1] > 0.9
    # exactly: from the first S points under the true rotation to the nearest of all P under the predicted one
    sources = np.einsum("bij,pj->bpi", R_true.numpy(), points[:losses.SYMMETRIC_HYPOTHESIS_SOURCE_POINTS])
    targets = np.einsum("bij,pj->bpi", R_pred.numpy(), points)
    nearest = np.linalg.norm(sources[:, :, None] - targets[:, None], axis=-1).min(axis=-1)
    assert np.allclose(sub, nearest.mean(axis=-1) / 150.0, rtol=1e-3)
    # a correct rotation is (almost) free: every source finds itself among the targets
    same = losses.rotation_point_matching_loss_symmetric(R_true, R_true, points, 150.0, 64).numpy()
    assert np.all(same < 1e-3)


def test_rotation_term_takes_the_add_s_form_for_a_symmetric_object_only():
    import tensorflow as tf

    from pose_core.geometry import axis_angle_to_matrix
    from pose_net import losses

    # a can's side: 8 rings of 64 points, so a quarter turn about its axis maps the points onto themselves
    angle, height = np.meshgrid(np.arange(64) * 2.0 * np.pi / 64, np.linspace(-60.0, 60.0, 8))
    points = np.stack([40.0 * np.cos(angle), 40.0 * np.sin(angle), height], -1).reshape(-1, 3).astype(np.float32)
    points = points[np.random.default_rng(2).permutation(len(points))]
    R_true = tf.eye(3, batch_shape=[1])
    about_axis = tf.constant(axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.pi / 2)[None], tf.float32)
    add = float(losses.rotation_term(about_axis, R_true, points, 150.0, symmetric=False)[0])
    add_s = float(losses.rotation_term(about_axis, R_true, points, 150.0, symmetric=True)[0])
    # a quarter turn about the can's axis moves every point by 40 * sqrt(2) mm, yet matches the can's surface
    assert add == pytest.approx(40.0 * np.sqrt(2.0) / 150.0, rel=1e-3)
    assert add_s < 1e-3
    assert float(losses.rotation_term(about_axis, R_true, points, 150.0, True, 64)[0]) < 1e-3
