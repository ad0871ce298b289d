"""ESAC: one network for several objects, a gating network over coordinate experts (Brachmann & Rother, ICCV'19).

ESAC ("Expert Sample Consensus") lets one system serve several objects. For a crop around an object:

* a **gating network** says which expert should explain it: probabilities ``p_m`` over the ``M`` experts
  (:func:`build_esac_model`, output ``gating``, logits);
* each **expert** is a coordinate head for one object (the U-Net decoder of :mod:`pose_net.coordinates`, its own
  coordinate frame), all over one frozen backbone whose features are computed once per crop;
* **inference** (:class:`EsacEstimator`): ``H`` RANSAC hypotheses are spread over the experts by drawing counts
  ``n ~ Multinomial(H, p)`` (:func:`allocate_hypotheses`); each expert with ``n_m > 0`` runs RANSAC-PnP with its
  ``n_m`` hypotheses on its own correspondences, and the pose of the hypothesis with the highest soft inlier count
  over all experts wins (its expert names the object). ``top_expert`` mode runs only the expert the gating ranks
  first, with all ``H`` hypotheses (ESAC's fast mode).

Training (:func:`train_esac`, ``python -m pose_net.esac``), in two stages:

1. ``experts``: the gating by cross-entropy (its warm-up), each expert by its coordinate and mask losses on crops of
   its own object only. A batch holds ``batch_size // M`` crops of each object, so each expert's decoder runs on
   its part of the batch and the backbone once on all of it.
2. ``esac``: the expected pose loss through the solver. Every expert runs on every crop; per crop,
   :data:`GRADIENT_DRAWS` count vectors ``n_k ~ Multinomial(H, p)`` each select a pool (the first ``n_km``
   hypotheses of expert m's ``H``); hypothesis j of a pool is selected with probability
   ``softmax(alpha * s_j / N)`` (DSAC, :mod:`pose_net.dsac`, ``N`` the largest expert's correspondence count) and
   the pool's loss is the expected pose loss ``l_k``. A hypothesis of a wrong expert (another object) costs
   :func:`wrong_expert_loss`, a constant (its pose is in another object's frame). The experts get DSAC's gradient
   of ``mean_k l_k`` (through scores and refined poses), the gating ESAC's REINFORCE gradient
   (:func:`gating_surrogate`): ``sum_k (l_k - mean_k l) * sum_m n_km d log p_m`` (**the mean loss over the draws
   of the same crop is the baseline**). The coordinate and mask losses stay on, as in ``pose_net.train --stage
   dsac``.

Constants: ESAC's defaults are 256 hypotheses, tau = 10 px and beta = 0.5 on 640x480 images. Our experts' grid
pixel is a ``crop/64`` of the image (about 3 image pixels for a 200-pixel crop), so tau is
:data:`DEFAULT_THRESHOLD_PX` = 2 grid pixels (the coordinate head's default, about 6 image pixels) and the op's
soft score uses beta = 5 / tau, as DSAC* does.

Shapes: ``B`` crops, ``M`` experts, ``H`` hypotheses, ``N`` correspondences (grid pixels) per crop.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags

from pose_core import PoseInputError

ESAC_FILE = "esac.json"  # the experts (objects, coordinate frames) and settings of an ESAC model folder
MODEL_FILE = "model.keras"
STAGES = ("experts", "esac")
INFERENCE_MODES = ("esac", "top_expert")
DEFAULT_NUM_HYPOTHESES = 256  # ESAC's default, over all experts, at inference
TRAIN_HYPOTHESES = 64  # training: the pool spread over the experts per draw (DSAC*'s 64)
DEFAULT_THRESHOLD_PX = 2.0  # tau in coordinate-grid pixels (see the module docstring)
DEFAULT_ALPHA = 100.0  # the selection softmax' scale over the inlier share (pose_net.dsac.DEFAULT_ALPHA)
GRADIENT_DRAWS = 2  # count vectors drawn per crop in the esac stage: the REINFORCE baseline is their mean loss
GATING_WIDTH = 128  # the gating network's hidden layer
GATING_DROPOUT = 0.2
DEFAULT_BATCH_SIZE = 30  # stage experts: 10 crops of each of 3 objects
DEFAULT_ESAC_BATCH_SIZE = 12  # stage esac: every expert runs on every crop
CHECKPOINT_EVERY_S = 120.0  # seconds of training between checkpoints (and always at the end)
# Adam's starting learning rate per stage: the coordinate head's (experiments.tables.HEAD_SETTINGS) for the experts
# stage; a tenth of it through the solver, as the DSAC table's second stages (its pose loss is in degrees + 0.1 mm,
# about 100 at first, so its gradients are far larger than the coordinate loss').
LEARNING_RATES = {"experts": 3e-3, "esac": 3e-4}


# ------------------------------------------------------------------------------------------------------ experts
@dataclass
class ExpertSpec:
    """One expert: the object it explains and how its coordinates are normalised (from its rendered dataset)."""
    obj_id: int
    name: str
    dataset: str
    mesh: str | None
    diameter_mm: float
    symmetric: bool
    model_points_mm: np.ndarray  # [P, 3]
    frame: "object"  # pose_net.coordinates.CoordinateFrame
    symmetries: "object"  # pose_core.symmetry.Symmetries

    @classmethod
    def from_dataset(cls, dataset_dir, name: str | None = None) -> "ExpertSpec":
        from pose_core.symmetry import symmetries_for_mesh
        from pose_net.coordinates import CoordinateFrame
        from render.dataset import load_dataset_info

        info = load_dataset_info(dataset_dir)
        obj_id = int(info.get("obj_id", 0))
        symmetries, _ = symmetries_for_mesh(info.get("mesh"), obj_id, bool(info.get("symmetric", False)))
        points = np.asarray(info["model_points_mm"], np.float32)
        return cls(obj_id, name or Path(str(info.get("mesh") or dataset_dir)).stem, str(dataset_dir),
                   info.get("mesh"), float(info["diameter_mm"]), bool(info.get("symmetric", False)), points,
                   CoordinateFrame.from_points(points), symmetries)

    def to_json(self) -> dict:
        return {"obj_id": self.obj_id, "name": self.name, "dataset": self.dataset, "mesh": self.mesh,
                "diameter_mm": self.diameter_mm, "symmetric": self.symmetric,
                "model_points_mm": np.round(self.model_points_mm, 4).tolist(), "coordinate_frame": self.frame.to_json(),
                "symmetries": self.symmetries.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "ExpertSpec":
        from pose_core.symmetry import Symmetries
        from pose_net.coordinates import CoordinateFrame

        return cls(int(d["obj_id"]), d["name"], d["dataset"], d.get("mesh"), float(d["diameter_mm"]),
                   bool(d["symmetric"]), np.asarray(d["model_points_mm"], np.float32),
                   CoordinateFrame.from_json(d["coordinate_frame"]), Symmetries.from_json(d["symmetries"]))


def check_experts(experts: list[ExpertSpec]):
    """Two experts or more, each of another object."""
    if len(experts) < 2:
        raise PoseInputError(f"ESAC needs at least 2 objects (one expert each), got {len(experts)}")
    ids = [e.obj_id for e in experts]
    if len(set(ids)) != len(ids):
        raise PoseInputError(f"ESAC's experts must be of different objects; the datasets render obj_ids {ids}")


# ------------------------------------------------------------------------------------------------------ network
def build_esac_model(num_experts: int, backbone: str = "efficientnet_lite0", input_size: int = 128,
                     backbone_weights=None, decoder_widths=(128, 96, 64, 32), gating_width: int = GATING_WIDTH,
                     freeze_backbone: bool = True):
    """The ESAC network: a backbone's feature pyramid (frozen: ImageNet Lite0, the default), a gating network and
    ``num_experts`` coordinate experts over it.

    Input ``[B, S, S, 3]`` float32 RGB 0..255. Outputs (a dict): ``gating [B, M]`` logits; for each expert m,
    ``coords_m [B, S/2, S/2, 3]`` (normalised to expert m's object, :class:`pose_net.coordinates.CoordinateFrame`)
    and ``mask_m [B, S/2, S/2, 1]`` logits. The parts are sub-models (:func:`esac_parts`): ``pyramid_<backbone>``,
    ``gating`` (global average pools of the stride-16 and stride-32 features, a hidden layer, ``M`` logits) and
    ``expert_m`` (:func:`pose_net.model.coordinate_decoder`), so training can run each expert on its own crops.
    """
    import keras

    from pose_net.model import build_feature_pyramid, coordinate_decoder

    if num_experts < 2:
        raise PoseInputError(f"ESAC needs at least 2 experts, got {num_experts}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    pyramid = build_feature_pyramid(backbone, input_size, backbone_weights, freeze=freeze_backbone)
    features = pyramid(inputs)
    shapes = [tuple(f.shape[1:]) for f in features]

    g16, g32 = keras.Input(shapes[3], name="gating_s16"), keras.Input(shapes[4], name="gating_s32")
    x = keras.layers.Concatenate(name="gating_pool")([keras.layers.GlobalAveragePooling2D(name="gating_gap16")(g16),
                                                      keras.layers.GlobalAveragePooling2D(name="gating_gap32")(g32)])
    x = keras.layers.Dense(gating_width, activation="relu", name="gating_hidden")(x)
    x = keras.layers.Dropout(GATING_DROPOUT, name="gating_dropout")(x)
    gating = keras.Model([g16, g32], keras.layers.Dense(num_experts, name="gating_logits")(x), name="gating")

    outputs = {"gating": gating([features[3], features[4]])}
    for m in range(num_experts):
        ins = [keras.Input(s, name=f"expert{m}_in{k}") for k, s in enumerate(shapes)]
        coords, mask, _ = coordinate_decoder(ins, decoder_widths, prefix=f"expert{m}_")
        expert = keras.Model(ins, {"coords": coords, "mask": mask}, name=f"expert_{m}")
        out = expert(features)
        outputs[f"coords_{m}"], outputs[f"mask_{m}"] = out["coords"], out["mask"]
    model = keras.Model(inputs, outputs, name="esac_net")
    model.imagenet_weights_loaded = getattr(pyramid, "imagenet_weights_loaded", False)
    return model


@dataclass
class EsacParts:
    pyramid: object
    gating: object
    experts: list = field(default_factory=list)


def esac_parts(model) -> EsacParts:
    """The sub-models of :func:`build_esac_model`'s network."""
    names = [layer.name for layer in model.layers]
    pyramid = next(model.get_layer(n) for n in names if n.startswith("pyramid_"))
    experts = [model.get_layer(n) for n in sorted((n for n in names if n.startswith("expert_")),
                                                   key=lambda n: int(n.split("_")[1]))]
    return EsacParts(pyramid, model.get_layer("gating"), experts)


def expert_outputs(outputs: dict, m: int) -> dict:
    """Expert m's ``{"coords", "mask"}`` from the network's output dict."""
    return {"coords": outputs[f"coords_{m}"], "mask": outputs[f"mask_{m}"]}


# ------------------------------------------------------------------------------------------ hypotheses over experts
def allocate_hypotheses(gating_logits, num_hypotheses: int, seed) -> tf.Tensor:
    """ESAC's spread of ``num_hypotheses`` over the experts: counts ``n ~ Multinomial(H, softmax(logits))``.

    Args:
      gating_logits ``[B, M]``; seed: an int or a ``[2]`` int tensor (stateless sampling: same seed, same counts).
    Returns:
      ``[B, M]`` int32, each row summing to ``num_hypotheses``.
    """
    logits = tf.convert_to_tensor(gating_logits, tf.float32)
    seed = tf.constant([seed, 7919], tf.int64) if isinstance(seed, (int, np.integer)) else tf.cast(seed, tf.int64)
    draws = tf.random.stateless_categorical(tf.nn.log_softmax(logits), num_hypotheses, seed)  # [B, H]
    return tf.reduce_sum(tf.one_hot(draws, tf.shape(logits)[1], dtype=tf.int32), axis=1)


def wrong_expert_loss(pose_loss: str, diameter_mm, translation_weight_per_mm: float, cut: float, grid_px: float):
    """The pose loss charged for a hypothesis of a wrong expert (a pose of another object): the loss of a pose
    turned by 180 degrees and one diameter away (``angle_translation``), one diameter (``add``, ``add_s``), or
    the coordinate grid's size (``reprojection``), soft-clamped like the others. ``diameter_mm`` ``[B]`` -> ``[B]``."""
    from pose_net.dsac import soft_clamp

    d = tf.convert_to_tensor(diameter_mm, tf.float32)
    if pose_loss == "angle_translation":
        raw = 180.0 + translation_weight_per_mm * d
    elif pose_loss in ("add", "add_s"):
        raw = tf.ones_like(d)
    else:
        raw = tf.fill(tf.shape(d), float(grid_px))
    return soft_clamp(raw, cut)


def gating_surrogate(gating_logits, counts, draw_losses, draw_ok) -> tf.Tensor:
    """ESAC's REINFORCE surrogate for the gating: its gradient w.r.t. ``gating_logits`` is
    ``sum_k (l_k - mean_k l) * sum_m n_km d log p_m``, with the mean loss of the crop's draws as the baseline.

    Args:
      gating_logits ``[B, M]``. counts ``[K, B, M]``: the hypotheses each draw gave each expert. draw_losses
      ``[K, B]``: each draw's expected pose loss. draw_ok ``[K, B]`` bool: draws that made a hypothesis (a crop
      counts only when all of its draws did, as the baseline needs them all).
    Returns:
      ``[B]``: the surrogate (only its gradient means something; 0 for crops left out).
    """
    log_p = tf.nn.log_softmax(tf.convert_to_tensor(gating_logits, tf.float32))  # [B, M]
    losses = tf.stop_gradient(tf.convert_to_tensor(draw_losses, tf.float32))
    advantage = losses - tf.reduce_mean(losses, axis=0, keepdims=True)  # [K, B]
    log_p_draw = tf.reduce_sum(tf.cast(counts, tf.float32) * log_p[None], axis=-1)  # [K, B]
    crop_ok = tf.reduce_all(draw_ok, axis=0)
    return tf.where(crop_ok, tf.reduce_sum(advantage * log_p_draw, axis=0), tf.zeros_like(crop_ok, tf.float32))


@dataclass
class EsacSettings:
    """The esac stage's knobs (pose_net.dsac's meaning for the shared ones)."""
    hypotheses: int = TRAIN_HYPOTHESES
    threshold_px: float = DEFAULT_THRESHOLD_PX
    alpha: float = DEFAULT_ALPHA
    pose_loss: str = "angle_translation"
    translation_weight_per_mm: float = 0.1
    draws: int = GRADIENT_DRAWS
    max_refine_iterations: int = 3

    def dsac(self):
        from pose_net.dsac import DsacSettings

        return DsacSettings(num_hypotheses=self.hypotheses, threshold_px=self.threshold_px, alpha=self.alpha,
                            pose_loss=self.pose_loss, translation_weight_per_mm=self.translation_weight_per_mm,
                            max_refine_iterations=self.max_refine_iterations)


def esac_expected_loss(outputs: dict, experts: list[ExpertSpec], true_expert, R_gt, t_gt_mm, K_out,
                       settings: EsacSettings = EsacSettings(), seed=0) -> tuple[tf.Tensor, dict]:
    """The esac stage's loss for a batch: the experts' expected pose loss and the gating's REINFORCE surrogate.

    Args:
      outputs: the network's outputs on the crops (``gating``, ``coords_m``, ``mask_m``). true_expert ``[B]``
        int32: the expert of each crop's object. R_gt ``[B, 3, 3]``, t_gt_mm ``[B, 3]``: true poses. K_out
        ``[B, 3, 3]``: the coordinate grid's intrinsics. seed: an int or int64 scalar tensor (the step) for
        the count draws; the op's own draws vary from step to step because the correspondences are shuffled.
    Returns:
      ``(loss, terms)``: loss = mean expected pose loss over the crops' draws + mean gating surrogate; terms
      ``esac`` (the expected pose loss), ``esac_ok`` (share of draws with a hypothesis), ``gating_surrogate``,
      ``routed`` (share of draws whose most probable hypothesis is the true expert's).
    """
    from pose_net import coordinates
    from pose_net.dsac import canonical_true_pose, pose_losses
    from tf_ops import ransac_pnp_hypotheses

    s = settings.dsac()
    cut = s.cut()
    M, H = len(experts), settings.hypotheses
    true_expert = tf.cast(true_expert, tf.int32)
    grid = float(outputs["coords_0"].shape[1])
    diameters = tf.gather(tf.constant([e.diameter_mm for e in experts], tf.float32), true_expert)
    wrong = wrong_expert_loss(settings.pose_loss, diameters, settings.translation_weight_per_mm, cut, grid)
    scores, oks, losses, used = [], [], [], []
    for m, e in enumerate(experts):
        pixels, coords_mm, valid, _ = coordinates.correspondences(expert_outputs(outputs, m), e.frame)
        finite = tf.reduce_all(tf.math.is_finite(coords_mm), axis=-1)
        valid = tf.logical_and(valid, finite)
        n = tf.shape(pixels)[1]
        order = tf.random.shuffle(tf.range(n))  # the op's per-crop draws must not repeat from step to step
        pixels, coords_mm, valid = (tf.gather(x, order, axis=1) for x in (pixels, coords_mm, valid))
        hyp = ransac_pnp_hypotheses(pixels, coords_mm, K_out, valid=valid, num_hypotheses=H,
                                    threshold_px=settings.threshold_px, seed=m,
                                    max_refine_iterations=settings.max_refine_iterations)
        R_c, t_c = canonical_true_pose(R_gt, t_gt_mm, e.symmetries)
        mine = tf.equal(true_expert, m)[:, None]
        l_m = pose_losses(hyp["R"], hyp["t_mm"], R_c, t_c, K_out, e.model_points_mm, e.diameter_mm, s)
        l_m = tf.where(mine, l_m, tf.broadcast_to(wrong[:, None], tf.shape(l_m)))
        scores.append(hyp["score"])
        oks.append(hyp["ok"])
        losses.append(tf.where(hyp["ok"], l_m, tf.zeros_like(l_m)))
        used.append(tf.reduce_sum(tf.cast(valid, tf.float32), axis=1))
    score = tf.stack(scores, 1)  # [B, M, H]
    ok_h = tf.stack(oks, 1)
    loss_h = tf.stack(losses, 1)
    norm = tf.maximum(tf.reduce_max(tf.stack(used, 1), axis=1), 1.0)[:, None, None]  # the largest expert's N
    logits = tf.stop_gradient(outputs["gating"])
    draw_losses, draw_ok, draw_counts, routed = [], [], [], []
    for k in range(settings.draws):
        counts = allocate_hypotheses(logits, H, tf.stack([tf.cast(seed, tf.int64), tf.constant(k, tf.int64)]))
        chosen = tf.logical_and(ok_h, tf.range(H)[None, None, :] < counts[:, :, None])  # [B, M, H]
        sel = tf.where(chosen, settings.alpha * score / norm, tf.fill(tf.shape(score), -1e9))
        b = tf.shape(sel)[0]
        probs = tf.reshape(tf.nn.softmax(tf.reshape(sel, [b, -1]), axis=1), [b, M, H])
        ok = tf.reduce_any(chosen, axis=[1, 2])
        draw_losses.append(tf.where(ok, tf.reduce_sum(probs * loss_h, axis=[1, 2]), tf.zeros_like(ok, tf.float32)))
        draw_ok.append(ok)
        draw_counts.append(counts)
        best_expert = tf.argmax(tf.reduce_max(tf.where(chosen, score, -1.0), axis=2), axis=1, output_type=tf.int32)
        routed.append(tf.cast(tf.logical_and(ok, tf.equal(best_expert, true_expert)), tf.float32))
    draw_losses, draw_ok = tf.stack(draw_losses), tf.stack(draw_ok)
    okf = tf.cast(draw_ok, tf.float32)
    expected = tf.reduce_sum(draw_losses) / tf.maximum(tf.reduce_sum(okf), 1.0)
    surrogate = tf.reduce_mean(gating_surrogate(outputs["gating"], tf.stack(draw_counts), draw_losses, draw_ok))
    return expected + surrogate, {"esac": expected, "esac_ok": tf.reduce_mean(okf), "gating_surrogate": surrogate,
                                  "routed": tf.reduce_mean(tf.stack(routed))}


# ------------------------------------------------------------------------------------------------------ inference
@dataclass
class EsacResult:
    """One crop's answer: the object (its expert), its pose, and what the gating said."""
    obj_id: int
    expert: int
    R: np.ndarray  # [3, 3]
    t_mm: np.ndarray  # [3]
    ok: bool
    gating_probabilities: np.ndarray  # [M]
    hypotheses_per_expert: np.ndarray  # [M] int
    num_inliers: int
    bbox_xywh: np.ndarray

    def as_json(self) -> dict:
        """What ``pose_net.predict`` prints: the object, the gating's probability of it, the pose (R row-major)."""
        return {"obj_id": self.obj_id, "gating_probability": round(float(self.gating_probabilities[self.expert]), 4),
                "bbox_xywh": np.asarray(self.bbox_xywh, np.float64).tolist(), "R": self.R.reshape(9).tolist(),
                "t_mm": self.t_mm.tolist(), "ok": self.ok, "num_inliers": self.num_inliers}


def load_esac(model_dir) -> tuple[dict, list[ExpertSpec]]:
    """``(esac.json as a dict, its experts)`` of a trained ESAC model folder."""
    path = Path(model_dir) / ESAC_FILE
    if not path.is_file():
        raise PoseInputError(f"{model_dir} holds no ESAC model ({ESAC_FILE} is missing): train one with "
                             f"`python -m pose_net.esac --model_dir {model_dir}`")
    config = json.loads(path.read_text())
    return config, [ExpertSpec.from_json(e) for e in config["experts"]]


class EsacEstimator:
    """The poses of several objects from one ESAC model folder (or an in-memory model and its experts)."""

    def __init__(self, model_dir=None, model=None, config: dict | None = None, experts=None):
        import keras

        if model is None:
            config, experts = load_esac(model_dir)
            export = Path(model_dir) / MODEL_FILE
            if not export.is_file():
                raise PoseInputError(f"{model_dir}: no {MODEL_FILE} (a finished `python -m pose_net.esac` run "
                                     f"writes it)")
            model = keras.models.load_model(export, compile=False)
        self.model, self.config, self.experts = model, config, experts
        self.input_size = int(config["input_size"])
        self.roi_enlarge = float(config.get("roi_enlarge", 1.4))
        self.obj_ids = [e.obj_id for e in experts]
        self._run = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def expert_of(self, obj_id: int) -> int:
        if obj_id not in self.obj_ids:
            raise PoseInputError(f"this ESAC model has experts for objects {self.obj_ids}, not {obj_id}")
        return self.obj_ids.index(obj_id)

    def estimate(self, image: np.ndarray, K: np.ndarray, bbox_xywh, mode: str = "esac",
                 num_hypotheses: int = DEFAULT_NUM_HYPOTHESES, seed: int = 0) -> EsacResult:
        """The object in box ``bbox_xywh`` of an RGB image ``[H, W, 3]`` with intrinsics ``K``, and its pose.

        ``mode``: ``esac`` (hypotheses spread over the experts by the gating's probabilities) or ``top_expert``
        (all hypotheses from the most probable expert)."""
        from pose_core.geometry import check_camera_fits_image
        from pose_net import parametrization as param
        from pose_net.coordinates import _fallback_pose, correspondences
        from pose_net.inference import image_crops
        from tf_ops import ransac_pnp

        if mode not in INFERENCE_MODES:
            raise PoseInputError(f"unknown ESAC mode {mode!r}: choose one of {INFERENCE_MODES}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise PoseInputError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
        check_camera_fits_image(K, image.shape[:2])
        box = np.asarray(bbox_xywh, np.float64)
        center, size = param.roi_crop_from_box(box.astype(np.float32)[None], self.roi_enlarge)
        crops, c, s = image_crops(image, center.numpy(), size.numpy(), self.input_size)
        out = self._run(crops)
        logits = out["gating"]
        probs = tf.nn.softmax(logits)[0].numpy()
        if mode == "top_expert":
            counts = np.zeros(len(self.experts), np.int64)
            counts[int(np.argmax(probs))] = num_hypotheses
        else:
            counts = allocate_hypotheses(logits, num_hypotheses, seed)[0].numpy()
        Kb = tf.constant(np.asarray(K, np.float32)[None])
        K_out = param.crop_intrinsics(Kb, c, s, int(out["coords_0"].shape[1]))
        best = None
        for m, e in enumerate(self.experts):
            if counts[m] == 0:
                continue
            pixels, coords_mm, valid, _ = correspondences(expert_outputs(out, m), e.frame)
            res = ransac_pnp(pixels, coords_mm, K_out, valid=valid, num_hypotheses=int(counts[m]),
                             threshold_px=DEFAULT_THRESHOLD_PX, seed=seed * 31 + m)
            score = float(res["score"][0]) if bool(res["ok"][0]) else -1.0
            if best is None or score > best[0]:
                best = (score, m, res)
        score, m, res = best
        ok = bool(res["ok"][0])
        if ok:
            R, t = res["R"][0].numpy().astype(np.float64), res["t_mm"][0].numpy().astype(np.float64)
        else:
            R_fb, t_fb = _fallback_pose(Kb, c, s, self.experts[m].diameter_mm)
            R, t = R_fb[0], t_fb[0]
        return EsacResult(self.experts[m].obj_id, m, R, t, ok, probs, counts,
                          int(np.sum(res["inliers"][0].numpy())), box)


def evaluate_esac(estimator: EsacEstimator, bop_root, obj_id: int, mode: str = "esac", split: str = "test",
                  num_hypotheses: int = DEFAULT_NUM_HYPOTHESES, min_visib: float | None = None,
                  report_dir=None, num_pictures: int = 12, estimates_out: list | None = None,
                  models_dir=None) -> dict:
    """Scores ``obj_id``'s instances of a BOP test folder with ground-truth boxes: the ESAC model must name the
    object (its expert) and find its pose. A crop explained by another object's expert is a wrong pose (inf).

    Returns figures as :func:`pose_net.evaluate.evaluate` does (``add_recall``, ``add_s_recall``, medians in mm),
    plus ``gating_accuracy`` (the gating ranks the true expert first), ``routed_accuracy`` (the winning hypothesis
    is the true expert's) and ``seconds_per_crop``. ``estimates_out``: a list the BOP19 rows are appended to, each
    under the object the model named, scored by the gating's probability of it.
    """
    from PIL import Image

    from pose_core import bop, metrics
    from pose_net.evaluate import gt_box, load_test_object, report_path

    true_m = estimator.expert_of(obj_id)
    points, diameter, symmetric = load_test_object(bop_root, obj_id, models_dir)
    min_visib = bop.DEFAULT_MIN_VISIB if min_visib is None else min_visib
    images = bop.list_test_images(bop_root, obj_id, split, min_visib, bop.load_test_targets(bop_root))
    if not images:
        raise PoseInputError(f"{bop_root}/{split}: no image shows object {obj_id}")
    rows, pictures, seconds = [], [], 0.0
    pick = set(np.linspace(0, len(images) - 1, min(num_pictures, len(images))).round().astype(int).tolist())
    for k, im in enumerate(images):
        rgb = np.asarray(Image.open(im.rgb_path).convert("RGB"))
        for inst in im.instances:
            box = gt_box(inst, points, im.K, rgb.shape[:2])
            t0 = time.time()
            est = estimator.estimate(rgb, im.K, box, mode, num_hypotheses)
            elapsed = time.time() - t0
            seconds += elapsed
            right_object = est.expert == true_m
            if estimates_out is not None:
                estimates_out.append(bop.PoseEstimate(im.scene_id, im.im_id, est.obj_id,
                                                      float(est.gating_probabilities[est.expert]), est.R, est.t_mm,
                                                      elapsed))
            e_add = metrics.add(est.R, est.t_mm, inst["R"], inst["t_mm"], points) if right_object else np.inf
            e_adds = metrics.add_s(est.R, est.t_mm, inst["R"], inst["t_mm"], points) if right_object else np.inf
            rows.append({"add_mm": e_add, "add_s_mm": e_adds,
                         "gated": int(np.argmax(est.gating_probabilities)) == true_m,
                         "routed": right_object,
                         "t_err_mm": float(np.linalg.norm(est.t_mm - inst["t_mm"])) if right_object else np.inf})
            if k in pick and report_dir is not None:
                from pose_net.draw import draw_pose_overlay

                label = (f"{im.scene_id}/{im.im_id} p={est.gating_probabilities[true_m]:.2f} "
                         + (f"{'ADD-S' if symmetric else 'ADD'} {(e_adds if symmetric else e_add):.0f}mm"
                            if right_object else f"routed to obj {est.obj_id}"))
                pictures.append(draw_pose_overlay(rgb, im.K, points, diameter, est.R, est.t_mm, inst["R"],
                                                  inst["t_mm"], box, label))
    add_errors = np.array([r["add_mm"] for r in rows])
    adds_errors = np.array([r["add_s_mm"] for r in rows])
    result = {"bop_root": report_path(bop_root), "obj_id": obj_id, "mode": mode, "instances": len(rows),
              "boxes": "gt", "head": "esac", "translation": f"ransac_pnp ({mode})",
              "t_err_median_mm": float(np.median([r["t_err_mm"] for r in rows])), "min_visib": min_visib,
              "num_hypotheses": num_hypotheses, "diameter_mm": diameter, "symmetric": symmetric,
              "add_recall": metrics.recall(add_errors, diameter), "add_s_recall": metrics.recall(adds_errors, diameter),
              "add_median_mm": float(np.median(add_errors)), "add_s_median_mm": float(np.median(adds_errors)),
              "gating_accuracy": float(np.mean([r["gated"] for r in rows])),
              "routed_accuracy": float(np.mean([r["routed"] for r in rows])),
              "seconds_per_crop": seconds / max(len(rows), 1)}
    if report_dir is not None and pictures:
        from pose_net.draw import contact_sheet

        Path(report_dir).mkdir(parents=True, exist_ok=True)
        contact_sheet(pictures).save(Path(report_dir) / f"overlays_{mode}.jpg", quality=85)
        (Path(report_dir) / f"result_{mode}.json").write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------------------- training
def _batches(experts: list[ExpertSpec], per_expert: int, cfg, seed: int, start_epoch: int):
    """Endless balanced batches: ``per_expert`` training crops of each expert's object, concatenated in expert
    order, with ``expert [B]`` added (each expert's dataset cycles through its epochs on its own)."""
    from pose_net import data as pdata

    def cycle(m, e):
        epoch = start_epoch
        spec = pdata.CoordinateTargetSpec(e.frame, e.symmetries)
        while True:
            ds = pdata.make_dataset(e.dataset, cfg, per_expert, "train", True, seed + 101 * m, epoch,
                                    coordinate_spec=spec)
            yielded = False
            for batch in ds:
                yielded = True
                yield batch
            if not yielded:
                raise PoseInputError(f"{e.dataset}: fewer training renderings than {per_expert} (one batch share)")
            epoch += 1

    keys = ("image", "coords_target", "mask_target", "R", "t_mm", "K", "crop_center", "crop_size")
    iters = [cycle(m, e) for m, e in enumerate(experts)]
    while True:
        parts = [next(it) for it in iters]
        batch = {k: tf.concat([p[k] for p in parts], 0) for k in keys}
        batch["expert"] = tf.repeat(tf.range(len(experts), dtype=tf.int32), per_expert)
        yield batch


def train_esac(datasets: list[str], model_dir, stage: str = "experts", time_budget_min: float = 10.0,
               batch_size: int | None = None, learning_rate: float | None = None, init_from=None, seed: int = 0,
               settings: EsacSettings = EsacSettings(), input_size: int = 128, backbone: str = "efficientnet_lite0",
               backbone_weights="imagenet", progress: bool = True, max_steps: int = 0,
               freeze_backbone: bool | None = None) -> dict:
    """Trains (or resumes) an ESAC model on one rendered dataset per object (``render.generate`` folders with
    depth, as the coordinate head needs); writes ``MODEL_DIR/model.keras`` and ``esac.json``; returns a summary.

    ``stage``: ``experts`` (gating cross-entropy + coordinate losses) or ``esac`` (from ``init_from``, an
    ``experts`` model folder: + the expected pose loss through the solver, the gating by REINFORCE). The learning
    rate (default :data:`LEARNING_RATES` of the stage) follows a cosine over ``time_budget_min``; a run killed and
    started again resumes from its checkpoint.
    ``max_steps`` > 0 stops there too (tests). ``freeze_backbone``: None freezes a pretrained backbone (its
    features computed once per crop for every expert) and trains one without weights with the heads.
    """
    import keras
    from tqdm import tqdm

    from pose_net import data as pdata
    from pose_net import losses
    from pose_net import parametrization as param

    if stage not in STAGES:
        raise PoseInputError(f"unknown ESAC stage {stage!r}: choose one of {STAGES}")
    model_dir = Path(model_dir)
    experts = [ExpertSpec.from_dataset(d) for d in datasets]
    check_experts(experts)
    M = len(experts)
    batch_size = batch_size or (DEFAULT_BATCH_SIZE if stage == "experts" else DEFAULT_ESAC_BATCH_SIZE)
    if batch_size < M:
        raise PoseInputError(f"--batch_size {batch_size} is smaller than the {M} objects: each batch holds crops of "
                             "every object")
    per_expert = batch_size // M
    learning_rate = LEARNING_RATES[stage] if learning_rate is None else learning_rate
    if stage == "esac" and init_from is None and not (model_dir / "checkpoints").is_dir():
        raise PoseInputError("--stage esac starts from a trained `experts` stage: give --init_from")
    config = {"format_version": 1, "stage": stage, "input_size": input_size, "backbone": backbone,
              "roi_enlarge": 1.4, "experts": [e.to_json() for e in experts], "settings": settings.__dict__,
              "batch_size": per_expert * M, "learning_rate": learning_rate, "time_budget_min": time_budget_min,
              "seed": seed, "init_from": str(init_from) if init_from else None}
    old = model_dir / ESAC_FILE
    if old.is_file():
        prev = json.loads(old.read_text())
        if [e["obj_id"] for e in prev["experts"]] != [e.obj_id for e in experts] or prev["stage"] != stage:
            raise PoseInputError(f"{model_dir} holds an ESAC model of objects {[e['obj_id'] for e in prev['experts']]}"
                                 f" (stage {prev['stage']}): use another --model_dir")
    model_dir.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps(config))

    keras.utils.set_random_seed(seed)
    if init_from is not None:
        model = keras.models.load_model(Path(init_from) / MODEL_FILE, compile=False)
        if len(esac_parts(model).experts) != M:
            raise PoseInputError(f"--init_from {init_from} has {len(esac_parts(model).experts)} experts, not {M}")
    else:
        from pose_net.backbones.efficientnet_lite import pretrained_weights_path
        from pose_net.train import resolve_backbone_weights

        weights = resolve_backbone_weights(backbone, backbone_weights)
        if weights == "imagenet" and pretrained_weights_path() is None:
            raise PoseInputError("the ImageNet weights of EfficientNet-Lite0 are not converted yet: run "
                                 "`make pretrained` (docs/pretrained_backbone.md)")
        freeze = weights is not None if freeze_backbone is None else freeze_backbone
        model = build_esac_model(M, backbone, input_size, weights, freeze_backbone=freeze)
    parts = esac_parts(model)
    train_backbone = bool(parts.pyramid.trainable_variables)
    trainable = (parts.gating.trainable_variables + [v for e in parts.experts for v in e.trainable_variables]
                 + parts.pyramid.trainable_variables)
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(trainable)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    seconds_var = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var, seconds=seconds_var)
    manager = tf.train.CheckpointManager(ckpt, str(model_dir / "checkpoints"), max_to_keep=2)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        print(f"resuming {model_dir} at step {int(step_var.numpy())} ({float(seconds_var.numpy()):.0f} s trained)",
              flush=True)
    budget_s = 60.0 * time_budget_min
    cfg = pdata.PipelineConfig(input_size=input_size)
    weights = losses.LossWeights()

    @tf.function(reduce_retracing=True)
    def experts_step(batch):
        with tf.GradientTape() as tape:
            feats = parts.pyramid(batch["image"], training=train_backbone)
            logits = parts.gating([feats[3], feats[4]], training=True)
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["expert"], logits))
            coord_terms, mask_terms = [], []
            for m in range(M):
                sl = slice(m * per_expert, (m + 1) * per_expert)
                out = parts.experts[m]([f[sl] for f in feats], training=True)
                coord_terms.append(losses.coordinate_loss(out["coords"], batch["coords_target"][sl],
                                                          batch["mask_target"][sl]))
                mask_terms.append(losses.mask_loss(out["mask"], batch["mask_target"][sl]))
            lc, lm = tf.reduce_mean(tf.concat(coord_terms, 0)), tf.reduce_mean(tf.concat(mask_terms, 0))
            total = weights.coords * lc + weights.mask * lm + ce
        grads = tape.gradient(total, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), batch["expert"]),
                                          tf.float32))
        return total, {"coords": lc, "mask": lm, "gating_ce": ce, "gating_accuracy": accuracy}

    def esac_step(batch, step):
        with tf.GradientTape() as tape:
            outputs = model(batch["image"], training=True)
            coord_terms, mask_terms = [], []
            for m in range(M):  # each expert's coordinate loss on its own object's crops
                sl = slice(m * per_expert, (m + 1) * per_expert)
                coord_terms.append(losses.coordinate_loss(outputs[f"coords_{m}"][sl], batch["coords_target"][sl],
                                                          batch["mask_target"][sl]))
                mask_terms.append(losses.mask_loss(outputs[f"mask_{m}"][sl], batch["mask_target"][sl]))
            lc, lm = tf.reduce_mean(tf.concat(coord_terms, 0)), tf.reduce_mean(tf.concat(mask_terms, 0))
            K_out = param.crop_intrinsics(batch["K"], batch["crop_center"], batch["crop_size"],
                                          int(outputs["coords_0"].shape[1]))
            e_loss, terms = esac_expected_loss(outputs, experts, batch["expert"], batch["R"], batch["t_mm"], K_out,
                                               settings, seed=step)
            total = weights.coords * lc + weights.mask * lm + e_loss
        grads = tape.gradient(total, trainable)
        grads = [tf.where(tf.math.is_finite(g), g, tf.zeros_like(g)) if g is not None else g for g in grads]
        optimizer.apply_gradients(zip(grads, trainable))
        return total, {"coords": lc, "mask": lm, **terms}

    esac_step_fn = tf.function(esac_step, reduce_retracing=True)
    start_epoch = int(step_var.numpy()) // 1000 + 1  # a resumed run draws crops in a new order
    batches = _batches(experts, per_expert, cfg, seed, start_epoch)
    bar = tqdm(total=int(budget_s), initial=int(float(seconds_var.numpy())), desc=f"esac {stage}", unit="s",
               disable=not progress, file=sys.stdout, dynamic_ncols=True)
    sums, n, last_ckpt = {}, 0, time.time()
    while float(seconds_var.numpy()) < budget_s and not (max_steps and int(step_var.numpy()) >= max_steps):
        batch = next(batches)
        t0 = time.time()
        frac = min(float(seconds_var.numpy()) / max(budget_s, 1.0), 1.0)
        optimizer.learning_rate.assign(learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))))
        if stage == "experts":
            total, terms = experts_step(batch)
        else:
            total, terms = esac_step_fn(batch, tf.constant(int(step_var.numpy()), tf.int64))
        dt = time.time() - t0
        seconds_var.assign_add(dt)
        step_var.assign_add(1)
        n += 1
        for k, v in {"total": total, **terms}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.update(int(float(seconds_var.numpy())) - bar.n)
        bar.set_postfix({"step": int(step_var.numpy()), **{k: f"{v / n:.3f}" for k, v in sums.items()}})
        if time.time() - last_ckpt > CHECKPOINT_EVERY_S:
            manager.save()
            last_ckpt = time.time()
    bar.close()
    manager.save()
    summary = {"steps": int(step_var.numpy()), "train_seconds": float(seconds_var.numpy()),
               "last_steps_mean": {k: v / max(n, 1) for k, v in sums.items()}}
    model.save(model_dir / MODEL_FILE)
    config["training"] = summary
    (model_dir / ESAC_FILE).write_text(json.dumps(config))
    print(f"esac {stage}: {summary['steps']} steps, {summary['train_seconds'] / 60:.1f} min; last terms "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary["last_steps_mean"].items()), flush=True)
    return summary


