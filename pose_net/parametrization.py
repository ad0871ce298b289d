"""How the network sees a pose: the crop it looks at, and the pose parametrisation of its heads (TensorFlow).

One mechanism serves both input modes. The network always looks at a square *crop* of the camera image, given by
its centre ``(cx, cy)`` (pixels, the OpenCV/pose_core.geometry convention: pixel centres at integers) and its side
``s`` (pixels), resized to ``input_size`` x ``input_size``:

* full-image mode (the thesis): the crop is the whole image (padded to a square);
* region-of-interest mode: the crop is a square around a 2D box of the object, enlarged (and jittered in training).

Heads and their targets (all dimensionless, so they do not depend on the crop's zoom or the camera's focal length):

* box ``[4]``: the object's 2D box in crop coordinates ``(x0, y0, x1, y1) / s``, relative to the crop's top-left.
* rotation ``[4]``: a quaternion (w first), normalised (or ``[6]``, the 6D representation), of the *allocentric* rotation ``R_allo``: the rotation seen
  by a camera looking straight at the object. The egocentric (camera) rotation is ``R = R_ray(t) @ R_allo`` where
  ``R_ray(t)`` turns the optical axis onto the ray through the object's centre. Allocentric targets make a crop's
  appearance a function of its label wherever the crop comes from in the image.
* translation ``[3]`` (scale-invariant, as in SITE/CDPN): ``dx = (u_c - cx) / s``, ``dy = (v_c - cy) / s`` with
  ``(u_c, v_c)`` the projection of the model origin, and ``z_s = t_z * s / (f * diameter_mm)``: the distance
  divided by the distance ``f * diameter / s`` at which the object's diameter would fill the crop.
"""

from __future__ import annotations

import tensorflow as tf


def crop_intrinsics(K, crop_center, crop_size, input_size: int):
    """Intrinsics of the resized crop.

    Args:
      K: ``[B, 3, 3]`` camera intrinsics (pixels). crop_center: ``[B, 2]`` (cx, cy) pixels. crop_size: ``[B]`` pixels.
      input_size: the side of the network input in pixels.
    Returns:
      ``[B, 3, 3]``: ``K_crop = A @ K`` with ``u' = (u - cx + s/2) * S/s - 1/2`` (S = input_size).
    """
    K = tf.convert_to_tensor(K, tf.float32)
    s = tf.cast(crop_size, tf.float32)
    zoom = float(input_size) / s
    cx, cy = crop_center[:, 0], crop_center[:, 1]
    zeros, ones = tf.zeros_like(s), tf.ones_like(s)
    A = tf.stack([
        tf.stack([zoom, zeros, (s / 2.0 - cx) * zoom - 0.5], axis=-1),
        tf.stack([zeros, zoom, (s / 2.0 - cy) * zoom - 0.5], axis=-1),
        tf.stack([zeros, zeros, ones], axis=-1),
    ], axis=1)
    return tf.matmul(A, K)


def crop_boxes_normalized(crop_center, crop_size, input_size: int, image_hw):
    """Boxes for ``tf.image.crop_and_resize`` that sample exactly the crop of :func:`crop_intrinsics`.

    ``crop_and_resize`` samples output pixel j at ``x1 * (W - 1) + j * (x2 - x1) * (W - 1) / (S - 1)`` (pixel
    centres); we want ``cx - s/2 + (j + 1/2) * s/S``. Returns ``[B, 4]`` (y1, x1, y2, x2).
    """
    h, w = float(image_hw[0]), float(image_hw[1])
    s = tf.cast(crop_size, tf.float32)
    half = s / 2.0 - 0.5 * s / float(input_size)
    cx, cy = crop_center[:, 0], crop_center[:, 1]
    return tf.stack([(cy - half) / (h - 1.0), (cx - half) / (w - 1.0),
                     (cy + half) / (h - 1.0), (cx + half) / (w - 1.0)], axis=-1)


