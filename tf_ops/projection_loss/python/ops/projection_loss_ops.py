"""TensorFlow wrappers of the Projection Loss op (C++/CUDA kernels in tf_ops/projection_loss/).

* :func:`projection_iou_loss`: the op on 2D points, ``1 - IoU`` of the two drawn silhouettes per batch element,
  with the hand-written gradient (``ProjectionIouLossGrad``) for ``pred_points_2d``.
* :func:`projection_loss`: projects a model point cloud with the true and the predicted pose (ordinary TF, so the
  gradient reaches R and t by autodiff) and calls the op.

The exact pixel rule and gradient are in ``docs/projection_loss.md``.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tf_ops.loading import load_tf_op_library

_ops = load_tf_op_library("_projection_loss_ops.so", "Projection Loss")

# A point is behind the camera (not drawn) when its camera depth is below this (mm).
Z_MIN_MM = 1e-3
MAX_DRAWN_PIXELS = 1 << 24


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
    return tf.errors.InvalidArgumentError(None, None, message)


def drawn_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(height*scale), round(width*scale))`` exactly as the kernels compute it (scale as float32)."""
    s = float(np.float32(scale))
    return int(math.floor(height * s + 0.5)), int(math.floor(width * s + 0.5))


def _check_attrs(height, width, scale) -> tuple[int, int, float]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise _invalid(f"{name} must be an int, got {value!r}")
        if value <= 0:
            raise _invalid(f"{name} must be > 0, got {value}")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise _invalid(f"scale must be a float > 0, got {scale!r}") from None
    if not (math.isfinite(scale) and scale > 0.0 and np.float32(scale) > 0.0):
        raise _invalid(f"scale must be > 0 and finite, got {scale}")
    if height > 2**31 - 1 or width > 2**31 - 1:
        raise _invalid(f"height and width must fit in int32, got {height}, {width}")
    hs, ws = drawn_size(int(height), int(width), scale)
    if hs < 1 or ws < 1:
        raise _invalid(f"height, width, scale: round(height*scale) and round(width*scale) must be >= 1, "
                       f"got {hs} x {ws}")
    if hs * ws > MAX_DRAWN_PIXELS:
        raise _invalid(f"height, width, scale: the drawn image {hs} x {ws} has more than 2^24 pixels")
    return int(height), int(width), scale


def _check_points(x, name: str) -> tf.Tensor:
    if not isinstance(x, (tf.Tensor, tf.Variable)):
        x = np.asarray(x) if not isinstance(x, (list, tuple)) else x
        if isinstance(x, np.ndarray) and x.dtype != np.float32:
            raise _invalid(f"{name} must be float32, got {x.dtype}")
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        raise _invalid(f"{name} must be float32, got {x.dtype.name}")
    shape = x.shape
    if shape.rank is not None:
        if shape.rank != 3:
            raise _invalid(f"{name} must be rank 3 [B, N, 2], got shape {shape}")
        if shape[2] is not None and shape[2] != 2:
            raise _invalid(f"{name} must have last dimension 2 (u, v), got shape {shape}")
        if shape[1] == 0:
            raise _invalid(f"{name} must have N > 0 points, got shape {shape}")
    return x


def projection_iou_loss(pred_points_2d, gt_points_2d, height: int, width: int, scale: float = 1.0,
                        with_gradient: bool = True, name: str | None = None) -> tf.Tensor:
    """Projection Loss on 2D points: ``1 - IoU`` of the binary images drawn from both point sets, per batch element.

    Args:
      pred_points_2d: ``[B, N, 2]`` float32, predicted points ``(u, v)`` in camera pixels. Non-finite points and
        points outside the image are not drawn. Gets the hand-written gradient.
      gt_points_2d: ``[B, M, 2]`` float32, ground-truth points (no gradient).
      height, width: camera image size in pixels (> 0).
      scale: the images are drawn at ``round(height*scale) x round(width*scale)``; ``(u, v)`` goes to the pixel
        ``(row, col) = (round_half_up(v*scale), round_half_up(u*scale))``.
      with_gradient: True (op ProjectionIouLossWithGrad): compute dloss/dpred in the same pass (one drawing for
        forward + backward: the fast path for training). False (op ProjectionIouLoss): a cheaper forward; a
        gradient, if asked for, is then computed by ProjectionIouLossGrad from the inputs.
    Returns:
      ``[B]`` float32 loss in ``[0, 1]`` (0 when both images are empty, 1 when exactly one is).
    Raises:
      tf.errors.InvalidArgumentError naming the argument on bad ranks, dtypes, shapes, sizes.
    """
    height, width, scale = _check_attrs(height, width, scale)
    pred = _check_points(pred_points_2d, "pred_points_2d")
    gt = _check_points(gt_points_2d, "gt_points_2d")
    if pred.shape[0] is not None and gt.shape[0] is not None and pred.shape[0] != gt.shape[0]:
        raise _invalid(f"pred_points_2d and gt_points_2d must have the same batch size, got {pred.shape[0]} "
                       f"and {gt.shape[0]}")
    if with_gradient:
        loss, _ = _ops.projection_iou_loss_with_grad(pred, gt, height=height, width=width, scale=scale, name=name)
        return loss
    return _ops.projection_iou_loss(pred, gt, height=height, width=width, scale=scale, name=name)


