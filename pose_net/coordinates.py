"""Dense object coordinates (the ``coords`` head): targets, symmetry, and the pose from correspondences (TF).

The coordinate network (:func:`pose_net.model.build_coordinate_model`) predicts, for each pixel of its stride-2
output grid (``S/2 x S/2`` for an ``S x S`` crop), the point of the model's surface that the pixel shows and
whether it shows the object. The pose then comes from those 2D-3D correspondences by RANSAC-PnP
(:func:`tf_ops.ransac_pnp`), as in Brachmann's object-coordinate line of work (ECCV'14, DSAC, DSAC++).

Conventions:

* Output grid: pixel ``(row i, col j)`` has its centre at ``(x, y) = (j, i)`` in the output grid's own pixel
  coordinates, whose intrinsics are ``crop_intrinsics(K, crop_center, crop_size, S/2)``
  (:mod:`pose_net.parametrization`), so PnP runs directly on grid coordinates.
* Coordinates are normalised to the model's box (:class:`CoordinateFrame`): ``(x_mm - centre_mm) / size_mm`` per
  axis, within [-0.5, 0.5] on the model.
* Symmetric objects: of all poses that look the same, the target is the one whose allocentric rotation is
  closest to the identity (:func:`canonical_symmetry_transform`), so one image never asks for two answers.

RGB-D (:func:`solve_pose_rgbd`): with a depth image, each correspondence is 3D-3D, the predicted object coordinate
and the camera-space point the depth gives at the same grid pixel (:func:`camera_points_from_depth`); hypotheses are
rigid transforms from three of them (:func:`kabsch_hypotheses`), scored by their inliers in mm and the best
refined by Kabsch over its inliers. DSAC's RGB-D loss (:func:`pose_net.dsac.expected_pose_loss_rgbd`) uses the same
hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from pose_core.symmetry import Symmetries
from pose_net import parametrization as param

OUTPUT_STRIDE = 2  # the coordinate maps are at half the crop's resolution
MASK_THRESHOLD = 0.5  # a pixel is a correspondence when sigmoid(mask logit) exceeds this


@dataclass
class CoordinateFrame:
    """The normalisation of object coordinates: ``normalised = (x_mm - centre_mm) / size_mm`` per axis."""
    centre_mm: np.ndarray  # [3]
    size_mm: np.ndarray  # [3]

    @classmethod
    def from_points(cls, points_mm) -> "CoordinateFrame":
        """The tight box of model points ``[P, 3]`` (mm), padded by 2% of its diagonal."""
        p = np.asarray(points_mm, np.float64)
        lo, hi = p.min(axis=0), p.max(axis=0)
        pad = 0.02 * np.linalg.norm(hi - lo)
        return cls((lo + hi) / 2.0, np.maximum(hi - lo + 2 * pad, 1e-3))

    def to_json(self) -> dict:
        return {"centre_mm": self.centre_mm.tolist(), "size_mm": self.size_mm.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "CoordinateFrame":
        return cls(np.asarray(d["centre_mm"], np.float64), np.asarray(d["size_mm"], np.float64))

    def normalise(self, xyz_mm):
        return (xyz_mm - tf.constant(self.centre_mm, tf.float32)) / tf.constant(self.size_mm, tf.float32)

    def denormalise(self, coords):
        return coords * tf.constant(self.size_mm, tf.float32) + tf.constant(self.centre_mm, tf.float32)


# --------------------------------------------------------------------------------------------------- targets
def object_coordinates_from_depth(depth_mm, K, R, t_mm):
    """Back-projection of depth maps into the model frame (the TF twin of the renderer's label definition,
    ``pose_core.geometry.object_coordinates_from_depth``).

    Args:
      depth_mm: ``[B, H, W]`` depth of the object's visible surface (0: no object). K: ``[B, 3, 3]``.
      R: ``[B, 3, 3]`` model-to-camera rotations. t_mm: ``[B, 3]``.
    Returns:
      ``[B, H, W, 3]`` model coordinates in mm, ``R^T (depth * K^-1 (u, v, 1) - t)`` at pixel centres
      ``(u, v) = (col, row)``; 0 where the depth is 0.
    """
    depth = tf.convert_to_tensor(depth_mm, tf.float32)
    h, w = tf.shape(depth)[1], tf.shape(depth)[2]
    v, u = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    K = tf.convert_to_tensor(K, tf.float32)
    fx, fy = K[:, 0, 0][:, None, None], K[:, 1, 1][:, None, None]
    cx, cy = K[:, 0, 2][:, None, None], K[:, 1, 2][:, None, None]
    cam = tf.stack([(u[None] - cx) / fx * depth, (v[None] - cy) / fy * depth, depth], axis=-1)
    xyz = tf.einsum("bji,bhwj->bhwi", tf.convert_to_tensor(R, tf.float32),
                    cam - tf.convert_to_tensor(t_mm, tf.float32)[:, None, None, :])
    return tf.where((depth > 0)[..., None], xyz, 0.0)


def _basis_with_axis(axis) -> np.ndarray:
    """An orthonormal 3x3 basis whose third column is the unit ``axis``."""
    a = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, a)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(a, x), a], axis=1)


def canonical_symmetry_transform(R_allo, symmetries: Symmetries):
    """The symmetry ``S`` that makes the pose ``P @ S`` canonical: its allocentric rotation ``R_allo @ R_S`` has the
    largest trace (is closest to the identity) among all symmetric equivalents.

    Args:
      R_allo: ``[B, 3, 3]`` allocentric rotations of the true poses (:mod:`pose_net.parametrization`).
      symmetries: the object's symmetries (discrete transforms and at most one continuous axis).
    Returns:
      ``(R_S [B, 3, 3], t_S_mm [B, 3])``: the chosen model-to-model transform. The pixel that shows model point
      ``x`` shows ``R_S^T (x - t_S)`` under the canonical pose, whose rotation is ``R @ R_S`` and translation
      ``R @ t_S + t``. The identity for an object without symmetries.
    """
    R_allo = tf.convert_to_tensor(R_allo, tf.float32)
    b = tf.shape(R_allo)[0]
    candidates = np.concatenate([np.eye(4)[None], np.asarray(symmetries.discrete).reshape(-1, 4, 4)], axis=0)
    Rd = tf.constant(candidates[:, :3, :3], tf.float32)  # [C, 3, 3]
    td = tf.constant(candidates[:, :3, 3], tf.float32)  # [C, 3]
    A = tf.einsum("bij,cjk->bcik", R_allo, Rd)  # [B, C, 3, 3]
    if symmetries.continuous:
        axis, offset = symmetries.continuous[0]
        Q = tf.constant(_basis_with_axis(axis), tf.float32)
        Bm = tf.einsum("ji,bcjk,kl->bcil", Q, A, Q)  # Q^T A Q
        # trace(A Ra(theta)) = (B00 + B11) cos + (B01 - B10) sin + B22 is largest at theta = atan2(., .)
        c_term = Bm[..., 0, 0] + Bm[..., 1, 1]
        s_term = Bm[..., 0, 1] - Bm[..., 1, 0]
        theta = tf.atan2(s_term, c_term)  # [B, C]
        score = tf.sqrt(c_term ** 2 + s_term ** 2) + Bm[..., 2, 2]
        cos, sin = tf.cos(theta), tf.sin(theta)
        zeros, ones = tf.zeros_like(cos), tf.ones_like(cos)
        Rz = tf.stack([tf.stack([cos, -sin, zeros], -1), tf.stack([sin, cos, zeros], -1),
                       tf.stack([zeros, zeros, ones], -1)], axis=-2)
        Ra = tf.einsum("ij,bcjk,lk->bcil", Q, Rz, Q)  # rotation about the axis
        o = tf.constant(np.asarray(offset, np.float64), tf.float32)
        t_cont = o - tf.einsum("bcij,j->bci", Ra, o)
        Rs = tf.einsum("cij,bcjk->bcik", Rd, Ra)
        ts = tf.einsum("cij,bcj->bci", Rd, t_cont) + td[None]
    else:
        score = tf.linalg.trace(A)
        Rs = tf.tile(Rd[None], [b, 1, 1, 1])
        ts = tf.tile(td[None], [b, 1, 1])
    best = tf.argmax(score, axis=1, output_type=tf.int32)
    return tf.gather(Rs, best, batch_dims=1), tf.gather(ts, best, batch_dims=1)


def coordinate_targets(depth_mm, visible_mask, K, R, t_mm, crop_center, crop_size, output_size: int,
                       frame: CoordinateFrame, symmetries: Symmetries):
    """The coordinate head's targets for a batch of camera images.

    Args:
      depth_mm: ``[B, H, W]`` rendered depth of the visible object surface. visible_mask: ``[B, H, W]`` (nonzero:
        visible object). K, R: ``[B, 3, 3]``. t_mm: ``[B, 3]``. crop_center ``[B, 2]``, crop_size ``[B]``: the crop.
      output_size: the side of the coordinate maps (``S / OUTPUT_STRIDE``).
    Returns:
      ``(coords [B, s, s, 3]`` normalised, symmetry-canonical; ``mask [B, s, s]`` float 0/1``)``: each output
      pixel takes the label of the camera pixel nearest to its centre (no blending across object edges).
    """
    xyz = object_coordinates_from_depth(depth_mm, K, R, t_mm)
    valid = tf.cast(tf.logical_and(tf.convert_to_tensor(visible_mask) > 0, depth_mm > 0), tf.float32)
    hw = depth_mm.shape[1:3]
    boxes = param.crop_boxes_normalized(crop_center, crop_size, output_size, hw)
    idx = tf.range(tf.shape(xyz)[0])
    stacked = tf.concat([xyz, valid[..., None]], axis=-1)
    crops = tf.image.crop_and_resize(stacked, boxes, idx, [output_size, output_size], method="nearest")
    xyz_c, mask_c = crops[..., :3], crops[..., 3]
    if symmetries.is_symmetric:
        Rs, ts = canonical_symmetry_transform(param.egocentric_to_allocentric(R, t_mm), symmetries)
        xyz_c = tf.einsum("bji,bhwj->bhwi", Rs, xyz_c - ts[:, None, None, :])
    coords = frame.normalise(xyz_c) * mask_c[..., None]
    return coords, mask_c


# --------------------------------------------------------------------------------------------------- decoding
def correspondences(outputs, frame: CoordinateFrame):
    """Network outputs -> 2D-3D correspondences on the output grid.

    Returns ``(pixels [B, N, 2]`` (x, y) grid coordinates, ``coords_mm [B, N, 3]``, ``valid [B, N]`` bool,
    ``mask_prob [B, N])`` with ``N = s * s`` (every grid pixel; ``valid`` where the mask probability exceeds
    :data:`MASK_THRESHOLD`).
    """
    coords = frame.denormalise(tf.convert_to_tensor(outputs["coords"], tf.float32))
    prob = tf.sigmoid(tf.convert_to_tensor(outputs["mask"], tf.float32))[..., 0]
    b, h, w = tf.shape(prob)[0], tf.shape(prob)[1], tf.shape(prob)[2]
    v, u = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    pixels = tf.tile(tf.reshape(tf.stack([u, v], -1), [1, -1, 2]), [b, 1, 1])
    prob = tf.reshape(prob, [b, -1])
    return pixels, tf.reshape(coords, [b, -1, 3]), prob > MASK_THRESHOLD, prob


@dataclass
class PnPSettings:
    """RANSAC-PnP settings of the coordinate head (config.json ``pnp``)."""
    num_hypotheses: int = 64
    threshold_px: float = 2.0  # inlier threshold in OUTPUT-grid pixels (one is OUTPUT_STRIDE crop pixels)
    seed: int = 0


def solve_pose(outputs, K, crop_center, crop_size, frame: CoordinateFrame, diameter_mm: float, pnp: PnPSettings):
    """Poses from coordinate-head outputs by RANSAC-PnP.

    Args:
      outputs: ``{"coords": [B, s, s, 3], "mask": [B, s, s, 1]}`` (and ``sampling [B, s, s, 1]``, NG-DSAC's
        sampling logits, when the network has them). K: ``[B, 3, 3]`` camera intrinsics.
      crop_center ``[B, 2]``, crop_size ``[B]``: the crops the network saw.
    Returns:
      ``(R [B, 3, 3], t_mm [B, 3], ok [B] bool, inlier_count [B], inlier_error_px [B])`` as numpy;
      ``inlier_error_px`` is the mean reprojection error of the inliers under the returned pose, in output-grid
      pixels (NaN without inliers). Where PnP fails (fewer than 4 correspondences, no consensus), ``ok`` is False
      and the pose is a fallback: identity allocentric rotation at the crop centre, at the distance where the
      object's diameter would fill 70% of the crop.
    """
    from tf_ops import ransac_pnp

    output_size = int(outputs["coords"].shape[1])
    K_out = param.crop_intrinsics(K, crop_center, crop_size, output_size)
    pixels, coords_mm, valid, _ = correspondences(outputs, frame)
    weights = None
    if "sampling" in outputs:  # NG-DSAC: minimal sets drawn where the network says (pose_net.dsac)
        weights = tf.sigmoid(tf.reshape(tf.convert_to_tensor(outputs["sampling"], tf.float32),
                                        tf.shape(valid)))
    res = ransac_pnp(pixels, coords_mm, K_out, weights=weights, valid=valid, num_hypotheses=pnp.num_hypotheses,
                     threshold_px=pnp.threshold_px, seed=pnp.seed)
    ok = res["ok"].numpy()
    R, t = res["R"].numpy().astype(np.float64), res["t_mm"].numpy().astype(np.float64)
    if not ok.all():
        R_fb, t_fb = _fallback_pose(K, crop_center, crop_size, diameter_mm)
        R = np.where(ok[:, None, None], R, R_fb)
        t = np.where(ok[:, None], t, t_fb)
    inlier_mask = res["inliers"].numpy()
    return R, t, ok, np.sum(inlier_mask, axis=1), inlier_reprojection_error_px(
        pixels.numpy(), coords_mm.numpy(), K_out.numpy(), res["R"].numpy(), res["t_mm"].numpy(), inlier_mask)


def _fallback_pose(K, crop_center, crop_size, diameter_mm: float):
    """The pose reported where no solver found one: identity allocentric rotation at the crop centre, at the
    distance where the object's diameter would fill 70% of the crop. ``(R [B, 3, 3], t_mm [B, 3])`` numpy."""
    fallback = tf.constant([[0.0, 0.0, 1.0 / 0.7]], tf.float32)
    b = int(tf.shape(K)[0])
    t_fb = param.target_to_translation(tf.tile(fallback, [b, 1]), K, crop_center, crop_size, diameter_mm)
    R_fb = param.allocentric_to_egocentric(tf.eye(3, batch_shape=[b]), t_fb)
    return R_fb.numpy().astype(np.float64), t_fb.numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------------------ RGB-D
