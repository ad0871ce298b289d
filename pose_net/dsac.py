"""DSAC: training the coordinate network through the robust pose solver (Brachmann et al., CVPR'17; DSAC++; DSAC*).

The coordinate head (:mod:`pose_net.coordinates`) is first trained on its coordinate loss alone. DSAC then trains
it through RANSAC-PnP: for each image the op :func:`tf_ops.ransac_pnp_hypotheses` draws ``H`` minimal sets, makes a
P3P hypothesis from each, scores it by its soft inlier count ``s_j`` and refines it on its inliers. Hypothesis j is
*selected* with probability

    P(j) = softmax_j(alpha * s_j / N)        (N: the image's used correspondences, so s_j / N is an inlier share)

and the training loss is the expected pose loss ``E_j[l(h_j, h*)] = sum_j P(j) l(h_j, h*)``. Its gradient is the
seed formula ``E_j[l_j d log P(j)/dy + d l_j/dy]``: TensorFlow's autodiff of the sum gives exactly that, with the
op's registered gradient carrying ``d s_j / d y`` (soft inlier count through P3P) and ``d h_j / d y`` (the refined
pose through the Gauss-Newton optimum) back to the coordinates ``y``.

Pose losses ``l`` (``pose_loss``, one flag; each with DSAC*'s soft clamp ``sqrt(cut * l)`` above ``cut``):

* ``reprojection``: the seed's ``l_pi`` [Bra16]: mean distance in pixels between the model points projected under
  the hypothesis and under the true pose (cut: :data:`DEFAULT_CUTS`).
* ``add``: the thesis' point-matching term, mean distance in mm between the model points under both poses, divided
  by the diameter (ADD / d; ``add_s``: the closest-point version for symmetric objects).
* ``angle_translation``: DSAC*'s ``angle_deg + w * |dt|`` with ``w`` per mm (DSAC*: 100 per metre, 0.1 per mm).

NG-RANSAC (Brachmann & Rother, ICCV'19): a sampling weight per correspondence (:func:`sampling_log_weights`)
decides where minimal sets are drawn; it is trained by the policy gradient of the expected loss over sampled
hypothesis pools, :func:`ng_ransac_surrogate`.

The RGB-D variant (:func:`expected_pose_loss_rgbd`) makes hypotheses from three camera-space points (rendered
depth) and their object coordinates (:func:`pose_net.coordinates.kabsch_hypotheses`, shared with the
RGB-D solver of inference); it is plain TensorFlow (SVD has a gradient), no op needed. ``--stage dsac_rgbd`` trains
through it, with the camera points of the training crops' depth.

Shapes: ``B`` images, ``N`` correspondences per image, ``H`` hypotheses. Units: coordinates and translations in mm,
pixels in the coordinate grid's pixels (the ``K`` given).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

POSE_LOSSES = ("reprojection", "add", "add_s", "angle_translation")
# DSAC*'s defaults: 64 hypotheses, tau = 10 px, softmax scale alpha = 100 over the inlier share, a loss cut of 100
# (degrees + cm for its angle/translation loss) above which the loss grows as sqrt(cut * l).
DEFAULT_NUM_HYPOTHESES = 64
DEFAULT_THRESHOLD_PX = 10.0
DEFAULT_ALPHA = 100.0
DEFAULT_TRANSLATION_WEIGHT_PER_MM = 0.1
# The soft clamp of each pose loss, in its own unit: px (reprojection), diameters (add, add_s), degrees + w * mm.
DEFAULT_CUTS = {"reprojection": 100.0, "add": 1.0, "add_s": 1.0, "angle_translation": 100.0}
# The RGB-D loss' refinement weights each point by its soft inlier term plus this floor: a hypothesis without
# inliers is then refined over all points (Kabsch's SVD stays well conditioned, its gradient finite) instead of
# over nothing.
RGBD_REFINE_FLOOR_WEIGHT = 1e-3
# Correspondences each hypothesis is refined on in training, at most (DsacSettings.max_refine_points).
DEFAULT_MAX_REFINE_POINTS = 256


@dataclass
class DsacSettings:
    """The knobs of the expected pose loss (each one a training flag, ``pose_net.train --dsac_*``)."""
    num_hypotheses: int = DEFAULT_NUM_HYPOTHESES
    threshold_px: float = DEFAULT_THRESHOLD_PX  # tau; the soft score uses beta = 5 / tau (inside the op)
    alpha: float = DEFAULT_ALPHA  # selection softmax scale over the inlier share s_j / N
    pose_loss: str = "angle_translation"
    translation_weight_per_mm: float = DEFAULT_TRANSLATION_WEIGHT_PER_MM
    loss_cut: float | None = None  # None: DEFAULT_CUTS[pose_loss]
    max_refine_iterations: int = 3  # per hypothesis, in training (pose_net.train --dsac_refine_iterations)
    # Refinement of every hypothesis on at most this many of an image's correspondences (a subsample of them where
    # there are more; they come shuffled, so a random one; 0: all). make bench-train's crops hold 200-1,400 object
    # pixels: 256 takes a DSAC step from 1.9x to 1.4x a coordinate step (docs/dsac.md, "Cost").
    max_refine_points: int = DEFAULT_MAX_REFINE_POINTS  # pose_net.train --dsac_refine_points

    def cut(self) -> float:
        return DEFAULT_CUTS[self.pose_loss] if self.loss_cut is None else float(self.loss_cut)


def soft_clamp(loss, cut: float):
    """DSAC*'s clamp: ``l`` below ``cut``, ``sqrt(cut * l)`` above (continuous, gradient shrinking with ``l``)."""
    return tf.where(loss > cut, tf.sqrt(cut * tf.maximum(loss, cut)), loss)