@tf.RegisterGradient("ProjectionIouLoss")
def _projection_iou_loss_grad(op, grad_loss):
    grad_pred = _ops.projection_iou_loss_grad(
        op.inputs[0], op.inputs[1], grad_loss,
        height=op.get_attr("height"), width=op.get_attr("width"), scale=op.get_attr("scale"))
    return [grad_pred, None]


@tf.RegisterGradient("ProjectionIouLossWithGrad")
def _projection_iou_loss_with_grad_grad(op, grad_loss, _unused_grad_of_grad_unit):
    return [op.outputs[1] * grad_loss[:, None, None], None]


def project_points_tf(points_mm, R, t_mm, K) -> tf.Tensor:
    """Pinhole projection in TF (differentiable): ``[B, P, 2]`` pixels; points with camera z < Z_MIN_MM are NaN.

    points_mm ``[P, 3]`` or ``[B, P, 3]``; R ``[B, 3, 3]``; t_mm ``[B, 3]``; K ``[3, 3]`` or ``[B, 3, 3]``
    (OpenCV, last row ``[0, 0, 1]``).
    """
    points = tf.cast(points_mm, tf.float32)
    R = tf.cast(R, tf.float32)
    t = tf.cast(t_mm, tf.float32)
    K = tf.cast(K, tf.float32)
    if points.shape.rank == 2:
        cam = tf.einsum("bij,pj->bpi", R, points)
    else:
        cam = tf.einsum("bij,bpj->bpi", R, points)
    cam = cam + t[:, None, :]
    z = cam[..., 2]
    valid = z >= Z_MIN_MM
    safe_z = tf.where(valid, z, tf.ones_like(z))  # no inf/NaN in the gradient of the masked points
    xn = cam[..., 0] / safe_z
    yn = cam[..., 1] / safe_z
    if K.shape.rank == 2:
        K = K[None]
    fx, skew, cx = K[:, 0, 0][:, None], K[:, 0, 1][:, None], K[:, 0, 2][:, None]
    fy, cy = K[:, 1, 1][:, None], K[:, 1, 2][:, None]
    u = fx * xn + skew * yn + cx
    v = fy * yn + cy
    uv = tf.stack([u, v], axis=-1)
    return tf.where(valid[..., None], uv, tf.fill(tf.shape(uv), float("nan")))


def projection_loss(points_mm, R_pred, t_pred_mm, R_gt, t_gt_mm, K, height: int, width: int,
                    scale: float = 1.0) -> tf.Tensor:
    """Projection Loss of a pose: the model points projected with the predicted and the true pose, ``1 - IoU``.

    Args:
      points_mm: ``[P, 3]`` or ``[B, P, 3]`` model points (mm).
      R_pred, R_gt: ``[B, 3, 3]`` model-to-camera rotations. t_pred_mm, t_gt_mm: ``[B, 3]`` translations (mm).
      K: ``[3, 3]`` or ``[B, 3, 3]`` intrinsics. height, width: camera image size. scale: drawing scale.
    Returns:
      ``[B]`` float32. Differentiable with respect to R_pred and t_pred_mm (through the op's gradient and the TF
      projection); the ground-truth pose gets no gradient. Points behind the camera are not drawn.
    """
    height, width, scale = _check_attrs(height, width, scale)
    pred_2d = project_points_tf(points_mm, R_pred, t_pred_mm, K)
    gt_2d = tf.stop_gradient(project_points_tf(points_mm, R_gt, t_gt_mm, K))
    return projection_iou_loss(pred_2d, gt_2d, height, width, scale)
