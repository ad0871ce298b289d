"""TensorFlow wrapper of the RANSAC-PnP op (C++ CPU kernel in tf_ops/ransac_pnp/; docs/ransac_pnp.md).

:func:`ransac_pnp` estimates, per batch item, the model-to-camera pose from 2D-3D correspondences as DSAC* does:
P3P hypotheses from weighted minimal sets of 4, a soft inlier score, Levenberg-Marquardt refinement of the best
hypothesis on its inliers. That op has no gradient (inference only). :func:`ransac_pnp_hypotheses` is the training
form (DSAC): every hypothesis refined, with its score, and a registered gradient w.r.t. the object coordinates.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from tf_ops.loading import load_tf_op_library

_ops = load_tf_op_library("_ransac_pnp_ops.so", "RANSAC-PnP")

# The inference op has no gradient: a tape gives None for its inputs. Training (DSAC) uses ransac_pnp_hypotheses,
# whose gradient (registered below) is RansacPnpHypothesesGrad over core/derivatives.cc; the gradient op itself is
# not differentiated again.
tf.no_gradient("RansacPnp")
tf.no_gradient("RansacPnpHypothesesGrad")

# Defaults of the op's attributes (docs/ransac_pnp.md explains the choice).
DEFAULT_NUM_HYPOTHESES = 64
DEFAULT_THRESHOLD_PX = 10.0
DEFAULT_MAX_REFINE_ITERATIONS = 10
# Limits checked by the kernel too (RP_MAX_HYPOTHESES, RP_MAX_REFINE_ITERATIONS in core/ransac_pnp_core.h).
MAX_NUM_HYPOTHESES = 65536
MAX_REFINE_ITERATIONS = 1000
# Upper bound of the training form's max_refine_points (a sanity limit; 0 means every inlier).
MAX_REFINE_POINTS = 2**31 - 1


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def _float_tensor(x, name: str) -> tf.Tensor:
    """float32 tensor of x; numpy/Python floats are cast, tensors of another dtype are rejected."""
    if isinstance(x, (tf.Tensor, tf.Variable)):
        if x.dtype != tf.float32:
            raise _invalid(f"{name} must be float32, got {x.dtype.name}")
        return tf.convert_to_tensor(x)
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise _invalid(f"{name} must be a float32 array, got dtype {a.dtype}")
    return tf.constant(a.astype(np.float32))


def _check_rank(x: tf.Tensor, name: str, rank: int, layout: str, last: tuple[int, ...] = ()) -> None:
    shape = x.shape
    if shape.rank is None:
        return
    if shape.rank != rank:
        raise _invalid(f"{name} must be rank {rank} {layout}, got shape {shape}")
    for k, want in enumerate(last):
        got = shape[rank - len(last) + k]
        if got is not None and got != want:
            raise _invalid(f"{name} must be {layout}, got shape {shape}")


def _check_int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _invalid(f"{name} must be an int, got {value!r}")
    if not lo <= int(value) <= hi:
        raise _invalid(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _prepare(pixels, coords_mm, K, weights, valid, num_valid, num_hypotheses, threshold_px, seed,
             max_refine_iterations):
    """Checks and converts the arguments shared by both forward ops: (tensors, attributes). Call inside a name
    scope."""
    num_hypotheses = _check_int(num_hypotheses, "num_hypotheses", 1, MAX_NUM_HYPOTHESES)
    max_refine_iterations = _check_int(max_refine_iterations, "max_refine_iterations", 0, MAX_REFINE_ITERATIONS)
    seed = _check_int(seed, "seed", -(2**63), 2**63 - 1)
    try:
        threshold_px = float(threshold_px)
    except (TypeError, ValueError):
        raise _invalid(f"threshold_px must be a float > 0, got {threshold_px!r}") from None
    if not (np.isfinite(threshold_px) and np.float32(threshold_px) > 0):
        raise _invalid(f"threshold_px must be > 0 and finite, got {threshold_px}")
    attrs = dict(num_hypotheses=num_hypotheses, threshold_px=threshold_px, seed=seed,
                 max_refine_iterations=max_refine_iterations)

    pixels = _float_tensor(pixels, "pixels")
    coords_mm = _float_tensor(coords_mm, "coords_mm")
    K = _float_tensor(K, "K")
    _check_rank(pixels, "pixels", 3, "[B, N, 2]", (2,))
    _check_rank(coords_mm, "coords_mm", 3, "[B, N, 3]", (3,))
    if K.shape.rank == 2:
        _check_rank(K, "K", 2, "[3, 3]", (3, 3))
        K = tf.broadcast_to(K, tf.concat([tf.shape(pixels)[:1], [3, 3]], axis=0))
    _check_rank(K, "K", 3, "[B, 3, 3]", (3, 3))
    batch_and_n = tf.shape(pixels)[:2]
    if weights is None:
        weights = tf.ones(batch_and_n, tf.float32)
    else:
        weights = _float_tensor(weights, "weights")
        _check_rank(weights, "weights", 2, "[B, N]")
    if valid is None:
        valid = tf.ones(batch_and_n, tf.bool)
    else:
        valid = tf.convert_to_tensor(valid)
        if valid.dtype != tf.bool:
            raise _invalid(f"valid must be bool, got {valid.dtype.name}")
        _check_rank(valid, "valid", 2, "[B, N]")
    if num_valid is not None:
        num_valid = tf.convert_to_tensor(num_valid)
        if not num_valid.dtype.is_integer:
            raise _invalid(f"num_valid must be an integer tensor, got {num_valid.dtype.name}")
        _check_rank(num_valid, "num_valid", 1, "[B]")
        valid = tf.logical_and(valid, tf.sequence_mask(num_valid, batch_and_n[1]))
    return (pixels, coords_mm, K, weights, valid), attrs


def ransac_pnp(pixels, coords_mm, K, weights=None, valid=None, num_valid=None,
               num_hypotheses: int = DEFAULT_NUM_HYPOTHESES, threshold_px: float = DEFAULT_THRESHOLD_PX,
               seed: int = 0, max_refine_iterations: int = DEFAULT_MAX_REFINE_ITERATIONS,
               name: str | None = None) -> dict[str, tf.Tensor]:
    """Pose of an object from 2D-3D correspondences by RANSAC-PnP (DSAC*-style), per batch item.

    Args:
      pixels: ``[B, N, 2]`` float32 image coordinates (x, y) in pixels (OpenCV: pixel centres at integers).
      coords_mm: ``[B, N, 3]`` float32 model coordinates (mm) of the object point seen at each pixel.
      K: ``[B, 3, 3]`` (or ``[3, 3]``, shared) float32 intrinsics; must be finite.
      weights: ``[B, N]`` float32 sampling weights (finite, >= 0), or None (uniform). Minimal sets are drawn in
        proportion to them; a weight of 0 keeps a correspondence out of the minimal sets but it is still scored and
        refined on.
      valid: ``[B, N]`` bool, or None (all valid). A False correspondence is ignored entirely (sampling, scoring,
        refinement, never an inlier): use it for padding when items have different numbers of correspondences.
        Correspondences with a NaN/inf pixel or 3D coordinate are ignored the same way.
      num_valid: ``[B]`` int32, or None: only the first ``num_valid[b]`` correspondences of item b are valid
        (combined with ``valid`` by AND).
      num_hypotheses: hypotheses per item, in [1, 65536].
      threshold_px: inlier threshold tau in pixels (> 0); the soft score uses beta = 5 / tau.
      seed: random seed (int64); item b draws from its own generator seeded from (seed, b), so outputs are
        identical for the same seed whatever the thread count.
      max_refine_iterations: refinement rounds at most, in [0, 1000] (0: the best hypothesis as it is); rounds stop
        early when the inlier set stops growing.
    Returns:
      dict with ``R`` ``[B, 3, 3]`` float32 (model-to-camera rotation), ``t_mm`` ``[B, 3]`` float32, ``inliers``
      ``[B, N]`` bool (reprojection error < threshold_px under the returned pose), ``score`` ``[B]`` float32 (soft
      inlier count of the returned pose), ``ok`` ``[B]`` bool. Items with ``ok`` False (fewer than 4 usable
      correspondences with weight > 0, collinear 3D points, singular K, or no minimal set that agreed on a pose) get
      R = identity, t = 0, inliers all False, score 0.
    Raises:
      tf.errors.InvalidArgumentError on wrong ranks/shapes/dtypes, mismatched sizes, a non-finite K, negative or
      non-finite weights, or parameters out of range.
    """
    with tf.name_scope(name or "ransac_pnp"):
        inputs, attrs = _prepare(pixels, coords_mm, K, weights, valid, num_valid, num_hypotheses, threshold_px, seed,
                                 max_refine_iterations)
        R, t, inliers, score, ok = _ops.ransac_pnp(*inputs, **attrs)
    return dict(R=R, t_mm=t, inliers=inliers, score=score, ok=ok)


def ransac_pnp_hypotheses(pixels, coords_mm, K, weights=None, valid=None, num_valid=None,
                          num_hypotheses: int = DEFAULT_NUM_HYPOTHESES, threshold_px: float = DEFAULT_THRESHOLD_PX,
                          seed: int = 0, max_refine_iterations: int = DEFAULT_MAX_REFINE_ITERATIONS,
                          max_refine_points: int = 0, name: str | None = None) -> dict[str, tf.Tensor]:
    """Training form of :func:`ransac_pnp` (DSAC): every hypothesis, refined, with a gradient w.r.t. ``coords_mm``.

    Arguments, checks and errors exactly as :func:`ransac_pnp`; hypothesis j of item b is the j-th one
    :func:`ransac_pnp` draws with the same seed and settings, so the best-scoring one (first on ties) refined equals
    :func:`ransac_pnp`'s ``R``, ``t_mm`` (where no cap below applies).

    ``max_refine_points`` (int >= 0) bounds the cost of refining every hypothesis: an item with more used
    correspondences than that refines on every stride-th of them only (stride = ceil(used / max_refine_points), a
    regular subsample of the image, the same for every hypothesis and for the gradient), its inliers taken among
    those; 0 (the default) refines on all inliers as :func:`ransac_pnp` does.

    Returns:
      dict with, for H = num_hypotheses: ``R`` ``[B, H, 3, 3]`` and ``t_mm`` ``[B, H, 3]`` float32 (each hypothesis
      refined on its inliers, at most ``max_refine_iterations`` rounds); ``score`` ``[B, H]`` float32 (soft inlier
      count of the *unrefined* hypothesis); ``minimal_sets`` ``[B, H, 4]`` int32 (indices into N of its 4
      correspondences, -1 where ok is False); ``ok`` ``[B, H]`` bool (False where the hypothesis could not be made
      or the item is degenerate: R = identity, t = 0, score 0); ``R_init`` ``[B, H, 3, 3]``, ``t_init_mm``
      ``[B, H, 3]`` float32 (the minimal solver's pose before refinement).

    Gradient: a tape differentiates ``R``, ``t_mm``, ``score``, ``R_init`` and ``t_init_mm`` w.r.t. ``coords_mm``
    (docs/ransac_pnp.md, "Training form (DSAC)": the refined pose by the implicit function theorem, the score
    directly and through the minimal solver); ``pixels``, ``K``, ``weights`` get None. Unused correspondences,
    ok=False hypotheses and degenerate items get exactly 0, and the gradient is never NaN or inf.
    """
    with tf.name_scope(name or "ransac_pnp_hypotheses"):
        inputs, attrs = _prepare(pixels, coords_mm, K, weights, valid, num_valid, num_hypotheses, threshold_px, seed,
                                 max_refine_iterations)
        attrs["max_refine_points"] = _check_int(max_refine_points, "max_refine_points", 0, MAX_REFINE_POINTS)
        R, t, score, minimal_sets, ok, R_init, t_init = _ops.ransac_pnp_hypotheses(*inputs, **attrs)
    return dict(R=R, t_mm=t, score=score, minimal_sets=minimal_sets, ok=ok, R_init=R_init, t_init_mm=t_init)


@tf.RegisterGradient("RansacPnpHypotheses")
def _ransac_pnp_hypotheses_grad(op, grad_R, grad_t, grad_score, _grad_sets, _grad_ok, grad_R_init, grad_t_init):
    """dL/dcoords_mm by RansacPnpHypothesesGrad (core/derivatives.cc); None for pixels, K, weights and valid."""
    pixels, coords_mm, K, _weights, valid = op.inputs
    R, t, _score, minimal_sets, ok, R_init, t_init = op.outputs
    # An output that does not reach the loss comes with a None gradient: it contributes 0.
    upstream = [g if g is not None else tf.zeros_like(x)
                for g, x in ((grad_R, R), (grad_t, t), (grad_score, _score), (grad_R_init, R_init),
                             (grad_t_init, t_init))]
    grad_coords = _ops.ransac_pnp_hypotheses_grad(
        pixels, coords_mm, K, valid, R, t, R_init, t_init, minimal_sets, ok, *upstream,
        num_hypotheses=op.get_attr("num_hypotheses"), threshold_px=op.get_attr("threshold_px"),
        max_refine_iterations=op.get_attr("max_refine_iterations"),
        max_refine_points=op.get_attr("max_refine_points"))
    return [None, grad_coords, None, None, None]
