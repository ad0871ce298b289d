"""Train the pose network on a rendered dataset.

    python -m pose_net.train --dataset DIR --model_dir DIR [--epochs 20] [--backbone efficientnet_lite0] ...

Checkpoints every epoch (and every ``--checkpoint_every_steps``) into ``MODEL_DIR/checkpoints`` and resumes from the
latest one when started again with the same model folder: a killed run loses at most one checkpoint interval.
Each epoch's data order and augmentation are drawn from ``(seed, epoch)``, so a resumed run sees the same data as an
uninterrupted one. TensorBoard logs (every loss term, ADD(-S) on the validation split, pictures of predicted poses)
go to ``MODEL_DIR/logs``; ``model.keras`` is exported at the end.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags, logging

from pose_core import PoseInputError

# The training flags live in their own FlagValues (joined to absl's global FLAGS only when this module runs as a
# program), so that importing pose_net.train beside other absl programs (render.generate, experiments) never clashes.
TRAIN_FLAGS = flags.FlagValues()
flags.DEFINE_string("dataset", None, "rendered dataset folder (render.generate's --out)", flag_values=TRAIN_FLAGS)
flags.DEFINE_string("val_dataset", None, "optional separate rendered dataset for validation; default: the last "
                    "shard of --dataset when it has more than one", flag_values=TRAIN_FLAGS)
flags.DEFINE_string("model_dir", None, "folder for checkpoints, logs, config.json and the exported model", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("head", "direct", ["direct", "coords"], "direct: the thesis' network (box, rotation and "
                  "translation regressed); coords: dense object coordinates + mask, the pose by RANSAC-PnP "
                  "(pose_net/coordinates.py)", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("backbone", "efficientnet_lite0", ["efficientnet_lite0", "mobilenet_v2", "efficientnet_b0",
                  "small"], "feature extractor", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("backbone_weights", "auto", ["auto", "none", "imagenet"], "backbone initialisation. auto: "
                  "ImageNet for efficientnet_lite0 (the converted weights, offline; random initialisation, saying "
                  "so, when they are not installed), none for the others. imagenet for the Keras applications "
                  "downloads their weights (needs network access)", flag_values=TRAIN_FLAGS)
flags.DEFINE_bool("freeze_backbone", False, "keep the backbone's weights and batch-norm statistics fixed", flag_values=TRAIN_FLAGS)
flags.DEFINE_bool("feature_cache", False, "direct head with --freeze_backbone: compute the backbone's features of "
                  "the training crops once (--feature_cache_passes augmented passes) and train the heads on them "
                  "(pose_net/feature_cache.py); --epochs then count passes over the cache", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("feature_cache_passes", 1, "--feature_cache: augmented passes over the training renderings "
                     "whose features are cached", flag_values=TRAIN_FLAGS)
flags.DEFINE_string("feature_cache_layer", "", "--feature_cache: the backbone layer whose output is cached (default: "
                    "the backbone's output, everything frozen); the layers after it train, batch norms frozen, at "
                    "--top_learning_rate_scale times the heads' rate (efficientnet_lite0: block10_add trains the "
                    "last stage)", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("top_learning_rate_scale", 0.1, "--feature_cache_layer: learning rate of the trained backbone "
                   "layers relative to --learning_rate (1e-3 wipes out pretrained features)", flag_values=TRAIN_FLAGS)
flags.DEFINE_string("feature_cache_dir", None, "--feature_cache: folder of the cached features (default "
                    "MODEL_DIR/feature_cache); runs with the same data, backbone and crops can share one",
                    flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("rotation_repr", "quaternion", ["quaternion", "6d"], "direct head: the rotation output, the "
                  "thesis' quaternion or the continuous 6D representation (Zhou et al. 2019)", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("rotation_hypotheses", 1, "direct head, --rotation_repr 6d: propose this many rotations and "
                     "score them, trained winner-takes-all (pose_net.losses.rotation_hypotheses_loss); 1: one "
                     "rotation, the thesis' head", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("input_size", 128, "side of the network input crop in pixels", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("input_mode", "roi", ["roi", "full"], "roi: crops around the object's 2D box (scale-invariant "
                  "translation); full: the whole image, as in the thesis", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("roi_enlarge", 1.4, "roi crop side / longest side of the box", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("batch_size", 32, "batch size (global, over all replicas)", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("epochs", 20, "passes over the training shards", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("steps_per_epoch", 0, "cap on steps per epoch (0: one pass over the data)", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("learning_rate", 1e-3, "peak learning rate (Adam, cosine decay)", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_box", 1.0, "lb: weight of the 2D box term", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_rotation", 1.0, "lq: weight of the rotation (point matching) term", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_translation", 1.0, "lt: weight of the translation term", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_projection", 0.0, "lPL: weight of the Projection Loss (the compiled op)", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_reg", 1e-5, "lreg: weight decay", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_coords", 1.0, "lc: weight of the coordinate head's masked L1", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_mask", 1.0, "lm: weight of the coordinate head's mask cross-entropy", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("pnp_hypotheses", 64, "coords head: RANSAC-PnP hypotheses per image", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("pnp_threshold_px", 2.0, "coords head: RANSAC-PnP inlier threshold in pixels of the coordinate "
                   "map (stride 2: one is two crop pixels)", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("stage", "coords", ["coords", "dsac", "ngdsac", "dsac_rgbd"], "coords head: coords trains on "
                  "the coordinate and mask losses; dsac adds DSAC's expected pose loss through RANSAC-PnP "
                  "(pose_net/dsac.py); ngdsac also learns where minimal sets are drawn (NG-RANSAC); dsac_rgbd adds "
                  "the RGB-D form (hypotheses from the crops' depth, for RGB-D cameras). All but coords start from "
                  "--init_from",
                  flag_values=TRAIN_FLAGS)
flags.DEFINE_string("init_from", None, "model folder (a finished run of the same head, backbone and object) whose "
                    "weights start this run; layers it lacks (NG-DSAC's sampling head) start fresh",
                    flag_values=TRAIN_FLAGS)
flags.DEFINE_float("lambda_dsac", 1.0, "--stage dsac|ngdsac|dsac_rgbd: weight of the expected pose loss", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("dsac_pose_loss", "angle_translation", ["reprojection", "add", "add_s", "angle_translation"],
                  "--stage dsac|ngdsac: the pose loss l of each hypothesis: the seed's mean reprojection error (px), "
                  "ADD / diameter, ADD-S / diameter, or DSAC*'s angle_deg + w * |dt|", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("dsac_alpha", 100.0, "--stage dsac|ngdsac: selection softmax scale over the inlier share "
                   "(DSAC*: 100); the inlier threshold is --pnp_threshold_px", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("dsac_translation_weight_per_mm", 0.1, "--dsac_pose_loss angle_translation: w per mm (DSAC*: "
                   "100 per metre)", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("dsac_loss_cut", 0.0, "soft clamp of the pose loss, sqrt(cut * l) above cut (0: the loss' "
                   "default, pose_net.dsac.DEFAULT_CUTS)", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("dsac_refine_iterations", 3, "--stage dsac|ngdsac: refinement rounds of every hypothesis in "
                     "training (3 keeps a DSAC step under 2x a coordinate step, make bench-train; evaluation refines "
                     "the best hypothesis as pose_net.coordinates does)", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("dsac_refine_points", 256, "--stage dsac|ngdsac: each hypothesis is refined on at most this "
                     "many of an image's correspondences (a regular subsample where there are more; 0: all; "
                     "pose_net.dsac.DsacSettings)", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("ng_pools", 2, "--stage ngdsac: hypothesis pools per image, each of --pnp_hypotheses / ng_pools "
                     "hypotheses (the cost of one DSAC pool); the policy gradient's baseline is their mean loss",
                     flag_values=TRAIN_FLAGS)
flags.DEFINE_float("time_budget_min", 0.0, "train for this many minutes of wall time (resumed runs count the time "
                   "already spent), the learning rate on a cosine over that time; 0: --epochs decide", flag_values=TRAIN_FLAGS)
flags.DEFINE_float("projection_scale", 0.5, "Projection Loss drawing resolution relative to the input crop", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("num_loss_points", 512, "model points used by the rotation and projection terms", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("symmetric_loss", "auto", ["auto", "yes", "no"], "use the ADD-S form of the rotation term (auto: "
                  "from the dataset's symmetry flag)", flag_values=TRAIN_FLAGS)
flags.DEFINE_bool("augment", True, "on-the-fly augmentation", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("seed", 0, "seed for initialisation, data order and augmentation", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("checkpoint_every_steps", 0, "also checkpoint every N steps within an epoch (0: epochs only)", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("max_val_images", 256, "validation images per epoch", flag_values=TRAIN_FLAGS)
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"], "tf.distribute strategy: "
                  "mirrored for several GPUs, multi_worker for several machines (TF_CONFIG)", flag_values=TRAIN_FLAGS)
flags.DEFINE_bool("progress", True, "show a progress bar", flag_values=TRAIN_FLAGS)
flags.DEFINE_integer("stop_after_steps", 0, "testing aid: exit (as if killed) after this many steps of this run", flag_values=TRAIN_FLAGS)


CONFIG_KEYS = ("head", "backbone", "input_size", "input_mode", "roi_enlarge", "seed", "freeze_backbone",
               "rotation_repr", "rotation_hypotheses", "feature_cache_layer", "stage")
CONFIG_DEFAULTS = {"head": "direct", "rotation_repr": "quaternion", "rotation_hypotheses": 1,
                   "feature_cache_layer": ""}  # for config.json files written before the key


def make_config(flag_values, info: dict) -> dict:
    """The model folder's ``config.json``: what evaluation needs to run the model, and the training flags."""
    from pose_core.symmetry import symmetries_for_mesh
    from pose_net.coordinates import CoordinateFrame, PnPSettings

    head = flag_values.get("head", "direct")
    extra = {}
    if head == "coords":
        symmetries, source = symmetries_for_mesh(info.get("mesh"), int(info.get("obj_id", 0)),
                                                 bool(info.get("symmetric", False)))
        extra = {"coordinate_frame": CoordinateFrame.from_points(info["model_points_mm"]).to_json(),
                 "symmetries": symmetries.to_json(), "symmetries_source": source,
                 "pnp": {"num_hypotheses": flag_values["pnp_hypotheses"],
                         "threshold_px": flag_values["pnp_threshold_px"], "seed": PnPSettings.seed}}
    return {
        "format_version": 1,
        "obj_id": int(info.get("obj_id", 0)),
        "mesh": info.get("mesh"),
        "diameter_mm": float(info["diameter_mm"]),
        "symmetric": bool(info.get("symmetric", False)),
        "model_points_mm": info["model_points_mm"],
        "head": head,
        "backbone": flag_values["backbone"],
        "input_size": flag_values["input_size"],
        "input_mode": flag_values["input_mode"],
        "roi_enlarge": flag_values["roi_enlarge"],
        "freeze_backbone": flag_values["freeze_backbone"],
        "rotation_repr": flag_values.get("rotation_repr", "quaternion"),
        "rotation_hypotheses": int(flag_values.get("rotation_hypotheses", 1)) if head == "direct" else 1,
        "feature_cache_layer": flag_values.get("feature_cache_layer", "") if flag_values.get("feature_cache") else "",
        "stage": flag_values.get("stage", "coords") if head == "coords" else "",
        "seed": flag_values["seed"],
        "dataset": flag_values["dataset"],
        **extra,
        "flags": flag_values,
    }


