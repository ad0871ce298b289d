"""Pose of the trained object in one photo.

    python -m pose_net.predict --model_dir M --image IMG --camera K.json [--box x,y,w,h] --out overlay.png

``K.json`` holds the intrinsics as ``{"K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}`` (or BOP's row-major ``cam_K``
list). Prints the pose as JSON (R row-major, t in mm) and draws the predicted outline and axes (for the coordinate
head also the zoomed view with its coordinate map and mask, and whether RANSAC-PnP found a pose).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags

from pose_core import PoseInputError

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags (defined only when run as a program, so the module imports cleanly anywhere)."""
    flags.DEFINE_string("model_dir", None, "trained model folder")
    flags.DEFINE_string("image", None, "RGB image file")
    flags.DEFINE_string("camera", None, "JSON file with the intrinsics: {\"K\": 3x3} or {\"cam_K\": [9 numbers]}")
    flags.DEFINE_string("box", None, "optional 2D box x,y,w,h (pixels) around the object; default: the network's own")
    flags.DEFINE_string("out", None, "overlay picture to write")
    flags.DEFINE_enum("translation", None, ["auto", "regressed", "box"], "direct head: the translation head's "
                      "output, or the translation that fits the model, turned by the predicted rotation, into the "
                      "2D box; auto (the default): box when --box is given, regressed otherwise")


def load_camera(path) -> np.ndarray:
    """``K [3, 3]`` from a JSON file (``K`` as 3x3 or 9 numbers, or BOP's ``cam_K``)."""
    path = Path(path)
    if not path.is_file():
        raise PoseInputError(f"camera file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PoseInputError(f"camera file {path} is not valid JSON ({e})") from None
    value = data.get("K", data.get("cam_K")) if isinstance(data, dict) else None
    if value is None:
        raise PoseInputError(f"camera file {path} has no 'K' (or 'cam_K') entry with the 3x3 intrinsics")
    K = np.asarray(value, dtype=np.float64)
    if K.size != 9 or not np.all(np.isfinite(K)):
        raise PoseInputError(f"camera file {path}: 'K' must be 9 finite numbers (3x3), got {K.size}")
    return K.reshape(3, 3)


def load_image(path) -> np.ndarray:
    from PIL import Image

    if not Path(path).is_file():
        raise PoseInputError(f"image {path} does not exist")
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except Exception as e:
        raise PoseInputError(f"image {path} cannot be read ({type(e).__name__}: {e})") from None


def predict(model_dir, image_path, camera_path, box=None, out=None, translation: str | None = None) -> dict:
    from pose_net.draw import beside, draw_pose_overlay, zoom_to_box
    from pose_net.inference import PoseEstimator

    image = load_image(image_path)
    K = load_camera(camera_path)
    estimator = PoseEstimator(model_dir, translation=translation)
    est = estimator.estimate(image, K, box)
    result = {"R": est.R.reshape(9).tolist(), "t_mm": est.t_mm.tolist(), "bbox_xywh": est.bbox_xywh.tolist(),
              "obj_id": estimator.config.get("obj_id"), "translation": est.translation}
    if estimator.head == "coords":
        result.update(ok=est.ok, num_inliers=est.num_inliers)
    if out:
        picture = draw_pose_overlay(image, K, estimator.points_mm, estimator.diameter_mm, est.R, est.t_mm,
                                    bbox_xywh=est.bbox_xywh)
        if est.coordinate_picture is not None:  # the coordinate head's maps beside the zoomed overlay
            picture = beside(picture, beside(zoom_to_box(picture, est.bbox_xywh, estimator.roi_enlarge),
                                             est.coordinate_picture))
        picture.save(out)
    return result


def main(argv):
    del argv
    for name in ("model_dir", "image", "camera"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    box = None
    if FLAGS.box:
        try:
            box = [float(v) for v in FLAGS.box.split(",")]
            assert len(box) == 4
        except (ValueError, AssertionError):
            raise app.UsageError(f"--box must be x,y,w,h (4 numbers), got {FLAGS.box!r}")
    try:
        result = predict(FLAGS.model_dir, FLAGS.image, FLAGS.camera, box, FLAGS.out, FLAGS.translation)
    except PoseInputError as e:
        raise SystemExit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
