"""Pure-TF reference of the Projection Loss forward pass (test oracle and benchmark baseline).

Same rules as the C++/CUDA kernels (docs/projection_loss.md): a point (u, v) goes to (us, vs) = (u*scale,
v*scale) in float32, its pixel is (round_half_up(vs), round_half_up(us)), drawn when finite and inside the
round(height*scale) x round(width*scale) image; the images are built with tf.tensor_scatter_nd_max into zeros;
loss = 1 - I/U (0 when U = 0). Its gradient is projection_iou_loss_grad_reference: the op's hand-written rule
written with dense TF gathers and segment reductions (oracle for the C++/CUDA backward).
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


def _forward_reference(pred_points_2d, gt_points_2d, height, width, scale):
    x = draw_points_reference(pred_points_2d, height, width, scale)
    y = draw_points_reference(gt_points_2d, height, width, scale)
    inter = tf.reduce_sum(x * y, axis=[1, 2])
    union = tf.reduce_sum(tf.maximum(x, y), axis=[1, 2])
    return tf.where(union > 0.0, 1.0 - inter / tf.maximum(union, 1.0), tf.zeros_like(union))


def projection_iou_loss_reference(pred_points_2d, gt_points_2d, height: int, width: int,
                                  scale: float = 1.0) -> tf.Tensor:
    """``[B]`` ``1 - IoU`` of the drawn images, computed with plain TF ops (see module docstring).

    Differentiable with respect to pred_points_2d through :func:`projection_iou_loss_grad_reference` (the same
    hand-written rule as the op, in plain TF); gt_points_2d gets no gradient.
    """
    pred = tf.convert_to_tensor(pred_points_2d, tf.float32)
    gt = tf.stop_gradient(tf.convert_to_tensor(gt_points_2d, tf.float32))

    @tf.custom_gradient
    def loss_fn(p):
        def grad(dy):
            return projection_iou_loss_grad_reference(p, gt, dy, height, width, scale)

        return _forward_reference(p, gt, height, width, scale), grad

    return loss_fn(pred)


# ------------------------------------------------------------------------------------------- reference gradient

_RADIUS = 2
_TENT = 3.0
# Window offsets sorted by (dr^2 + dc^2, dr, dc), as in the C++ core.
_OFFSETS = sorted(((dr, dc) for dr in range(-_RADIUS, _RADIUS + 1) for dc in range(-_RADIUS, _RADIUS + 1)
                   if (dr, dc) != (0, 0)), key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))


def _pixels(pts, hs, ws, scale):
    s = tf.constant(np.float32(scale), tf.float32)
    us = pts[..., 0] * s
    vs = pts[..., 1] * s
    fu, fv = tf.floor(us), tf.floor(vs)
    cu = fu + tf.cast(us - fu >= 0.5, tf.float32)
    cv = fv + tf.cast(vs - fv >= 0.5, tf.float32)
    valid = (tf.math.is_finite(us) & tf.math.is_finite(vs) & (cu >= 0.0) & (cu < float(ws)) & (cv >= 0.0)
             & (cv < float(hs)))
    cu = tf.where(valid, cu, tf.zeros_like(cu))
    cv = tf.where(valid, cv, tf.zeros_like(cv))
    dx, dy = us - cu, vs - cv
    d2 = dx * dx + dy * dy
    return valid, tf.cast(cv, tf.int32), tf.cast(cu, tf.int32), us, vs, d2


def projection_iou_loss_grad_reference(pred_points_2d, gt_points_2d, grad_loss, height: int, width: int,
                                       scale: float = 1.0) -> tf.Tensor:
    """Pure-TF (dense gathers and segment reductions) version of the hand-written gradient of the op,
    ``ProjectionIouLossGrad``: ``[B, N, 2]`` dL/d(pred_points_2d). Same rules as docs/projection_loss.md; equal to
    the C++ kernel up to the summation order of the float contributions."""
    pred = tf.convert_to_tensor(pred_points_2d, tf.float32)
    gt = tf.convert_to_tensor(gt_points_2d, tf.float32)
    grad_loss = tf.convert_to_tensor(grad_loss, tf.float32)
    hs, ws = _drawn_size(height, width, scale)
    r = _RADIUS
    stride = ws + 2 * r
    npix = (hs + 2 * r) * stride
    b, n, m = tf.shape(pred)[0], tf.shape(pred)[1], tf.shape(gt)[1]
    big = tf.int32.max
    lin = tf.constant([dr * stride + dc for dr, dc in _OFFSETS], tf.int32)
    off_dr = tf.constant([dr for dr, _ in _OFFSETS], tf.int32)
    off_dc = tf.constant([dc for _, dc in _OFFSETS], tf.int32)

    pv, prow, pcol, us, vs, pd2 = _pixels(pred, hs, ws, scale)
    gv, grow, gcol, _, _, _ = _pixels(gt, hs, ws, scale)
    base_p = tf.range(b)[:, None] * npix
    pseg = tf.where(pv, base_p + (prow + r) * stride + pcol + r, b * npix)  # invalid -> dummy segment
    gseg = tf.where(gv, base_p + (grow + r) * stride + gcol + r, b * npix)
    nseg = b * npix + 1
    idx = tf.broadcast_to(tf.range(n)[None], [b, n])
    jdx = tf.broadcast_to(tf.range(m)[None], [b, m])
    # owner of each pred pixel: nearest point to the centre, ties by lowest index; gt: lowest index
    min_d2 = tf.math.unsorted_segment_min(tf.where(pv, pd2, np.inf), pseg, nseg)
    cand = pv & (pd2 == tf.gather(min_d2, pseg))
    own = tf.math.unsorted_segment_min(tf.where(cand, idx, big), pseg, nseg)
    own = tf.where(own >= n, -1, own)
    own = tf.concat([own[:-1], [-1]], 0)  # the dummy segment owns nothing
    gown = tf.math.unsorted_segment_min(tf.where(gv, jdx, big), gseg, nseg)
    gown = tf.where(gown >= m, -1, gown)
    gown = tf.concat([gown[:-1], [-1]], 0)
    own_b = tf.reshape(own[:-1], [b, npix])
    gown_b = tf.reshape(gown[:-1], [b, npix])
    nx = tf.reduce_sum(tf.cast(own_b >= 0, tf.float32), 1)
    ny = tf.reduce_sum(tf.cast(gown_b >= 0, tf.float32), 1)
    ni = tf.reduce_sum(tf.cast((own_b >= 0) & (gown_b >= 0), tf.float32), 1)
    uni = nx + ny - ni
    safe_u = tf.maximum(uni, 1.0)
    s = tf.constant(np.float32(scale), tf.float32)
    coef_missing = (grad_loss * (1.0 / safe_u) * s / _TENT)[:, None]
    coef_extra = (grad_loss * (ni / (safe_u * safe_u)) * s / _TENT)[:, None]
    active = ((uni > 0) & (grad_loss != 0.0))[:, None]

    # extra pixels: owner -> nearest gt pixel of the window (first in the sorted table), else away from centre
    pseg_c = tf.minimum(pseg, b * npix - 1)
    is_extra = (pv & (tf.gather(own, pseg) == idx) & (tf.gather(gown, pseg) < 0) & active
                & (ni > 0)[:, None])
    neigh = tf.gather(gown, tf.clip_by_value(pseg_c[..., None] + lin, 0, nseg - 1)) >= 0  # [B, N, 24]
    any_hit = tf.reduce_any(neigh, -1)
    first = tf.argmax(tf.cast(neigh, tf.int32), axis=-1, output_type=tf.int32)
    tx = tf.cast(pcol + tf.gather(off_dc, first), tf.float32)
    ty = tf.cast(prow + tf.gather(off_dr, first), tf.float32)
    vx, vy = us - tx, vs - ty
    d = tf.sqrt(vx * vx + vy * vy)
    ex_x, ex_y = coef_extra * vx / d, coef_extra * vy / d
    ox, oy = us - tf.cast(pcol, tf.float32), vs - tf.cast(prow, tf.float32)
    od = tf.sqrt(ox * ox + oy * oy)
    safe_od = tf.where(od > 0, od, 1.0)
    push_x = tf.where(od > 0, -(coef_extra * ox / safe_od), 0.0)
    push_y = tf.where(od > 0, -(coef_extra * oy / safe_od), 0.0)
    gx = tf.where(is_extra, tf.where(any_hit, ex_x, push_x), 0.0)
    gy = tf.where(is_extra, tf.where(any_hit, ex_y, push_y), 0.0)
    grad = tf.stack([gx, gy], -1)

    # missing pixels: nearest owner (point distance to the centre, ties lowest index) among the window's owners
    gseg_c = tf.minimum(gseg, b * npix - 1)
    is_missing = gv & (tf.gather(gown, gseg) == jdx) & (tf.gather(own, gseg) < 0) & active
    cands = tf.gather(own, tf.clip_by_value(gseg_c[..., None] + lin, 0, nseg - 1))  # [B, M, 24]
    has = cands >= 0
    safe_c = tf.where(has, cands, 0)
    cu = tf.gather(us, safe_c, batch_dims=1)
    cv = tf.gather(vs, safe_c, batch_dims=1)
    fc = tf.cast(gcol, tf.float32)[..., None]
    fr = tf.cast(grow, tf.float32)[..., None]
    vx, vy = cu - fc, cv - fr
    d2 = tf.where(has, vx * vx + vy * vy, np.inf)
    best_d2 = tf.reduce_min(d2, -1)
    best = tf.reduce_min(tf.where(has & (d2 == best_d2[..., None]), cands, big), -1)
    use = is_missing & tf.reduce_any(has, -1)
    best = tf.where(use, best, 0)
    bx = tf.gather(us, best, batch_dims=1) - fc[..., 0]
    by = tf.gather(vs, best, batch_dims=1) - fr[..., 0]
    dd = tf.sqrt(tf.where(use, best_d2, 1.0))
    mx = tf.where(use, coef_missing * bx / dd, 0.0)
    my = tf.where(use, coef_missing * by / dd, 0.0)
    bidx = tf.broadcast_to(tf.range(b)[:, None], [b, m])
    scatter_idx = tf.reshape(tf.stack([bidx, best], -1), [-1, 2])
    grad = tf.tensor_scatter_nd_add(grad, scatter_idx, tf.reshape(tf.stack([mx, my], -1), [-1, 2]))
    return grad