# ------------------------------------------------------------------------------------------------------------ CLI
def define_flags():
    flags.DEFINE_list("datasets", None, "rendered datasets (render.generate folders with depth), one per object")
    flags.DEFINE_string("model_dir", None, "the ESAC model folder (resumed when it holds a checkpoint)")
    flags.DEFINE_enum("stage", "experts", list(STAGES), "experts: gating cross-entropy + coordinate losses; esac: "
                      "from --init_from, the expected pose loss through RANSAC-PnP and the gating by REINFORCE")
    flags.DEFINE_string("init_from", None, "--stage esac: the `experts` model folder to start from")
    flags.DEFINE_float("time_budget_min", 10.0, "training wall time, minutes (the learning rate's cosine spans it)")
    flags.DEFINE_integer("batch_size", 0, "crops per step, split evenly over the objects (0: 30 for experts, 12 "
                         "for esac)")
    flags.DEFINE_float("learning_rate", None, "Adam's learning rate at the start (default: 3e-3 for experts, "
                       "3e-4 for esac)")
    flags.DEFINE_integer("hypotheses", TRAIN_HYPOTHESES, "--stage esac: hypotheses per draw, spread over the experts")
    flags.DEFINE_integer("seed", 0, "seed")
    flags.mark_flags_as_required(["datasets", "model_dir"])


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        train_esac(f.datasets, f.model_dir, f.stage, f.time_budget_min, f.batch_size or None, f.learning_rate,
                   f.init_from, f.seed, EsacSettings(hypotheses=f.hypotheses))
    except PoseInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