def full_image_crop(image_hw, batch_size):
    """The crop that shows the whole image (padded to a square): centre ``[B, 2]``, size ``[B]``."""
    h, w = float(image_hw[0]), float(image_hw[1])
    center = tf.tile(tf.constant([[(w - 1.0) / 2.0, (h - 1.0) / 2.0]], tf.float32), [batch_size, 1])
    return center, tf.fill([batch_size], max(h, w))


def roi_crop_from_box(bbox_xywh, enlarge: float | tf.Tensor = 1.4):
    """The square crop around a 2D box ``[B, 4]`` (x, y, w, h; pixel-edge coordinates): centre ``[B, 2]``, size
    ``[B]`` = ``enlarge * max(w, h)`` (at least 8 pixels)."""
    b = tf.convert_to_tensor(bbox_xywh, tf.float32)
    center = tf.stack([b[:, 0] + b[:, 2] / 2.0 - 0.5, b[:, 1] + b[:, 3] / 2.0 - 0.5], axis=-1)
    size = tf.maximum(tf.maximum(b[:, 2], b[:, 3]) * enlarge, 8.0)
    return center, size


def box_to_crop_target(bbox_xywh, crop_center, crop_size):
    """Box ``[B, 4]`` (x, y, w, h, pixel edges) -> head target ``[B, 4]`` (x0, y0, x1, y1) / s in the crop."""
    b = tf.convert_to_tensor(bbox_xywh, tf.float32)
    s = tf.cast(crop_size, tf.float32)[:, None]
    origin = crop_center - s / 2.0 + 0.5  # crop top-left, pixel-edge coordinates
    x0y0 = (b[:, :2] - origin) / s
    x1y1 = (b[:, :2] + b[:, 2:] - origin) / s
    return tf.concat([x0y0, x1y1], axis=-1)


def crop_target_to_box(box_target, crop_center, crop_size):
    """Inverse of :func:`box_to_crop_target`: ``[B, 4]`` -> (x, y, w, h) in image pixels."""
    s = tf.cast(crop_size, tf.float32)[:, None]
    origin = crop_center - s / 2.0 + 0.5
    x0y0 = box_target[:, :2] * s + origin
    x1y1 = box_target[:, 2:] * s + origin
    return tf.concat([x0y0, tf.maximum(x1y1 - x0y0, 0.0)], axis=-1)


def translation_to_target(t_mm, K, crop_center, crop_size, diameter_mm: float):
    """``t_mm [B, 3]`` -> scale-invariant head target ``[B, 3]`` (dx, dy, z_s); see the module docstring."""
    t = tf.convert_to_tensor(t_mm, tf.float32)
    K = tf.convert_to_tensor(K, tf.float32)
    uvw = tf.einsum("bij,bj->bi", K, t)
    uv = uvw[:, :2] / uvw[:, 2:3]
    s = tf.cast(crop_size, tf.float32)
    d = (uv - crop_center) / s[:, None]
    f = (K[:, 0, 0] + K[:, 1, 1]) / 2.0
    z_s = t[:, 2] * s / (f * diameter_mm)
    return tf.concat([d, z_s[:, None]], axis=-1)


def target_to_translation(target, K, crop_center, crop_size, diameter_mm: float):
    """Inverse of :func:`translation_to_target`: ``[B, 3]`` -> ``t_mm [B, 3]``."""
    K = tf.convert_to_tensor(K, tf.float32)
    s = tf.cast(crop_size, tf.float32)
    f = (K[:, 0, 0] + K[:, 1, 1]) / 2.0
    z = target[:, 2] * f * diameter_mm / s
    uv = crop_center + target[:, :2] * s[:, None]
    x = (uv[:, 0] - K[:, 0, 2]) * z / K[:, 0, 0]
    y = (uv[:, 1] - K[:, 1, 2]) * z / K[:, 1, 1]
    return tf.stack([x, y, z], axis=-1)


