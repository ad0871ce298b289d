"""Pure-TF reference of the Projection Loss forward pass (test oracle and benchmark baseline).

Same rules as the C++/CUDA kernels (docs/projection_loss.md): a point (u, v) goes to (us, vs) = (u*scale,
v*scale) in float32, its pixel is (round_half_up(vs), round_half_up(us)), drawn when finite and inside the
round(height*scale) x round(width*scale) image; the images are built with tf.tensor_scatter_nd_max into zeros;
loss = 1 - I/U (0 when U = 0). No useful gradient (the pixel indices are integers).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def _drawn_size(height: int, width: int, scale: float) -> tuple[int, int]:
    s = float(np.float32(scale))
    return int(math.floor(height * s + 0.5)), int(math.floor(width * s + 0.5))


def draw_points_reference(points_2d, height: int, width: int, scale: float = 1.0) -> tf.Tensor:
    """``[B, N, 2]`` points -> ``[B, Hs, Ws]`` float32 binary images (1 where at least one point falls)."""
    pts = tf.convert_to_tensor(points_2d, tf.float32)
    hs, ws = _drawn_size(height, width, scale)
    s = tf.constant(np.float32(scale), tf.float32)
    us = pts[..., 0] * s
    vs = pts[..., 1] * s
    fu = tf.floor(us)
    fv = tf.floor(vs)
    cu = fu + tf.cast(us - fu >= 0.5, tf.float32)
    cv = fv + tf.cast(vs - fv >= 0.5, tf.float32)
    valid = (tf.math.is_finite(us) & tf.math.is_finite(vs) & (cu >= 0.0) & (cu < float(ws)) & (cv >= 0.0)
             & (cv < float(hs)))
    col = tf.cast(tf.where(valid, cu, tf.zeros_like(cu)), tf.int32)
    row = tf.cast(tf.where(valid, cv, tf.zeros_like(cv)), tf.int32)
    batch = tf.shape(pts)[0]
    n = tf.shape(pts)[1]
    b_idx = tf.broadcast_to(tf.range(batch)[:, None], [batch, n])
    indices = tf.reshape(tf.stack([b_idx, row * ws + col], axis=-1), [-1, 2])
    updates = tf.reshape(tf.cast(valid, tf.float32), [-1])
    images = tf.tensor_scatter_nd_max(tf.zeros([batch, hs * ws], tf.float32), indices, updates)
    return tf.reshape(images, [batch, hs, ws])


def projection_iou_loss_reference(pred_points_2d, gt_points_2d, height: int, width: int,
                                  scale: float = 1.0) -> tf.Tensor:
    """``[B]`` ``1 - IoU`` of the drawn images, computed with plain TF ops (see module docstring)."""
    x = draw_points_reference(pred_points_2d, height, width, scale)
    y = draw_points_reference(gt_points_2d, height, width, scale)
    inter = tf.reduce_sum(x * y, axis=[1, 2])
    union = tf.reduce_sum(tf.maximum(x, y), axis=[1, 2])
    return tf.where(union > 0.0, 1.0 - inter / tf.maximum(union, 1.0), tf.zeros_like(union))
