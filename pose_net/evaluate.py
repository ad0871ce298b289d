"""Evaluate a trained model on every ground-truth instance of its object in a BOP-layout test set.

    python -m pose_net.evaluate --model_dir M --bop_root D --obj_id N|all [--boxes gt|predicted] \
        [--csv OUT.csv] [--report DIR] [--depth] [--min_visib 0.1]

Writes the BOP19 results CSV, prints and saves the ADD / ADD-S table (recall at 10% of the diameter), pictures of
the predicted (red) and true (green) outlines, and the accuracy-vs-threshold plot. ``--boxes gt`` crops around the
ground-truth box: ``bbox_obj`` of ``scene_gt_info.json`` when present, else the box of the model projected with the
true pose. ``--boxes predicted`` finds the boxes on the whole photo with the detector (``pose_net.detector``:
``--detector``, or ``MODEL_DIR/detector``; the result then carries its ``detection_recall`` at IoU 0.5, and an
instance it misses counts as a wrong pose), or without one with the network's own box head (the coordinate head: the
extent of its mask). ``--depth`` (coordinate head, test sets with BOP depth/ images): poses from 3D-3D correspondences by
RANSAC-Kabsch. ``--obj_id all``: every object of a model folder of several objects (``objects.json``) that the test
set annotates, into one BOP19 CSV and a per-object table with the mean. Instances less visible than ``--min_visib``
are not scored, and BOP19's ``test_targets_bop19.json`` chooses the images when present. For the coordinate head the
overlays show, beside each zoomed overlay, the predicted coordinate map (model
coordinates as colours) and the mask probability.

Beside the recalls, the table gives the rotation's share of the error: the median rotation angle against the truth
and the ADD recall with the predicted rotation at the true translation (per instance in ``per_instance.json``:
``r_err_deg``, ``t_err_mm``, ``add_mm_true_translation``, ``add_s_mm_true_translation``). Where the translation
is fitted into the box, a rotation error becomes a depth error too, and the two recalls tell the parts apart.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags

from pose_core import PoseInputError, bop, metrics
from pose_core.geometry import (bbox_from_points, check_camera_fits_image, project_points,
                                rotation_angle_deg)

FLAGS = flags.FLAGS
NOT_DETECTED = "not detected"  # the "translation" of an instance the detector missed (no pose: a wrong one)


def define_flags():
    """Command-line flags (defined only when run as a program, so the module imports cleanly anywhere)."""
    flags.DEFINE_string("model_dir", None, "trained model folder (pose_net.train's --model_dir)")
    flags.DEFINE_string("bop_root", None, "BOP dataset root holding test/<scene>/ and models/")
    flags.DEFINE_string("obj_id", None, "object id in the BOP set, or 'all': every object the model folder knows "
                        "(pose_net.inference.model_set) that the test set annotates, into one CSV and one report")
    flags.DEFINE_float("min_visib", bop.DEFAULT_MIN_VISIB, "instances less visible than this (scene_gt_info.json's "
                       "visib_fract) are not scored, as in BOP19; instances of scenes without it always are")
    flags.DEFINE_enum("boxes", "gt", ["gt", "predicted"], "2D boxes to crop around: the true ones, or predicted on "
                      "the whole photo (by the detector of --detector or MODEL_DIR/detector when there is one, else "
                      "by the pose network's own box head)")
    flags.DEFINE_string("detector", None, "detector folder (pose_net.detector) for --boxes predicted; default "
                        "MODEL_DIR/detector when it exists")
    flags.DEFINE_bool("refine_boxes", False, "with --boxes predicted: each detector box made again by the object's "
                      "pose network (its box on the crop around the detection) before it is matched with the truth; "
                      "the pose is still fitted into the detector's box (pose_net/inference.py, docs/results.md)")
    flags.DEFINE_string("fit_box_model", None, "with --boxes predicted: a coordinate-head model folder of the same "
                        "objects (a single model or a bop_train --head coords run); the translation is fitted into "
                        "its mask's box around each detection instead of blended (docs/detector.md)")
    flags.DEFINE_string("split", "test", "BOP split folder")
    flags.DEFINE_string("models_dir", None, "BOP models folder (default: BOP_ROOT/models)")
    flags.DEFINE_string("csv", None, "BOP19 results CSV to write")
    flags.DEFINE_string("report", None, "folder for the report: metrics.json, table.md, overlays, accuracy plot")
    flags.DEFINE_integer("num_pictures", 12, "overlay pictures in the report")
    flags.DEFINE_bool("allow_object_mismatch", False, "evaluate even if the model was trained on another mesh")
    flags.DEFINE_bool("depth", False, "coordinate head: use the test set's depth images (BOP depth/ folders): "
                      "poses by RANSAC-Kabsch on 3D-3D correspondences instead of RANSAC-PnP")
    flags.DEFINE_enum("translation", None, ["auto", "regressed", "box", "blend"], "direct head: the translation "
                      "head's output, the translation that fits the model, turned by the predicted rotation, into the "
                      "2D box, or a blend of the two (pose_net/inference.py); auto (the default): box with --boxes gt, "
                      "blend with the detector's boxes, regressed with the network's own boxes")


def load_test_object(bop_root, obj_id: int, models_dir=None):
    """``(mesh points [P, 3] mm, diameter mm, symmetric)`` of ``obj_id`` from the BOP models folder."""
    from pose_core.geometry import sample_model_points
    from pose_core.mesh import load_mesh

    models_dir = Path(models_dir or Path(bop_root) / "models")
    entry = bop.model_info(models_dir / "models_info.json", obj_id)
    mesh = load_mesh(bop.find_model_file(models_dir, obj_id))
    return sample_model_points(mesh, 2048, seed=0), float(entry["diameter"]), bop.is_symmetric(entry)


def gt_box(instance: dict, points_mm, K, image_hw) -> np.ndarray:
    """``bbox_obj`` from scene_gt_info.json, else the box of the model projected with the true pose."""
    if "bbox_obj" in instance:
        return np.asarray(instance["bbox_obj"], np.float64)
    uv, z = project_points(points_mm, instance["R"], instance["t_mm"], K)
    return bbox_from_points(uv[z > 0], image_hw)


def box_size_log_ratio(box_xywh, true_box_xywh) -> np.ndarray:
    """``[2]``: log(width, height of a box / those of the true box); a translation fitted into the box takes the
    size's error into the depth."""
    return np.log(np.asarray(box_xywh, np.float64)[2:] / np.asarray(true_box_xywh, np.float64)[2:])


