"""Pose error metrics, exact to their definitions (Hinterstoisser et al. 2012; BOP toolkit).

* ADD: mean distance between corresponding model points under the estimated and the true pose.
* ADD-S: mean distance from each model point under the true pose to the CLOSEST model point under the estimated pose
  (for symmetric objects), computed with a KD-tree.
* A pose is correct when its error is strictly below ``threshold_frac * diameter`` (10% by default).

All lengths in millimetres. ``points_mm`` are model points ``[P, 3]``, ``R`` ``[3, 3]``, ``t_mm`` ``[3]``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from pose_core.geometry import transform_points

DEFAULT_THRESHOLD_FRAC = 0.1


def add(R_est, t_est_mm, R_gt, t_gt_mm, points_mm) -> float:
    """ADD in mm: ``mean_i || (R_est x_i + t_est) - (R_gt x_i + t_gt) ||``."""
    est = transform_points(points_mm, R_est, t_est_mm)
    gt = transform_points(points_mm, R_gt, t_gt_mm)
    return float(np.linalg.norm(est - gt, axis=1).mean())


def add_s(R_est, t_est_mm, R_gt, t_gt_mm, points_mm) -> float:
    """ADD-S in mm: ``mean_i min_j || (R_gt x_i + t_gt) - (R_est x_j + t_est) ||``."""
    est = transform_points(points_mm, R_est, t_est_mm)
    gt = transform_points(points_mm, R_gt, t_gt_mm)
    distances, _ = cKDTree(est).query(gt, k=1)
    return float(np.mean(distances))


def pose_error(R_est, t_est_mm, R_gt, t_gt_mm, points_mm, symmetric: bool) -> float:
    """ADD-S for symmetric objects, ADD otherwise (the usual ADD(-S) protocol)."""
    fn = add_s if symmetric else add
    return fn(R_est, t_est_mm, R_gt, t_gt_mm, points_mm)


def is_correct(error_mm, diameter_mm: float, threshold_frac: float = DEFAULT_THRESHOLD_FRAC):
    """True where ``error_mm < threshold_frac * diameter_mm`` (strictly below)."""
    return np.asarray(error_mm) < threshold_frac * diameter_mm


def recall(errors_mm, diameter_mm: float, threshold_frac: float = DEFAULT_THRESHOLD_FRAC) -> float:
    """Fraction of poses whose error is strictly below ``threshold_frac * diameter``. 0 for no poses."""
    errors = np.asarray(errors_mm, dtype=np.float64)
    if errors.size == 0:
        return 0.0
    return float(np.mean(is_correct(errors, diameter_mm, threshold_frac)))


def accuracy_vs_threshold(errors_mm, diameter_mm: float, thresholds_frac=None):
    """The accuracy curve: for each threshold (a fraction of the diameter) the fraction of correct poses.

    Returns ``(thresholds_frac [T], accuracy [T])``; default thresholds 0, 0.005, ..., 0.5 of the diameter.
    """
    if thresholds_frac is None:
        thresholds_frac = np.linspace(0.0, 0.5, 101)
    thresholds_frac = np.asarray(thresholds_frac, dtype=np.float64)
    accuracy = np.array([recall(errors_mm, diameter_mm, th) for th in thresholds_frac])
    return thresholds_frac, accuracy


def add_batch(R_est, t_est_mm, R_gt, t_gt_mm, points_mm) -> np.ndarray:
    """ADD for a batch: R ``[B, 3, 3]``, t ``[B, 3]`` -> ``[B]`` mm."""
    return np.array([add(*args, points_mm) for args in zip(R_est, t_est_mm, R_gt, t_gt_mm)])


def add_s_batch(R_est, t_est_mm, R_gt, t_gt_mm, points_mm) -> np.ndarray:
    """ADD-S for a batch: R ``[B, 3, 3]``, t ``[B, 3]`` -> ``[B]`` mm."""
    return np.array([add_s(*args, points_mm) for args in zip(R_est, t_est_mm, R_gt, t_gt_mm)])
