"""Pictures of poses: the model's outline under the true and the predicted pose, pose axes, 2D boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pose_core.geometry import project_points

TRUE_COLOUR = (40, 220, 60)
PRED_COLOUR = (240, 40, 40)
BOX_COLOUR = (255, 200, 0)


def silhouette(points_mm, R, t_mm, K, image_hw, radius: int = 1) -> np.ndarray:
    """Binary ``[H, W]`` image of the model points projected with ``(R, t)``, dilated by ``radius`` pixels."""
    h, w = image_hw
    uv, z = project_points(points_mm, R, t_mm, K)
    ok = (z > 0) & np.all(np.isfinite(uv), axis=1)
    cols = np.round(uv[ok, 0]).astype(int)
    rows = np.round(uv[ok, 1]).astype(int)
    mask = np.zeros((h, w), bool)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            mask[r[inside], c[inside]] = True
    # close the gaps between sparse points so the outline follows the object, not each point
    from scipy import ndimage

    closing = max(2, round(max(h, w) / 60))
    mask = ndimage.binary_closing(np.pad(mask, closing), iterations=closing)[closing:-closing, closing:-closing]
    return ndimage.binary_fill_holes(mask)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask."""
    interior = mask.copy()
    interior[1:, :] &= mask[:-1, :]
    interior[:-1, :] &= mask[1:, :]
    interior[:, 1:] &= mask[:, :-1]
    interior[:, :-1] &= mask[:, 1:]
    return mask & ~interior


def draw_axes(draw: ImageDraw.ImageDraw, R, t_mm, K, length_mm: float, width: int = 2):
    """Pose axes (x red, y green, z blue) from the model origin."""
    pts = np.array([[0, 0, 0], [length_mm, 0, 0], [0, length_mm, 0], [0, 0, length_mm]], dtype=np.float64)
    uv, z = project_points(pts, R, t_mm, K)
    if np.any(z <= 0) or not np.all(np.isfinite(uv)):
        return
    for k, colour in zip((1, 2, 3), ((255, 0, 0), (0, 255, 0), (0, 80, 255))):
        draw.line([tuple(uv[0]), tuple(uv[k])], fill=colour, width=width)


def draw_pose_overlay(image: np.ndarray, K, points_mm, diameter_mm: float, R_pred=None, t_pred_mm=None,
                      R_true=None, t_true_mm=None, bbox_xywh=None, label: str | None = None) -> Image.Image:
    """The image with the true outline (green), the predicted outline (red) and predicted axes drawn on it."""
    img = np.asarray(image, dtype=np.uint8).copy()
    h, w = img.shape[:2]
    radius = max(1, round(max(h, w) / 256))
    for R, t, colour in ((R_true, t_true_mm, TRUE_COLOUR), (R_pred, t_pred_mm, PRED_COLOUR)):
        if R is not None:
            edge = outline(silhouette(points_mm, R, t, K, (h, w), radius))
            thick = edge.copy()
            thick[1:] |= edge[:-1]
            thick[:, 1:] |= edge[:, :-1]
            img[thick] = colour
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    if R_pred is not None:
        draw_axes(draw, R_pred, t_pred_mm, K, 0.4 * diameter_mm, width=max(1, radius))
    if bbox_xywh is not None:
        x, y, bw, bh = bbox_xywh
        draw.rectangle([x, y, x + bw, y + bh], outline=BOX_COLOUR, width=1)
    if label:
        draw.text((3, 2), label, fill=(255, 255, 255))
    return pil


def contact_sheet(images: list[Image.Image], columns: int = 4, tile: int = 256) -> Image.Image:
    """Tiles images (resized to ``tile`` wide) into one sheet."""
    if not images:
        return Image.new("RGB", (tile, tile))
    tiles = [im.resize((tile, max(1, round(im.height * tile / im.width)))) for im in images]
    th = max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * th), (20, 20, 20))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * tile, (i // columns) * th))
    return sheet


def zoom_to_box(picture: Image.Image, bbox_xywh, enlarge: float = 1.6) -> Image.Image:
    """The square part of ``picture`` around a 2D box (x, y, w, h, pixels), ``enlarge`` times its longest side."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    if not np.all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        return picture
    side = max(w, h) * enlarge
    cx, cy = x + w / 2.0, y + h / 2.0
    return picture.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))


def beside(left: Image.Image, right: np.ndarray | Image.Image, gap: int = 2) -> Image.Image:
    """``left`` and ``right`` side by side, ``right`` scaled (nearest) to the height of ``left``."""
    right = right if isinstance(right, Image.Image) else Image.fromarray(np.asarray(right, np.uint8))
    width = max(1, round(right.width * left.height / right.height))
    right = right.resize((width, left.height), Image.NEAREST)
    sheet = Image.new("RGB", (left.width + gap + right.width, left.height), (255, 255, 255))
    sheet.paste(left.convert("RGB"), (0, 0))
    sheet.paste(right.convert("RGB"), (left.width + gap, 0))
    return sheet
