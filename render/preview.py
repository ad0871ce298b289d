"""Contact sheet of a rendered dataset with its stored labels drawn on each sample:

    python -m render.preview DIR --out sheet.png [--num 16] [--cols 8] [--scale 2]

Per sample: the 2D box (``bbox/xywh``, yellow), the visible mask's outline (white) and the model axes
(x red, y green, z blue, half the diameter long) projected from the stored ``R``, ``t_mm``, ``K`` with
``pose_core.geometry.project_points``. A flipped camera or a mm/m mix-up shows at once.
"""

from __future__ import annotations

import sys
from itertools import islice

import numpy as np
from absl import app, flags

from pose_core import PoseInputError
from pose_core.geometry import project_points

FLAGS = flags.FLAGS


def _define_flags():  # only when run as a program: importing this module next to render.generate must not clash
    flags.DEFINE_string("out", "sheet.png", "Output PNG file.")
    flags.DEFINE_integer("num", 16, "Number of samples (the first ones of the dataset).")
    flags.DEFINE_integer("cols", 8, "Samples per row.")
    flags.DEFINE_integer("scale", 2, "Upscaling of each sample (nearest), so labels are readable.")


def draw_labels(sample: dict, axis_length_mm: float, scale: int = 2) -> np.ndarray:
    """``sample`` (a read_samples dict) -> RGB uint8 image (upscaled by ``scale``) with its labels drawn."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    img = np.repeat(np.repeat(sample["image"], scale, axis=0), scale, axis=1).copy()
    mask = np.repeat(np.repeat(sample["mask"] > 0, scale, axis=0), scale, axis=1)
    edge = mask & ~ndimage.binary_erosion(mask)
    img[edge] = 255
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    x, y, w, h = np.asarray(sample["bbox_xywh"], dtype=np.float64) * scale
    if w > 0 and h > 0:
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 230, 0))
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64) * axis_length_mm
    uv, z = project_points(pts, sample["R"], sample["t_mm"], sample["K"])
    if np.all(z > 0):
        # OpenCV pixel centres are integers; PIL's are at +0.5
        uv = (uv + 0.5) * scale
        for k, colour in zip((1, 2, 3), ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
            draw.line([tuple(uv[0]), tuple(uv[k])], fill=colour, width=max(1, scale))
    draw.text((2, 1), f"{sample['index']} v{sample['visib_fract']:.2f}", fill=(255, 255, 255))
    return np.asarray(pil)


def contact_sheet(dataset_dir, num: int = 16, cols: int = 8, scale: int = 2) -> np.ndarray:
    from render.dataset import load_dataset_info, read_samples

    info = load_dataset_info(dataset_dir)
    length = 0.5 * float(info.get("diameter_mm", 100.0))
    tiles = [draw_labels(s, length, scale) for s in islice(read_samples(dataset_dir), num)]
    if not tiles:
        raise PoseInputError(f"{dataset_dir}: the dataset holds no samples")
    h, w = tiles[0].shape[:2]
    cols = max(1, min(cols, len(tiles)))
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.zeros((rows * (h + 2), cols * (w + 2), 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = t
    return sheet


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m render.preview DATASET_DIR --out sheet.png")
    from PIL import Image

    try:
        sheet = contact_sheet(argv[1], FLAGS.num, FLAGS.cols, FLAGS.scale)
    except PoseInputError as e:
        print(f"render.preview: error: {e}", file=sys.stderr)
        sys.exit(2)
    Image.fromarray(sheet).save(FLAGS.out)
    print(f"render.preview: wrote {FLAGS.out} ({sheet.shape[1]}x{sheet.shape[0]})", file=sys.stderr)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