# The RGB-D solver's settings (config.json ``rgbd``): hypotheses drawn, the inlier threshold as a share of the
# object's diameter (5%: 10 mm for a 200 mm object, DSAC's RGB-D scale), Kabsch rounds over the best one's inliers.
RGBD_NUM_HYPOTHESES = 64
RGBD_THRESHOLD_DIAMETERS = 0.05
RGBD_REFINE_ITERATIONS = 3


def camera_points_from_depth(depth_mm, K, crop_center, crop_size, output_size: int):
    """The camera-space point under each pixel of the output grid, from a depth image.

    Args:
      depth_mm ``[B, H, W]``: z-depth (mm, 0 = no measurement). K ``[B, 3, 3]``. crop_center ``[B, 2]``,
        crop_size ``[B]``: the crop the network saw. output_size: the side ``s`` of its coordinate maps.
    Returns:
      ``[B, s, s, 3]`` float32 mm: each grid pixel takes the back-projection ``depth * K^-1 [u, v, 1]`` of the
      camera pixel nearest to its centre (as :func:`coordinate_targets` takes its labels); zeros where the depth is 0.
    """
    depth = tf.convert_to_tensor(depth_mm, tf.float32)
    b, h, w = tf.shape(depth)[0], depth.shape[1], depth.shape[2]
    v, u = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    rays = tf.einsum("bij,hwj->bhwi", tf.linalg.inv(tf.convert_to_tensor(K, tf.float32)),
                     tf.stack([u, v, tf.ones_like(u)], -1))
    points = rays / rays[..., 2:3] * depth[..., None]
    boxes = param.crop_boxes_normalized(crop_center, crop_size, output_size, (h, w))
    return tf.image.crop_and_resize(points, boxes, tf.range(b), [output_size, output_size], method="nearest")


