"""Geometry in one place: rotations, quaternions, the pinhole camera, 2D boxes, model points.

Conventions used everywhere in this project:

* Camera: OpenCV. x right, y down, z forward (into the scene). Pixel (u, v) = (column, row); the centre of the
  top-left pixel is at (0, 0), so the pixel with index (row r, column c) covers u in [c - 0.5, c + 0.5).
* Poses are model-to-camera: ``x_cam = R @ x_model + t``. ``R`` is a 3x3 rotation matrix, ``t`` is in millimetres
  (``t_mm``) like the BOP format.
* Quaternions are ``[w, x, y, z]`` (scalar FIRST) and canonical with ``w >= 0`` (q and -q are the same rotation).
* Intrinsics ``K`` are the 3x3 OpenCV matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.
* 2D boxes are ``[x, y, w, h]`` in pixels (``bbox_xywh``), BOP's convention.

The one conversion to OpenGL (used by the renderer only) is :data:`OPENCV_TO_OPENGL` / :func:`opengl_camera_pose`.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from pose_core import PoseInputError

# OpenCV camera axes (x right, y down, z forward) -> OpenGL camera axes (x right, y up, z backward).
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])


def canonical_quaternion(q_wxyz: np.ndarray) -> np.ndarray:
    """Flips the sign of quaternions ``[..., 4]`` (w first) so that ``w >= 0``; returns unit quaternions."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    sign = np.where(q[..., :1] < 0.0, -1.0, 1.0)
    return q * sign


