"""Finding the trained objects in whole photos: a detector trained on rendered scenes only.

    python -m pose_net.detector --scenes ROOT[,ROOT...] --out DETECTOR_DIR [--obj_ids 1,5|all] [--epochs 30]
    python -m pose_net.detector --detector_dir DETECTOR_DIR --eval ROOT [--min_visib 0.1]
    python -m pose_net.detector --ensemble DETECTOR_DIR,DETECTOR_DIR[,...] --out DETECTOR_DIR

A CenterNet-style detector ("Objects as Points", Zhou et al. 2019): the frozen ImageNet EfficientNet-Lite0 of the
pose network sees the photo shrunk so its longer side is :data:`INPUT_LONG_SIDE` pixels (640x480 -> 320x240, padded
to a multiple of 32); a small feature pyramid over its stride-8, -16 and -32 outputs (:data:`FEATURE_LAYERS`) feeds
three stride-8 maps:

* ``heatmap [B, h, w, C]``: per object class, the logit that an object's box centre lies in the cell;
* ``size [B, h, w, 2]``: ``log`` of the box's width and height in cells;
* ``offset [B, h, w, 2]``: the centre's sub-cell position.

Boxes are BOP's ``bbox_obj`` (the box of the whole projected model, occluded parts included): the box the pose
network crops around. Decoding keeps the cells that are the maximum of their 3x3 neighbourhood, the top
:data:`MAX_DETECTIONS` with a score of at least :data:`MIN_SCORE`.

Why not a maintained detector (keras-hub's RetinaNet takes our Lite0 as its image encoder): it trains from images,
so each step runs the frozen backbone again over the photo; with the backbone frozen, its features of a rendering
are the same at every step, and this detector computes them once (:func:`cache_features`) and trains only its
small head on them, thousands of steps in minutes on 2 cores (measured beside keras-hub in docs/detector.md).

Training data: BOP folders of rendered scenes (``render.scenes``, at the test camera's intrinsics halved, so the
objects have the sizes they have in the shrunk photos). Instances less visible than :data:`TRAIN_MIN_VISIB` are
neither positives nor negatives (their boxes are left out of the heatmap loss).

The detector folder holds ``detector.json`` (object ids, input size, training record) and ``detector.keras`` (the
whole network, backbone included); :class:`Detector` loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from pose_core import PoseInputError, bop

INPUT_LONG_SIDE = 320  # photos are resized so their longer side has this many pixels (640x480 -> 320x240)
INPUT_MULTIPLE = 32  # and padded (bottom / right, grey) to a multiple of the backbone's stride
PAD_VALUE = 127.0  # grey: the backbone's normalisation maps it to about 0
STRIDE = 8  # of the output maps
# Lite0 outputs the pyramid is built on: stride 8 (40 ch), 16 (112 ch), 32 (320 ch)
FEATURE_LAYERS = ("block4_add", "block10_add", "block15_project_bn")
PYRAMID_CHANNELS = 64
HEATMAP_PRIOR = 0.01  # initial object probability of a cell (the heatmap's bias, as in CenterNet / RetinaNet)
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0  # CenterNet's penalty-reduced focal loss
GAUSSIAN_FRACTION = 0.54 / 6.0  # the centre's Gaussian: sigma = this * box side (TTFNet's elliptical Gaussian)
MIN_SIGMA_CELLS = 0.5
SIZE_WEIGHT, OFFSET_WEIGHT = 1.0, 1.0  # of the L1 losses at the centre cells, beside the heatmap's focal loss
TRAIN_MIN_VISIB = 0.2  # rendered instances less visible than this are ignored in training
MIN_SCORE = 0.1  # detections below this score are dropped
DETECTION_IOU = 0.5  # a detection is right when its box overlaps the true one this much (PASCAL VOC's criterion)
# the diagnostic "found among its K best detections" (detection_recall): a missed object ranked low, or never seen
DIAGNOSTIC_TOP_K = 3
MAX_DETECTIONS = 20  # per photo
MAX_INSTANCES = 16  # per training image (targets are padded to this)
DETECTOR_CONFIG, DETECTOR_MODEL = "detector.json", "detector.keras"
DETECTOR_SUBDIR = "detector"  # where a model folder (one pose model, or bop_train's run) keeps its detector


def detector_files(detector_dir) -> list[Path]:
    """The files of a trained detector folder, its config then its network (``save_detector`` writes the network
    first): what loading it reads, and what a result computed from it depends on (``inputs`` of
    :func:`experiments.common.cached_json`), not the evaluations kept beside them."""
    return [Path(detector_dir) / DETECTOR_CONFIG, Path(detector_dir) / DETECTOR_MODEL]


def is_trained(detector_dir) -> bool:
    """Whether ``detector_dir`` holds a finished detector (both of :func:`detector_files`)."""
    return all(f.is_file() for f in detector_files(detector_dir))


class DetectorError(PoseInputError):
    """Bad input to the detector (folders, ids, images)."""


@dataclass
class Detection:
    obj_id: int
    score: float
    bbox_xywh: np.ndarray  # in the photo's pixels
    # the detector's own box when ``bbox_xywh`` was made again by the object's pose network
    # (pose_net.inference.PoseEstimator.refine_detection); None: ``bbox_xywh`` is the detector's
    detector_bbox_xywh: np.ndarray | None = None

    @property
    def detector_box(self) -> np.ndarray:
        """The detector's own box (what a pose's translation is fitted into: pose_net.inference)."""
        return self.bbox_xywh if self.detector_bbox_xywh is None else self.detector_bbox_xywh


# -------------------------------------------------------------------------------------------------- geometry
def input_shape(height: int, width: int) -> tuple[float, int, int]:
    """``(scale, H_in, W_in)``: a ``height x width`` photo is resized by ``scale`` and padded to ``H_in x W_in``."""
    scale = INPUT_LONG_SIDE / float(max(height, width))
    pad = lambda v: int(np.ceil(round(v * scale) / INPUT_MULTIPLE) * INPUT_MULTIPLE)  # noqa: E731
    return scale, pad(height), pad(width)


def prepare_image(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """A photo ``[H, W, 3]`` (uint8) -> the network's input ``[H_in, W_in, 3]`` (float32 0..255) and its scale."""
    import cv2

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DetectorError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    scale, hp, wp = input_shape(h, w)
    size = (int(round(w * scale)), int(round(h * scale)))
    small = rgb if size == (w, h) else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    out = np.full((hp, wp, 3), PAD_VALUE, np.float32)
    out[:size[1], :size[0]] = small
    return out, scale