def kabsch(P, Q, w=None):
    """The rotation and translation that map points ``P`` onto ``Q`` in the least-squares sense (weighted).

    Args: P, Q ``[..., M, 3]``; w ``[..., M]`` or None. Returns ``(R [..., 3, 3], t [..., 3])`` with
    ``Q ~ R P + t``; differentiable (SVD); reflections are corrected.
    """
    if w is None:
        w = tf.ones(tf.shape(P)[:-1], P.dtype)
    w = w[..., None]
    wsum = tf.reduce_sum(w, axis=-2, keepdims=True) + 1e-9
    p0 = tf.reduce_sum(w * P, axis=-2, keepdims=True) / wsum
    q0 = tf.reduce_sum(w * Q, axis=-2, keepdims=True) / wsum
    H = tf.einsum("...mi,...mj->...ij", w * (P - p0), Q - q0)
    s, U, V = tf.linalg.svd(H)
    d = tf.sign(tf.linalg.det(tf.einsum("...ij,...kj->...ik", V, U)))
    ones = tf.ones_like(d)
    D = tf.linalg.diag(tf.stack([ones, ones, d], axis=-1))
    R = tf.einsum("...ij,...jk,...lk->...il", V, D, U)
    t = q0[..., 0, :] - tf.einsum("...ij,...j->...i", R, p0[..., 0, :])
    return R, t