def evaluate(model_dir, bop_root, obj_id: int, boxes: str = "gt", split: str = "test", models_dir=None,
             csv_path=None, report_dir=None, num_pictures: int = 12, allow_object_mismatch: bool = False,
             translation: str | None = None, depth: bool = False, min_visib: float = bop.DEFAULT_MIN_VISIB,
             estimates_out: list | None = None, detector=None, refine_boxes: bool = False,
             fit_box_model=None) -> dict:
    """Runs the model on the test set; returns the figures (and writes CSV / report when asked). ``depth``: the
    coordinate head solves each pose from the image's depth too (:meth:`PoseEstimator.estimate`). ``min_visib`` and
    BOP19's ``test_targets_bop19.json`` (when the set has one) choose the instances scored
    (:func:`pose_core.bop.list_test_images`). ``estimates_out``: a list the BOP19 rows are appended to.
    ``detector``: with ``boxes="predicted"``, a :class:`pose_net.detector.Detector` (or its folder); None: the one in
    ``MODEL_DIR/detector`` if any, else the pose network's own box head. ``refine_boxes``: each of the detector's
    boxes of the object is made again by the pose network (:meth:`PoseEstimator.refine_detection`) before it is
    matched with the true boxes, so the detection recall is that of the refined boxes; the pose is still fitted
    into the detector's own box. ``fit_box_model``: a coordinate-head model folder of the object
    (:func:`pose_net.inference.mask_box_estimator`); the pose network still crops around each detector's box, and
    the translation is fitted into the box of that model's mask around it (docs/detector.md)."""
    from PIL import Image

    from pose_net.draw import beside, contact_sheet, draw_pose_overlay, zoom_to_box
    from pose_net.esac import ESAC_FILE
    from pose_net.inference import PoseEstimator

    if refine_boxes and boxes != "predicted":
        raise PoseInputError(f"--refine_boxes refines the detector's boxes: it needs --boxes predicted, not {boxes}")
    if fit_box_model and boxes != "predicted":
        raise PoseInputError(f"--fit_box_model fits the translation into a mask around the detector's boxes: it "
                             f"needs --boxes predicted, not {boxes}")
    if (Path(model_dir) / ESAC_FILE).is_file():  # one ESAC model of several objects (pose_net/esac.py)
        return _evaluate_esac_model(model_dir, bop_root, obj_id, boxes, split, models_dir, csv_path, report_dir,
                                    num_pictures, depth, min_visib, estimates_out)
    estimator = PoseEstimator(model_dir, translation=translation)
    points, diameter, symmetric = load_test_object(bop_root, obj_id, models_dir)
    trained_d = estimator.diameter_mm
    if abs(trained_d - diameter) > 0.05 * diameter and not allow_object_mismatch:
        raise PoseInputError(
            f"the model in {model_dir} was trained on an object of diameter {trained_d:.1f} mm, but object {obj_id} "
            f"of {bop_root} measures {diameter:.1f} mm: another object? (--allow_object_mismatch to go on)")
    if boxes == "predicted":
        from pose_net.detector import Detector, find_detector

        if detector is None and (found := find_detector(model_dir)) is not None:
            detector = found
        if detector is not None and not isinstance(detector, Detector):
            detector = Detector(detector)
        for option, wanted in (("--refine_boxes", refine_boxes), ("--fit_box_model", fit_box_model)):
            if wanted and detector is None:
                raise PoseInputError(f"{option} works on a detector's boxes, and there is none ({model_dir}/detector "
                                     f"is missing and no --detector was given)")
        if detector is not None and obj_id not in detector.obj_ids:
            raise PoseInputError(f"the detector in {detector.dir} finds objects {detector.obj_ids}, not {obj_id}")
    mask_estimator = None
    if fit_box_model:
        from pose_net.inference import mask_box_estimator

        mask_estimator = mask_box_estimator(fit_box_model, obj_id)
    targets = bop.load_test_targets(bop_root)
    images = bop.list_test_images(bop_root, obj_id, split, min_visib, targets)
    if not images:
        raise PoseInputError(f"{bop_root}/{split}: no image shows object {obj_id} (at least {min_visib:g} visible"
                             f"{', among the test targets' if targets is not None else ''})")
    if depth and estimator.head != "coords":
        raise PoseInputError(f"--depth: the model in {model_dir} has the {estimator.head} head; only the coordinate "
                             "head uses depth")
    if depth and (missing := [im for im in images if im.depth_path is None]):
        raise PoseInputError(f"--depth: {len(missing)} of {len(images)} test images have no depth image, e.g. "
                             f"{missing[0].rgb_path.parent.parent / 'depth' / missing[0].rgb_path.name}")
    rows, estimates, pictures, detection_ious = [], [], [], []
    box_log_ratios = []  # per matched detection: log(width, height of the detector's box / the true box's)
    fit_box_log_ratios = []  # the same of the mask's box (fit_box_model)
    pick = set(np.linspace(0, len(images) - 1, min(num_pictures, len(images))).round().astype(int).tolist())
    for k, im in enumerate(images):
        try:
            rgb = np.asarray(Image.open(im.rgb_path).convert("RGB"))
        except Exception as e:
            raise PoseInputError(f"{im.rgb_path}: cannot read the image ({e})") from None
        check_camera_fits_image(im.K, rgb.shape[:2], f"{im.rgb_path}")
        detected = [None] * len(im.instances)
        if boxes == "predicted" and detector is not None:
            from pose_net.detector import match_with_ious

            t0 = time.time()
            dets = detector.detect_file(im.rgb_path, rgb)
            true_boxes = [gt_box(inst, points, im.K, rgb.shape[:2]) for inst in im.instances]
            if refine_boxes:  # the object's detections that can be matched (its best len(true_boxes)), made again
                mine = [d for d in dets if d.obj_id == obj_id][:len(true_boxes)]
                dets = [estimator.refine_detection(rgb, im.K, d) for d in mine]
            detect_seconds = time.time() - t0
            detected, ious = match_with_ious(dets, obj_id, true_boxes)
            detection_ious += ious
            box_log_ratios += [box_size_log_ratio(d.detector_box, tb)
                               for d, tb in zip(detected, true_boxes) if d is not None]
        for j, (inst, det) in enumerate(zip(im.instances, detected)):
            if boxes == "predicted" and detector is not None and det is None:  # missed: no pose, a wrong one
                rows.append({"scene_id": im.scene_id, "im_id": im.im_id, "add_mm": np.inf, "add_s_mm": np.inf,
                             "t_err_mm": np.inf, "depth_err_rel": np.inf, "ok": False, "num_inliers": 0,
                             "translation": NOT_DETECTED})
                continue
            box = gt_box(inst, points, im.K, rgb.shape[:2]) if boxes == "gt" else \
                (det.detector_box if det is not None else None)
            t0 = time.time()
            fit_box = None
            if mask_estimator is not None and det is not None:  # the translation fitted into the mask's box
                fit_box = mask_estimator.refine_box(rgb, im.K, det.detector_box)
                fit_box_log_ratios.append(box_size_log_ratio(fit_box, true_boxes[j]))
            est = estimator.estimate(rgb, im.K, box, bop.load_depth_mm(im) if depth else None,
                                     box_is_detection=det is not None, fit_box_xywh=fit_box)
            elapsed = time.time() - t0 + (detect_seconds if det is not None else 0.0)
            e_add = metrics.add(est.R, est.t_mm, inst["R"], inst["t_mm"], points)
            e_adds = metrics.add_s(est.R, est.t_mm, inst["R"], inst["t_mm"], points)
            rows.append({"scene_id": im.scene_id, "im_id": im.im_id, "add_mm": e_add, "add_s_mm": e_adds,
                         "t_err_mm": float(np.linalg.norm(est.t_mm - inst["t_mm"])),
                         "depth_err_rel": float((est.t_mm[2] - inst["t_mm"][2]) / inst["t_mm"][2]), "ok": est.ok,
                         "num_inliers": est.num_inliers, "translation": est.translation})
            # the rotation's share of the error: the angle, and ADD with the true translation
            rows[-1]["r_err_deg"] = float(rotation_angle_deg(est.R, inst["R"]))
            rows[-1]["add_mm_true_translation"] = metrics.add(est.R, inst["t_mm"], inst["R"], inst["t_mm"], points)
            rows[-1]["add_s_mm_true_translation"] = metrics.add_s(est.R, inst["t_mm"], inst["R"], inst["t_mm"],
                                                                  points)
            if est.inlier_error_px is not None:
                rows[-1]["inlier_error_px"] = est.inlier_error_px
            if est.t_regressed_mm is not None:  # the thesis' figure beside it: the translation head's own output
                rows[-1]["add_mm_regressed_translation"] = metrics.add(est.R, est.t_regressed_mm, inst["R"],
                                                                       inst["t_mm"], points)
            estimates.append(bop.PoseEstimate(im.scene_id, im.im_id, obj_id, 1.0 if det is None else det.score,
                                              est.R, est.t_mm, elapsed))
            if k in pick and report_dir:
                ok = metrics.is_correct(e_adds if symmetric else e_add, diameter)
                label = f"{im.scene_id}/{im.im_id} {'ADD-S' if symmetric else 'ADD'} " \
                        f"{(e_adds if symmetric else e_add):.0f}mm {'ok' if ok else 'wrong'}"
                overlay = draw_pose_overlay(rgb, im.K, points, diameter, est.R, est.t_mm, inst["R"],
                                            inst["t_mm"], est.bbox_xywh, label)
                if est.coordinate_picture is not None:  # the coordinate head: what it saw, and its maps
                    overlay = beside(zoom_to_box(overlay, est.bbox_xywh, estimator.roi_enlarge),
                                     est.coordinate_picture)
                pictures.append(overlay)
    add_errors = np.array([r["add_mm"] for r in rows])
    adds_errors = np.array([r["add_s_mm"] for r in rows])
    result = {
        "bop_root": report_path(bop_root), "obj_id": obj_id, "boxes": boxes, "instances": len(rows),
        "diameter_mm": diameter, "symmetric": symmetric, "depth": depth,
        "add_recall": metrics.recall(add_errors, diameter), "add_s_recall": metrics.recall(adds_errors, diameter),
        "add_median_mm": float(np.median(add_errors)), "add_s_median_mm": float(np.median(adds_errors)),
        "t_err_median_mm": float(np.median([r["t_err_mm"] for r in rows])),
        # |z - z_true| / z_true: the share of the translation's error a 2D box decides (a box fit turns a box
        # that is k% too large into a depth k% too far)
        "depth_err_median_percent": float(100 * np.median([abs(r["depth_err_rel"]) for r in rows])),
        # rotation alone (missed detections count as wrong): the angle, and ADD recall with the true translation
        "r_err_median_deg": float(np.median([r.get("r_err_deg", np.inf) for r in rows])),
        "add_recall_true_translation": metrics.recall(
            np.array([r.get("add_mm_true_translation", np.inf) for r in rows]), diameter),
        "add_s_recall_true_translation": metrics.recall(
            np.array([r.get("add_s_mm_true_translation", np.inf) for r in rows]), diameter),
        "model_dir": report_path(model_dir), "head": estimator.head,
        "translation": "+".join(sorted({r["translation"] for r in rows} - {NOT_DETECTED})),
    }
    if boxes == "predicted":
        result["box_source"] = ("detector, refined by the pose network" if detector is not None and refine_boxes
                                else "detector" if detector is not None else "pose network's box head")
        if mask_estimator is not None:
            result["box_source"] += "; the translation fitted into a coordinate head's mask around it"
            result["fit_box_model"] = report_path(fit_box_model)
    if detection_ious:
        from pose_net.detector import detected_share

        result["not_detected"] = int(sum(1 for r in rows if r["translation"] == NOT_DETECTED))
        result["detection_recall"] = detected_share(detection_ious)
        result["detection_iou_median"] = float(np.median(detection_ious))
        # the detector's (and the mask's) box size against the true box's, over the matched detections
        for name, log_ratios in (("detector_box", box_log_ratios), ("fit_box", fit_box_log_ratios)):
            if log_ratios:
                ratios = np.array(log_ratios)
                result[f"{name}_width_log_ratio_median"] = float(np.median(ratios[:, 0]))
                result[f"{name}_height_log_ratio_median"] = float(np.median(ratios[:, 1]))
                result[f"{name}_size_error_median_percent"] = float(100 * np.median(np.abs(ratios)))
        result["detector_dir"] = report_path(detector.dir)
    failures = int(sum(1 for r in rows if not r.get("ok", True) and r["translation"] != NOT_DETECTED))
    if estimator.head == "coords":
        result["pnp_failures"] = failures
        errors = [r["inlier_error_px"] for r in rows if np.isfinite(r.get("inlier_error_px", np.nan))]
        # DSAC's measure of the correspondences (docs/results/dsac_table.md), in pixels of the coordinate grid
        result["inlier_error_median_px"] = float(np.median(errors)) if errors else None
    elif "box" in result["translation"]:
        result["box_translation_fallbacks"] = failures  # no box fit: the regressed translation was kept
        regressed = np.array([r.get("add_mm_regressed_translation", np.inf) for r in rows])  # inf: not detected
        result["add_recall_regressed_translation"] = metrics.recall(regressed, diameter)
        result["add_median_mm_regressed_translation"] = float(np.median(regressed))
    result["min_visib"] = min_visib
    if estimates_out is not None:
        estimates_out.extend(estimates)
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        bop.write_results_csv(csv_path, estimates)
    if report_dir:
        write_report(Path(report_dir), result, rows, add_errors, adds_errors, diameter, pictures, contact_sheet)
    return result