def box_iou(a, b) -> float:
    """IoU of two boxes ``(x, y, w, h)``."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


# ---------------------------------------------------------------------------------------------------- network
def build_backbone(weights: str = "imagenet"):
    """Frozen Lite0 ``[B, H, W, 3] (0..255)`` -> its :data:`FEATURE_LAYERS` outputs (a list)."""
    import keras

    from pose_net.backbones import build_lite0_backbone

    lite0 = build_lite0_backbone(None, weights=weights, freeze=True, verbose=False)
    out = [lite0.get_layer(n).output for n in FEATURE_LAYERS]
    model = keras.Model(lite0.input, out, name="detector_backbone")
    model.trainable = False
    model.imagenet_weights_loaded = lite0.imagenet_weights_loaded
    return model


# Fine-tuning Lite0's top from cached features, as the pose network does: its learning rate is this share of the
# head's (docs/results/README.md: at the head's own rate it forgets ImageNet)
TOP_LEARNING_RATE_SCALE = 0.1
# How many of the backbone's stages above the cached features train (``fine_tune_stages``): 1 = the last stage,
# blocks 11-15, from the cached stride-16 features (FEATURE_LAYERS[1]); 2 = blocks 5-15, from the stride-8 ones
FINE_TUNE_STAGES = (1, 2)


def fine_tune_input_index(stages: int) -> int:
    """The index in :data:`FEATURE_LAYERS` of the cached features the top ``stages`` of the backbone train from;
    :class:`DetectorError` for a count not in :data:`FINE_TUNE_STAGES`."""
    if stages not in FINE_TUNE_STAGES:
        raise DetectorError(f"fine_tune_stages must be 0 (a frozen backbone) or one of {FINE_TUNE_STAGES}, "
                            f"got {stages}")
    return len(FEATURE_LAYERS) - 1 - stages


def backbone_top_stage(backbone, stages: int = 1):
    """The top ``stages`` of ``backbone`` (:func:`build_backbone`; see :data:`FINE_TUNE_STAGES`) as a model, the
    cached features of :data:`FEATURE_LAYERS` ``[-1 - stages]`` -> the list of those above it, sharing its layers:
    training it changes ``backbone``. Its convolutions become trainable, its batch norms stay frozen (ImageNet
    statistics): :func:`pose_net.feature_cache.train_only`."""
    from pose_net.feature_cache import train_only

    top = backbone_slice(backbone, fine_tune_input_index(stages), "detector_backbone_top")
    train_only(backbone, top)
    return top


def backbone_slice(backbone, first: int, name: str):
    """``backbone`` above :data:`FEATURE_LAYERS` ``[first]`` as a model sharing its layers: that feature map -> the
    list of the feature maps above it (the part a detector with ``fine_tune_stages`` trains)."""
    import keras

    return keras.Model(backbone.get_layer(FEATURE_LAYERS[first]).output,
                       [backbone.get_layer(n).output for n in FEATURE_LAYERS[first + 1:]], name=name)


def build_head(num_classes: int, channels=(40, 112, 320)):
    """The trainable part: stride-8/16/32 features -> ``{"heatmap", "size", "offset"}`` at stride 8."""
    import keras
    from keras import layers

    inputs = [keras.Input((None, None, c), name=f"features_s{8 * 2 ** k}") for k, c in enumerate(channels)]
    x = layers.Conv2D(PYRAMID_CHANNELS, 1, name="lateral_s32")(inputs[2])
    for k, name in ((1, "s16"), (0, "s8")):  # top-down: upsample and add the lateral connection
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up_to_{name}")(x)
        x = layers.Add(name=f"merge_{name}")([x, layers.Conv2D(PYRAMID_CHANNELS, 1, name=f"lateral_{name}")(inputs[k])])
    for k in range(2):
        x = layers.Conv2D(PYRAMID_CHANNELS, 3, padding="same", name=f"head_conv{k}")(x)
        x = layers.BatchNormalization(name=f"head_bn{k}")(x)
        x = layers.ReLU(name=f"head_relu{k}")(x)
    prior = float(-np.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
    heat = layers.Conv2D(num_classes, 1, bias_initializer=keras.initializers.Constant(prior), name="heatmap")(x)
    size = layers.Conv2D(2, 1, name="size")(x)
    offset = layers.Conv2D(2, 1, name="offset")(x)
    return keras.Model(inputs, {"heatmap": heat, "size": size, "offset": offset}, name="detector_head")


def build_detector(backbone, head):
    """The whole network, photo in, maps out (what is saved and run at inference)."""
    import keras

    image = keras.Input((None, None, 3), name="image")
    return keras.Model(image, head(backbone(image)), name="detector")


# ---------------------------------------------------------------------------------------------------- targets
def centre_cell(box_cells, out_hw) -> tuple[float, float, int, int]:
    """``(cx, cy, ix, iy)``: the centre of a box ``(x, y, w, h)`` in cells of the stride-:data:`STRIDE` maps, and
    the cell ``(ix, iy)`` holding it, clipped to the ``h x w`` map (the one place the centre cell is chosen: the
    instance targets and the heatmap's peak must agree)."""
    h, w = out_hw
    x, y, bw, bh = box_cells
    cx, cy = x + bw / 2, y + bh / 2
    return cx, cy, int(np.clip(np.floor(cx), 0, w - 1)), int(np.clip(np.floor(cy), 0, h - 1))


def instance_targets(boxes_xywh, classes, ignore, out_hw) -> dict[str, np.ndarray]:
    """Training targets of one image from its boxes in input pixels ``[n, 4]``, class indices ``[n]`` and an
    ignore flag ``[n]`` (too occluded): the Gaussian heatmap ``[h, w, C]`` is made by the caller's class count;
    here the per-instance arrays padded to :data:`MAX_INSTANCES` (``centre_index``, ``size_log``, ``offset``,
    ``valid``) and the heatmap's weight map ``[h, w]`` (0 inside ignored boxes)."""
    h, w = out_hw
    centre_index = np.zeros(MAX_INSTANCES, np.int32)
    size_log = np.zeros((MAX_INSTANCES, 2), np.float32)
    offset = np.zeros((MAX_INSTANCES, 2), np.float32)
    valid = np.zeros(MAX_INSTANCES, np.float32)
    weight = np.ones((h, w), np.float32)
    k = 0
    for box, c, ign in zip(boxes_xywh, classes, ignore):
        x, y, bw, bh = np.asarray(box, np.float64) / STRIDE
        if bw <= 0 or bh <= 0:
            continue
        if ign:
            weight[max(0, int(y)):int(np.ceil(y + bh)), max(0, int(x)):int(np.ceil(x + bw))] = 0.0
            continue
        cx, cy, ix, iy = centre_cell((x, y, bw, bh), out_hw)
        if k < MAX_INSTANCES:
            centre_index[k], valid[k] = iy * w + ix, 1.0
            size_log[k] = np.log([bw, bh])
            offset[k] = (cx - ix, cy - iy)
            k += 1
    return {"centre_index": centre_index, "size_log": size_log, "offset": offset, "valid": valid,
            "weight": weight}


def gaussian_heatmap(boxes_xywh, classes, ignore, out_hw, num_classes: int) -> np.ndarray:
    """``[h, w, C]``: per class, the maximum over its instances of an elliptical Gaussian at the box centre
    (sigma = :data:`GAUSSIAN_FRACTION` x the box side, in cells), exactly 1 at the centre cell."""
    h, w = out_hw
    heat = np.zeros((h, w, num_classes), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for box, c, ign in zip(boxes_xywh, classes, ignore):
        x, y, bw, bh = np.asarray(box, np.float64) / STRIDE
        if ign or bw <= 0 or bh <= 0:
            continue
        _, _, ix, iy = centre_cell((x, y, bw, bh), out_hw)
        ix, iy = np.float64(ix), np.float64(iy)  # float64 arithmetic: the Gaussian as it always was, bit for bit
        sx, sy = max(GAUSSIAN_FRACTION * bw, MIN_SIGMA_CELLS), max(GAUSSIAN_FRACTION * bh, MIN_SIGMA_CELLS)
        g = np.exp(-((xs - ix) ** 2) / (2 * sx ** 2) - ((ys - iy) ** 2) / (2 * sy ** 2))
        heat[..., c] = np.maximum(heat[..., c], g)
    return heat


# ------------------------------------------------------------------------------------------------------- loss
def detection_loss(out: dict, batch: dict):
    """CenterNet's loss, a dict of scalars (``total``, ``heatmap``, ``size``, ``offset``).

    ``out``: the head's maps (``heatmap`` logits ``[B, h, w, C]``, ``size``/``offset`` ``[B, h, w, 2]``).
    ``batch``: ``heatmap [B, h, w, C]`` (Gaussian targets in [0, 1]), ``weight [B, h, w]``, ``centre_index [B, M]``
    (flattened cell of each instance), ``size_log [B, M, 2]`` (log of width, height in cells), ``offset [B, M, 2]``,
    ``valid [B, M]``. The focal loss is summed and divided by the number of instances (at least 1)."""
    import tensorflow as tf

    logits, target = out["heatmap"], batch["heatmap"]
    p = tf.clip_by_value(tf.sigmoid(logits), 1e-4, 1 - 1e-4)
    pos = tf.cast(target >= 1.0 - 1e-6, tf.float32)
    weight = batch["weight"][..., None]
    pos_loss = -tf.math.log(p) * (1 - p) ** FOCAL_ALPHA * pos
    neg_loss = -tf.math.log(1 - p) * p ** FOCAL_ALPHA * (1 - target) ** FOCAL_BETA * (1 - pos)
    n = tf.maximum(tf.reduce_sum(batch["valid"]), 1.0)
    heat_loss = tf.reduce_sum((pos_loss + neg_loss) * weight) / n

    def at_centres(m):
        flat = tf.reshape(m, [tf.shape(m)[0], -1, 2])
        return tf.gather(flat, batch["centre_index"], batch_dims=1)

    valid = batch["valid"][..., None]
    size_loss = tf.reduce_sum(tf.abs(at_centres(out["size"]) - batch["size_log"]) * valid) / n
    offset_loss = tf.reduce_sum(tf.abs(at_centres(out["offset"]) - batch["offset"]) * valid) / n
    total = heat_loss + SIZE_WEIGHT * size_loss + OFFSET_WEIGHT * offset_loss
    return {"total": total, "heatmap": heat_loss, "size": size_loss, "offset": offset_loss}


# --------------------------------------------------------------------------------------------------- decoding
def decode(out: dict, obj_ids: list[int], scale: float, image_hw, min_score: float = MIN_SCORE,
           max_detections: int = MAX_DETECTIONS) -> list[Detection]:
    """Detections of one image from the maps of a batch of one (numpy or tensors), boxes in the photo's pixels
    (clipped to it), best first."""
    import tensorflow as tf

    heat = tf.sigmoid(out["heatmap"])
    peaks = tf.cast(tf.equal(heat, tf.nn.max_pool2d(heat, 3, 1, "SAME")), heat.dtype) * heat
    heat = peaks[0].numpy()
    size, offset = np.asarray(out["size"][0]), np.asarray(out["offset"][0])
    h, w, c = heat.shape
    flat = heat.reshape(-1)
    top = np.argsort(-flat)[:max_detections]
    H, W = image_hw
    dets = []
    for idx in top:
        score = float(flat[idx])
        if score < min_score:
            break
        cell, cls = divmod(int(idx), c)
        iy, ix = divmod(cell, w)
        cx, cy = (ix + offset[iy, ix, 0]) * STRIDE, (iy + offset[iy, ix, 1]) * STRIDE
        bw, bh = np.exp(np.clip(size[iy, ix], -5.0, 8.0)) * STRIDE
        x0, y0 = max(0.0, (cx - bw / 2) / scale), max(0.0, (cy - bh / 2) / scale)
        x1, y1 = min(float(W), (cx + bw / 2) / scale), min(float(H), (cy + bh / 2) / scale)
        if x1 > x0 and y1 > y0:
            dets.append(Detection(int(obj_ids[cls]), score, np.array([x0, y0, x1 - x0, y1 - y0])))
    return dets


def match_detections(detections: list[Detection], obj_id: int, gt_boxes: list) -> list[Detection | None]:
    """For the ``n`` true boxes of ``obj_id`` in an image: the top-``n`` detections of that object (by score), each
    given to the true box it overlaps most (greedily, best pairs first); None where none is left. The detections
    used do not depend on the truth, only their pairing does (as BOP pairs estimates with instances)."""
    mine = [d for d in detections if d.obj_id == obj_id][:len(gt_boxes)]
    pairs = sorted(((box_iou(d.bbox_xywh, g), i, j) for i, d in enumerate(mine) for j, g in enumerate(gt_boxes)),
                   reverse=True)
    out: list[Detection | None] = [None] * len(gt_boxes)
    used = set()
    for _, i, j in pairs:
        if i not in used and out[j] is None:
            out[j], _ = mine[i], used.add(i)
    return out


def match_with_ious(detections: list[Detection], obj_id: int, gt_boxes: list) -> tuple[list[Detection | None],
                                                                                      list[float]]:
    """:func:`match_detections`, and each true box's IoU with its detection (0 where none): how evaluation and
    :func:`detection_recall` both pair detections with the truth."""
    matched = match_detections(detections, obj_id, gt_boxes)
    return matched, [0.0 if d is None else box_iou(d.bbox_xywh, g) for d, g in zip(matched, gt_boxes)]


def best_iou_among_top(detections: list[Detection], obj_id: int, gt_boxes: list, k: int) -> list[float]:
    """Each true box's best IoU with any of the ``k`` best-scoring detections of ``obj_id`` (0 where there is none).
    A diagnostic, not the recall: it tells a missed object that was found but ranked below another detection from
    one the detector never fired on."""
    mine = [d for d in detections if d.obj_id == obj_id][:k]
    return [max((box_iou(d.bbox_xywh, g) for d in mine), default=0.0) for g in gt_boxes]


def detected_share(ious, iou: float = DETECTION_IOU) -> float:
    """The detection recall of matched IoUs (:func:`match_with_ious`): the share of at least ``iou``."""
    return float(np.mean(np.asarray(ious) >= iou))


# ------------------------------------------------------------------------------------------------- inference
class Detector:
    """A trained detector folder: ``detect(rgb)`` -> detections of its objects, best first."""

    def __init__(self, detector_dir):
        import keras
        import tensorflow as tf

        d = Path(detector_dir)
        cfg_path, model_path = detector_files(d)
        if not is_trained(d):
            raise DetectorError(f"{d} holds no trained detector ({DETECTOR_CONFIG} and {DETECTOR_MODEL}): train one "
                                f"with `python -m pose_net.detector --scenes SCENES --out {d}`")
        self.dir = d
        self.config = json.loads(cfg_path.read_text())
        self.obj_ids = [int(i) for i in self.config["obj_ids"]]
        self.model = keras.models.load_model(model_path, compile=False)
        self._run = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        self._memo: dict = {}

    def detect(self, rgb: np.ndarray, min_score: float = MIN_SCORE) -> list[Detection]:
        x, scale = prepare_image(rgb)
        out = self._run(x[None])
        return decode(out, self.obj_ids, scale, np.asarray(rgb).shape[:2], min_score)

    def detect_file(self, path, rgb: np.ndarray | None = None) -> list[Detection]:
        """:meth:`detect` of an image file, remembered for the last few files (evaluation asks once per object)."""
        key = str(path)
        if key not in self._memo:
            if rgb is None:
                from PIL import Image

                rgb = np.asarray(Image.open(path).convert("RGB"))
            if len(self._memo) > 8:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = self.detect(rgb)
        return self._memo[key]


def find_detector(model_dir, detector_dir=None) -> Path | None:
    """``detector_dir`` if given (it must hold a detector), else ``MODEL_DIR/detector`` when it holds one."""
    if detector_dir:
        if not is_trained(detector_dir):
            missing = [f.name for f in detector_files(detector_dir) if not f.is_file()]
            raise DetectorError(f"--detector {detector_dir} holds no trained detector ({' and '.join(missing)} "
                                f"missing)")
        return Path(detector_dir)
    d = Path(model_dir) / DETECTOR_SUBDIR
    return d if is_trained(d) else None


# -------------------------------------------------------------------------------------------------- training
def training_camera(K, width: int, height: int) -> dict:
    """The camera to render a detector's training scenes at (``render.scenes --camera``): the test camera shrunk as
    :func:`prepare_image` shrinks its photos, so objects have the pixel sizes the detector sees (and rendering is
    about 7x faster than at 640x480)."""
    scale = INPUT_LONG_SIDE / float(max(width, height))
    K = np.asarray(K, np.float64).reshape(3, 3).copy()
    K[:2] *= scale
    return {"cam_K": K.reshape(9).tolist(), "width": int(round(width * scale)), "height": int(round(height * scale))}


def render_training_scenes(models_dir, out, obj_ids: list[int], num_images: int, camera: dict, mode: str,
                           seed: int, objects_per_image=(1, 4), backgrounds=None, exclude_obj_ids=(), log=None,
                           distractors_dir=None, object_size_frac=None, texture_photos=None, poses=None,
                           occluder_share=None, part_material_share=None):
    """Renders (or finishes) one folder of training scenes at ``camera`` (:func:`training_camera`), ``render.scenes``
    in a subprocess; returns the folder. ``distractors_dir``: a models folder of other objects shown unannotated
    (without them the object is the only rendered thing on a real background, and a detector learns to find
    whatever looks rendered); ``object_size_frac``: its projected diameter over the shorter image side, ``(min,
    max)`` (default render.scenes'); ``texture_photos``: a folder of photos that random appearances cut textures
    from (``render.scenes --texture_photos``; ``exclude_obj_ids`` applies); ``poses``: ``render.scenes --poses``
    (None: its default, uniform on SO(3)); ``occluder_share``: ``render.scenes --occluder_share`` (None: none);
    ``part_material_share``: ``render.scenes --part_material_share`` (None: none)."""
    from render.scenes import render_scenes_in_subprocess

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    camera_file = out.parent / f"{out.name}_camera.json"
    camera_file.write_text(json.dumps(camera))
    return render_scenes_in_subprocess(
        models_dir, out, log=log, obj_ids=list(obj_ids), num_images=num_images, camera=camera_file,
        randomization=mode, seed=seed, backgrounds=backgrounds, exclude_obj_ids=list(exclude_obj_ids) or None,
        objects_per_image=(objects_per_image[0], min(objects_per_image[1], len(obj_ids))),
        distractors_dir=distractors_dir, object_size_frac=object_size_frac, texture_photos=texture_photos,
        poses=poses, occluder_share=occluder_share or None, part_material_share=part_material_share or None)


def list_training_images(roots, obj_ids: list[int] | None) -> tuple[list, list[int]]:
    """``([(rgb path, [(obj_id, bbox_obj, visib_fract)], (H, W))], obj_ids)`` of BOP scene folders
    (``render.scenes`` output: ``scene_gt.json`` and ``scene_gt_info.json`` per scene)."""
    items, seen = [], set()
    for root in roots:
        root = Path(root)
        scenes = sorted(p for p in (root / "test").glob("*") if p.is_dir()) if (root / "test").is_dir() else []
        if not scenes:
            raise DetectorError(f"{root}: no scene folders under test/ (render them with python -m render.scenes)")
        for scene in scenes:
            try:
                gt = json.loads((scene / "scene_gt.json").read_text())
                info = json.loads((scene / "scene_gt_info.json").read_text())
            except (OSError, ValueError) as e:
                raise DetectorError(f"{scene}: cannot read scene_gt.json / scene_gt_info.json ({e})") from None
            for im_id in sorted(gt, key=int):
                if im_id not in info:
                    continue
                insts = [(int(g["obj_id"]), i["bbox_obj"], float(i.get("visib_fract", 1.0)))
                         for g, i in zip(gt[im_id], info[im_id])]
                seen.update(o for o, _, _ in insts)
                items.append((scene / "rgb" / f"{int(im_id):06d}.png", insts))
    if not items:
        raise DetectorError(f"no annotated images in {', '.join(map(str, roots))}")
    ids = sorted(seen) if obj_ids is None else list(obj_ids)
    if missing := [i for i in ids if i not in seen]:
        raise DetectorError(f"the scenes show no instance of object(s) {missing} (they show {sorted(seen)})")
    return items, ids


def cache_features(backbone, items, obj_ids: list[int], cache_dir: Path, batch_size: int = 16,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """The backbone's features (float16) and the targets of every training image, computed once and saved as
    ``cache_dir/*.npy`` (``done`` last); a finished cache is loaded, not recomputed."""
    import tensorflow as tf
    from PIL import Image

    cache_dir = Path(cache_dir)
    key = {"images": len(items), "first": str(items[0][0]), "last": str(items[-1][0]), "obj_ids": obj_ids,
           "layers": list(FEATURE_LAYERS), "long_side": INPUT_LONG_SIDE, "train_min_visib": TRAIN_MIN_VISIB}
    if (cache_dir / "done").is_file() and json.loads((cache_dir / "key.json").read_text()) == key:
        return load_cached_features(cache_dir)
    cls_of = {o: k for k, o in enumerate(obj_ids)}
    features_of = tf.function(lambda x: backbone(x, training=False))
    parts: dict[str, list] = {}
    t0 = time.time()
    first_shape = None  # every image of one detector's cache has one size
    for start in range(0, len(items), batch_size):
        images, targets = [], []
        for path, insts in items[start:start + batch_size]:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            x, scale = prepare_image(rgb)
            out_hw = (x.shape[0] // STRIDE, x.shape[1] // STRIDE)
            keep = [(cls_of[o], np.asarray(b, np.float64) * scale, v) for o, b, v in insts if o in cls_of]
            boxes = [b for _, b, _ in keep]
            classes = [c for c, _, _ in keep]
            ignore = [v < TRAIN_MIN_VISIB for _, _, v in keep]
            t = instance_targets(boxes, classes, ignore, out_hw)
            t["heatmap"] = gaussian_heatmap(boxes, classes, ignore, out_hw, len(obj_ids)).astype(np.float16)
            images.append(x)
            targets.append(t)
        first_shape = first_shape or images[0].shape
        if any(im.shape != first_shape for im in images):
            raise DetectorError(f"training images of different sizes near {items[start][0]}: render every scene "
                                "folder of one detector at one camera size")
        feats = features_of(np.stack(images))
        for k, f in enumerate(feats):
            parts.setdefault(f"features{k}", []).append(f.numpy().astype(np.float16))
        for name in targets[0]:
            parts.setdefault(name, []).append(np.stack([t[name] for t in targets]))
        if progress and (start // batch_size) % 20 == 0:
            done = start + len(images)
            print(f"detector features: {done}/{len(items)} images ({done / max(time.time() - t0, 1e-9):.1f} img/s)",
                  flush=True)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(cache_dir / f"{k}.npy", v)
    (cache_dir / "key.json").write_text(json.dumps(key, indent=1))
    (cache_dir / "done").write_text("")
    return arrays


def training_steps(num_images: int, epochs: int, batch_size: int) -> int:
    """The optimizer steps of a training of ``epochs`` over ``num_images`` in full batches of ``batch_size`` (the
    last partial batch of an epoch is left out); raises :class:`DetectorError` when that is no step at all."""
    if epochs < 1 or batch_size < 1:
        raise DetectorError(f"--epochs and --batch_size must be >= 1, got {epochs}, {batch_size}")
    if num_images < batch_size:
        raise DetectorError(f"{num_images} training images, fewer than one batch of {batch_size}: render more scenes "
                            "or lower --batch_size")
    return epochs * (num_images // batch_size)


def fit_head(data: dict[str, np.ndarray], num_classes: int, epochs: int, batch_size: int = 16,
             learning_rate: float = 2e-3, seed: int = 0, progress: bool = True, index=None, backbone=None,
             fine_tune_stages: int = 1):
    """Trains a new head on cached features (:func:`cache_features`' arrays; ``index``: the images to use, default
    all) with Adam and a cosine decay; returns ``(head, history)``, one dict of mean losses per epoch. With
    ``backbone`` (:func:`build_backbone`), its top ``fine_tune_stages`` are trained too (:func:`backbone_top_stage`,
    at :data:`TOP_LEARNING_RATE_SCALE` of the rate), from the cached features below them: the cached ones above
    are then not used, and ``backbone`` is changed in place. Fewer images than one batch: :class:`DetectorError`
    (:func:`training_steps`), before anything is built."""
    import keras
    import tensorflow as tf

    index = np.arange(len(data["features0"])) if index is None else np.asarray(index)
    n = len(index)
    steps = training_steps(n, epochs, batch_size)
    keras.utils.set_random_seed(seed)
    head = build_head(num_classes, [data[f"features{k}"].shape[-1] for k in range(len(FEATURE_LAYERS))])
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.02))
    top = backbone_top_stage(backbone, fine_tune_stages) if backbone is not None else None
    first = fine_tune_input_index(fine_tune_stages) if top is not None else None  # the cached features it runs on
    top_vars = top.trainable_variables if top is not None else []
    top_opt = (keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        learning_rate * TOP_LEARNING_RATE_SCALE, steps, alpha=0.02)) if top is not None else None)
    head_vars = head.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(feats, batch):
        with tf.GradientTape() as tape:
            if top is not None:
                above = top(feats[first], training=True)
                feats = list(feats[:first + 1]) + (list(above) if isinstance(above, (list, tuple)) else [above])
            losses = detection_loss(head(feats, training=True), batch)
        grads = tape.gradient(losses["total"], head_vars + top_vars)
        opt.apply_gradients(zip(grads[:len(head_vars)], head_vars))
        if top is not None:
            top_opt.apply_gradients(zip(grads[len(head_vars):], top_vars))
        return losses

    rng = np.random.default_rng(seed)
    history = []
    t0 = time.time()
    for epoch in range(epochs):
        order = index[rng.permutation(n)]
        sums: dict[str, float] = {}
        count = 0
        for s in range(0, n - batch_size + 1, batch_size):
            idx = np.sort(order[s:s + batch_size])
            feats = [tf.constant(data[f"features{k}"][idx], tf.float32) for k in range(len(FEATURE_LAYERS))]
            batch = {k: tf.constant(data[k][idx], tf.float32) for k in
                     ("heatmap", "weight", "size_log", "offset", "valid")}
            batch["centre_index"] = tf.constant(data["centre_index"][idx])
            losses = step(feats, batch)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
        record = {k: v / max(count, 1) for k, v in sums.items()}
        history.append(record)
        if progress:
            print(f"detector epoch {epoch + 1}/{epochs}: loss {record['total']:.3f} (heatmap {record['heatmap']:.3f}, "
                  f"size {record['size']:.3f}, offset {record['offset']:.3f}), {time.time() - t0:.0f} s", flush=True)
    return head, history


def train_detector(scene_roots, out, obj_ids: list[int] | None = None, epochs: int = 30, batch_size: int = 16,
                   learning_rate: float = 2e-3, seed: int = 0, backbone_weights: str = "imagenet",
                   progress: bool = True, keep_feature_cache: bool = False, fine_tune_stages: int = 0,
                   feature_cache_dir=None) -> dict:
    """Trains a detector of ``obj_ids`` (default: every object the scenes show) on rendered scene folders and
    writes it to ``out`` (see the module docstring); returns its config. A finished detector is not retrained.
    ``fine_tune_stages``: 0, the backbone stays frozen; else that many of its top stages train with the head
    (:data:`FINE_TUNE_STAGES`, :func:`fit_head`).
    The features' cache (``feature_cache_dir``, default ``out/feature_cache``; about 160 KB an image, a finished one
    is reused) is removed once the detector is saved, unless ``keep_feature_cache`` (to train other heads on the
    same features)."""
    import keras

    from pose_net.evaluate import report_path

    out = Path(out)
    if is_trained(out):
        cfg = json.loads((out / DETECTOR_CONFIG).read_text())
        if progress:
            print(f"{out}: detector already trained ({cfg['obj_ids']})", flush=True)
        return cfg
    if fine_tune_stages:
        fine_tune_input_index(fine_tune_stages)  # (checked before the backbone runs)
    items, ids = list_training_images(scene_roots, obj_ids)
    steps = training_steps(len(items), epochs, batch_size)  # (checked before the backbone runs)
    t0 = time.time()
    keras.utils.set_random_seed(seed)
    backbone = build_backbone(backbone_weights)
    feature_cache_dir = Path(feature_cache_dir) if feature_cache_dir else out / "feature_cache"
    data = cache_features(backbone, items, ids, feature_cache_dir, progress=progress)
    t_features = time.time() - t0
    t1 = time.time()
    head, history = fit_head(data, len(ids), epochs, batch_size, learning_rate, seed, progress,
                             backbone=backbone if fine_tune_stages else None, fine_tune_stages=fine_tune_stages)
    n = len(data["features0"])
    if not np.isfinite(history[-1]["total"]):
        raise DetectorError(f"the detector's loss is not finite ({history[-1]}): not saved")
    model = build_detector(backbone, head)
    cfg = {"obj_ids": ids, "input_long_side": INPUT_LONG_SIDE, "feature_layers": list(FEATURE_LAYERS),
           "scenes": [report_path(r) for r in scene_roots], "images": n, "epochs": epochs, "batch_size": batch_size,
           "steps": steps, "learning_rate": learning_rate, "seed": seed, "fine_tune_stages": fine_tune_stages,
           "imagenet_weights": bool(backbone.imagenet_weights_loaded),
           "seconds_features": round(t_features, 1), "seconds_training": round(time.time() - t1, 1),
           "first_epoch_loss": history[0], "final_loss": history[-1]}
    save_detector(out, model, cfg)
    if not keep_feature_cache:
        shutil.rmtree(feature_cache_dir, ignore_errors=True)
    return cfg


def train_detector_ensemble(scene_roots, out, obj_ids: list[int] | None, seeds, keep_feature_cache: bool = False,
                            scene_roots_per_seed: dict | None = None, **train_kwargs) -> dict:
    """One detector per seed of ``seeds`` (:func:`train_detector` with ``train_kwargs``, into
    ``out/members/seed<k>``) on the same features, computed once (``out/feature_cache``), then their ensemble in
    ``out`` (:func:`ensemble_detectors`); returns its config. Finished members and a finished ensemble are reused.
    Why several seeds: on a real set of one or two viewpoints, one training run is found or lost whole with its
    seed (docs/results.md). ``scene_roots_per_seed``: ``{seed: scene folders}``, each member trained on its own
    scenes (its features cached in its own folder, removed once it is trained) instead of ``scene_roots``."""
    out = Path(out)
    if is_trained(out):
        return json.loads((out / DETECTOR_CONFIG).read_text())
    seeds = list(seeds)
    if len(seeds) < 2 or len(set(seeds)) < len(seeds):
        raise DetectorError(f"an ensemble needs at least 2 different seeds, got {seeds}")
    if scene_roots_per_seed is not None and (missing := [s for s in seeds if s not in scene_roots_per_seed]):
        raise DetectorError(f"no scene folders for seed(s) {missing} of the ensemble")
    members = []
    for seed in seeds:
        members.append(out / "members" / f"seed{seed}")
        if scene_roots_per_seed is not None:
            train_detector(scene_roots_per_seed[seed], members[-1], obj_ids, seed=seed,
                           keep_feature_cache=keep_feature_cache, **train_kwargs)
            continue
        train_detector(scene_roots, members[-1], obj_ids, seed=seed, keep_feature_cache=True,
                       feature_cache_dir=out / "feature_cache", **train_kwargs)
    cfg = ensemble_detectors(members, out)
    if not keep_feature_cache:
        shutil.rmtree(out / "feature_cache", ignore_errors=True)
    return cfg


def train_detector_on_renderings(models_dir, out, obj_ids: list[int], scene_dirs: dict, scenes_per_mode: int, K,
                                 width: int, height: int, epochs: int, seed: int = 0, backgrounds=None,
                                 exclude_obj_ids=(), distractors_dir=None, object_size_frac=None, texture_photos=None,
                                 poses=None, occluder_share=None, part_material_share=None, render_log=None,
                                 progress: bool = True,
                                 keep_feature_cache: bool = False, label: str = "detector",
                                 fine_tune_stages: int = 0, training_seeds=(0,), say=None,
                                 scene_draw_per_seed: bool = False) -> dict:
    """Renders ``scenes_per_mode`` training scenes of ``obj_ids`` into each folder of ``scene_dirs`` (randomization
    mode -> folder; :func:`render_training_scenes` with ``seed``, at :func:`training_camera` of the test camera
    ``K``, ``width`` x ``height``), then trains the detector on all of them into ``out`` (:func:`train_detector`);
    returns its config. With several ``training_seeds``, one detector per seed and their ensemble
    (:func:`train_detector_ensemble`); with ``scene_draw_per_seed`` too, the i-th seed's member trains on scenes of
    its own, rendered with scene seed ``seed + i`` (the first in ``scene_dirs``, the others beside them in
    ``<folder>_draw<scene seed>``): the ensemble then averages over the draw of the scenes as well as over the
    training seed (on the real cracker box the draw of the scenes moves a member's recall as much as its seed
    does: docs/results.md). A finished detector is returned as it is, nothing rendered;
    finished scene folders are reused. ``say``: where the progress lines go, prefixed with ``label`` (default:
    printed)."""
    out = Path(out)
    if is_trained(out):
        return json.loads((out / DETECTOR_CONFIG).read_text())
    say = say or (lambda text: print(text, flush=True))
    camera = training_camera(K, width, height)
    training_seeds = list(training_seeds)
    draws = len(training_seeds) if scene_draw_per_seed and len(training_seeds) > 1 else 1
    roots_per_draw = []
    for i in range(draws):
        roots = []
        for mode, folder in scene_dirs.items():
            folder = Path(folder) if i == 0 else Path(folder).parent / f"{Path(folder).name}_draw{seed + i}"
            say(f"{label}: rendering {scenes_per_mode} scenes ({mode}, scene seed {seed + i}) at "
                f"{camera['width']}x{camera['height']}")
            roots.append(render_training_scenes(models_dir, folder, obj_ids, scenes_per_mode, camera, mode, seed + i,
                                                backgrounds=backgrounds, exclude_obj_ids=exclude_obj_ids,
                                                log=render_log, distractors_dir=distractors_dir,
                                                object_size_frac=object_size_frac, texture_photos=texture_photos,
                                                poses=poses, occluder_share=occluder_share,
                                                part_material_share=part_material_share))
        roots_per_draw.append(roots)
    say(f"{label}: training on {len(roots_per_draw[0])} scene folder(s){' per seed' if draws > 1 else ''} "
        f"({epochs} epochs, {fine_tune_stages} backbone stage(s) trained, seed(s) "
        f"{', '.join(map(str, training_seeds))})")
    if len(training_seeds) > 1:
        per_seed = dict(zip(training_seeds, roots_per_draw)) if draws > 1 else None
        return train_detector_ensemble(roots_per_draw[0], out, obj_ids, training_seeds, epochs=epochs,
                                       progress=progress, keep_feature_cache=keep_feature_cache,
                                       fine_tune_stages=fine_tune_stages, scene_roots_per_seed=per_seed)
    return train_detector(roots_per_draw[0], out, obj_ids, epochs=epochs, seed=training_seeds[0], progress=progress,
                          keep_feature_cache=keep_feature_cache, fine_tune_stages=fine_tune_stages)


def save_detector(out, model, cfg: dict):
    """Writes a detector folder: ``detector.keras``, then ``detector.json`` (its presence means finished)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / (DETECTOR_MODEL + ".tmp.keras"))
    (out / (DETECTOR_MODEL + ".tmp.keras")).replace(out / DETECTOR_MODEL)
    (out / DETECTOR_CONFIG).write_text(json.dumps(cfg, indent=1))


def load_cached_features(cache_dir) -> dict[str, np.ndarray]:
    """A finished feature cache of :func:`cache_features` (rows in the order of the training images)."""
    cache_dir = Path(cache_dir)
    if not (cache_dir / "done").is_file():
        raise DetectorError(f"{cache_dir}: no finished feature cache (train with keep_feature_cache)")
    return {p.stem: np.load(p) for p in cache_dir.glob("*.npy")}


# ------------------------------------------------------------------------------------------------- ensembles
def ensemble_detectors(member_dirs, out, rebuild_other: bool = False) -> dict:
    """One detector from several trained on the same objects with different seeds (:func:`train_detector`,
    ``fit_head``): their maps averaged (heatmap logits, log sizes, offsets), written to ``out`` as a detector
    folder :class:`Detector` loads like any other; returns its config. A finished ensemble of the same members is
    not rebuilt; a folder holding another detector is refused, or with ``rebuild_other`` removed (with all it
    holds) and made again.

    The members must have the same objects, input size and ``fine_tune_stages``, and the same frozen backbone below
    their trained stages (checked, weight by weight): that part runs once per photo, and only the trained stages and
    the heads once per member. Why: on the 20-40 real frames of a set, one training run of the detector is found
    or lost whole with the seed (the can: 40 / 80 / 100% over three seeds, docs/results.md); averaging the runs'
    maps is the classic cure for that variance. Averaging logits rather than probabilities keeps the model to
    Keras' own layers (nothing custom to register when it is loaded)."""
    import keras

    from pose_net.evaluate import report_path

    out = Path(out)
    member_dirs = [Path(d) for d in member_dirs]
    if is_trained(out):
        cfg = json.loads((out / DETECTOR_CONFIG).read_text())
        if cfg.get("ensemble") == [report_path(d) for d in member_dirs]:
            return cfg
        if not rebuild_other:
            raise DetectorError(f"{out} holds another detector ({cfg.get('ensemble', 'not an ensemble')}), not the "
                                f"ensemble of {', '.join(map(str, member_dirs))}: remove it or choose another --out")
        shutil.rmtree(out)
    if len(member_dirs) < 2:
        raise DetectorError(f"an ensemble needs at least 2 detector folders, got {len(member_dirs)}")
    members = [Detector(d) for d in member_dirs]
    if nested := [str(m.dir) for m in members if "ensemble" in m.config]:
        raise DetectorError(f"{', '.join(nested)}: already an ensemble; give the detectors it was made of")
    first_cfg = dict(members[0].config, fine_tune_stages=members[0].config.get("fine_tune_stages", 0))
    for m in members[1:]:
        for key in ("obj_ids", "input_long_side", "feature_layers", "fine_tune_stages"):
            if m.config.get(key, 0) != first_cfg[key]:
                raise DetectorError(f"{m.dir}: its {key} ({m.config.get(key, 0)}) differs from {members[0].dir}'s "
                                    f"({first_cfg[key]}): not one ensemble")
    stages = int(first_cfg["fine_tune_stages"])
    shared_last = fine_tune_input_index(stages) if stages else len(FEATURE_LAYERS) - 1
    backbones = [m.model.get_layer("detector_backbone") for m in members]
    shared = keras.Model(backbones[0].input, [backbones[0].get_layer(n).output
                                              for n in FEATURE_LAYERS[:shared_last + 1]],
                         name="detector_backbone_shared")
    for m, b in zip(members[1:], backbones[1:]):
        for layer in shared.layers:
            mine = b.get_layer(layer.name).get_weights()
            if any(not np.array_equal(x, y) for x, y in zip(layer.get_weights(), mine)):
                raise DetectorError(f"{m.dir}: its backbone's {layer.name} differs from {members[0].dir}'s: the "
                                    "members must share the frozen backbone below their trained stages")
    image = keras.Input((None, None, 3), name="image")
    below = shared(image)
    below = list(below) if isinstance(below, (list, tuple)) else [below]
    maps = []
    for k, (m, b) in enumerate(zip(members, backbones)):
        feats = list(below)
        if stages:
            above = backbone_slice(b, shared_last, f"detector_backbone_top_{k}")(below[shared_last])
            feats += list(above) if isinstance(above, (list, tuple)) else [above]
        head = m.model.get_layer("detector_head")
        head = keras.Model(head.input, head.output, name=f"detector_head_{k}")  # (renamed: one name per member)
        maps.append(head(feats))
    outputs = {name: keras.layers.Average(name=f"mean_{name}")([o[name] for o in maps])
               for name in ("heatmap", "size", "offset")}
    model = keras.Model(image, outputs, name="detector_ensemble")
    cfg = {k: v for k, v in first_cfg.items() if k != "seed"}
    cfg.update(ensemble=[report_path(d) for d in member_dirs],
               seeds=[m.config.get("seed") for m in members],
               seconds_training=round(sum(float(m.config.get("seconds_training", 0.0)) for m in members), 1))
    save_detector(out, model, cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ evaluation
def detection_recall(detector: Detector, bop_root, obj_ids: list[int] | None = None, split: str = "test",
                     min_visib: float = bop.DEFAULT_MIN_VISIB, iou: float = DETECTION_IOU) -> dict:
    """Share of the annotated instances (of the detector's objects, at least ``min_visib`` visible) whose matched
    detection (:func:`match_detections`) overlaps the true box (``bbox_obj``, else the projected model's box) by at
    least ``iou``; per object and over all, with the seconds per photo."""
    from PIL import Image

    from pose_net.evaluate import gt_box, load_test_object, report_path

    ids = detector.obj_ids if obj_ids is None else list(obj_ids)
    found: dict[int, list[float]] = {}
    ious_among_top: list[float] = []  # each instance's best IoU with its DIAGNOSTIC_TOP_K - 1 next detections too
    seconds = []
    annotated = bop.object_ids_in(bop_root, split)
    targets = bop.load_test_targets(bop_root)
    for obj_id in ids:
        if obj_id not in annotated:
            continue
        points, _, _ = load_test_object(bop_root, obj_id)
        for im in bop.list_test_images(bop_root, obj_id, split, min_visib, targets):
            rgb = np.asarray(Image.open(im.rgb_path).convert("RGB"))
            t0 = time.time()
            dets = detector.detect_file(im.rgb_path, rgb)
            seconds.append(time.time() - t0)
            gts = [gt_box(inst, points, im.K, rgb.shape[:2]) for inst in im.instances]
            found.setdefault(obj_id, []).extend(match_with_ious(dets, obj_id, gts)[1])
            ious_among_top.extend(best_iou_among_top(dets, obj_id, gts, len(gts) + DIAGNOSTIC_TOP_K - 1))
    if not found:
        raise DetectorError(f"{bop_root}: no annotated instance of the detector's objects {ids}")
    per_object = {o: detected_share(v, iou) for o, v in found.items()}
    all_ious = np.concatenate([np.asarray(v) for v in found.values()])
    return {"bop_root": report_path(bop_root), "iou": iou, "min_visib": min_visib, "instances": int(len(all_ious)),
            "detection_recall": detected_share(all_ious, iou), "per_object": per_object,
            f"detection_recall_top{DIAGNOSTIC_TOP_K}": detected_share(ious_among_top, iou),
            "median_iou": float(np.median(all_ious)), "seconds_per_photo_median": float(np.median(seconds))}


# --------------------------------------------------------------------------------------------------- command
def define_flags():
    from absl import flags

    flags.DEFINE_list("scenes", [], "rendered scene folders (BOP roots written by render.scenes) to train on")
    flags.DEFINE_string("out", None, "detector folder to write")
    flags.DEFINE_string("obj_ids", "all", "objects to detect: comma-separated ids, or 'all' (every object shown)")
    flags.DEFINE_integer("epochs", 30, "passes over the cached features")
    flags.DEFINE_integer("batch_size", 16, "images per step")
    flags.DEFINE_float("learning_rate", 2e-3, "Adam's initial learning rate (cosine decay)")
    flags.DEFINE_integer("seed", 0, "seed")
    flags.DEFINE_string("detector_dir", None, "a trained detector folder (with --eval)")
    flags.DEFINE_list("ensemble", [], "detector folders of one recipe and different seeds: averaged into --out "
                      "(ensemble_detectors)")
    flags.DEFINE_list("eval", [], "BOP test folders to measure the detection recall on")
    flags.DEFINE_float("min_visib", bop.DEFAULT_MIN_VISIB, "instances less visible than this are not scored")
    flags.DEFINE_bool("keep_feature_cache", False, "keep OUT/feature_cache (to train again with other settings)")
    flags.DEFINE_integer("fine_tune_stages", 0, "0: Lite0 frozen; 1: its last stage trains too (blocks 11-15, at a "
                         "tenth of the learning rate, from the cached stride-16 features); 2: blocks 5-15, from the "
                         "stride-8 ones")


def main(argv):
    del argv
    from absl import app, flags

    F = flags.FLAGS
    try:
        ids = None if F.obj_ids.strip().lower() == "all" else [int(x) for x in F.obj_ids.split(",") if x.strip()]
    except ValueError:
        raise app.UsageError(f"--obj_ids must be 'all' or comma-separated integers, got {F.obj_ids!r}")
    try:
        if F.scenes:
            if not F.out:
                raise app.UsageError("--out is required with --scenes")
            train_detector(F.scenes, F.out, ids, F.epochs, F.batch_size, F.learning_rate, F.seed,
                           keep_feature_cache=F.keep_feature_cache, fine_tune_stages=F.fine_tune_stages)
        if F.ensemble:
            if not F.out or F.scenes:
                raise app.UsageError("--ensemble needs --out, and not --scenes")
            print(json.dumps(ensemble_detectors(F.ensemble, F.out), indent=1))
        if F.eval:
            det = Detector(F.detector_dir or F.out)
            for root in F.eval:
                print(json.dumps(detection_recall(det, root, ids, min_visib=F.min_visib)))
        if not F.scenes and not F.eval and not F.ensemble:
            raise app.UsageError("give --scenes (train) or --ensemble (average detectors), and/or --eval (measure)")
    except PoseInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