def _transform(R, t, points):
    """``R [..., 3, 3]``, ``t [..., 3]``, ``points [P, 3]`` -> ``[..., P, 3]``."""
    return tf.einsum("...ij,pj->...pi", R, points) + t[..., None, :]


def _project(K, X):
    """``K [B, 3, 3]`` (broadcast over the middle axes of ``X [B, ..., P, 3]``) -> pixels ``[B, ..., P, 2]``."""
    extra = len(X.shape) - 2
    Kb = tf.reshape(K, tf.concat([tf.shape(K)[:1], tf.ones([extra - 1], tf.int32), [3, 3]], 0))
    p = tf.einsum("b...ij,b...pj->b...pi", Kb, X)
    z = tf.maximum(p[..., 2:3], 1e-3)  # a point behind the camera: a large finite error, not a NaN
    return p[..., :2] / z


def pose_losses(R_hyp, t_hyp_mm, R_gt, t_gt_mm, K, model_points_mm, diameter_mm: float,
                settings: DsacSettings) -> tf.Tensor:
    """The pose loss ``l`` of every hypothesis against the true pose, soft-clamped.

    Args:
      R_hyp ``[B, H, 3, 3]``, t_hyp_mm ``[B, H, 3]``: hypotheses. R_gt ``[B, 3, 3]``, t_gt_mm ``[B, 3]``.
      K ``[B, 3, 3]``: the intrinsics the poses were solved with (reprojection loss). model_points_mm ``[P, 3]``.
    Returns:
      ``[B, H]`` float32, in the loss' unit (px, diameters, or degrees + w * mm).
    """
    name = settings.pose_loss
    if name not in POSE_LOSSES:
        raise ValueError(f"pose_loss must be one of {', '.join(POSE_LOSSES)}, got {name!r}")
    pts = tf.constant(np.asarray(model_points_mm, np.float32))
    if name == "angle_translation":
        rel = tf.einsum("bhji,bjk->bhik", R_hyp, R_gt)  # R_hyp^T R_gt
        # angle = atan2(2 sin, 2 cos): exact near 0 and 180 degrees, where acos(trace) loses precision and its
        # gradient is infinite
        two_cos = tf.linalg.trace(rel) - 1.0
        v = tf.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                      rel[..., 1, 0] - rel[..., 0, 1]], axis=-1)
        two_sin = tf.sqrt(tf.reduce_sum(tf.square(v), axis=-1) + 1e-12)
        angle_deg = tf.atan2(two_sin, two_cos) * (180.0 / math.pi)
        dt = tf.norm(t_hyp_mm - t_gt_mm[:, None, :] + 1e-9, axis=-1)
        loss = angle_deg + settings.translation_weight_per_mm * dt
    else:
        X_hyp = _transform(R_hyp, t_hyp_mm, pts)  # [B, H, P, 3]
        X_gt = _transform(R_gt, t_gt_mm, pts)[:, None]  # [B, 1, P, 3]
        if name == "reprojection":
            loss = tf.reduce_mean(tf.norm(_project(K, X_hyp) - _project(K, X_gt) + 1e-9, axis=-1), axis=-1)
        elif name == "add":
            loss = tf.reduce_mean(tf.norm(X_hyp - X_gt + 1e-9, axis=-1), axis=-1) / diameter_mm
        else:  # add_s: each hypothesis point to its closest true point
            d2 = tf.reduce_sum(tf.square(X_hyp[:, :, :, None, :] - X_gt[:, :, None, :, :]), axis=-1)
            loss = tf.reduce_mean(tf.sqrt(tf.reduce_min(d2, axis=-1) + 1e-9), axis=-1) / diameter_mm
    return soft_clamp(loss, settings.cut())