def _orthonormal_frame(points):
    """``[..., 3, 3]`` (three points as rows) -> ``[..., 3, 3]`` a right-handed frame (columns): the first edge,
    the second edge's component orthogonal to it, their cross product. Finite for degenerate triplets."""
    def unit(x):
        return x * tf.math.rsqrt(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True) + 1e-12)

    e1 = unit(points[..., 1, :] - points[..., 0, :])
    d2 = points[..., 2, :] - points[..., 0, :]
    e2 = unit(d2 - tf.reduce_sum(d2 * e1, axis=-1, keepdims=True) * e1)
    return tf.stack([e1, e2, tf.linalg.cross(e1, e2)], axis=-1)


def triplet_alignment(P, Q):
    """The rigid transform of a minimal set: ``(R [..., 3, 3], t [..., 3])`` with ``Q ~ R P + t`` for three
    point pairs ``P, Q [..., 3, 3]`` (rows), by aligning the orthonormal frames the triplets span and their
    centroids. Exact on noise-free points; unlike :func:`kabsch`, whose SVD gradient is infinite for a rank-1 set
    (two points drawn twice), its gradient stays finite, which DSAC's RGB-D loss needs."""
    R = tf.einsum("...ij,...kj->...ik", _orthonormal_frame(Q), _orthonormal_frame(P))
    t = tf.reduce_mean(Q, axis=-2) - tf.einsum("...ij,...j->...i", R, tf.reduce_mean(P, axis=-2))
    return R, t