def quaternion_to_matrix(q):
    """Quaternions ``[B, 4]`` (w, x, y, z; normalised here) -> rotation matrices ``[B, 3, 3]``."""
    q = tf.math.l2_normalize(q, axis=-1)
    w, x, y, z = tf.unstack(q, axis=-1)
    return tf.stack([
        tf.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        tf.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        tf.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def six_d_to_matrix(v):
    """The 6D representation ``[B, 6]`` (two columns a1, a2) -> rotation matrices ``[B, 3, 3]`` by Gram-Schmidt:
    ``b1 = a1 / |a1|``, ``b2`` = the part of ``a2`` orthogonal to ``b1``, normalised, ``b3 = b1 x b2``."""
    a1, a2 = v[:, :3], v[:, 3:]
    b1 = tf.math.l2_normalize(a1, axis=-1)
    b2 = tf.math.l2_normalize(a2 - tf.reduce_sum(b1 * a2, axis=-1, keepdims=True) * b1, axis=-1)
    b3 = tf.linalg.cross(b1, b2)
    return tf.stack([b1, b2, b3], axis=-1)


def matrix_to_six_d(R):
    """Rotation matrices ``[..., 3, 3]`` (numpy) -> the 6D representation ``[..., 6]``: the first two columns, the
    inverse of :func:`six_d_to_matrix` on rotations."""
    import numpy as np

    R = np.asarray(R)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def rotation_matrix(rotation):
    """The rotation head's output -> ``[B, 3, 3]``: a quaternion ``[B, 4]`` or the 6D representation ``[B, 6]``."""
    size = rotation.shape[-1]
    if size == 4:
        return quaternion_to_matrix(rotation)
    if size == 6:
        return six_d_to_matrix(rotation)
    raise ValueError(f"a rotation output has 4 (quaternion) or 6 (6D) values, got shape {rotation.shape}")


def canonical_quaternion(q):
    """Unit quaternions ``[B, 4]`` with the sign chosen so that ``w >= 0``."""
    q = tf.math.l2_normalize(q, axis=-1)
    return tf.where(q[:, :1] < 0.0, -q, q)


def ray_rotation(t):
    """``[B, 3, 3]``: the smallest rotation taking the optical axis (0, 0, 1) onto the direction of ``t [B, 3]``."""
    d = tf.math.l2_normalize(tf.convert_to_tensor(t, tf.float32), axis=-1)
    # Rodrigues with axis a = z x d (unnormalised, |a| = sin), cos = d_z
    ax, ay = -d[:, 1], d[:, 0]
    c = d[:, 2]
    k = 1.0 / (1.0 + c + 1e-9)  # (1 - cos) / sin^2
    zeros = tf.zeros_like(c)
    skew = tf.stack([tf.stack([zeros, zeros, ay], -1),
                     tf.stack([zeros, zeros, -ax], -1),
                     tf.stack([-ay, ax, zeros], -1)], axis=1)
    eye = tf.eye(3, batch_shape=tf.shape(c)[:1])
    return eye + skew + tf.matmul(skew, skew) * k[:, None, None]


def allocentric_to_egocentric(R_allo, t):
    """``R = R_ray(t) @ R_allo`` for ``[B, 3, 3]`` rotations and ``t [B, 3]``."""
    return tf.matmul(ray_rotation(t), R_allo)


def egocentric_to_allocentric(R, t):
    """``R_allo = R_ray(t)^T @ R``."""
    return tf.matmul(ray_rotation(t), R, transpose_a=True)


def decode_pose(outputs, K, crop_center, crop_size, diameter_mm: float):
    """Network outputs (dict with ``rotation [B, 4 or 6]`` and ``translation [B, 3]``) -> ``(R [B, 3, 3], t_mm [B, 3])``."""
    t = target_to_translation(outputs["translation"], K, crop_center, crop_size, diameter_mm)
    R = allocentric_to_egocentric(rotation_matrix(outputs["rotation"]), t)
    return R, t

