"""Custom TensorFlow ops of synthpose: the Projection Loss (``docs/projection_loss.md``) and RANSAC-PnP
(``docs/ransac_pnp.md``).

Public API (loaded lazily on first use, so ``python -m tf_ops.build`` works before the op is built, and the
ctypes harness works on machines without TensorFlow):

* :func:`projection_iou_loss` (pred_points_2d, gt_points_2d, height, width, scale=1.0) -> [B] (the C++/CUDA op)
* :func:`projection_loss` (points_mm, R_pred, t_pred_mm, R_gt, t_gt_mm, K, height, width, scale=1.0) -> [B]
* :func:`projection_iou_loss_reference`: the pure-TF reference of the forward loss.
* :func:`ransac_pnp` (pixels, coords_mm, K, weights=None, valid=None, num_valid=None, num_hypotheses=64,
  threshold_px=10.0, seed=0, max_refine_iterations=10) -> dict(R, t_mm, inliers, score, ok) (the C++ op)
* :func:`ransac_pnp_hypotheses` (same arguments) -> dict(R, t_mm, score, minimal_sets, ok, R_init, t_init_mm): the
  training form (DSAC), every hypothesis, differentiable w.r.t. coords_mm (the C++ op and its gradient op)

Using the op before it is built raises ImportError telling you to run ``make build-ops``.

Note: ``tf_ops.projection_loss`` and ``tf_ops.ransac_pnp`` are the *functions*; the packages that hold the sources
have the same names, so import from them with ``from tf_ops.projection_loss.python.harness import CoreLib`` (which
works), not with ``import tf_ops.projection_loss.python.harness as h``.
"""

from __future__ import annotations

import sys
import types

__all__ = ["projection_iou_loss", "projection_loss", "projection_iou_loss_reference", "ransac_pnp",
           "ransac_pnp_hypotheses"]


def _load(name: str):
    if name == "projection_iou_loss_reference":
        from tf_ops.projection_loss.python.ops.reference import projection_iou_loss_reference

        return projection_iou_loss_reference
    if name in ("ransac_pnp", "ransac_pnp_hypotheses"):
        # Raises a clear ImportError ("run `make build-ops`") when the op library is missing.
        from tf_ops.ransac_pnp.python.ops import ransac_pnp_ops

        return getattr(ransac_pnp_ops, name)
    # Raises a clear ImportError ("run `make build-ops`") when the op library is missing.
    from tf_ops.projection_loss.python.ops import projection_loss_ops

    return getattr(projection_loss_ops, name)


class _TfOpsModule(types.ModuleType):
    """Resolves the API names on every access (the subpackages ``projection_loss`` and ``ransac_pnp`` shadow two of
    them)."""

    def __getattribute__(self, name: str):
        if name in __all__:
            return _load(name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _TfOpsModule