_ESAC_ESTIMATORS = {}  # model folder -> EsacEstimator, loaded once per process (evaluate_all: once per object)


def _evaluate_esac_model(model_dir, bop_root, obj_id, boxes, split, models_dir, csv_path, report_dir, num_pictures,
                         depth, min_visib, estimates_out) -> dict:
    """:func:`evaluate` of an ESAC model folder: ground-truth boxes, RGB (``pose_net.esac.evaluate_esac``)."""
    from pose_net.esac import EsacEstimator, evaluate_esac

    if boxes != "gt" or depth:
        raise PoseInputError(f"{model_dir} holds an ESAC model: it is scored with ground-truth boxes and RGB only "
                             f"(--boxes gt, no --depth)")
    key = str(Path(model_dir).resolve())
    estimator = _ESAC_ESTIMATORS.get(key) or _ESAC_ESTIMATORS.setdefault(key, EsacEstimator(model_dir))
    estimates = []
    result = evaluate_esac(estimator, bop_root, obj_id, "esac", split, min_visib=min_visib, report_dir=report_dir,
                           num_pictures=num_pictures, estimates_out=estimates, models_dir=models_dir)
    result["model_dir"] = report_path(model_dir)
    if estimates_out is not None:
        estimates_out.extend(estimates)
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        bop.write_results_csv(csv_path, estimates)
    return result