def check_resume(model_dir: Path, config: dict):
    """Refuses to resume a model folder trained on another object or with another network."""
    from pose_net.inference import CONFIG_FILE

    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    if old.get("obj_id") != config["obj_id"] or abs(old.get("diameter_mm", 0) - config["diameter_mm"]) > 1e-3:
        raise PoseInputError(f"{model_dir} holds a model of object {old.get('obj_id')} "
                         f"(diameter {old.get('diameter_mm'):.1f} mm) but --dataset {config['dataset']} renders "
                         f"object {config['obj_id']} (diameter {config['diameter_mm']:.1f} mm): use another "
                         f"--model_dir")
    # config.json files written before "stage" was a key: a coordinate model then trained its coordinate stage
    defaults = dict(CONFIG_DEFAULTS, stage="coords" if old.get("head") == "coords" else "")
    for key in CONFIG_KEYS:
        if old.get(key, defaults.get(key)) != config[key]:
            raise PoseInputError(f"{model_dir} was trained with {key}={old.get(key)!r}, now {config[key]!r}: "
                             f"use the same flags to resume, or another --model_dir")


def resolve_backbone_weights(backbone: str, weights: str):
    """The ``weights`` argument of the backbone for a ``--backbone_weights`` value (``auto`` resolved)."""
    if weights == "auto":
        return "imagenet" if backbone == "efficientnet_lite0" else None
    return None if weights == "none" else weights


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def validate(estimator, dataset, points_mm, diameter_mm, symmetric, max_images, loss_points=None):
    """ADD, ADD-S recall (10% of the diameter) and mean errors on a validation dataset; for the direct head with
    ``loss_points`` also the mean rotation term (``rotation_term``, the training loss' Lq on these images) and the
    targets' allocentric rotations (``R_allo_true``, not JSON: popped by the caller)."""
    from pose_core import metrics
    from pose_net import losses
    from pose_net import parametrization as param

    adds, add_ss, n, rot_terms, R_allo = [], [], 0, [], []
    with_rotation_term = loss_points is not None and estimator.head == "direct"
    for batch in dataset:
        outputs = estimator.network_outputs(batch["image"])
        R, t = estimator.estimate_batch(batch, outputs)
        R_gt, t_gt = batch["R"].numpy(), batch["t_mm"].numpy()
        adds += list(metrics.add_batch(R, t, R_gt, t_gt, points_mm))
        add_ss += list(metrics.add_s_batch(R, t, R_gt, t_gt, points_mm))
        if with_rotation_term:
            true_allo = param.egocentric_to_allocentric(batch["R"], batch["t_mm"])
            pred_allo = param.rotation_matrix(outputs["rotation"])
            rot_terms += list(losses.rotation_term(pred_allo, true_allo, loss_points, diameter_mm, symmetric).numpy())
            R_allo.append(true_allo.numpy())
        n += len(R)
        if n >= max_images:
            break
    out = {
        "add_recall": metrics.recall(adds, diameter_mm), "add_s_recall": metrics.recall(add_ss, diameter_mm),
        "add_mean_mm": float(np.mean(adds)) if adds else 0.0, "add_s_mean_mm": float(np.mean(add_ss)) if adds else 0.0,
        "add_median_mm": float(np.median(adds)) if adds else 0.0,
        "add_s_median_mm": float(np.median(add_ss)) if adds else 0.0,
        "num_images": n,
    }
    if rot_terms:
        out["rotation_term"] = float(np.mean(rot_terms))
        out["R_allo_true"] = np.concatenate(R_allo)
    return out


