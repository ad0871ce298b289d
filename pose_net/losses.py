"""The losses, one function per term: the thesis' ``L = lb*Lb + lq*Lq + lt*Lt + lPL*LPL + lreg*Lreg`` (the
``direct`` head) and the coordinate head's ``lc*Lc + lm*Lm + lreg*Lreg`` (masked L1 on object coordinates, mask
cross-entropy).

Every term returns a per-example loss ``[B]`` (float32); :func:`total_loss` averages over the batch and weights.
Lengths: model points in mm; rotation errors are divided by the object's diameter so that every term is
dimensionless and of order 1 for a bad guess, and the lambdas mean the same for every object.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from pose_net import parametrization as param

_EPS = 1e-12


def _norm(x):
    """Euclidean norm over the last axis with a finite gradient at 0."""
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=-1) + _EPS)


def box_loss(box_pred, box_true):
    """Lb = ||b~ - b||: ``box_pred``, ``box_true`` ``[B, 4]`` (x0, y0, x1, y1) / crop size -> ``[B]``."""
    return _norm(box_pred - box_true)


def translation_loss(trans_pred, trans_true):
    """Lt = ||t~ - t|| on the scale-invariant translation (dx, dy, z_s), ``[B, 3]`` each -> ``[B]``
    (see :mod:`pose_net.parametrization`; dimensionless)."""
    return _norm(trans_pred - trans_true)


def rotation_point_matching_loss(R_pred, R_true, points_mm, diameter_mm: float):
    """Lq = 1/P sum_i ||R x_i - R~ x_i|| / diameter.

    Args:
      R_pred, R_true: ``[B, 3, 3]`` rotations. points_mm: ``[P, 3]`` model points in mm. diameter_mm: scalar.
    Returns:
      ``[B]``: the mean point distance caused by the rotation error, as a fraction of the diameter.
    """
    points = tf.convert_to_tensor(points_mm, tf.float32)
    diff = tf.einsum("bij,pj->bpi", R_pred - R_true, points)
    return tf.reduce_mean(_norm(diff), axis=-1) / diameter_mm


def rotation_point_matching_loss_symmetric(R_pred, R_true, points_mm, diameter_mm: float,
                                           num_source_points: int | None = None):
    """The ADD-S form of Lq for symmetric objects: 1/S sum_i min_j ||R x_i - R~ x_j|| / diameter.

    Shapes as :func:`rotation_point_matching_loss`. The sources ``x_i`` are the first ``num_source_points`` of
    ``points_mm`` (all P when None; pass points in random order, as the training's loss points are), the targets
    ``x_j`` all P: a subset of sources estimates the same mean with more noise, while the nearest-neighbour search
    over all P keeps the loss' floor where it is. Memory and time ``B * S * P`` (P = S = 512: 1 M floats per example).
    """
    points = tf.convert_to_tensor(points_mm, tf.float32)
    sources = points if num_source_points is None else points[:num_source_points]
    true = tf.einsum("bij,pj->bpi", R_true, sources)  # [B, S, 3]
    pred = tf.einsum("bij,pj->bpi", R_pred, points)  # [B, P, 3]
    d2 = (tf.reduce_sum(tf.square(true), -1)[:, :, None] + tf.reduce_sum(tf.square(pred), -1)[:, None, :]
          - 2.0 * tf.matmul(true, pred, transpose_b=True))
    return tf.reduce_mean(tf.sqrt(tf.maximum(tf.reduce_min(d2, axis=-1), 0.0) + _EPS), axis=-1) / diameter_mm


def rotation_term(R_pred, R_true, points_mm, diameter_mm: float, symmetric: bool,
                  num_source_points: int | None = None):
    """Lq in the form the object needs: :func:`rotation_point_matching_loss_symmetric` (ADD-S, from the first
    ``num_source_points`` sources) for a symmetric object, :func:`rotation_point_matching_loss` (ADD) otherwise.
    THE place that chooses between them (the training loss, the hypotheses' term and validation call it).
    Shapes and units as :func:`rotation_point_matching_loss`: ``[B]``, a fraction of the diameter."""
    if symmetric:
        return rotation_point_matching_loss_symmetric(R_pred, R_true, points_mm, diameter_mm, num_source_points)
    return rotation_point_matching_loss(R_pred, R_true, points_mm, diameter_mm)


# Relaxed winner-takes-all (Rupprecht et al., ICCV'17): the share of the mean over all hypotheses in the rotation
# hypotheses' term, so that hypotheses that never win still move towards the data instead of dying.
ROTATION_WTA_SPREAD = 0.05

# Source points of the ADD-S form of the hypotheses' term (symmetric objects; targets stay all loss points). With
# 512 sources the M hypotheses' ADD-S made a symmetric object's step about 3x a toy's (B * M * 512 * 512 distances);
# 64 cut that cost 8x, and the mean over 64 random points estimates the same loss
# (tests/test_rotation_hypotheses.py).
SYMMETRIC_HYPOTHESIS_SOURCE_POINTS = 64


def rotation_hypotheses_loss(hypotheses, logits, R_true, points_mm, diameter_mm: float, symmetric: bool):
    """The rotation term of a head that proposes M rotations and scores them (multiple-hypothesis learning for
    ambiguous views, as Manhardt et al., ICCV'19, do for pose).

    Args:
      hypotheses: ``[B, M, 6]`` rotations in the 6D representation. logits: ``[B, M]`` their scores.
      R_true: ``[B, 3, 3]``. points_mm: ``[P, 3]`` in mm, in random order. diameter_mm: scalar. symmetric: the
        ADD-S form of Lq, from the first :data:`SYMMETRIC_HYPOTHESIS_SOURCE_POINTS` points to all P.
    Returns:
      ``(hypotheses_term [B], selection_term [B], output_term [B])``: the point-matching loss (a fraction of the
      diameter) of the best hypothesis, plus :data:`ROTATION_WTA_SPREAD` of the mean over all; the cross-entropy
      of the scores against the best hypothesis (nats), which teaches the head to pick it; and the point-matching
      loss of the best-scored hypothesis, the head's output rotation (``model.SelectRotation``), for reporting.
    """
    num = hypotheses.shape[1]
    R = param.six_d_to_matrix(tf.reshape(hypotheses, [-1, 6]))
    R_true = tf.repeat(R_true, num, axis=0)
    per_hypothesis = tf.reshape(rotation_term(R, R_true, points_mm, diameter_mm, symmetric,
                                              SYMMETRIC_HYPOTHESIS_SOURCE_POINTS), [-1, num])
    best = tf.stop_gradient(tf.argmin(per_hypothesis, axis=-1))
    hypotheses_term = ((1.0 - ROTATION_WTA_SPREAD) * tf.reduce_min(per_hypothesis, axis=-1)
                       + ROTATION_WTA_SPREAD * tf.reduce_mean(per_hypothesis, axis=-1))
    selection_term = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=best, logits=logits)
    output_term = tf.gather(per_hypothesis, tf.argmax(logits, axis=-1), batch_dims=1)
    return hypotheses_term, selection_term, output_term


def constant_rotation_level(R_true, points_mm, diameter_mm: float, num_candidates: int = 2048, seed: int = 0):
    """The rotation term's level for a network that ignores its input: the lowest mean of
    :func:`rotation_point_matching_loss` over a set of rotations that one *constant* prediction reaches.

    The constant is the best of ``num_candidates`` random rotations, the identity and the set's own rotations,
    scored on 256 of the points (a training whose rotation term stays at this level has learnt nothing about
    rotation).

    Args:
      R_true: ``[N, 3, 3]`` target (allocentric) rotations. points_mm: ``[P, 3]``. diameter_mm: scalar.
    Returns:
      ``(level, R_const [3, 3])``: the mean term (fraction of the diameter) and the constant that reaches it.
    """
    import numpy as np

    from pose_core.geometry import random_rotations

    R_true = np.asarray(R_true, np.float64)
    points = np.asarray(points_mm, np.float64)
    candidates = np.concatenate([np.eye(3)[None], R_true[:256],
                                 random_rotations(num_candidates, np.random.default_rng(seed))])
    points = points[np.random.default_rng(seed).permutation(len(points))[:256]]
    n = len(R_true)
    levels = []
    for chunk in np.array_split(candidates, max(1, len(candidates) // 32)):  # every (candidate, target) pair
        R_pred = tf.constant(np.repeat(chunk, n, axis=0), tf.float32)
        R_target = tf.constant(np.tile(R_true, (len(chunk), 1, 1)), tf.float32)
        term = rotation_point_matching_loss(R_pred, R_target, points, diameter_mm)
        levels.append(tf.reduce_mean(tf.reshape(term, [len(chunk), n]), axis=1).numpy())
    levels = np.concatenate(levels)
    best, best_R = levels.min(), candidates[int(np.argmin(levels))]
    return float(best), best_R


def projection_loss_term(points_mm, R_pred, t_pred_mm, R_true, t_true_mm, K_crop, input_size: int, scale: float):
    """LPL: 1 - IoU of the model's points drawn under the true and the predicted pose in the network's crop.

    Args:
      points_mm: ``[P, 3]``. R_*: ``[B, 3, 3]``. t_*: ``[B, 3]`` mm. K_crop: ``[B, 3, 3]`` intrinsics of the crop.
      input_size: the crop's side in pixels. scale: drawing resolution relative to the crop (the op's ``scale``).
    Returns ``[B]`` in [0, 1]; the gradient is the op's hand-written one (see docs/projection_loss.md).
    """
    # the compiled op: only needed when lPL > 0
    from tf_ops.projection_loss.python.ops.projection_loss_ops import projection_loss

    return projection_loss(points_mm, R_pred, t_pred_mm, R_true, t_true_mm, K_crop, input_size, input_size, scale)


def regularization_loss(model):
    """Lreg = 1/2 sum ||W||^2 over the kernels of the model's conv and dense layers (weight decay); a scalar."""
    kernels = [w for w in model.trainable_weights if "kernel" in w.path]
    return 0.5 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in kernels])