def quaternion_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternions ``[..., 4]`` (w, x, y, z) -> rotation matrices ``[..., 3, 3]``. Normalises the input."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    if q.shape[-1] != 4:
        raise PoseInputError(f"quaternion must have 4 components (w, x, y, z), got shape {q.shape}")
    flat = q.reshape(-1, 4)
    mats = Rotation.from_quat(flat[:, [1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last
    return mats.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[..., 3, 3]`` -> canonical unit quaternions ``[..., 4]`` (w, x, y, z), ``w >= 0``."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise PoseInputError(f"rotation matrix must be 3x3, got shape {R.shape}")
    flat = R.reshape(-1, 3, 3)
    xyzw = Rotation.from_matrix(flat).as_quat()
    return canonical_quaternion(xyzw[:, [3, 0, 1, 2]]).reshape(R.shape[:-2] + (4,))


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices ``[n, 3, 3]`` drawn uniformly on SO(3) (Haar measure)."""
    return Rotation.random(n, random_state=rng).as_matrix().reshape(n, 3, 3)


def axis_angle_to_matrix(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation by ``angle_rad`` about ``axis`` (any length > 0) as a 3x3 matrix."""
    axis = np.asarray(axis, dtype=np.float64)
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle_rad).as_matrix()


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations ``[..., 3, 3]``."""
    R_rel = np.swapaxes(R_a, -1, -2) @ R_b
    cos = (np.trace(R_rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def transform_points(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Model points ``[N, 3]`` -> camera points ``[N, 3]``: ``R @ x + t`` (same length unit as ``t``)."""
    return np.asarray(points, dtype=np.float64) @ np.asarray(R, dtype=np.float64).T + np.asarray(t, np.float64)


def project_points(points_mm: np.ndarray, R: np.ndarray, t_mm: np.ndarray, K: np.ndarray):
    """Pinhole projection of model points.

    Args:
      points_mm: ``[N, 3]`` model points in mm.
      R: ``[3, 3]`` model-to-camera rotation. t_mm: ``[3]`` translation in mm. K: ``[3, 3]`` intrinsics.
    Returns:
      ``(uv [N, 2] pixels, z_mm [N])``. Points with ``z <= 0`` (behind the camera) get non-finite or meaningless
      ``uv``; callers must mask them with ``z_mm > 0``.
    """
    cam = transform_points(points_mm, R, t_mm)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = cam @ np.asarray(K, dtype=np.float64).T
        uv = uvw[:, :2] / uvw[:, 2:3]
    return uv, z


def bbox_from_points(uv: np.ndarray, image_size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Tight ``[x, y, w, h]`` box of 2D points ``[N, 2]``; optionally clipped to an image of ``(height, width)``.

    Non-finite points are ignored. Returns zeros when no point is left (or the box is outside the image).
    """
    uv = np.asarray(uv, dtype=np.float64)
    uv = uv[np.all(np.isfinite(uv), axis=1)]
    if len(uv) == 0:
        return np.zeros(4)
    x0, y0 = uv.min(axis=0)
    x1, y1 = uv.max(axis=0)
    if image_size_hw is not None:
        h, w = image_size_hw
        x0, x1 = np.clip([x0, x1], 0.0, float(w))
        y0, y1 = np.clip([y0, y1], 0.0, float(h))
    return np.array([x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)])


def translation_from_box(points_mm: np.ndarray, R: np.ndarray, bbox_xywh, K: np.ndarray, t_init_mm: np.ndarray,
                         image_hw: tuple[int, int] | None = None, iterations: int = 20, border_px: float = 1.0):
    """The translation under which the model, turned by ``R``, projects exactly into the 2D box ``bbox_xywh``.

    Gauss-Newton over ``t`` on the four box sides (pixels): the side ``x0`` is matched by the model point that
    projects leftmost at the current ``t``, and so on. With the true rotation and a tight box of the model (a
    rendered or annotated ``bbox_obj``) this recovers the translation up to the box's pixel rounding; with a
    rotation error the box is explained by a slightly wrong depth, so use it where the rotation is good.

    Args:
      points_mm: ``[N, 3]`` model points (mm); their extremes should reach the silhouette's, so several hundred.
      R: ``[3, 3]`` model-to-camera rotation. bbox_xywh: ``[4]`` the object's box (pixels). K: ``[3, 3]``.
      t_init_mm: ``[3]`` the starting translation (the network's), in front of the camera.
      image_hw: ``(height, width)``: box sides within ``border_px`` of the image border are left out (a truncated
        object's box ends there, not at the model's extreme).
    Returns:
      ``(t_mm [3], ok)``. ``ok`` is False, and ``t_init_mm`` returned, when fewer than three sides are usable, the
      box is empty, or the iterations leave the camera's front or do not stay finite.
    """
    X = np.asarray(points_mm, np.float64) @ np.asarray(R, np.float64).T
    K = np.asarray(K, np.float64)
    t0 = np.asarray(t_init_mm, np.float64).reshape(3)
    x, y, w, h = (float(v) for v in np.asarray(bbox_xywh, np.float64).reshape(4))
    target = np.array([x, y, x + w, y + h])
    use = np.ones(4, bool)
    if image_hw is not None:
        H, W = image_hw
        use = np.array([x > border_px, y > border_px, x + w < W - border_px, y + h < H - border_px])
    if w <= 0 or h <= 0 or use.sum() < 3 or not np.all(np.isfinite(t0)) or not np.all(np.isfinite(target)):
        return t0, False
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    t = t0.copy()
    for _ in range(iterations):
        P = X + t
        Z = P[:, 2]
        if np.any(Z <= 1e-6):
            return t0, False
        u = fx * P[:, 0] / Z + cx
        v = fy * P[:, 1] / Z + cy
        i0, j0, i1, j1 = np.argmin(u), np.argmin(v), np.argmax(u), np.argmax(v)
        r = np.array([u[i0], v[j0], u[i1], v[j1]]) - target
        J = np.array([[fx / Z[i0], 0.0, -fx * P[i0, 0] / Z[i0] ** 2],
                      [0.0, fy / Z[j0], -fy * P[j0, 1] / Z[j0] ** 2],
                      [fx / Z[i1], 0.0, -fx * P[i1, 0] / Z[i1] ** 2],
                      [0.0, fy / Z[j1], -fy * P[j1, 1] / Z[j1] ** 2]])
        step = np.linalg.lstsq(J[use], -r[use], rcond=None)[0]
        t = t + step
        if not np.all(np.isfinite(t)):
            return t0, False
        if np.linalg.norm(step) < 1e-4:
            break
    if t[2] <= 0:
        return t0, False
    return t, True


def bbox_from_mask(mask: np.ndarray) -> np.ndarray:
    """``[x, y, w, h]`` of the nonzero pixels of a ``[H, W]`` mask, in pixel-edge coordinates (a single pixel at
    column c, row r gives ``[c, r, 1, 1]``). Zeros for an empty mask."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    cols = np.flatnonzero(np.any(mask, axis=0))
    if len(rows) == 0:
        return np.zeros(4)
    return np.array([cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]], dtype=np.float64)


def sample_model_points(mesh, num_points: int, seed: int = 0) -> np.ndarray:
    """``num_points`` points ``[P, 3]`` (mesh units, mm) spread evenly over the surface of a trimesh mesh.

    Deterministic for a given ``seed``: used for the rotation loss, the Projection Loss and the metrics.
    """
    import trimesh  # local: keeps `import pose_core.geometry` light

    if num_points <= 0:
        raise PoseInputError(f"num_points must be > 0, got {num_points}")
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(points, dtype=np.float64)


def opengl_camera_pose() -> np.ndarray:
    """The 4x4 pose of an OpenGL camera in the OpenCV camera frame.

    Place objects in the scene with their model-to-camera pose ``[R | t]`` (OpenCV frame) and put the OpenGL
    camera (pyrender's, looking down -z with y up) at this pose: the rendering then matches :func:`project_points`.
    """
    pose = np.eye(4)
    pose[:3, :3] = OPENCV_TO_OPENGL
    return pose


def pose_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous matrix from ``R [3, 3]`` and ``t [3]``."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


# A photo's principal point lies near its centre; farther than this share of the image's side from it, the camera
# is taken to belong to another image size (a resized or cropped photo), which would put every pose off.
MAX_PRINCIPAL_POINT_OFFSET = 0.25


def check_camera_fits_image(K, image_hw, what: str = "the image"):
    """Raises :class:`pose_core.PoseInputError` when ``K``'s principal point is not near the centre of an image of
    ``image_hw`` (:data:`MAX_PRINCIPAL_POINT_OFFSET`): the camera was calibrated for another image size."""
    from pose_core import PoseInputError

    K = np.asarray(K, np.float64).reshape(3, 3)
    h, w = int(image_hw[0]), int(image_hw[1])
    cx, cy = K[0, 2], K[1, 2]
    if abs(cx - (w - 1) / 2) > MAX_PRINCIPAL_POINT_OFFSET * w or abs(cy - (h - 1) / 2) > MAX_PRINCIPAL_POINT_OFFSET * h:
        raise PoseInputError(f"{what} is {w}x{h}, but the camera's principal point ({cx:.1f}, {cy:.1f}) is far from "
                             f"its centre: the intrinsics belong to another image size (a resized or cropped photo?)")


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """The 3x3 OpenCV intrinsics matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def object_coordinates_from_depth(depth_mm: np.ndarray, K: np.ndarray, R: np.ndarray, t_mm: np.ndarray) -> np.ndarray:
    """Back-projects a depth image into the model frame: the object coordinates shown by each pixel.

    ``xyz = R^T (depth * K^-1 [u, v, 1]^T - t)`` with OpenCV pixel centres at integer coordinates (pixel (row r,
    column c) is ``u = c, v = r``).

    Args:
      depth_mm: ``[H, W]`` z-depth in the camera frame (distance along the optical axis, not along the ray), mm;
        0 where no object surface is seen.
      K: ``[3, 3]`` intrinsics. R: ``[3, 3]`` model-to-camera rotation. t_mm: ``[3]`` translation in mm.
    Returns:
      ``[H, W, 3]`` float64 model-frame coordinates in mm; 0 at pixels whose depth is 0.
    """
    depth = np.asarray(depth_mm, dtype=np.float64)
    if depth.ndim != 2:
        raise PoseInputError(f"depth_mm must be [H, W], got shape {depth.shape}")
    h, w = depth.shape
    K = np.asarray(K, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t_mm, dtype=np.float64).reshape(3)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T   # [H, W, 3], z = 1
    cam = rays * depth[..., None]
    xyz = (cam - t) @ R  # row-vector form of R^T (x_cam - t)
    xyz[depth == 0] = 0.0
    return xyz