def evaluate_all(model_dir, bop_root, boxes: str = "gt", split: str = "test", models_dir=None, csv_path=None,
                 report_dir=None, num_pictures: int = 12, translation: str | None = None, depth: bool = False,
                 min_visib: float = bop.DEFAULT_MIN_VISIB, detector=None, refine_boxes: bool = False,
                 fit_box_model=None) -> dict:
    """Every object the model folder knows (:func:`pose_net.inference.model_set`) that the test set annotates,
    each scored as :func:`evaluate` does, into ONE BOP19 CSV and one report (``report/table.md`` with a row per
    object and their mean, ``report/obj_NNNNNN/`` per object). Returns ``{"objects": {obj_id: figures},
    "mean": {...}, "not_trained": [...], "not_in_test_set": [...]}``; the mean's ``score_recall`` takes ADD-S for
    symmetric objects and ADD for the others, as BOP's ADD(-S). ``detector`` (``boxes="predicted"``): a detector
    folder, default ``MODEL_DIR/detector`` (bop_train's), run once per photo for every object; ``refine_boxes`` and
    ``fit_box_model`` (a folder of coordinate-head models of these objects, e.g. a ``bop_train --head coords`` run):
    as :func:`evaluate`'s."""
    from pose_net.detector import Detector, find_detector
    from pose_net.inference import model_set

    models = model_set(model_dir)
    in_test = bop.object_ids_in(bop_root, split)
    chosen = [i for i in sorted(models) if i in in_test]
    if not chosen:
        raise PoseInputError(f"{bop_root}/{split} annotates objects {in_test}, the model folder {model_dir} knows "
                             f"{sorted(models)}: nothing to evaluate")
    if boxes == "predicted" and (found := find_detector(model_dir, detector)) is not None:
        detector = Detector(found)
    estimates, per_object = [], {}
    for obj_id in chosen:
        sub = Path(report_dir) / f"obj_{obj_id:06d}" if report_dir else None
        try:
            per_object[obj_id] = evaluate(models[obj_id], bop_root, obj_id, boxes, split, models_dir,
                                          report_dir=sub, num_pictures=num_pictures, translation=translation,
                                          depth=depth, min_visib=min_visib, estimates_out=estimates,
                                          detector=detector, refine_boxes=refine_boxes,
                                          fit_box_model=fit_box_model)
        except PoseInputError as e:
            if "no image shows object" not in str(e):
                raise
            per_object[obj_id] = None  # every instance below min_visib or outside the targets
    scored = {k: v for k, v in per_object.items() if v is not None}
    if not scored:
        raise PoseInputError(f"{bop_root}/{split}: no instance of objects {chosen} is at least {min_visib:g} visible"
                             f"{' among the test targets' if bop.load_test_targets(bop_root) is not None else ''}")

    def mean(key):
        return float(np.mean([v[key] for v in scored.values()])) if scored else float("nan")

    result = {"bop_root": report_path(bop_root), "model_dir": report_path(model_dir), "boxes": boxes,
              "min_visib": min_visib, "depth": depth,
              "objects": {str(k): v for k, v in per_object.items()},
              "mean": {"objects": len(scored), "instances": int(sum(v["instances"] for v in scored.values())),
                       "add_recall": mean("add_recall"), "add_s_recall": mean("add_s_recall"),
                       "score_recall": float(np.mean([v["add_s_recall" if v["symmetric"] else "add_recall"]
                                                      for v in scored.values()])) if scored else float("nan"),
                       **({"detection_recall": mean("detection_recall")}
                          if all("detection_recall" in v for v in scored.values()) else {})},
              "not_trained": [i for i in in_test if i not in models],
              "not_in_test_set": [i for i in sorted(models) if i not in in_test]}
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        bop.write_results_csv(csv_path, estimates)
    if report_dir:
        report = Path(report_dir)
        report.mkdir(parents=True, exist_ok=True)
        (report / "metrics.json").write_text(json.dumps(result, indent=1))
        m = result["mean"]
        lines = [format_table(list(scored.values())).rstrip("\n"),
                 f"| mean over {m['objects']} objects | | {boxes} | | {m['instances']} | {100 * m['add_recall']:.1f} | "
                 f"{100 * m['add_s_recall']:.1f} | | |", "",
                 f"ADD(-S) (ADD-S for symmetric objects, ADD for the others), mean over objects: "
                 f"{100 * m['score_recall']:.1f}%"] + detector_box_notes(list(scored.values()))
        for key, text in (("not_trained", "annotated in the test set, not in the model folder"),
                          ("not_in_test_set", "in the model folder, not annotated in the test set")):
            if result[key]:
                lines.append(f"Objects {text}: {', '.join(map(str, result[key]))}")
        skipped = [k for k, v in per_object.items() if v is None]
        if skipped:
            lines.append(f"Objects with no instance at least {min_visib:g} visible: {', '.join(map(str, skipped))}")
        (report / "table.md").write_text("\n".join(lines) + "\n")
    return result