def hypothesis_pool(coords_mm, pixels, K, R_gt, t_gt_mm, model_points_mm, diameter_mm: float,
                    settings: DsacSettings = DsacSettings(), seed: int = 0, valid=None, weights=None) -> dict:
    """One pool of ``H`` hypotheses per image, their selection probabilities and pose losses.

    Args:
      coords_mm ``[B, N, 3]``: predicted object coordinates (the gradient flows into them). pixels ``[B, N, 2]``:
        where they are seen (px of ``K``). K ``[B, 3, 3]``. R_gt ``[B, 3, 3]``, t_gt_mm ``[B, 3]``: the true pose.
      valid ``[B, N]`` bool or None; weights ``[B, N]`` sampling weights (>= 0) or None (uniform).
    Returns:
      dict: ``loss [B]`` the expected pose loss (0 where ``ok`` is False), ``probabilities [B, H]``, ``losses
      [B, H]``, ``score [B, H]``, ``minimal_sets [B, H, 4]`` int32 (-1: no hypothesis), ``ok [B]`` bool (at least
      one hypothesis), ``R [B, H, 3, 3]``, ``t_mm [B, H, 3]`` (refined hypotheses), ``num_used [B]``.
    """
    from tf_ops import ransac_pnp_hypotheses

    coords_mm = tf.convert_to_tensor(coords_mm, tf.float32)
    pixels = tf.convert_to_tensor(pixels, tf.float32)
    K = tf.convert_to_tensor(K, tf.float32)
    if valid is None:
        valid = tf.ones(tf.shape(coords_mm)[:2], tf.bool)
    # the op ignores non-finite coordinates: count the same way, for the inlier share
    finite = tf.reduce_all(tf.math.is_finite(coords_mm), axis=-1)
    used = tf.logical_and(tf.convert_to_tensor(valid), finite)
    hyp = ransac_pnp_hypotheses(pixels, coords_mm, K, weights=weights, valid=used,
                                num_hypotheses=settings.num_hypotheses, threshold_px=settings.threshold_px,
                                seed=seed, max_refine_iterations=settings.max_refine_iterations,
                                max_refine_points=settings.max_refine_points)
    ok_h = hyp["ok"]
    num_used = tf.reduce_sum(tf.cast(used, tf.float32), axis=1)
    logits = settings.alpha * hyp["score"] / tf.maximum(num_used, 1.0)[:, None]
    logits = tf.where(ok_h, logits, tf.fill(tf.shape(logits), -1e9))
    probs = tf.nn.softmax(logits, axis=1)
    losses = pose_losses(hyp["R"], hyp["t_mm"], R_gt, t_gt_mm, K, model_points_mm, diameter_mm, settings)
    losses = tf.where(ok_h, losses, tf.zeros_like(losses))  # failed hypotheses: no loss, no gradient
    ok = tf.reduce_any(ok_h, axis=1)
    expected = tf.where(ok, tf.reduce_sum(probs * losses, axis=1), tf.zeros_like(num_used))
    return dict(loss=expected, probabilities=probs, losses=losses, score=hyp["score"],
                minimal_sets=hyp["minimal_sets"], ok=ok, R=hyp["R"], t_mm=hyp["t_mm"], num_used=num_used)