def rgbd_minimal_sets(valid, num_hypotheses: int, seed: int = 0):
    """``[B, H, 3]`` int32: ``H`` triplets of distinct correspondences per image, drawn uniformly among the valid
    ones (Gumbel top-3 over ``valid [B, N]``; an image with fewer than 3 valid gets invalid ones to fill)."""
    b, n = tf.shape(valid)[0], tf.shape(valid)[1]
    uniform = tf.random.stateless_uniform([b, num_hypotheses, n], seed=[seed, 0], minval=1e-9, maxval=1.0)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    keys = tf.where(valid[:, None, :], gumbel, tf.fill(tf.shape(gumbel), -1e9))
    return tf.math.top_k(keys, k=3).indices


def kabsch_hypotheses(coords_mm, camera_points_mm, valid, num_hypotheses: int, seed: int = 0):
    """RANSAC's hypotheses for RGB-D: :func:`rgbd_minimal_sets`, each solved by :func:`triplet_alignment`
    (differentiable with respect to both point sets).

    Args: coords_mm, camera_points_mm ``[B, N, 3]``; valid ``[B, N]`` bool (at least three per image, or the
    hypotheses of that image are meaningless: callers check). Returns ``(R [B, H, 3, 3], t_mm [B, H, 3])``.
    """
    idx = rgbd_minimal_sets(valid, num_hypotheses, seed)
    return triplet_alignment(tf.gather(coords_mm, idx, batch_dims=1), tf.gather(camera_points_mm, idx, batch_dims=1))