def coordinate_loss(coords_pred, coords_true, mask_true):
    """Masked L1 on normalised object coordinates (the ``coords`` head).

    Args:
      coords_pred, coords_true: ``[B, s, s, 3]`` coordinates normalised to the model's box
        (:class:`pose_net.coordinates.CoordinateFrame`). mask_true: ``[B, s, s]`` 0/1, the visible object pixels.
    Returns:
      ``[B]``: mean absolute error over the object's pixels and the three axes (0 for an image without them).
    """
    err = tf.reduce_sum(tf.abs(coords_pred - coords_true), axis=-1) * mask_true
    return tf.reduce_sum(err, axis=[1, 2]) / (3.0 * tf.reduce_sum(mask_true, axis=[1, 2]) + 1.0)


def mask_loss(mask_logit, mask_true):
    """Binary cross-entropy of the visible-mask logit ``[B, s, s, 1]`` against ``mask_true [B, s, s]`` -> ``[B]``."""
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_true, logits=mask_logit[..., 0])
    return tf.reduce_mean(bce, axis=[1, 2])


def coordinate_head_loss(outputs, batch, model, weights: "LossWeights"):
    """The ``coords`` head's loss ``lc*Lc + lm*Lm + lreg*Lreg`` (batch means) and its terms, given the network's
    outputs (``coords``, ``mask``) and a batch holding ``coords_target`` and ``mask_target``
    (:func:`pose_net.coordinates.coordinate_targets`)."""
    terms = {
        "coords": tf.reduce_mean(coordinate_loss(outputs["coords"], batch["coords_target"], batch["mask_target"])),
        "mask": tf.reduce_mean(mask_loss(outputs["mask"], batch["mask_target"])),
    }
    terms["regularization"] = regularization_loss(model) if weights.regularization > 0 else tf.constant(0.0)
    total = (weights.coords * terms["coords"] + weights.mask * terms["mask"]
             + weights.regularization * terms["regularization"])
    return total, terms