def expected_pose_loss(coords_mm, pixels, K, R_gt, t_gt_mm, model_points_mm, num_hypotheses: int = 64, seed: int = 0,
                       diameter_mm: float | None = None, valid=None, weights=None, **settings) -> tf.Tensor:
    """DSAC's expected pose loss ``E_j[l(h_j, h*)]`` per image, differentiable with respect to ``coords_mm``.

    Args:
      coords_mm ``[B, N, 3]`` float32 (mm); pixels ``[B, N, 2]`` (px); K ``[B, 3, 3]``; R_gt ``[B, 3, 3]``;
      t_gt_mm ``[B, 3]``; model_points_mm ``[P, 3]``; diameter_mm: the object's diameter (the ``add`` losses;
      default: the diagonal of the model points' bounding box, an upper bound of the diameter). ``settings``: the
      other fields of :class:`DsacSettings`.
    Returns:
      ``[B]`` float32; 0 (with a zero gradient) for an image where no hypothesis could be made.
    """
    s = DsacSettings(num_hypotheses=num_hypotheses, **settings)
    if diameter_mm is None:
        p = np.asarray(model_points_mm, np.float64)
        diameter_mm = float(np.linalg.norm(p.max(0) - p.min(0)))
    return hypothesis_pool(coords_mm, pixels, K, R_gt, t_gt_mm, model_points_mm, diameter_mm, s, seed, valid,
                           weights)["loss"]


# ---------------------------------------------------------------------------------------------------- NG-RANSAC
def sampling_log_weights(logits, valid):
    """NG-RANSAC's sampling distribution over the correspondences of each image.

    Args:
      logits ``[B, N]``: the guidance head's raw output. valid ``[B, N]`` bool: the correspondences that exist.
    Returns:
      ``[B, N]`` log-probabilities: ``log sigmoid(logits)`` normalised with logsumexp over the valid ones
      (``-inf``-free: invalid entries get -1e9, so ``exp`` of them is 0).
    """
    log_w = tf.math.log_sigmoid(tf.convert_to_tensor(logits, tf.float32))
    log_w = tf.where(valid, log_w, tf.fill(tf.shape(log_w), -1e9))
    return log_w - tf.reduce_logsumexp(log_w, axis=1, keepdims=True)


def ng_ransac_surrogate(log_probs, pools: list[dict]):
    """The policy-gradient surrogate of NG-RANSAC: its gradient with respect to ``log_probs`` is the NG-RANSAC
    gradient of the expected pool loss, ``sum_k (l_k - mean_k l) d log p(pool_k) / d w``, where ``log p(pool_k)``
    is the sum of the log-probabilities of every correspondence drawn into pool k's minimal sets.

    Args:
      log_probs ``[B, N]``: :func:`sampling_log_weights` (the weights the pools were drawn with).
      pools: ``K >= 2`` results of :func:`hypothesis_pool` drawn with those weights and different seeds.
    Returns:
      ``[B]`` surrogate (its value is not a loss; only its gradient means something); the mean-loss baseline is
      used, as in NG-RANSAC.
    """
    if len(pools) < 2:
        raise ValueError(f"NG-RANSAC needs at least 2 pools per image for its baseline, got {len(pools)}")
    pool_losses = tf.stop_gradient(tf.stack([p["loss"] for p in pools], axis=1))  # [B, K]
    advantage = pool_losses - tf.reduce_mean(pool_losses, axis=1, keepdims=True)
    terms = []
    for p in pools:
        sets = p["minimal_sets"]  # [B, H, 4]
        drawn = tf.cast(sets >= 0, tf.float32)
        lp = tf.gather(log_probs, tf.maximum(sets, 0), batch_dims=1)  # [B, H, 4]
        terms.append(tf.reduce_sum(lp * drawn, axis=[1, 2]))
    log_pool = tf.stack(terms, axis=1)  # [B, K]
    return tf.reduce_sum(advantage * log_pool, axis=1)