def report_path(path) -> str:
    """How a report names a path: relative to the repository when inside it (so a generated file does not carry
    the machine's folders), else as given."""
    repo = Path(__file__).resolve().parents[1]
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(repo))
    except ValueError:
        pass
    try:  # beside the checkout, as ../shared/data is
        return str(Path("..") / resolved.relative_to(repo.parent))
    except ValueError:
        return str(path)


def _fmt(value, digits: int, scale: float = 1.0) -> str:
    """A table cell: ``value * scale`` rounded, "-" for a figure an older report does not have."""
    return "-" if value is None else f"{scale * value:.{digits}f}"


def format_table(results) -> str:
    """Markdown table of one result dict or a list of them."""
    results = [results] if isinstance(results, dict) else results
    lines = ["| set | obj | boxes | translation | instances | ADD (10% d) | ADD-S (10% d) | median ADD mm | "
             "median t err mm | median depth err % | median R err deg | ADD, true t (10% d) |", "|---" * 12 + "|"]
    for r in results:
        lines.append(f"| {Path(r['bop_root']).name} | {r['obj_id']} | {r['boxes']} | "
                     f"{r.get('translation', 'regressed')} | {r['instances']} | "
                     f"{100 * r['add_recall']:.1f} | {100 * r['add_s_recall']:.1f} | {r['add_median_mm']:.1f} | "
                     f"{r['t_err_median_mm']:.1f} | {_fmt(r.get('depth_err_median_percent'), 1)} | "
                     f"{_fmt(r.get('r_err_median_deg'), 1)} | "
                     f"{_fmt(r.get('add_recall_true_translation'), 1, 100)} |")
    return "\n".join(lines) + "\n"


