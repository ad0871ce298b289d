"""Running a trained pose network on images: crops, the network, pose decoding.

:class:`PoseEstimator` is what evaluation, prediction, training's validation and the demo share. A model folder
(``--model_dir``) holds ``config.json`` (object, diameter, symmetry, model points, network settings) and either the
latest training checkpoint or the exported ``model.keras``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pose_core import PoseInputError
from pose_net import parametrization as param

CONFIG_FILE = "config.json"
EXPORT_FILE = "model.keras"
# Where the direct head's translation comes from at inference: ``regressed`` (the thesis: its translation head),
# ``box`` (the translation that fits the model, turned by the predicted rotation, into the 2D box the crop was made
# from: :func:`pose_core.geometry.translation_from_box`; the regressed one where that cannot be solved), ``blend``
# (:data:`DETECTION_BOX_FIT_WEIGHT` times the box's plus the rest times the regressed one), or ``auto``: ``box`` when
# the caller gives an exact box (a true one), ``blend`` when it gives a detector's, ``regressed`` when the network's
# own box head found it. Measured on the built-in toy's renderings (docs/results/README.md): with given boxes the
# fit adds 4.5-6 points of ADD, with the box head's boxes it loses 9 (that box is not tight enough to fix a depth).
TRANSLATION_SOURCES = ("auto", "regressed", "box", "blend")
# The box fit's weight in ``blend``. A detector's box is off by about 7% in size (median absolute deviation on
# lmo_models' rendered scenes), which the fit turns into 7% of depth; the regressed translation errs on its own.
# Chosen on a validation set of 100 rendered lmo_models scenes (seed 2000, not the test scenes) with bop_train's
# detector, mean ADD(-S) recall: weight 0 10.5%, 0.1 10.7%, 0.25 11.5%, 0.5 9.8%, 0.75 8.7%, 1 7.8%
# (docs/results.md, "Whole photos: the detector").
DETECTION_BOX_FIT_WEIGHT = 0.25
DEFAULT_TRANSLATION = "auto"


@dataclass
class PoseResult:
    """One estimate: ``R [3, 3]``, ``t_mm [3]``, the 2D box used (``bbox_xywh``), and the network's own box.

    The coordinate head also gives ``coordinate_picture`` (uint8 RGB: the predicted coordinate map beside the mask
    probability, :func:`pose_net.coordinates.coordinate_picture`), ``ok`` (RANSAC-PnP found a pose) and
    ``num_inliers`` (and ``inlier_error_px``, their mean reprojection error in pixels of the coordinate grid).
    ``translation`` says where ``t_mm`` came from; for the direct head with ``translation="box"``,
    ``ok`` is False where the box fit could not be solved and the regressed translation was kept."""
    R: np.ndarray
    t_mm: np.ndarray
    bbox_xywh: np.ndarray
    predicted_bbox_xywh: np.ndarray
    coordinate_picture: np.ndarray | None = None
    ok: bool = True
    num_inliers: int = 0
    translation: str = "regressed"  # where t_mm came from: regressed, box, blend (TRANSLATION_SOURCES), ransac_pnp or
    # ransac_kabsch (the coordinate head with a depth image)
    t_regressed_mm: np.ndarray | None = None  # the direct head's translation head, whatever t_mm came from
    inlier_error_px: float | None = None  # coordinate head: mean reprojection error of the inliers (grid px)


def load_config(model_dir) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    if not Path(model_dir).is_dir():
        raise PoseInputError(f"model folder {model_dir} does not exist")
    if not path.is_file():
        raise PoseInputError(f"model folder {model_dir} holds no trained model ({CONFIG_FILE} is missing): "
                             f"train one with `python -m pose_net.train --model_dir {model_dir}`")
    return json.loads(path.read_text())


MODEL_SET_FILE = "objects.json"  # a folder of several objects' models: {"objects": {"<obj_id>": "<subfolder>"}}


def model_set(model_dir) -> dict[int, Path]:
    """``{obj_id: model folder}`` of a model folder: the objects of its ``objects.json`` (a folder of per-object
    model folders), the experts of an ESAC model (``esac.json``, all in that folder), or the one object of a single
    model's ``config.json``."""
    model_dir = Path(model_dir)
    index = model_dir / MODEL_SET_FILE
    if index.is_file():
        try:
            objects = json.loads(index.read_text())["objects"]
            out = {int(k): model_dir / v for k, v in objects.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PoseInputError(f"{index}: expected {{\"objects\": {{\"<obj_id>\": \"<subfolder>\"}}}} "
                                 f"({e})") from None
        from pose_net.esac import ESAC_FILE

        for obj_id, folder in out.items():
            if not (folder / CONFIG_FILE).is_file() and not (folder / ESAC_FILE).is_file():
                raise PoseInputError(f"{index}: object {obj_id}'s model folder {folder} holds no {CONFIG_FILE}")
        return out
    from pose_net.esac import ESAC_FILE, load_esac

    if (model_dir / ESAC_FILE).is_file():  # one ESAC model: an expert per object
        return {e.obj_id: model_dir for e in load_esac(model_dir)[1]}
    return {int(load_config(model_dir)["obj_id"]): model_dir}


def load_model(model_dir, config: dict):
    """The trained Keras model: ``model.keras`` if exported, else the latest checkpoint."""
    import keras

    from pose_net.model import build_model

    export = Path(model_dir) / EXPORT_FILE
    if export.is_file():
        return keras.models.load_model(export, compile=False)
    model = build_model(config.get("head", "direct"), config["backbone"], config["input_size"], None,
                        rotation_repr=config.get("rotation_repr", "quaternion"),
                        rotation_hypotheses=config.get("rotation_hypotheses", 1),
                        sampling_head=config.get("stage") == "ngdsac")
    ckpt_dir = Path(model_dir) / "checkpoints"
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    if latest is None:
        raise PoseInputError(f"model folder {model_dir} has no checkpoint in {ckpt_dir} and no {EXPORT_FILE}")
    try:  # every weight of the network must come from the checkpoint (the optimizer's state may stay behind)
        status = tf.train.Checkpoint(model=model).restore(latest)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise PoseInputError(f"checkpoint {latest} does not hold this network's weights (written by another "
                             f"version of the network?): {str(e)[:300]}") from None
    status.expect_partial()
    return model


def image_crops(image, centers, sizes, input_size: int):
    """Square crops of one image ``[H, W, 3]`` resized to ``input_size``: ``(crops [B, S, S, 3] float32 0..255,
    centers [B, 2], sizes [B])`` for crop centres ``[B, 2]`` and sizes ``[B]`` in image pixels."""
    img = tf.convert_to_tensor(image, tf.float32)[None]
    centers = tf.constant(np.asarray(centers, np.float32))
    sizes = tf.constant(np.asarray(sizes, np.float32))
    boxes = param.crop_boxes_normalized(centers, sizes, input_size, np.asarray(image).shape[:2])
    crops = tf.image.crop_and_resize(img, boxes, tf.zeros(len(sizes), tf.int32), [input_size, input_size])
    return crops, centers, sizes


def mask_box_estimator(fit_box_model, obj_id: int) -> "PoseEstimator":
    """The coordinate-head model of ``obj_id`` in the model folder ``fit_box_model`` (a single model or a folder of
    several, as :func:`model_set` reads), whose mask gives the box a translation is fitted into
    (``pose_net.evaluate`` / ``pose_net.predict --fit_box_model``: :meth:`PoseEstimator.refine_box` around a
    detector's box). Raises :class:`PoseInputError` naming the folder where it has no such model."""
    models = model_set(fit_box_model)
    if obj_id not in models:
        raise PoseInputError(f"--fit_box_model {fit_box_model} has no model of object {obj_id} (it knows "
                             f"{sorted(models)})")
    config_path = models[obj_id] / CONFIG_FILE
    head = load_config(models[obj_id]).get("head", "direct") if config_path.is_file() else "esac"
    if head != "coords":
        raise PoseInputError(f"--fit_box_model {fit_box_model}: object {obj_id}'s model has the {head} head; the box "
                             f"comes from a coordinate head's mask (train one with --head coords)")
    return PoseEstimator(models[obj_id])


# The mask's region is grown by this many cells before its extent is read, so the soft edge around the cells above
# the threshold (where the extent is interpolated) stays in it.
MASK_REGION_GROW_CELLS = 2


def mask_extent(prob: np.ndarray, threshold: float | None = None) -> np.ndarray | None:
    """The extent of a mask ``prob [n, n]`` (probabilities on the crop's grid) as ``(x0, y0, x1, y1)`` over the
    crop's side, or None where no cell exceeds ``threshold`` (default :data:`pose_net.coordinates.MASK_THRESHOLD`).

    Only the largest connected region above the threshold counts (a blob on another object is left out), and each
    side is placed where the region's profile (its largest probability per column or row) crosses the threshold,
    interpolated between cell centres, so the box is not tied to the grid: on the rendered can's crops (64x64 grid)
    its size is within 0.9% of the true box's in median (docs/results.md)."""
    from scipy import ndimage

    from pose_net.coordinates import MASK_THRESHOLD

    threshold = MASK_THRESHOLD if threshold is None else threshold
    above = prob > threshold
    labels, count = ndimage.label(above)
    if count == 0:
        return None
    sizes = ndimage.sum(above, labels, range(1, count + 1))
    region = ndimage.binary_dilation(labels == 1 + int(np.argmax(sizes)), iterations=MASK_REGION_GROW_CELLS)
    prob = np.where(region, prob, 0.0)

    def crossing(profile):  # (low, high) in cells where the profile crosses the threshold; cell k's centre: k + 0.5
        idx = np.nonzero(profile > threshold)[0]
        i0, i1 = idx[0], idx[-1]
        low = i0 + 0.5 - (profile[i0] - threshold) / max(profile[i0] - profile[i0 - 1], 1e-6) if i0 > 0 else 0.0
        high = (i1 + 0.5 + (profile[i1] - threshold) / max(profile[i1] - profile[i1 + 1], 1e-6)
                if i1 < len(profile) - 1 else float(len(profile)))
        return low, high

    (x0, x1), (y0, y1) = crossing(prob.max(axis=0)), crossing(prob.max(axis=1))
    return np.array([x0, y0, x1, y1]) / prob.shape[0]


class PoseEstimator:
    """Pose of one object in images, from a trained model folder (or an in-memory model and its config)."""

    def __init__(self, model_dir=None, model=None, config: dict | None = None, translation: str | None = None):
        """``translation``: one of :data:`TRANSLATION_SOURCES` for the direct head in ``roi`` mode (default
        :data:`DEFAULT_TRANSLATION`); the coordinate head's translation always comes from RANSAC-PnP."""
        self.translation = translation or DEFAULT_TRANSLATION
        if self.translation not in TRANSLATION_SOURCES:
            raise PoseInputError(f"unknown translation source {self.translation!r}: choose one of {TRANSLATION_SOURCES}")
        self.config = config if config is not None else load_config(model_dir)
        self.model = model if model is not None else load_model(model_dir, self.config)
        self.input_size = int(self.config["input_size"])
        self.diameter_mm = float(self.config["diameter_mm"])
        self.roi_enlarge = float(self.config.get("roi_enlarge", 1.4))
        self.points_mm = np.asarray(self.config["model_points_mm"], dtype=np.float32)
        self.head = self.config.get("head", "direct")
        if self.head == "coords":
            from pose_net.coordinates import CoordinateFrame, PnPSettings, RgbdSettings

            self.frame = CoordinateFrame.from_json(self.config["coordinate_frame"])
            self.pnp = PnPSettings(**self.config.get("pnp", {}))
            self.rgbd = RgbdSettings(**self.config.get("rgbd", {}))
        self._run = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def _crops(self, image, K, centers, sizes):
        return image_crops(image, centers, sizes, self.input_size)

    def _box_from_mask(self, out, c, s) -> np.ndarray:
        """The coordinate head's box: the extent of its mask on a crop (image pixels, x, y, w, h), see
        :func:`mask_extent`."""
        extent = mask_extent(tf.sigmoid(out["mask"])[0, ..., 0].numpy())
        if extent is None:  # nothing found: the whole crop
            extent = np.array([0.0, 0.0, 1.0, 1.0])
        return param.crop_target_to_box(tf.constant([extent], tf.float32), c, s).numpy()[0].astype(np.float64)

    def _own_box(self, out, c, s) -> np.ndarray:
        """The network's own box of the object on a crop (image pixels, x, y, w, h): the direct head's box head, the
        coordinate head's mask extent (:meth:`_box_from_mask`)."""
        if self.head == "coords":
            return self._box_from_mask(out, c, s)
        return param.crop_target_to_box(out["box"], c, s).numpy()[0]

    def _run_around(self, image, K, box):
        """The network's outputs on the crop around ``box`` (``roi_enlarge`` times it): ``(out, centers, sizes)``."""
        center, size = param.roi_crop_from_box(np.asarray(box, np.float32)[None], self.roi_enlarge)
        crops, c, s = self._crops(image, K, center.numpy(), size.numpy())
        return self._run(crops), c, s

    def refine_box(self, image: np.ndarray, K: np.ndarray, bbox_xywh) -> np.ndarray:
        """A detector's box of this object (pixels, x, y, w, h) made again by the pose network: its own box on the
        crop around the given one (the direct head's box head; the coordinate head's mask extent), the second stage
        of a two-stage detector. The network was trained on crops around jittered true boxes (enlarged 1.4 x (1 +-
        0.25), shifted up to 0.12 of a side: pose_net/data.py) to find the whole object, hidden parts included,
        so a box that is cut short where the object is occluded, or off centre, comes back closer to the object's
        extent (docs/results.md: the real cracker box behind a can). A model of ``full`` input mode returns the box
        as it is."""
        box = np.asarray(bbox_xywh, np.float64)
        if self.head != "coords" and self.config.get("input_mode", "roi") != "roi":
            return box
        return np.asarray(self._own_box(*self._run_around(image, K, box)), np.float64)

    def refine_detection(self, image: np.ndarray, K: np.ndarray, detection):
        """A :class:`pose_net.detector.Detection` of this object with its box made again (:meth:`refine_box`), the
        detector's own kept as ``detector_bbox_xywh``: the refined box says where the object is (matching,
        detection recall, the picture), the detector's is the one a translation is fitted into
        (``estimate(..., detection.detector_box, box_is_detection=True)``). Measured on the real photos
        (docs/results.md): the refined boxes find the occluded cracker box where the detector's are cut short, but
        the network's box is less exact in size on an unoccluded object (the can: 20% too wide), and a box fit turns
        a size error into a depth error (the can's ADD-S with the refined boxes 0% against 50%)."""
        from dataclasses import replace

        return replace(detection, bbox_xywh=self.refine_box(image, K, detection.detector_box),
                       detector_bbox_xywh=np.asarray(detection.detector_box, np.float64))

    def estimate(self, image: np.ndarray, K: np.ndarray, bbox_xywh=None, depth_mm: np.ndarray | None = None,
                 box_is_detection: bool = False, fit_box_xywh=None) -> PoseResult:
        """Pose in one RGB image ``[H, W, 3]`` (uint8) with intrinsics ``K [3, 3]``.

        ``bbox_xywh``: a 2D box of the object (pixels) to crop around; ``None`` finds it first with the network's
        own box head (the coordinate head: the extent of its mask) on the whole image (or uses the whole image in
        ``full`` input mode). ``box_is_detection``: the box is a detector's, not a true one (the ``auto``
        translation then blends the box fit with the regressed translation, :data:`DETECTION_BOX_FIT_WEIGHT`).
        ``depth_mm`` ``[H, W]`` (z-depth in mm, 0 = none; coordinate head only): the pose comes from 3D-3D
        correspondences by RANSAC-Kabsch (:func:`pose_net.coordinates.solve_pose_rgbd`) instead of RANSAC-PnP;
        ``inlier_error_px`` is then None. ``fit_box_xywh`` (direct head, ``roi`` input): a tighter box of the object
        than the one cropped around (a coordinate head's mask around a detector's box, :func:`mask_box_estimator`);
        the translation is then fitted into it (``translation`` "box") whatever the ``translation`` setting.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise PoseInputError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
        h, w = image.shape[:2]
        from pose_core.geometry import check_camera_fits_image

        check_camera_fits_image(K, (h, w))
        if depth_mm is not None:
            depth_mm = np.asarray(depth_mm, np.float32)
            if self.head != "coords":
                raise PoseInputError("a depth image is used by the coordinate head only (--head coords); this model "
                                     f"has the {self.head} head")
            if depth_mm.shape != (h, w):
                raise PoseInputError(f"the depth image is {depth_mm.shape[1]}x{depth_mm.shape[0]}, the RGB image "
                                     f"{w}x{h}: they must be registered, pixel for pixel")
            if not np.isfinite(depth_mm).all() or (depth_mm < 0).any():
                raise PoseInputError("the depth image has negative or non-finite values (expected mm, 0 = none)")
        Kb = tf.constant(np.asarray(K, np.float32)[None])
        full_center, full_size = [[(w - 1) / 2.0, (h - 1) / 2.0]], [float(max(h, w))]
        if self.head == "coords" and bbox_xywh is not None:
            predicted_box = np.full(4, np.nan)  # not computed: the box was given
        else:
            crops, c, s = self._crops(image, K, full_center, full_size)
            out = self._run(crops)
            predicted_box = self._own_box(out, c, s)
        if self.head == "coords":
            from pose_net.coordinates import coordinate_picture, solve_pose

            box = predicted_box if bbox_xywh is None else np.asarray(bbox_xywh, np.float64)
            out, c, s = self._run_around(image, K, box)
            if depth_mm is None:
                R, t, ok, inliers, inlier_error = solve_pose(out, Kb, c, s, self.frame, self.diameter_mm, self.pnp)
                method = "ransac_pnp"
            else:
                from pose_net.coordinates import camera_points_from_depth, solve_pose_rgbd

                cam = camera_points_from_depth(depth_mm[None], Kb, c, s, int(out["coords"].shape[1]))
                R, t, ok, inliers, _ = solve_pose_rgbd(out, cam, Kb, c, s, self.frame, self.diameter_mm, self.rgbd)
                inlier_error, method = [None], "ransac_kabsch"
            sampling = out["sampling"][0].numpy() if "sampling" in out else None
            picture = coordinate_picture(out["coords"][0].numpy(), out["mask"][0].numpy(), sampling_logit=sampling)
            return PoseResult(R[0], t[0], np.asarray(box, np.float64), predicted_box, picture, bool(ok[0]),
                              int(inliers[0]), method,
                              inlier_error_px=None if inlier_error[0] is None else float(inlier_error[0]))
        if self.config.get("input_mode", "roi") == "roi":
            box = predicted_box if bbox_xywh is None else np.asarray(bbox_xywh, np.float64)
            out, c, s = self._run_around(image, K, box)
        else:
            box = predicted_box
        R, t = param.decode_pose(out, Kb, c, s, self.diameter_mm)
        R, t = R.numpy()[0].astype(np.float64), t.numpy()[0].astype(np.float64)
        ok, source, t_regressed = True, self.translation, t
        if source == "auto":
            source = "regressed" if bbox_xywh is None else "blend" if box_is_detection else "box"
        if fit_box_xywh is not None:
            source = "box"
        if source in ("box", "blend") and self.config.get("input_mode", "roi") == "roi":
            from pose_core.geometry import translation_from_box

            fit_box = box if fit_box_xywh is None else np.asarray(fit_box_xywh, np.float64)
            t, ok = translation_from_box(self.points_mm, R, fit_box, K, t, image.shape[:2])
            if source == "blend":
                t = DETECTION_BOX_FIT_WEIGHT * t + (1.0 - DETECTION_BOX_FIT_WEIGHT) * t_regressed
        else:
            source = "regressed"
        return PoseResult(R, t, np.asarray(box, np.float64), predicted_box, ok=ok, translation=source,
                          t_regressed_mm=t_regressed)

    def network_outputs(self, images):
        """The network's raw outputs (a dict of tensors) for crops ``[B, S, S, 3]`` (0..255)."""
        return self._run(images)

    def estimate_batch(self, batch, outputs=None) -> tuple[np.ndarray, np.ndarray]:
        """Poses for a batch from :func:`pose_net.data.make_dataset` (its crops): ``(R [B, 3, 3], t_mm [B, 3])``.
        ``outputs``: the network's outputs on these crops when the caller already has them."""
        out = self._run(batch["image"]) if outputs is None else outputs
        if self.head == "coords":
            from pose_net.coordinates import solve_pose

            R, t, _, _, _ = solve_pose(out, batch["K"], batch["crop_center"], batch["crop_size"], self.frame,
                                       self.diameter_mm, self.pnp)
            return R, t
        R, t = param.decode_pose(out, batch["K"], batch["crop_center"], batch["crop_size"], self.diameter_mm)
        return R.numpy().astype(np.float64), t.numpy().astype(np.float64)