# ---------------------------------------------------------------------------------------------------- RGB-D
def expected_pose_loss_rgbd(coords_mm, camera_points_mm, R_gt, t_gt_mm, model_points_mm, diameter_mm: float,
                            valid=None, num_hypotheses: int = 64, threshold_mm: float = 10.0, alpha: float = 100.0,
                            pose_loss: str = "add", seed: int = 0, refine: bool = True, **loss_settings) -> tf.Tensor:
    """The RGB-D form of DSAC's expected pose loss: hypotheses from 3 camera-space points and their predicted
    object coordinates (:func:`pose_net.coordinates.kabsch_hypotheses`).

    Args:
      coords_mm ``[B, N, 3]``: predicted object coordinates. camera_points_mm ``[B, N, 3]``: the same pixels'
        camera-space points (from depth). valid ``[B, N]`` bool or None (at least 3 per image: an image with
        fewer gets a meaningless, finite loss; :func:`coordinate_dsac_loss` leaves such images out).
        R_gt, t_gt_mm: the true pose.
      threshold_mm: inlier threshold tau on the 3D distance ``|R y_i + t - x_i|``; the soft score uses
        beta = 5 / tau. pose_loss: ``add`` / ``add_s`` (in diameters) or ``angle_translation``.
      refine: each hypothesis is re-solved by weighted Kabsch over all points, weighted by its soft inlier terms
        (differentiable, one round). loss_settings: other fields of :class:`DsacSettings` (the pose loss' cut and
        translation weight).
    Returns:
      ``[B]`` float32 expected pose loss; differentiable with respect to ``coords_mm``.
    """
    from pose_net.coordinates import kabsch, kabsch_hypotheses, rigid_residuals_mm

    coords_mm = tf.convert_to_tensor(coords_mm, tf.float32)
    cam = tf.convert_to_tensor(camera_points_mm, tf.float32)
    b, n = tf.shape(coords_mm)[0], tf.shape(coords_mm)[1]
    if valid is None:
        valid = tf.ones([b, n], tf.bool)
    vf = tf.cast(valid, tf.float32)
    R, t = kabsch_hypotheses(coords_mm, cam, valid, num_hypotheses, seed)  # [B, H, 3, 3], [B, H, 3]
    beta = 5.0 / threshold_mm
    soft = tf.sigmoid(beta * (threshold_mm - rigid_residuals_mm(R, t, coords_mm, cam))) * vf[:, None, :]
    score = tf.reduce_sum(soft, axis=-1)
    if refine:  # a floor weight on every valid point keeps the SVD well conditioned for a hypothesis with no inliers
        R, t = kabsch(tf.tile(coords_mm[:, None], [1, num_hypotheses, 1, 1]),
                      tf.tile(cam[:, None], [1, num_hypotheses, 1, 1]), soft + RGBD_REFINE_FLOOR_WEIGHT * vf[:, None])
    probs = tf.nn.softmax(alpha * score / tf.maximum(tf.reduce_sum(vf, axis=1), 1.0)[:, None], axis=1)
    settings = DsacSettings(pose_loss=pose_loss, **loss_settings)
    losses = pose_losses(R, t, R_gt, t_gt_mm, tf.eye(3, batch_shape=[b]), model_points_mm, diameter_mm, settings)
    return tf.reduce_sum(probs * losses, axis=1)


# ---------------------------------------------------------------------------------------------------- training
def canonical_true_pose(R, t_mm, symmetries):
    """The true pose the coordinate targets were made with: for a symmetric object, the symmetric equivalent
    whose allocentric rotation is closest to the identity (:func:`pose_net.coordinates.canonical_symmetry_transform`),
    ``R @ R_S`` and ``R @ t_S + t``; the pose itself otherwise. ``R [B, 3, 3]``, ``t_mm [B, 3]``."""
    from pose_net import parametrization as param
    from pose_net.coordinates import canonical_symmetry_transform

    if not symmetries.is_symmetric:
        return R, t_mm
    Rs, ts = canonical_symmetry_transform(param.egocentric_to_allocentric(R, t_mm), symmetries)
    return tf.einsum("bij,bjk->bik", R, Rs), tf.einsum("bij,bj->bi", R, ts) + t_mm