@dataclass
class LossWeights:
    """The lambdas of the total loss (each one a training flag)."""
    box: float = 1.0          # lb
    rotation: float = 1.0     # lq
    translation: float = 1.0  # lt
    projection: float = 0.0   # lPL
    regularization: float = 1e-5  # lreg
    projection_scale: float = 0.5  # the op's drawing resolution relative to the crop
    coords: float = 1.0       # lc: the coordinate head's masked L1
    mask: float = 1.0         # lm: the coordinate head's mask cross-entropy


def total_loss(outputs, batch, model, weights: LossWeights, points_mm, diameter_mm: float, symmetric: bool,
               input_size: int):
    """The weighted sum and each term (batch means), given network outputs and a batch from :mod:`pose_net.data`.

    ``batch`` holds ``box_target [B, 4]``, ``translation_target [B, 3]``, ``R [B, 3, 3]``, ``t_mm [B, 3]``,
    ``K_crop [B, 3, 3]``. Returns ``(total, {"box": .., "rotation": .., "translation": .., "projection": ..,
    "regularization": ..})``. "rotation" is always the term of the output rotation; a head with rotation hypotheses
    (``outputs["rotation_hypotheses"]``) is trained on :func:`rotation_hypotheses_loss` instead (its two parts
    are the terms "rotation_hypotheses" and "rotation_selection", both weighted by lq).
    """
    R_true, t_true = batch["R"], batch["t_mm"]
    R_allo_pred = param.rotation_matrix(outputs["rotation"])
    R_allo_true = param.egocentric_to_allocentric(R_true, t_true)
    terms = {
        "box": tf.reduce_mean(box_loss(outputs["box"], batch["box_target"])),
        "translation": tf.reduce_mean(translation_loss(outputs["translation"], batch["translation_target"])),
    }
    if "rotation_hypotheses" in outputs:  # the output's term is one of the hypotheses': not computed again
        hyp, sel, output_term = rotation_hypotheses_loss(outputs["rotation_hypotheses"], outputs["rotation_logits"],
                                                         R_allo_true, points_mm, diameter_mm, symmetric)
        terms["rotation"] = tf.reduce_mean(output_term)
        terms["rotation_hypotheses"], terms["rotation_selection"] = tf.reduce_mean(hyp), tf.reduce_mean(sel)
        rotation_objective = terms["rotation_hypotheses"] + terms["rotation_selection"]
    else:
        terms["rotation"] = tf.reduce_mean(rotation_term(R_allo_pred, R_allo_true, points_mm, diameter_mm, symmetric))
        rotation_objective = terms["rotation"]
    if weights.projection > 0:
        t_pred = param.target_to_translation(outputs["translation"], batch["K"], batch["crop_center"],
                                             batch["crop_size"], diameter_mm)
        R_pred = param.allocentric_to_egocentric(R_allo_pred, t_pred)
        terms["projection"] = tf.reduce_mean(projection_loss_term(
            points_mm, R_pred, t_pred, R_true, t_true, batch["K_crop"], input_size, weights.projection_scale))
    else:
        terms["projection"] = tf.constant(0.0)
    terms["regularization"] = regularization_loss(model) if weights.regularization > 0 else tf.constant(0.0)
    total = (weights.box * terms["box"] + weights.rotation * rotation_objective
             + weights.translation * terms["translation"] + weights.projection * terms["projection"]
             + weights.regularization * terms["regularization"])
    return total, terms
