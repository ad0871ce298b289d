"""Why the direct head's rotation did not train, measured: one change at a time on the same renderings and steps.

    python -m experiments.rotation_study --out docs/results      # what `make rotation-study` runs (~40 min, 2 cores)

Every variant trains the thesis' heads (:func:`pose_net.model.build_direct_head`) on the same cached features of
the same rendered crops of the built-in toy, for the same number of steps, and is scored on the same rendered test
set (other seed, ground-truth boxes). Columns: ADD recall at 10% of the diameter, the same with the true translation
(rotation only), the share of translations within 10% of the diameter, the median rotation error, the rotation
term on the test images against the level of the best constant rotation
(:func:`pose_net.losses.constant_rotation_level`). Variants:

* ``quaternion`` / ``6d``: the rotation output (thesis / Zhou et al.), heads on frozen Lite0 features (stride 32);
* ``6d wide``: a wider shared layer (1024) and no dropout;
* ``6d lr 3e-3``: a 3x larger learning rate;
* ``6d + top blocks at lr x``: Lite0's last stage (blocks 11-15 and the 1280-channel head conv) trained too, on
  cached stride-16 features, with its own learning rate (``x`` times the heads');
* ``6d input 224``: the same crops at 224 pixels (7x7 features; fewer renderings: the cache costs 3x more).
* ``6d 8k crops`` / ``6d 8k crops rendered at 256``: the first 8,000 renderings at 128 pixels, against the same
  renderings (same seeds: same poses, backgrounds and lights) rendered at 256 pixels with the same field of view;
  the network sees 128-pixel crops in both, so the second puts twice the pixels across the object.
* ``... + top blocks`` / ``... + blocks 5-15``: the 256-pixel renderings with Lite0's last stage trained (cached
  at ``block10_add``, stride 16), its last two stages (cached at ``block4_add``, stride 8) or three (``block2_add``,
  stride 4).

Rendering, features and finished variants are kept under ``--work_dir`` (resumable: a variant's row is written to
``results.jsonl`` when it ends). The table goes to ``OUT/rotation_study.md``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags

from experiments import common
from pose_net.feature_cache import LITE0_TOP_STAGE_INPUT as TOP_SPLIT
from pose_net.feature_cache import LITE0_TOP_TWO_STAGES_INPUT as TOP_TWO_SPLIT

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "docs/results", "folder of rotation_study.md")
flags.DEFINE_string("work_dir", "runs/rotation_study", "renderings, feature caches and results")
flags.DEFINE_integer("num_train", 24000, "training renderings (the last 2,000 are not used)")
flags.DEFINE_integer("num_test", 500, "test renderings")
flags.DEFINE_integer("steps", 6000, "training steps per variant (batch 32)")
flags.DEFINE_integer("top_block_steps", 3000, "steps of the variants that train Lite0's top blocks (7x slower)")
flags.DEFINE_integer("num_train_224", 8000, "training crops of the 224-pixel variant")
flags.DEFINE_integer("num_train_small", 8000, "training crops of the variants that compare render sizes")
flags.DEFINE_string("only", "", "comma-separated variant names to run (default: all)")

BATCH = 32
VARIANTS = {  # name -> settings
    "quaternion": dict(repr="quaternion"),
    "6d": dict(repr="6d"),
    "6d wide": dict(repr="6d", head_width=1024, dropout=0.0),
    "6d lr 3e-3": dict(repr="6d", lr=3e-3),
    "6d + top blocks at lr x0.03": dict(repr="6d", split=TOP_SPLIT, top_lr_scale=0.03),
    "6d + top blocks at lr x0.1": dict(repr="6d", split=TOP_SPLIT, top_lr_scale=0.1),
    "6d + top blocks at lr x0.3": dict(repr="6d", split=TOP_SPLIT, top_lr_scale=0.3),
    "6d + top blocks at lr x1": dict(repr="6d", split=TOP_SPLIT, top_lr_scale=1.0),
    "6d input 224": dict(repr="6d", input_size=224),
    "6d 8k crops": dict(repr="6d", limit="small"),
    "6d 8k crops rendered at 256": dict(repr="6d", limit="small", render_size=256),
    "6d 8k crops rendered at 256 + top blocks at lr x0.1": dict(repr="6d", limit="small", render_size=256,
                                                                split=TOP_SPLIT, top_lr_scale=0.1),
    "6d 8k crops rendered at 256 + blocks 5-15 at lr x0.1": dict(repr="6d", limit="small", render_size=256,
                                                                 split=TOP_TWO_SPLIT, top_lr_scale=0.1),
    "6d 8k crops rendered at 256 + blocks 3-15 at lr x0.1": dict(repr="6d", limit="small", render_size=256,
                                                                 split="block2_add", top_lr_scale=0.1),
}


def _features(backbone_layer: str, input_size: int, dataset: Path, cache_dir: Path, limit: int | None,
              training: bool):
    """Cached features of ``dataset``'s crops at ``backbone_layer`` (training: the jittered, augmented crops of
    pass 0; test: the ground-truth-box crops)."""
    from pose_net import data as pdata
    from pose_net.feature_cache import build_feature_cache, split_backbone
    from pose_net.model import build_backbone

    lower, _ = split_backbone(build_backbone("efficientnet_lite0", input_size, "imagenet", freeze=True),
                              backbone_layer)
    cfg = pdata.PipelineConfig(input_size=input_size, augment=training)
    split = "train" if training else "all"
    cache = build_feature_cache(
        lower, lambda k: pdata.make_dataset(dataset, cfg, 64, split, training, 0, 10_000 + k, drop_remainder=False,
                                            limit=limit),
        cache_dir, {"layer": backbone_layer, "input_size": input_size, "limit": limit, "training": training}, 1,
        progress=False)
    return cache.arrays, cache.seconds


def run_variant(name: str, settings: dict, work: Path, info: dict) -> dict:
    import keras
    import tensorflow as tf

    from pose_net import losses
    from pose_net.feature_cache import split_backbone
    from pose_net.model import build_backbone, build_direct_head

    input_size = settings.get("input_size", 128)
    layer = settings.get("split", "head_relu6")
    small = settings.get("limit") == "small"
    limit = FLAGS.num_train_small if small else (FLAGS.num_train_224 if input_size != 128 else None)
    render_size = settings.get("render_size", 128)
    suffix = "" if render_size == 128 else f"_{render_size}"
    tag = f"{layer}_{input_size}{suffix}"
    train, train_s = _features(layer, input_size, work / f"toy_train{suffix}",
                               work / f"cache_{tag}_train{'_small' if small else ''}", limit, True)
    test, _ = _features(layer, input_size, work / f"toy_test{suffix}", work / f"cache_{tag}_test", None, False)
    diameter = float(info["diameter_mm"])
    points = np.asarray(info["model_points_mm"], np.float32)
    loss_points = points[np.random.default_rng(0).permutation(len(points))[:512]]

    keras.utils.set_random_seed(0)
    full = build_backbone("efficientnet_lite0", input_size, "imagenet", freeze=True)
    head = build_direct_head(full.output.shape[1:], settings.get("head_width", 256), settings.get("dropout", 0.1),
                             settings["repr"])
    steps = FLAGS.top_block_steps if "split" in settings else FLAGS.steps
    lr = settings.get("lr", 1e-3)
    head_vars = head.trainable_variables
    if "split" in settings:  # the top blocks, from the cached stride-16 features (batch norms stay frozen)
        _, top = split_backbone(full, layer)
        net = lambda x, training: head(top(x, training=training), training=training)  # noqa: E731
        top_vars = top.trainable_variables
    else:
        net = lambda x, training: head(x, training=training)  # noqa: E731
        top_vars = []
    schedule = lambda scale: keras.optimizers.schedules.CosineDecay(lr * scale, steps, alpha=0.05)  # noqa: E731
    opt_head = keras.optimizers.Adam(schedule(1.0), clipnorm=5.0)
    opt_top = keras.optimizers.Adam(schedule(settings.get("top_lr_scale", 1.0)), clipnorm=5.0)
    weights = losses.LossWeights(projection=0.0)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            out = net(tf.cast(batch["features"], tf.float32), True)
            total, terms = losses.total_loss(out, batch, head, weights, loss_points, diameter, False, input_size)
        grads = tape.gradient(total, head_vars + top_vars)
        opt_head.apply_gradients(zip(grads[:len(head_vars)], head_vars))
        if top_vars:
            opt_top.apply_gradients(zip(grads[len(head_vars):], top_vars))
        return terms["rotation"]

    rng = np.random.default_rng(1)
    n = len(train["features"])
    t0 = time.time()
    curve, recent = [], []
    for s in range(1, steps + 1):
        idx = np.sort(rng.choice(n, BATCH, replace=False))
        recent.append(float(step({k: tf.constant(v[idx]) for k, v in train.items()})))
        if s % max(1, steps // 6) == 0 or s == steps:
            curve.append({"step": s, "train_rotation_term": float(np.mean(recent)), **_score(net, test, diameter,
                                                                                             points, loss_points)})
            recent = []
            print(f"  {name}: step {s}/{steps}  " + "  ".join(f"{k} {v:.3f}" for k, v in curve[-1].items()
                                                              if k != "step"), flush=True)
    return {"variant": name, "steps": steps, "train_crops": n, "feature_seconds": train_s,
            "train_seconds": time.time() - t0, "curve": curve, **curve[-1]}


def _score(net, test, diameter, points, loss_points) -> dict:
    import tensorflow as tf

    from pose_core import metrics
    from pose_net import losses
    from pose_net import parametrization as param

    out = {}
    for start in range(0, len(test["features"]), 250):
        part = net(tf.cast(test["features"][start:start + 250], tf.float32), False)
        for k, v in part.items():
            out.setdefault(k, []).append(v)
    out = {k: tf.concat(v, 0) for k, v in out.items()}
    R, t = param.decode_pose(out, test["K"], test["crop_center"], test["crop_size"], diameter)
    R, t = R.numpy(), t.numpy()
    R_gt, t_gt = test["R"], test["t_mm"]
    add = metrics.add_batch(R, t, R_gt, t_gt, points)
    rotation_only = metrics.add_batch(R, t_gt, R_gt, t_gt, points)
    angle = np.degrees(np.arccos(np.clip((np.einsum("bij,bij->b", R, R_gt) - 1) / 2, -1, 1)))
    R_allo = param.egocentric_to_allocentric(tf.constant(R_gt, tf.float32), tf.constant(t_gt, tf.float32))
    term = losses.rotation_point_matching_loss(param.rotation_matrix(out["rotation"]), R_allo, loss_points,
                                               diameter)
    return {"add": metrics.recall(add, diameter), "rotation_only_add": metrics.recall(rotation_only, diameter),
            "translation_ok": float(np.mean(np.linalg.norm(t - t_gt, axis=1) < 0.1 * diameter)),
            "median_rotation_deg": float(np.median(angle)), "median_add_mm": float(np.median(add)),
            "test_rotation_term": float(tf.reduce_mean(term))}


def write_table(out: Path, rows: list[dict], constant_level: float, info: dict):
    lines = ["# Why rotation did not train: the direct head's levers, one at a time", "",
             f"Generated by `make rotation-study` (`python -m experiments.rotation_study`) on {common.machine_description()}.",
             f"Built-in toy (diameter {float(info['diameter_mm']):.1f} mm), `complete` randomization, "
             f"{FLAGS.num_train - 2000} training renderings (one augmented crop each), {FLAGS.num_test} test "
             "renderings (another seed) cropped at their true boxes. Frozen ImageNet EfficientNet-Lite0, the "
             "thesis' heads trained on its cached features, batch 32, Adam with cosine decay.", "",
             f"The best constant rotation reaches a rotation term of **{constant_level:.3f}** on the test images "
             "(mean point distance / diameter): every run of the earlier tables stayed there.", "",
             "| variant | steps | train crops | ADD % | rotation-only ADD % | translation within 10% % | "
             "median rotation error deg | median ADD mm | rotation term train / test | head s | features s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['steps']} | {r['train_crops']} | {100 * r['add']:.1f} | "
                     f"{100 * r['rotation_only_add']:.1f} | {100 * r['translation_ok']:.1f} | "
                     f"{r['median_rotation_deg']:.0f} | {r['median_add_mm']:.1f} | "
                     f"{r['train_rotation_term']:.3f} / {r['test_rotation_term']:.3f} | {r['train_seconds']:.0f} | "
                     f"{r['feature_seconds']:.0f} |")
    lines += ["", "Curves (test ADD % / rotation term at each sixth of the steps):", ""]
    for r in rows:
        lines.append(f"* {r['variant']}: " + ", ".join(f"{c['step']}: {100 * c['add']:.1f} / "
                                                       f"{c['test_rotation_term']:.3f}" for c in r["curve"]))
    lines += ["", "The reading is in docs/results/README.md, \"Why rotation did not train, and what fixed it\"."]
    (out / "rotation_study.md").write_text("\n".join(lines) + "\n")


def main(argv):
    del argv
    from pose_net.backbones.efficientnet_lite import ensure_pretrained_weights

    if ensure_pretrained_weights(verbose=False) is None:
        raise SystemExit("the rotation study uses the ImageNet weights of EfficientNet-Lite0: `make pretrained`")
    work = Path(FLAGS.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    obj = common.resolve_object("toy")
    common.render_dataset(obj.mesh, work / "toy_train", FLAGS.num_train, 0, "complete",
                          num_shards=max(2, FLAGS.num_train // 2000), extra=[f"--obj_id={obj.obj_id}"])
    common.render_dataset(obj.mesh, work / "toy_test", FLAGS.num_test, 1000, "complete", num_shards=1,
                          extra=[f"--obj_id={obj.obj_id}"])
    wanted = [v for v in VARIANTS if not FLAGS.only or v in FLAGS.only.split(",")]
    for size in sorted({VARIANTS[v].get("render_size", 128) for v in wanted} - {128}):
        # the same seeds, so the same poses, backgrounds and lights, at a higher resolution (the same field of view)
        num_small = FLAGS.num_train_small + 2000  # the last shard of 2,000 is the validation split
        common.render_dataset(obj.mesh, work / f"toy_train_{size}", num_small, 0, "complete", image_size=size,
                              num_shards=num_small // 2000, extra=[f"--obj_id={obj.obj_id}"])
        common.render_dataset(obj.mesh, work / f"toy_test_{size}", FLAGS.num_test, 1000, "complete",
                              image_size=size, num_shards=1, extra=[f"--obj_id={obj.obj_id}"])
    from render.dataset import load_dataset_info

    info = load_dataset_info(work / "toy_test")
    results_path = work / "results.jsonl"
    done = {}
    if results_path.is_file():
        for line in results_path.read_text().splitlines():
            row = json.loads(line)
            done[row["variant"]] = row
    for name in wanted:
        if name in done:
            print(f"{name}: done", flush=True)
            continue
        print(f"{name}: training", flush=True)
        row = run_variant(name, VARIANTS[name], work, info)
        with open(results_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[name] = row
    test, _ = _features("head_relu6", 128, work / "toy_test", work / "cache_head_relu6_128_test", None, False)
    import tensorflow as tf

    from pose_net import losses
    from pose_net import parametrization as param

    points = np.asarray(info["model_points_mm"], np.float32)
    loss_points = points[np.random.default_rng(0).permutation(len(points))[:512]]
    R_allo = param.egocentric_to_allocentric(tf.constant(test["R"]), tf.constant(test["t_mm"])).numpy()
    constant_level, _ = losses.constant_rotation_level(R_allo, loss_points, float(info["diameter_mm"]))
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, [done[v] for v in VARIANTS if v in done], constant_level, info)
    print(f"wrote {out / 'rotation_study.md'}", flush=True)


if __name__ == "__main__":
    app.run(main)