def rigid_residuals_mm(R, t_mm, coords_mm, camera_points_mm):
    """``|R y_i + t - x_i|`` ``[B, H, N]`` (mm) of every hypothesis ``R [B, H, 3, 3]``, ``t_mm [B, H, 3]`` over the
    correspondences ``coords_mm``, ``camera_points_mm [B, N, 3]``."""
    pred = tf.einsum("bhij,bnj->bhni", R, coords_mm) + t_mm[:, :, None, :]
    return tf.norm(pred - camera_points_mm[:, None] + 1e-9, axis=-1)


@dataclass
class RgbdSettings:
    """RANSAC-Kabsch settings of the coordinate head with depth (config.json ``rgbd``)."""
    num_hypotheses: int = RGBD_NUM_HYPOTHESES
    threshold_diameters: float = RGBD_THRESHOLD_DIAMETERS
    refine_iterations: int = RGBD_REFINE_ITERATIONS
    seed: int = 0


def solve_pose_rgbd(outputs, camera_points_mm, K, crop_center, crop_size, frame: CoordinateFrame, diameter_mm: float,
                    settings: RgbdSettings = RgbdSettings()):
    """Poses from coordinate-head outputs and depth by RANSAC-Kabsch.

    Args:
      outputs: ``{"coords": [B, s, s, 3], "mask": [B, s, s, 1]}``. camera_points_mm ``[B, s, s, 3]``
        (:func:`camera_points_from_depth`; pixels without depth are zeros and are not used). K, crop_center,
        crop_size: the crops (for the fallback pose).
    Returns:
      ``(R [B, 3, 3], t_mm [B, 3], ok [B] bool, inlier_count [B], inlier_error_mm [B])`` numpy: the best of
      ``num_hypotheses`` Kabsch hypotheses by inlier count (3D distance below ``threshold_diameters * diameter``),
      refined by Kabsch over its inliers; ``inlier_error_mm`` is their mean 3D distance (NaN without inliers).
      Fewer than 3 usable correspondences or fewer than 3 inliers: ``ok`` False and the fallback pose of
      :func:`solve_pose`.
    """
    pixels, coords_mm, valid, _ = correspondences(outputs, frame)
    b = tf.shape(coords_mm)[0]
    cam = tf.reshape(tf.convert_to_tensor(camera_points_mm, tf.float32), [b, -1, 3])
    valid = valid & (cam[..., 2] > 0) & tf.reduce_all(tf.math.is_finite(coords_mm), axis=-1)
    coords_mm = tf.where(valid[..., None], coords_mm, tf.zeros_like(coords_mm))
    tau = settings.threshold_diameters * diameter_mm
    R, t = kabsch_hypotheses(coords_mm, cam, valid, settings.num_hypotheses, settings.seed)
    residual = rigid_residuals_mm(R, t, coords_mm, cam)  # [B, H, N]
    inliers = (residual < tau) & valid[:, None, :]
    best = tf.argmax(tf.reduce_sum(tf.cast(inliers, tf.int32), axis=-1), axis=1, output_type=tf.int32)
    R, t, residual, inl = (tf.gather(x, best, batch_dims=1) for x in (R, t, residual, inliers))  # the best one
    for _ in range(settings.refine_iterations):
        R, t = kabsch(coords_mm, cam, tf.cast(inl, tf.float32))
        residual = rigid_residuals_mm(R[:, None], t[:, None], coords_mm, cam)[:, 0]
        inl = (residual < tau) & valid
    residual, inl = residual.numpy(), inl.numpy()
    count = inl.sum(axis=1)
    ok = (count >= 3) & (tf.reduce_sum(tf.cast(valid, tf.int32), axis=1).numpy() >= 3)
    R, t = R.numpy().astype(np.float64), t.numpy().astype(np.float64)
    if not ok.all():
        R_fb, t_fb = _fallback_pose(K, crop_center, crop_size, diameter_mm)
        R = np.where(ok[:, None, None], R, R_fb)
        t = np.where(ok[:, None], t, t_fb)
    error = np.array([residual[i][inl[i]].mean() if inl[i].any() else np.nan for i in range(len(count))])
    return R, t, ok, count, error


