"""An independent silhouette of a mesh at a pose: the projected triangles rasterized with PIL (no GL).

Used to check the renderer's labels: it shares only ``pose_core.geometry.project_points`` with the renderer.
"""

from __future__ import annotations

import numpy as np

from pose_core.geometry import project_points


def projected_silhouette(vertices_mm, faces, R, t_mm, K, image_hw, supersample: int = 8) -> np.ndarray:
    """Bool ``[H, W]``: pixels whose area is at least half covered by the projected mesh (OpenCV convention: the
    pixel (row r, column c) covers u in [c - 0.5, c + 0.5))."""
    from PIL import Image, ImageDraw

    h, w = image_hw
    uv, z = project_points(np.asarray(vertices_mm), R, t_mm, K)
    s = supersample
    img = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(img)
    # supersampled pixel (i) covers [i, i+1) in PIL coordinates = u in [i/s - 0.5, (i+1)/s - 0.5)
    pts = (uv + 0.5) * s - 0.5
    ok = np.all(z[np.asarray(faces)] > 0, axis=1)
    for tri in np.asarray(faces)[ok]:
        draw.polygon([tuple(p) for p in pts[tri]], fill=255, outline=None)
    big = np.asarray(img, dtype=np.float32).reshape(h, s, w, s) / 255.0
    return big.mean(axis=(1, 3)) >= 0.5


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
