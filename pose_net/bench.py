"""Benchmark of training and inference (what `make bench-train` runs).

    python -m pose_net.bench [--dataset DIR] [--backbone mobilenet_v2] [--batch_size 32] [--input_size 128]

Prints, in one run: the input pipeline's rate alone (images/s, with augmentation), the train step rate (images/s,
all loss terms including the Projection Loss op), and inference images/s (batch 32, CPU); then the coordinate
head's step with its coordinate loss alone against the same step trained through RANSAC-PnP (DSAC and NG-DSAC,
pose_net/dsac.py: 64 hypotheses, 64x64 outputs, batch 16 by default); then the whole-photo detector
(pose_net/detector.py): its inference on a 640x480 photo (resize, network, decoding) and its training step on cached
features against a step that runs the frozen backbone too (what training from images costs). Without ``--dataset`` it
renders a small dataset of the built-in toy first (into build/bench_dataset, reused afterwards).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "rendered dataset (default: render 512 images of the built-in toy)")
flags.DEFINE_string("backbones", "efficientnet_lite0,mobilenet_v2,small", "comma-separated backbones to measure")
flags.DEFINE_integer("batch_size", 32, "batch size")
flags.DEFINE_integer("input_size", 128, "network input size")
flags.DEFINE_integer("steps", 20, "timed steps per measurement (after warm-up)")
flags.DEFINE_float("lambda_projection", 0.1, "Projection Loss weight in the timed train step")
flags.DEFINE_integer("dsac_batch_size", 16, "batch of the coordinate-head steps (0: skip them)")
flags.DEFINE_integer("dsac_hypotheses", 64, "RANSAC-PnP hypotheses per image in the DSAC steps")
flags.DEFINE_bool("detector", True, "measure the whole-photo detector too")
flags.DEFINE_integer("dsac_refine_iterations", 3, "refinement rounds of each hypothesis in the DSAC steps "
                     "(pose_net.train --dsac_refine_iterations)")
flags.DEFINE_integer("dsac_refine_points", 256, "correspondences each hypothesis is refined on at most in the DSAC "
                     "steps (pose_net.train --dsac_refine_points; 0: all)")

REPO_ROOT = Path(__file__).resolve().parents[1]


def ensure_dataset() -> str:
    from render.dataset import DatasetError, load_dataset_info

    out = REPO_ROOT / "build" / "bench_dataset"
    try:
        load_dataset_info(out)
        return str(out)
    except DatasetError:
        pass
    subprocess.run([sys.executable, "-m", "render.generate", "--mesh=toy", f"--out={out}", "--num_images=512",
                    "--num_shards=2", "--seed=0", "--noprogress"], check=True, cwd=REPO_ROOT)
    return str(out)


def timed(fn, steps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from pose_net import data as pdata
    from pose_net import losses
    from pose_net.model import build_pose_model
    from render.dataset import load_dataset_info

    dataset = FLAGS.dataset or ensure_dataset()
    info = load_dataset_info(dataset)
    bs, size = FLAGS.batch_size, FLAGS.input_size
    cfg = pdata.PipelineConfig(input_size=size)
    print(f"machine: {os.cpu_count()} cores; TF {tf.__version__}; batch {bs}; input {size}x{size}; "
          f"dataset {dataset}", flush=True)

    # 1. the input pipeline alone
    def pipeline_pass():
        n = 0
        for epoch in range(100):
            for batch in pdata.make_dataset(dataset, cfg, bs, "all", True, 0, epoch):
                n += int(batch["image"].shape[0])
                yield n

    gen = pipeline_pass()
    for _ in range(3):
        next(gen)
    t0 = time.perf_counter()
    n0 = next(gen)
    for _ in range(FLAGS.steps * 2):
        n = next(gen)
    pipeline_rate = (n - n0) / (time.perf_counter() - t0)
    print(f"input pipeline: {pipeline_rate:.0f} images/s (parse, decode, crop, augment, targets)", flush=True)

    batch = next(iter(pdata.make_dataset(dataset, cfg, bs, "all", True, 0, 0)))
    points = np.asarray(info["model_points_mm"], np.float32)[:512]
    weights = losses.LossWeights(projection=FLAGS.lambda_projection)
    for name in [b for b in FLAGS.backbones.split(",") if b]:
        model = build_pose_model(name, size)
        optimizer = keras.optimizers.Adam(1e-4)

        @tf.function
        def train_step():
            with tf.GradientTape() as tape:
                out = model(batch["image"], training=True)
                total, _ = losses.total_loss(out, batch, model, weights, points, float(info["diameter_mm"]), False,
                                             size)
            grads = tape.gradient(total, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return total

        infer = tf.function(lambda x: model(x, training=False))
        step_rate = bs / timed(lambda: float(train_step()), FLAGS.steps)
        infer_rate = bs / timed(lambda: infer(batch["image"])["rotation"].numpy(), FLAGS.steps)
        print(f"{name}: train step {step_rate:.0f} images/s; inference {infer_rate:.0f} images/s; "
              f"pipeline / step = {pipeline_rate / step_rate:.1f}x", flush=True)
    if FLAGS.dsac_batch_size:
        bench_dsac(dataset, info)
    if FLAGS.detector:
        bench_detector()


def bench_detector(num_classes: int = 8, batch_size: int = 16):
    """The detector's inference on one 640x480 photo, and its head's training step on cached features (batch 16,
    320x256 inputs) beside the same step with the frozen backbone run on the images."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pose_net import detector as det

    backbone = det.build_backbone()
    head = det.build_head(num_classes)
    model = det.build_detector(backbone, head)
    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)

    def infer():
        x, scale = det.prepare_image(photo)
        return det.decode(run(x[None]), list(range(num_classes)), scale, photo.shape[:2], min_score=0.0)

    infer_s = timed(infer, FLAGS.steps)
    _, h, w = det.input_shape(480, 640)
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (batch_size, h, w, 3)), tf.float32)
    feats = [tf.constant(f) for f in backbone(images)]
    hw = (h // det.STRIDE, w // det.STRIDE)
    t = det.instance_targets([np.array([40.0, 40, 60, 50])], [0], [False], hw)
    batch = {k: tf.constant(np.repeat(v[None], batch_size, 0), tf.float32) for k, v in t.items()
             if k != "centre_index"}
    batch["centre_index"] = tf.constant(np.repeat(t["centre_index"][None], batch_size, 0))
    batch["heatmap"] = tf.constant(np.repeat(det.gaussian_heatmap([np.array([40.0, 40, 60, 50])], [0], [False],
                                                                  hw, num_classes)[None], batch_size, 0))
    opt = keras.optimizers.Adam(1e-3)

    def make_step(from_images: bool):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                inputs = backbone(images, training=False) if from_images else feats
                loss = det.detection_loss(head(inputs, training=True), batch)["total"]
            grads = tape.gradient(loss, head.trainable_variables)
            opt.apply_gradients(zip(grads, head.trainable_variables))
            return loss
        return step

    on_features, on_images = make_step(False), make_step(True)
    cached_s = timed(lambda: float(on_features()), FLAGS.steps)
    images_s = timed(lambda: float(on_images()), max(3, FLAGS.steps // 4))
    print(f"detector: inference {infer_s * 1000:.0f} ms per 640x480 photo (input {w}x{h}, {num_classes} objects); "
          f"training step (batch {batch_size}) {cached_s * 1000:.0f} ms on cached features, "
          f"{images_s * 1000:.0f} ms with the frozen backbone run on the images ({images_s / cached_s:.1f}x)",
          flush=True)


def bench_dsac(dataset: str, info: dict):
    """Seconds per coordinate-head step: coordinate loss only, + DSAC, + NG-DSAC (2 pools), same batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pose_core.symmetry import Symmetries
    from pose_net import data as pdata
    from pose_net import dsac, losses
    from pose_net.coordinates import CoordinateFrame
    from pose_net.model import build_coordinate_model

    bs, size = FLAGS.dsac_batch_size, FLAGS.input_size
    points = np.asarray(info["model_points_mm"], np.float32)[:512]
    frame, symmetries = CoordinateFrame.from_points(points), Symmetries()
    spec = pdata.CoordinateTargetSpec(frame, symmetries)
    batch = next(iter(pdata.make_dataset(dataset, pdata.PipelineConfig(input_size=size), bs, "all", True, 0, 0,
                                         coordinate_spec=spec)))
    weights = losses.LossWeights()
    settings = dsac.DsacSettings(num_hypotheses=FLAGS.dsac_hypotheses, threshold_px=2.0,
                                 max_refine_iterations=FLAGS.dsac_refine_iterations,
                                 max_refine_points=FLAGS.dsac_refine_points)
    steps = {}
    for stage, pools in (("coords", 0), ("dsac", 0), ("ngdsac", 2)):
        model = build_coordinate_model("efficientnet_lite0", size, None, freeze_backbone=True,
                                       sampling_head=stage == "ngdsac")
        optimizer = keras.optimizers.Adam(1e-4)

        def make_step(model, optimizer, stage, pools):
            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    out = dict(model(batch["image"], training=True))
                    # An untrained network's maps give RANSAC nothing to agree on: the values are those of a trained
                    # one (the targets, 2% noise, the true mask), the gradient path is the network's own.
                    noise = tf.random.normal(tf.shape(out["coords"]), stddev=0.02, seed=0)
                    out["coords"] = (batch["coords_target"] + noise + out["coords"] - tf.stop_gradient(out["coords"]))
                    out["mask"] = (10.0 * (2.0 * batch["mask_target"][..., None] - 1.0) + out["mask"]
                                   - tf.stop_gradient(out["mask"]))
                    total, _ = losses.coordinate_head_loss(out, batch, model, weights)
                    if stage != "coords":
                        d, _ = dsac.coordinate_dsac_loss(out, batch, frame, symmetries, points,
                                                         float(info["diameter_mm"]), settings, ng_pools=pools)
                        total = total + d
                grads = tape.gradient(total, model.trainable_variables)
                optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables)
                                           if g is not None])
                return total
            return step

        steps[stage] = make_step(model, optimizer, stage, pools)
    for step in steps.values():  # tracing and warm-up
        for _ in range(3):
            float(step())
    # Interleaved rounds, one step of each stage per round, medians: this machine's speed drifts by 15-50% over
    # minutes (the coordinate step alone measured 286-443 ms in back-to-back runs), which timing the stages one
    # after the other turned into the ratio's spread.
    seconds = {stage: [] for stage in steps}
    for _ in range(max(FLAGS.steps, 3)):
        for stage, step in steps.items():
            t0 = time.perf_counter()
            float(step())
            seconds[stage].append(time.perf_counter() - t0)
    rates = {stage: float(np.median(v)) for stage, v in seconds.items()}
    for stage, rate in rates.items():
        note = f" ({rate / rates['coords']:.2f}x the coordinate-only step)" if stage != "coords" else ""
        setting = (f", {FLAGS.dsac_hypotheses} hypotheses, {FLAGS.dsac_refine_iterations} refinement rounds on <= "
                   f"{FLAGS.dsac_refine_points} points" if stage != "coords" else "")
        print(f"coordinate head, {stage}: {rate * 1000:.0f} ms/step (median of {len(seconds[stage])} interleaved "
              f"steps; batch {bs}, {size // 2}x{size // 2} outputs{setting}){note}", flush=True)

if __name__ == "__main__":
    app.run(main)
