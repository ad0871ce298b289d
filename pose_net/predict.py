"""Pose of the trained object in one photo.

    python -m pose_net.predict --model_dir M --image IMG --camera K.json [--box x,y,w,h] [--detector D] \
        --out overlay.png

``K.json`` holds the intrinsics as ``{"K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}`` (or BOP's row-major ``cam_K``
list). Prints the pose as JSON (R row-major, t in mm) and draws the predicted outline and axes (for the coordinate
head also the zoomed view with its coordinate map and mask, and whether RANSAC-PnP found a pose).

Whole photos: when the model folder has a detector (``M/detector``, as ``experiments.bop_train`` writes, or
``--detector``) and no ``--box`` is given, every object it finds gets its pose from that object's model (``M`` may
hold several, ``objects.json``): the JSON lists them (``objects``: obj_id, detection score, box, pose), and the
picture draws every outline, labelled with its object id.
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
    flags.DEFINE_string("detector", None, "detector folder (pose_net.detector); default M/detector when it exists")
    flags.DEFINE_bool("refine_boxes", False, "with a detector: each detection's box made again by the object's pose "
                      "network (pose_net/inference.py refine_detection); the pose is still fitted into the detector's")
    flags.DEFINE_string("fit_box_model", None, "with a detector: a coordinate-head model folder of the same objects "
                        "(a single model or a bop_train --head coords run); each translation is fitted into its "
                        "mask's box around the detection instead of blended (docs/detector.md)")
    flags.DEFINE_integer("max_per_object", 1, "with a detector: poses of at most this many instances per object")
    flags.DEFINE_enum("translation", None, ["auto", "regressed", "box", "blend"], "direct head: the translation "
                      "head's output, the translation that fits the model, turned by the predicted rotation, into the "
                      "2D box, or a blend of the two (pose_net/inference.py); auto (the default): box when --box is "
                      "given, blend with the detector's boxes, regressed otherwise")


def load_camera(path, image_hw=None) -> np.ndarray:
    """``K [3, 3]`` from a JSON file (``K`` as 3x3 or 9 numbers, or BOP's ``cam_K``). With ``image_hw``, the image
    must have the file's ``width`` and ``height`` when it gives them, and a principal point near its centre
    (:func:`pose_core.geometry.check_camera_fits_image`)."""
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
    K = K.reshape(3, 3)
    if image_hw is not None:
        from pose_core.geometry import check_camera_fits_image

        size = (data.get("height"), data.get("width"))
        if None not in size and tuple(int(v) for v in size) != tuple(image_hw):
            raise PoseInputError(f"camera file {path} is for {size[1]}x{size[0]} images, the image is "
                                 f"{image_hw[1]}x{image_hw[0]}")
        check_camera_fits_image(K, image_hw, f"the image ({path} gives the camera)")
    return K


def load_image(path) -> np.ndarray:
    from PIL import Image

    if not Path(path).is_file():
        raise PoseInputError(f"image {path} does not exist")
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except Exception as e:
        raise PoseInputError(f"image {path} cannot be read ({type(e).__name__}: {e})") from None


def predict(model_dir, image_path, camera_path, box=None, out=None, translation: str | None = None,
            detector_dir=None, max_per_object: int = 1, refine_boxes: bool = False, fit_box_model=None) -> dict:
    from pose_net.detector import find_detector
    from pose_net.draw import beside, draw_pose_overlay, zoom_to_box
    from pose_net.inference import PoseEstimator

    image = load_image(image_path)
    K = load_camera(camera_path, image.shape[:2])
    found = None if box is not None else find_detector(model_dir, detector_dir)
    if fit_box_model and found is None:
        raise PoseInputError(f"--fit_box_model works on a detector's boxes: "
                             f"{'--box was given' if box is not None else f'{model_dir} has no detector'}")
    if found is not None:
        return predict_all(model_dir, image, K, found, out, translation, max_per_object, refine_boxes,
                           fit_box_model)
    from pose_net.esac import ESAC_FILE

    if (Path(model_dir) / ESAC_FILE).is_file():
        return predict_esac(model_dir, image, K, box, out)
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


def predict_esac(model_dir, image: np.ndarray, K: np.ndarray, box, out=None) -> dict:
    """An ESAC model (several objects, pose_net/esac.py) on the object in ``box``: which object it is and its pose."""
    from pose_net.draw import draw_pose_overlay
    from pose_net.esac import EsacEstimator

    if box is None:
        raise PoseInputError(f"{model_dir} holds an ESAC model, which needs the object's box: give --box x,y,w,h (or "
                             f"a detector, --detector)")
    esac = EsacEstimator(model_dir)
    est = esac.estimate(image, K, box)
    expert = esac.experts[est.expert]
    result = est.as_json()
    if out:
        draw_pose_overlay(image, K, expert.model_points_mm, expert.diameter_mm, est.R, est.t_mm,
                          bbox_xywh=np.asarray(box, np.float64), label=f"obj {est.obj_id}").save(out)
    return result


def predict_all(model_dir, image: np.ndarray, K: np.ndarray, detector_dir, out=None, translation=None,
                max_per_object: int = 1, refine_boxes: bool = False, fit_box_model=None) -> dict:
    """Every object the detector finds in ``image`` with a model in ``model_dir``: ``{"objects": [...]}``, best
    detection first, and one picture with every predicted outline. ``refine_boxes``: each detection's box made
    again by its object's pose network (``bbox_xywh``; the detector's own in ``detector_bbox_xywh``, which the pose
    is fitted into: :meth:`pose_net.inference.PoseEstimator.refine_detection`); not for ESAC models.
    ``fit_box_model``: a folder of coordinate-head models of these objects; each translation is fitted into the box
    of that model's mask around the detector's box (``fit_bbox_xywh``), not blended
    (:func:`pose_net.inference.mask_box_estimator`)."""
    from PIL import ImageDraw

    from pose_net.detector import Detector
    from pose_net.draw import PRED_COLOUR, draw_pose_overlay
    from pose_net.esac import ESAC_FILE, EsacEstimator
    from pose_net.inference import PoseEstimator, mask_box_estimator, model_set

    models = model_set(model_dir)
    detector = Detector(detector_dir)
    if not set(detector.obj_ids) & set(models):
        raise PoseInputError(f"the detector in {detector_dir} finds objects {detector.obj_ids}, the model folder "
                             f"{model_dir} knows {sorted(models)}: none in common")
    estimators, mask_estimators, counts, objects = {}, {}, {}, []
    picture = image
    for d in detector.detect(image):
        if d.obj_id not in models or counts.get(d.obj_id, 0) >= max_per_object:
            continue
        counts[d.obj_id] = counts.get(d.obj_id, 0) + 1
        folder = models[d.obj_id]
        if (folder / ESAC_FILE).is_file():  # one ESAC model of several objects: it names the object itself
            if folder not in estimators:
                estimators[folder] = EsacEstimator(folder)
            esac = estimators[folder]
            est = esac.estimate(image, K, d.bbox_xywh)
            expert = esac.experts[est.expert]
            objects.append({**est.as_json(), "detected_as": d.obj_id, "score": round(d.score, 4)})
            points, diameter, R, t, bbox = (expert.model_points_mm, expert.diameter_mm, est.R, est.t_mm,
                                            np.asarray(d.bbox_xywh, np.float64))
        else:
            if d.obj_id not in estimators:
                estimators[d.obj_id] = PoseEstimator(folder, translation=translation)
            e = estimators[d.obj_id]
            if refine_boxes:
                d = e.refine_detection(image, K, d)
            fit_box = None
            if fit_box_model:
                if d.obj_id not in mask_estimators:
                    mask_estimators[d.obj_id] = mask_box_estimator(fit_box_model, d.obj_id)
                fit_box = mask_estimators[d.obj_id].refine_box(image, K, d.detector_box)
            est = e.estimate(image, K, d.detector_box, box_is_detection=True, fit_box_xywh=fit_box)
            entry = {"obj_id": d.obj_id, "score": round(d.score, 4), "bbox_xywh": np.asarray(d.bbox_xywh).tolist(),
                     "R": est.R.reshape(9).tolist(), "t_mm": est.t_mm.tolist(), "translation": est.translation}
            if fit_box is not None:
                entry["fit_bbox_xywh"] = np.asarray(fit_box).tolist()
            if d.detector_bbox_xywh is not None:
                entry["detector_bbox_xywh"] = d.detector_bbox_xywh.tolist()
            if e.head == "coords":
                entry.update(ok=est.ok, num_inliers=est.num_inliers)
            objects.append(entry)
            points, diameter, R, t, bbox = e.points_mm, e.diameter_mm, est.R, est.t_mm, np.asarray(d.bbox_xywh)
        if out:
            picture = np.asarray(draw_pose_overlay(picture, K, points, diameter, R, t, bbox_xywh=bbox))
    if out:
        from PIL import Image

        img = Image.fromarray(np.asarray(picture, np.uint8))
        draw = ImageDraw.Draw(img)
        for o in objects:
            x, y = o["bbox_xywh"][:2]
            draw.text((x + 2, max(0, y - 12)), f"obj {o['obj_id']} {o['score']:.2f}", fill=PRED_COLOUR)
        img.save(out)
    return {"objects": objects, "detector": str(detector_dir)}


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
        result = predict(FLAGS.model_dir, FLAGS.image, FLAGS.camera, box, FLAGS.out, FLAGS.translation,
                         FLAGS.detector, FLAGS.max_per_object, FLAGS.refine_boxes, FLAGS.fit_box_model)
    except PoseInputError as e:
        raise SystemExit(f"error: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