def check_training_flags(f: dict):
    """Raises :class:`PoseInputError` naming the flag where the training flags ``f`` (a dict, as
    :func:`default_flag_values` gives) cannot go together; called by :func:`train` before anything is written."""
    from pose_net.inference import EXPORT_FILE

    use_cache = f["feature_cache"]
    if use_cache and not (f["freeze_backbone"] and f["head"] == "direct"):
        raise PoseInputError("--feature_cache needs --freeze_backbone and --head=direct (the backbone's features "
                             "of a crop must not change during training)")
    if use_cache and f["strategy"] != "default":
        raise PoseInputError("--feature_cache trains on one device: use --strategy=default")
    dsac_stage = f.get("stage", "coords") != "coords"
    if dsac_stage and f["head"] != "coords":
        raise PoseInputError(f"--stage {f['stage']} trains the coordinate head through RANSAC-PnP: use --head coords")
    if dsac_stage and f["stage"] == "ngdsac" and f["ng_pools"] < 2:
        raise PoseInputError(f"--ng_pools must be >= 2 (NG-RANSAC's baseline is the mean over pools), got "
                             f"{f['ng_pools']}")
    if f.get("init_from") and not (Path(f["init_from"]) / EXPORT_FILE).is_file():
        raise PoseInputError(f"--init_from {f['init_from']}: no model.keras there (a finished training run's "
                             f"--model_dir)")
    hypotheses = f.get("rotation_hypotheses", 1)
    if hypotheses < 1 or (hypotheses > 1 and f["head"] == "direct" and f["rotation_repr"] != "6d"):
        raise PoseInputError(f"--rotation_hypotheses {hypotheses}: must be 1, or more with --rotation_repr 6d")
    if f["feature_cache_passes"] < 1:
        raise PoseInputError(f"--feature_cache_passes must be >= 1, got {f['feature_cache_passes']}")


