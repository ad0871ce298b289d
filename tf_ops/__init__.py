"""Custom TensorFlow ops of synthpose: the Projection Loss (``docs/projection_loss.md``).

Public API (loaded lazily on first use, so ``python -m tf_ops.build`` works before the op is built, and the
ctypes harness works on machines without TensorFlow):

* :func:`projection_iou_loss` (pred_points_2d, gt_points_2d, height, width, scale=1.0) -> [B] (the C++/CUDA op)
* :func:`projection_loss` (points_mm, R_pred, t_pred_mm, R_gt, t_gt_mm, K, height, width, scale=1.0) -> [B]
* :func:`projection_iou_loss_reference`: the pure-TF reference of the forward loss.

Using the op before it is built raises ImportError telling you to run ``make build-ops``.
"""

from __future__ import annotations

__all__ = ["projection_iou_loss", "projection_loss", "projection_iou_loss_reference"]


def __getattr__(name: str):
    if name in ("projection_iou_loss", "projection_loss"):
        from tf_ops.projection_loss.python.ops import projection_loss_ops  # raises a clear ImportError if unbuilt

        return getattr(projection_loss_ops, name)
    if name == "projection_iou_loss_reference":
        from tf_ops.projection_loss.python.ops.reference import projection_iou_loss_reference

        return projection_iou_loss_reference
    raise AttributeError(f"module 'tf_ops' has no attribute {name!r}")