def inlier_reprojection_error_px(pixels, coords_mm, K, R, t_mm, inliers) -> np.ndarray:
    """Mean reprojection error ``[B]`` (px) of the inlier correspondences under each pose (NaN without inliers).

    ``pixels [B, N, 2]``, ``coords_mm [B, N, 3]``, ``K [B, 3, 3]``, ``R [B, 3, 3]``, ``t_mm [B, 3]``,
    ``inliers [B, N]`` bool. DSAC's claim is that end-to-end training lowers it (docs/results/dsac_table.md)."""
    from pose_core.geometry import project_points

    out = np.full(len(R), np.nan)
    for b in range(len(R)):
        if inliers[b].any():  # inliers are finite and in front of the camera (tf_ops.ransac_pnp)
            uv, _ = project_points(coords_mm[b][inliers[b]], R[b], t_mm[b], K[b])
            out[b] = float(np.mean(np.linalg.norm(uv - pixels[b][inliers[b]], axis=-1)))
    return out


def coordinate_picture(coords, mask_logit, size: int | None = None, sampling_logit=None) -> np.ndarray:
    """An RGB uint8 picture of one predicted coordinate map ``[s, s, 3]`` (normalised coordinates as colours,
    black where the mask probability is below :data:`MASK_THRESHOLD`) beside its mask probability (grey) and, for
    an NG-DSAC network (``sampling_logit [s, s, 1]``), its sampling weights over the object pixels (heat: the
    share of minimal sets drawn there, scaled to the largest)."""
    c = np.clip(np.asarray(coords) + 0.5, 0.0, 1.0)
    prob = 1.0 / (1.0 + np.exp(-np.asarray(mask_logit)[..., 0]))
    rgb = (c * (prob > MASK_THRESHOLD)[..., None] * 255).astype(np.uint8)
    grey = np.repeat((prob * 255).astype(np.uint8)[..., None], 3, axis=-1)
    gap = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
    panels = [rgb, gap, grey]
    if sampling_logit is not None:
        w = 1.0 / (1.0 + np.exp(-np.asarray(sampling_logit, np.float64)[..., 0])) * (prob > MASK_THRESHOLD)
        w = w / max(w.max(), 1e-12)
        heat = np.stack([w, w ** 2, 0.2 * (1 - w) * (prob > MASK_THRESHOLD)], axis=-1)
        panels += [gap, (heat * 255).astype(np.uint8)]
    pic = np.concatenate(panels, axis=1)
    if size:
        from PIL import Image

        pic = np.asarray(Image.fromarray(pic).resize((size * pic.shape[1] // pic.shape[0], size), Image.NEAREST))
    return pic