def train(flag_values: dict) -> dict:
    """Trains (or resumes) a model; returns the last validation figures. ``flag_values``: the flags as a dict."""
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from pose_net import data as pdata
    from pose_net import losses
    from pose_net.inference import CONFIG_FILE, EXPORT_FILE, PoseEstimator
    from pose_net.coordinates import CoordinateFrame
    from pose_net.model import build_model
    from pose_core.symmetry import Symmetries
    from render.dataset import load_dataset_info

    f = flag_values
    model_dir = Path(f["model_dir"])
    check_training_flags(f)
    use_cache = f["feature_cache"]
    dsac_stage = f.get("stage", "coords") != "coords"
    info = load_dataset_info(f["dataset"])
    config = make_config(f, info)
    check_resume(model_dir, config)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))

    symmetric = config["symmetric"] if f["symmetric_loss"] == "auto" else f["symmetric_loss"] == "yes"
    points_all = np.asarray(info["model_points_mm"], np.float32)
    loss_points = points_all[np.random.default_rng(0).permutation(len(points_all))[: f["num_loss_points"]]]
    diameter = float(info["diameter_mm"])
    cfg = pdata.PipelineConfig(input_size=f["input_size"], input_mode=f["input_mode"], roi_enlarge=f["roi_enlarge"],
                               augment=f["augment"])
    weights = losses.LossWeights(f["lambda_box"], f["lambda_rotation"], f["lambda_translation"],
                                 f["lambda_projection"], f["lambda_reg"], f["projection_scale"],
                                 f["lambda_coords"], f["lambda_mask"])
    coords_head = config["head"] == "coords"
    coordinate_spec = None
    if coords_head:
        coordinate_spec = pdata.CoordinateTargetSpec(CoordinateFrame.from_json(config["coordinate_frame"]),
                                                     Symmetries.from_json(config["symmetries"]))
        print(f"coordinate head: symmetries {config['symmetries_source']}", flush=True)
    train_paths = pdata.shard_paths(f["dataset"], "train")
    names = {Path(p).name for p in train_paths}
    n_train = sum(int(s["count"]) for s in info["shards"] if s["file"] in names)
    steps_per_epoch = max(1, n_train // f["batch_size"])
    if f["steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, f["steps_per_epoch"])
    total_steps = max(1, steps_per_epoch * f["epochs"])

    keras.utils.set_random_seed(f["seed"])
    strategy = make_strategy(f["strategy"])
    with strategy.scope():
        weights_arg = resolve_backbone_weights(f["backbone"], f["backbone_weights"])
        model = build_model(config["head"], f["backbone"], f["input_size"], weights_arg, f["freeze_backbone"],
                            rotation_repr=config["rotation_repr"], sampling_head=config["stage"] == "ngdsac",
                            rotation_hypotheses=config["rotation_hypotheses"])
        head_model = backbone_lower = backbone_top = None
        if use_cache:
            from pose_net.feature_cache import split_backbone

            head_model = model.get_layer("direct_head")
            backbone_model = next(l for l in model.layers if isinstance(l, keras.Model) and l is not head_model)
            backbone_lower, backbone_top = split_backbone(backbone_model, config["feature_cache_layer"])
        budget_s = 60.0 * f["time_budget_min"]
        if budget_s > 0:  # the learning rate follows the wall clock (set every step below)
            schedule = f["learning_rate"]
        else:
            schedule = keras.optimizers.schedules.CosineDecay(f["learning_rate"], total_steps, alpha=0.05,
                                                              warmup_target=None)
        optimizer = keras.optimizers.Adam(schedule, clipnorm=5.0)
        head_vars = head_model.trainable_variables if backbone_top is not None else model.trainable_variables
        optimizer.build(head_vars)
        # the trained backbone layers (--feature_cache_layer) get their own, smaller learning rate
        top_vars, top_optimizer, top_scale = [], None, f["top_learning_rate_scale"]
        if backbone_top is not None:
            top_vars = backbone_top.trainable_variables
            top_schedule = (schedule * top_scale if isinstance(schedule, float) else
                            keras.optimizers.schedules.CosineDecay(f["learning_rate"] * top_scale, total_steps,
                                                                   alpha=0.05))
            top_optimizer = keras.optimizers.Adam(top_schedule, clipnorm=5.0)
            top_optimizer.build(top_vars)
        epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch")
        step_in_epoch = tf.Variable(0, dtype=tf.int64, name="step_in_epoch")
        train_seconds = tf.Variable(0.0, dtype=tf.float64, name="train_seconds")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, step_in_epoch=step_in_epoch,
                               train_seconds=train_seconds,
                               **({"top_optimizer": top_optimizer} if top_optimizer is not None else {}))
    manager = tf.train.CheckpointManager(ckpt, str(model_dir / "checkpoints"), max_to_keep=3)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint)
        print(f"resumed from {manager.latest_checkpoint} (epoch {int(epoch_var.numpy())}, "
              f"step {int(step_in_epoch.numpy())} of it)", flush=True)
    elif f.get("init_from"):
        init_weights_from(model, config, Path(f["init_from"]))

    dsac_loss = None  # set below for the dsac stages: the loss through RANSAC-PnP
    if dsac_stage:
        from pose_net import dsac

        dsac_settings = dsac.DsacSettings(
            num_hypotheses=f["pnp_hypotheses"], threshold_px=f["pnp_threshold_px"], alpha=f["dsac_alpha"],
            pose_loss=f["dsac_pose_loss"], translation_weight_per_mm=f["dsac_translation_weight_per_mm"],
            loss_cut=f["dsac_loss_cut"] or None, max_refine_iterations=f["dsac_refine_iterations"],
            max_refine_points=f["dsac_refine_points"])
        frame, symmetries_obj = coordinate_spec.frame, coordinate_spec.symmetries
        ng_pools = f["ng_pools"] if f["stage"] == "ngdsac" else 0

        def through_solver_loss(outputs, batch):
            return dsac.coordinate_dsac_loss(outputs, batch, frame, symmetries_obj, loss_points, diameter,
                                             dsac_settings, ng_pools=ng_pools, seed=f["seed"],
                                             rgbd=f["stage"] == "dsac_rgbd")

        dsac_loss = through_solver_loss

    replicas = strategy.num_replicas_in_sync
    cache = None
    if use_cache:
        from pose_net.feature_cache import CACHE_DIR, build_feature_cache

        cache = build_feature_cache(
            backbone_lower,
            lambda k: pdata.make_dataset(f["dataset"], cfg, 64, "train", True, f["seed"], 10_000 + k,
                                         drop_remainder=False),
            f["feature_cache_dir"] or model_dir / CACHE_DIR,
            {"dataset": str(Path(f["dataset"]).resolve()), "backbone": f["backbone"],
             "backbone_weights": f["backbone_weights"], "input_size": f["input_size"],
             "input_mode": f["input_mode"], "roi_enlarge": f["roi_enlarge"], "augment": f["augment"],
             "seed": f["seed"], "layer": config["feature_cache_layer"] or "output"},
            f["feature_cache_passes"], f["progress"])
        steps_per_epoch = max(1, len(cache) // f["batch_size"])
        if f["steps_per_epoch"]:
            steps_per_epoch = min(steps_per_epoch, f["steps_per_epoch"])
        print(f"feature cache: {len(cache)} crops ({f['feature_cache_passes']} passes), {cache.seconds:.0f} s; "
              f"{steps_per_epoch} head steps per epoch", flush=True)

        @tf.function
        def head_step(batch):
            with tf.GradientTape() as tape:
                features = batch["features"]
                if backbone_top is not None:
                    features = backbone_top(features, training=True)
                outputs = head_model(features, training=True)
                total, terms = losses.total_loss(outputs, batch, model, weights, loss_points, diameter, symmetric,
                                                 f["input_size"])
            grads = tape.gradient(total, head_vars + top_vars)
            optimizer.apply_gradients(zip(grads[:len(head_vars)], head_vars))
            if top_optimizer is not None:
                top_optimizer.apply_gradients(zip(grads[len(head_vars):], top_vars))
            return total, terms
    # the features' time counts against the budget too
    cache_seconds = cache.seconds if cache is not None else 0.0

    def step_fn(batch):
        with tf.GradientTape() as tape:
            outputs = model(batch["image"], training=True)
            if coords_head:
                total, terms = losses.coordinate_head_loss(outputs, batch, model, weights)
                if dsac_loss is not None:
                    d_total, d_terms = dsac_loss(outputs, batch)
                    total = total + f["lambda_dsac"] * d_total
                    terms.update(d_terms)
            else:
                total, terms = losses.total_loss(outputs, batch, model, weights, loss_points, diameter, symmetric,
                                                 f["input_size"])
            scaled = total / replicas
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total, terms

    @tf.function
    def train_step(batch):
        total, terms = strategy.run(step_fn, args=(batch,))
        reduce = lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)  # noqa: E731
        return reduce(total), {k: reduce(v) for k, v in terms.items()}

    writer = tf.summary.create_file_writer(str(model_dir / "logs"))
    val_dir = f["val_dataset"] or f["dataset"]
    val_split = "all" if f["val_dataset"] else "val"
    estimator = PoseEstimator(model=model, config=config)
    history_path = model_dir / "history.jsonl"
    steps_this_run = 0
    last_val = {}
    shown_terms = (("total", "coords", "mask") + (("dsac",) if dsac_stage else ()) if coords_head
                   else ("total", "rotation", "translation", "projection"))
    out_of_time = False
    constant_level = None
    for epoch in range(int(epoch_var.numpy()), f["epochs"]):
        if out_of_time or (budget_s > 0 and float(train_seconds.numpy()) + cache_seconds >= budget_s):
            break
        skip = int(step_in_epoch.numpy())
        if cache is not None:
            batches = itertools.islice(cache.batches(f["batch_size"], f["seed"], epoch), skip, steps_per_epoch)
        else:
            ds = pdata.make_dataset(f["dataset"], cfg, f["batch_size"], "train", True, f["seed"], epoch,
                                    coordinate_spec=coordinate_spec)
            ds = ds.take(steps_per_epoch).skip(skip)
            batches = _checked(strategy.experimental_distribute_dataset(ds), train_paths)
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{f['epochs']}",
                   disable=not f["progress"], unit="step", file=sys.stdout, dynamic_ncols=True)
        t0, sums, n = time.time(), {}, 0
        for batch in batches:
            t_step = time.time()
            if budget_s > 0:
                frac = min(float(train_seconds.numpy()) / max(budget_s - cache_seconds, 1.0), 1.0)
                lr_now = f["learning_rate"] * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
                optimizer.learning_rate.assign(lr_now)
                if top_optimizer is not None:
                    top_optimizer.learning_rate.assign(lr_now * top_scale)
            total, terms = head_step(batch) if cache is not None else train_step(batch)
            n += 1
            steps_this_run += 1
            step_in_epoch.assign_add(1)
            for k, v in {"total": total, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix({k: f"{sums[k] / n:.3f}" for k in shown_terms})
            bar.update(1)
            train_seconds.assign_add(time.time() - t_step)
            if f["checkpoint_every_steps"] and int(step_in_epoch.numpy()) % f["checkpoint_every_steps"] == 0:
                manager.save()
            if f["stop_after_steps"] and steps_this_run >= f["stop_after_steps"]:
                bar.close()
                print(f"stopping after {steps_this_run} steps (--stop_after_steps)", flush=True)
                return {}
            if budget_s > 0 and float(train_seconds.numpy()) + cache_seconds >= budget_s:
                out_of_time = True
                break
        bar.close()
        epoch_time = time.time() - t0
        means = {k: v / max(n, 1) for k, v in sums.items()}
        val_ds = pdata.make_dataset(val_dir, cfg, f["batch_size"], val_split, training=False,
                                    limit=f["max_val_images"], drop_remainder=False, coordinate_spec=coordinate_spec)
        last_val = validate(estimator, val_ds, points_all, diameter, symmetric, f["max_val_images"], loss_points)
        R_allo_val = last_val.pop("R_allo_true", None)
        if R_allo_val is not None and not symmetric:
            if constant_level is None:  # what a network that ignores its input reaches on these images
                constant_level = losses.constant_rotation_level(R_allo_val, loss_points, diameter)[0]
            last_val["rotation_constant_level"] = constant_level
        global_step = (epoch + 1) * max(steps_per_epoch, 1)
        with writer.as_default(step=global_step):
            for k, v in means.items():
                tf.summary.scalar(f"loss/{k}", v)
            for k, v in last_val.items():
                tf.summary.scalar(f"val/{k}", v)
            tf.summary.image("val/predicted_poses", _pose_pictures(estimator, val_ds, points_all, diameter), max_outputs=1)
        record = {"epoch": epoch + 1, "steps": n, "epoch_time_s": epoch_time,
                  "train_seconds": float(train_seconds.numpy()) + cache_seconds, **means, **last_val}
        with open(history_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        rotation_note = (f"  rotation term {last_val['rotation_term']:.3f} (constant guess "
                         f"{last_val['rotation_constant_level']:.3f})" if "rotation_constant_level" in last_val else "")
        print(f"epoch {epoch + 1}: loss {means.get('total', 0):.4f}  val ADD {100 * last_val['add_recall']:.1f}%  "
              f"ADD-S {100 * last_val['add_s_recall']:.1f}%{rotation_note}  ({epoch_time:.0f} s)", flush=True)
        if out_of_time:
            print(f"time budget of {f['time_budget_min']:g} min spent after {n} steps of epoch {epoch + 1}",
                  flush=True)
            step_in_epoch.assign(0)
            epoch_var.assign(f["epochs"])  # finished: a rerun exports and stops
        else:
            epoch_var.assign(epoch + 1)
            step_in_epoch.assign(0)
        manager.save()
    model.save(model_dir / EXPORT_FILE)
    (model_dir / "final_metrics.json").write_text(json.dumps(last_val, indent=1))
    print(f"exported {model_dir / EXPORT_FILE}", flush=True)
    return last_val


def init_weights_from(model, config: dict, source: Path):
    """Copies the weights of the finished run in ``source`` into ``model``, layer by layer (by name); refuses a
    run of another object, head, backbone or input size. Layers ``source`` lacks keep their initialisation."""
    from pose_net.inference import load_config, load_model

    other = load_config(source)
    for key in ("obj_id", "head", "backbone", "input_size"):
        if other.get(key) != config[key]:
            raise PoseInputError(f"--init_from {source} holds a model with {key}={other.get(key)!r}, this run has "
                                 f"{config[key]!r}")
    src = {layer.name: layer for layer in load_model(source, other).layers}
    copied, fresh = 0, []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in src and [w.shape for w in src[layer.name].weights] == [w.shape for w in layer.weights]:
            layer.set_weights(src[layer.name].get_weights())
            copied += 1
        else:
            fresh.append(layer.name)
    print(f"initialised from {source}: {copied} layers copied" + (f", new: {', '.join(fresh)}" if fresh else ""),
          flush=True)


def _checked(dataset, paths):
    """Iterates ``dataset``; when reading fails, names the corrupt shard file and record (DatasetError)."""
    import tensorflow as tf

    from pose_net.data import raise_for_corrupt_records

    iterator = iter(dataset)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            raise_for_corrupt_records(paths)
            raise
        yield batch


def _pose_pictures(estimator, dataset, points_mm, diameter_mm, count: int = 8):
    """A ``[1, H, W, 3]`` contact sheet of validation crops with true (green) and predicted (red) outlines."""
    from pose_net.draw import contact_sheet, draw_pose_overlay

    batch = next(iter(dataset))
    R, t = estimator.estimate_batch(batch)
    pics = []
    for i in range(min(count, len(R))):
        img = batch["image"][i].numpy().clip(0, 255).astype(np.uint8)
        K = batch["K_crop"][i].numpy()
        pics.append(draw_pose_overlay(img, K, points_mm, diameter_mm, R[i], t[i], batch["R"][i].numpy(),
                                      batch["t_mm"][i].numpy()))
    return np.asarray(contact_sheet(pics, columns=4, tile=160))[None]


def main(argv):
    del argv
    for name in ("dataset", "model_dir"):
        if not flags.FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    values = {name: flags.FLAGS[name].value for name in TRAIN_FLAGS}
    try:
        train(values)
    except PoseInputError as e:
        raise SystemExit(f"error: {e}")


def default_flag_values(**overrides) -> dict:
    """The training flags' defaults as a dict (for calling :func:`train` from Python), with overrides."""
    values = {name: TRAIN_FLAGS[name].default for name in TRAIN_FLAGS}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown training flags: {sorted(unknown)}")
    values.update(overrides)
    return values


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    flags.FLAGS.append_flag_values(TRAIN_FLAGS)
    for _name in TRAIN_FLAGS:
        flags.FLAGS.register_flag_by_module(sys.argv[0], TRAIN_FLAGS[_name])  # listed by --help
    app.run(main)