def detector_box_notes(results) -> list[str]:
    """A sentence per result scored with a detector's boxes: their size against the true boxes'."""
    results = [results] if isinstance(results, dict) else results
    return [f"{Path(r['bop_root']).name}, object {r['obj_id']}: the detector's boxes against the true ones, median "
            f"log ratio of width {r['detector_box_width_log_ratio_median']:+.3f} and height "
            f"{r['detector_box_height_log_ratio_median']:+.3f}; their size is off by "
            f"{r['detector_box_size_error_median_percent']:.1f}% in median (a translation fitted into a box carries "
            f"its size error into the depth)." for r in results if "detector_box_size_error_median_percent" in r]


def result_table(result: dict) -> str:
    """One result's table (:func:`format_table`) with the sentence on its detector's boxes, if any."""
    return "\n".join([format_table(result)] + detector_box_notes(result))


def write_report(report: Path, result, rows, add_errors, adds_errors, diameter, pictures, contact_sheet):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report.mkdir(parents=True, exist_ok=True)
    (report / "metrics.json").write_text(json.dumps(result, indent=1))
    (report / "per_instance.json").write_text(json.dumps(rows, indent=1))
    (report / "table.md").write_text(result_table(result) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for errors, name in ((add_errors, "ADD"), (adds_errors, "ADD-S")):
        th, acc = metrics.accuracy_vs_threshold(errors, diameter)
        ax.plot(th * 100, acc * 100, label=name)
    ax.axvline(10, color="gray", ls=":", lw=1)
    ax.set_xlabel("threshold (% of diameter)")
    ax.set_ylabel("correct poses (%)")
    ax.set_title(f"{Path(result['bop_root']).name}, obj {result['obj_id']}, {result['boxes']} boxes")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(report / "accuracy_vs_threshold.png", dpi=110)
    plt.close(fig)
    if pictures:
        contact_sheet(pictures, columns=4, tile=320).save(report / "overlays.png")


def main(argv):
    del argv
    for name in ("model_dir", "bop_root", "obj_id"):
        if FLAGS[name].value is None:
            raise app.UsageError(f"--{name} is required")
    if FLAGS.obj_id.strip().lower() != "all" and not FLAGS.obj_id.strip().isdigit():
        raise app.UsageError(f"--obj_id must be an object id or 'all', got {FLAGS.obj_id!r}")
    try:
        if FLAGS.obj_id.strip().lower() == "all":
            result = evaluate_all(FLAGS.model_dir, FLAGS.bop_root, FLAGS.boxes, FLAGS.split, FLAGS.models_dir,
                                  FLAGS.csv, FLAGS.report, FLAGS.num_pictures, FLAGS.translation, FLAGS.depth,
                                  FLAGS.min_visib, FLAGS.detector, FLAGS.refine_boxes, FLAGS.fit_box_model)
            print((Path(FLAGS.report) / "table.md").read_text() if FLAGS.report else json.dumps(result["mean"]))
            return
        result = evaluate(FLAGS.model_dir, FLAGS.bop_root, int(FLAGS.obj_id), FLAGS.boxes, FLAGS.split,
                          FLAGS.models_dir, FLAGS.csv, FLAGS.report, FLAGS.num_pictures, FLAGS.allow_object_mismatch,
                          FLAGS.translation, FLAGS.depth, FLAGS.min_visib, detector=FLAGS.detector,
                          refine_boxes=FLAGS.refine_boxes, fit_box_model=FLAGS.fit_box_model)
    except PoseInputError as e:
        raise SystemExit(f"error: {e}")
    print(result_table(result))
    if FLAGS.report:
        print(f"report written to {FLAGS.report}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