def coordinate_dsac_loss(outputs, batch, frame, symmetries, model_points_mm, diameter_mm: float,
                         settings: DsacSettings, ng_pools: int = 0, seed: int = 0, rgbd: bool = False):
    """The DSAC term of a coordinate-head training step (``pose_net.train --stage dsac|ngdsac|dsac_rgbd``).

    Correspondences are the output grid's pixels where the predicted mask says "object" (as at test time,
    :func:`pose_net.coordinates.correspondences`), shuffled each step so the op's per-image random draws do not
    repeat from step to step. With ``ng_pools >= 2`` (NG-DSAC) the minimal sets are drawn in proportion to the
    network's ``sampling`` output, each image gets ``ng_pools`` pools of ``num_hypotheses / ng_pools`` hypotheses
    (so NG-DSAC draws and refines as many hypotheses as DSAC), the DSAC loss is their mean and the sampling head is
    trained by :func:`ng_ransac_surrogate`.

    With ``rgbd`` (``--stage dsac_rgbd``) the loss is :func:`expected_pose_loss_rgbd` over the pixels where both the
    predicted mask and the target mask say "object", each paired with its camera-space point (the true pose applied
    to the coordinate target, which is the crop's depth back-projected); inlier threshold
    :data:`pose_net.coordinates.RGBD_THRESHOLD_DIAMETERS` of the diameter, the other settings as for RGB.

    Args:
      outputs: the coordinate network's outputs (``coords``, ``mask``, and ``sampling`` for NG-DSAC).
      batch: a training batch (``R``, ``t_mm``, ``K``, ``crop_center``, ``crop_size``).
    Returns:
      ``(loss scalar, terms)``: ``terms["dsac"]`` the mean expected pose loss over the images with a hypothesis,
      ``terms["dsac_ok"]`` their share, and for NG-DSAC ``terms["ng_surrogate"]`` (included in the loss).
    """
    from pose_net import coordinates
    from pose_net import parametrization as param

    output_size = int(outputs["coords"].shape[1])
    pixels, coords_mm, valid, _ = coordinates.correspondences(outputs, frame)
    R_gt, t_gt = canonical_true_pose(batch["R"], batch["t_mm"], symmetries)
    if rgbd:  # the camera points of the crop's depth: the true pose applied to the (canonical) coordinate targets
        b = tf.shape(pixels)[0]
        target = tf.reshape(frame.denormalise(batch["coords_target"]), [b, -1, 3])
        cam = tf.einsum("bij,bnj->bni", R_gt, target) + t_gt[:, None, :]
        valid = valid & (tf.reshape(batch["mask_target"], [b, -1]) > 0)
        ok = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1) >= 3
        tau = coordinates.RGBD_THRESHOLD_DIAMETERS * diameter_mm
        per_image = expected_pose_loss_rgbd(
            coords_mm, cam, R_gt, t_gt, model_points_mm, diameter_mm, valid, settings.num_hypotheses, tau,
            settings.alpha, settings.pose_loss, seed, loss_cut=settings.loss_cut,
            translation_weight_per_mm=settings.translation_weight_per_mm)
        okf = tf.cast(ok, tf.float32)
        loss = tf.reduce_sum(tf.where(ok, per_image, tf.zeros_like(per_image))) / tf.maximum(tf.reduce_sum(okf), 1.0)
        return loss, {"dsac": loss, "dsac_ok": tf.reduce_mean(okf)}
    n = tf.shape(pixels)[1]
    order = tf.random.shuffle(tf.range(n))
    pixels, coords_mm, valid = (tf.gather(x, order, axis=1) for x in (pixels, coords_mm, valid))
    K_out = param.crop_intrinsics(batch["K"], batch["crop_center"], batch["crop_size"], output_size)
    if ng_pools < 2:
        pool = hypothesis_pool(coords_mm, pixels, K_out, R_gt, t_gt, model_points_mm, diameter_mm, settings, seed,
                               valid)
        ok = tf.cast(pool["ok"], tf.float32)
        loss = tf.reduce_sum(pool["loss"]) / tf.maximum(tf.reduce_sum(ok), 1.0)
        return loss, {"dsac": loss, "dsac_ok": tf.reduce_mean(ok)}
    b = tf.shape(pixels)[0]
    logits = tf.gather(tf.reshape(outputs["sampling"], [b, -1]), order, axis=1)
    log_probs = sampling_log_weights(logits, valid)
    weights = tf.stop_gradient(tf.exp(log_probs))
    tile = lambda x: tf.tile(x, [ng_pools] + [1] * (len(x.shape) - 1))  # noqa: E731: pool k = items k*B..(k+1)*B-1
    pool_settings = dataclasses.replace(settings, num_hypotheses=max(4, settings.num_hypotheses // ng_pools))
    big = hypothesis_pool(tile(coords_mm), tile(pixels), tile(K_out), tile(R_gt), tile(t_gt), model_points_mm,
                          diameter_mm, pool_settings, seed, tile(valid), tile(weights))
    pools = [{key: big[key][k * b:(k + 1) * b] for key in ("loss", "minimal_sets", "ok")} for k in range(ng_pools)]
    ok = tf.cast(tf.stack([p["ok"] for p in pools], 1), tf.float32)  # [B, K]
    losses = tf.stack([p["loss"] for p in pools], 1)
    loss = tf.reduce_sum(losses) / tf.maximum(tf.reduce_sum(ok), 1.0)
    all_ok = tf.reduce_all(tf.cast(ok, tf.bool), axis=1)  # the baseline needs every pool of the image
    surrogate = tf.where(all_ok, ng_ransac_surrogate(log_probs, pools), tf.zeros_like(all_ok, tf.float32))
    surrogate = tf.reduce_mean(surrogate)
    return loss + surrogate, {"dsac": loss, "dsac_ok": tf.reduce_mean(ok), "ng_surrogate": surrogate}
