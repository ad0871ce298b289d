"""The README's main job: a built-in object (or your mesh) in, a trained pose model and a report with pictures out.

    python -m experiments.demo --object toy --out runs/demo_toy        # what `make demo` runs
    python -m experiments.demo --object path/to/mesh.ply --out runs/my_object

Steps (each skipped when already done, so a stopped demo resumes):
1. render a domain-randomized training set (``complete`` mode);
2. render a test set with another seed (other poses, backgrounds, lights) and write it in BOP form;
3. train the network briefly;
4. evaluate on the rendered test set (true and predicted 2D boxes) and write ``REPORT.md`` with the table, the
   training curve, the accuracy curve and pose overlays.
Sized to finish in about 10-15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from experiments import common
from pose_net.feature_cache import LITE0_TOP_STAGE_INPUT

FLAGS = flags.FLAGS
flags.DEFINE_string("object", "toy", "a built-in object (toy, box, symmetric), a real set of ../shared/data "
                    "(ycbv_banana, ycbv_box, ycbv_can: its mesh, and its photos for evaluation), or a mesh file in mm")
flags.DEFINE_string("out", "runs/demo", "output folder")
flags.DEFINE_integer("num_train", 0, "training renderings (0: the head's default, 16,000 direct, 3,000 coords)")
flags.DEFINE_integer("num_test", 200, "test renderings")
flags.DEFINE_integer("image_size", 128, "side of the rendered images in pixels; the "
                     "network still sees 128-pixel crops, so 256 puts twice the pixels across the object (better "
                     "rotations, docs/results/rotation_study.md) for 2.5x the rendering time: make train uses it")
flags.DEFINE_integer("epochs", 0, "training epochs (0: the head's default: 8 passes over the cached features "
                     "for direct, 12 epochs for coords)")
flags.DEFINE_enum("head", "direct", ["direct", "coords"], "direct: the thesis' network; coords: dense object "
                  "coordinates + RANSAC-PnP (docs/coordinates.md)")
flags.DEFINE_float("learning_rate", 0.0, "peak learning rate (0: the head's default, 1e-3 direct, 3e-3 coords)")
flags.DEFINE_string("backbone", "", "network backbone (empty: the head's default, the frozen ImageNet "
                    "efficientnet_lite0 with cached features for direct, small for coords)")
flags.DEFINE_string("randomization", "complete", "render.generate's randomization mode of the training set")
flags.DEFINE_bool("distractors", False, "distractor objects and occluders in the training set")
flags.DEFINE_string("texture_photos", "", "a folder of photos that the training set's random appearances cut "
                    "textures from (render.generate --texture_photos; photos showing the object are left out by "
                    "their objects_in_frame.json): real print on an untextured mesh. ../shared/data/ycbv_backgrounds "
                    "took the real can's median ADD-S from 89 to 16 mm (docs/results.md)")
flags.DEFINE_float("lambda_projection", 0.1, "weight of the Projection Loss")
flags.DEFINE_enum("rotation_repr", "6d", ["quaternion", "6d"], "direct head: rotation output")
flags.DEFINE_integer("rotation_hypotheses", 8, "direct head with 6d: rotations proposed and scored (1: the thesis' "
                     "single rotation; 8 took the toy's rendered ADD from 18 to 50% in 12 minutes, "
                     "docs/results/README.md)")
flags.DEFINE_string("feature_cache_layer", "", "direct head: cache this backbone layer's features and train the "
                    "layers after it too (default: the recipe's block10_add, Lite0's last stage; 'output': heads "
                    "only, about 7x faster per step)")

# What each head trains with by default. The direct head on a CPU: the ImageNet EfficientNet-Lite0, its features
# of the training crops at stride 16 computed once (pose_net/feature_cache.py), its last stage and the heads trained
# on them (3,750 steps); the small network from scratch leaves rotation at the level of a constant guess in a demo's
# budget (docs/results/README.md, "Why rotation did not train").
HEAD_RECIPES = {
    "direct": dict(num_train=16000, epochs=8, backbone="efficientnet_lite0",
                   train_flags=["--freeze_backbone", "--feature_cache",
                                f"--feature_cache_layer={LITE0_TOP_STAGE_INPUT}"]),
    "coords": dict(num_train=3000, epochs=12, backbone="small", train_flags=[]),
}
flags.DEFINE_float("time_budget_min", 0.0, "stop training after this many minutes of wall time, the feature cache "
                   "included (0: no limit; pose_net.train --time_budget_min)")
flags.DEFINE_integer("workers", 2, "render processes")
flags.DEFINE_integer("seed", 0, "seed of the training set (the test set uses seed + 1000)")


def main(argv):
    del argv
    t_start = time.time()
    out = Path(FLAGS.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = HEAD_RECIPES[FLAGS.head]
    num_train = FLAGS.num_train or recipe["num_train"]
    epochs = FLAGS.epochs or recipe["epochs"]
    backbone = FLAGS.backbone or recipe["backbone"]
    train_flags = list(recipe["train_flags"]) if backbone == recipe["backbone"] else []
    if FLAGS.feature_cache_layer and train_flags:
        train_flags = [x for x in train_flags if not x.startswith("--feature_cache_layer")]
        if FLAGS.feature_cache_layer != "output":
            train_flags.append(f"--feature_cache_layer={FLAGS.feature_cache_layer}")
    if backbone == "efficientnet_lite0":
        from pose_net.backbones.efficientnet_lite import ensure_pretrained_weights

        if ensure_pretrained_weights(verbose=False) is None:
            raise SystemExit("the demo's direct head uses the ImageNet weights of EfficientNet-Lite0: convert them "
                             "once with `make pretrained` (docs/pretrained_backbone.md), or pass --backbone small")
    obj = common.resolve_object(FLAGS.object)
    mesh, obj_id, diameter, symmetric = obj.mesh, obj.obj_id, obj.diameter_mm, obj.symmetric
    print(f"object {FLAGS.object}: {mesh} (obj_id {obj_id}, diameter {diameter:.1f} mm, "
          f"{'symmetric' if symmetric else 'asymmetric'})", flush=True)
    extra = [f"--obj_id={obj_id}"] + (["--symmetric"] if symmetric else [])
    train_extra = extra + (["--distractors"] if FLAGS.distractors else [])
    if FLAGS.texture_photos:
        train_extra += [f"--texture_photos={FLAGS.texture_photos}", f"--exclude_obj_id={obj_id}"]

    print("[1/4] rendering the training set", flush=True)
    train_dir = out / "data" / "train"
    common.render_dataset(mesh, train_dir, num_train, FLAGS.seed, FLAGS.randomization, FLAGS.image_size,
                          FLAGS.workers, num_shards=max(2, num_train // 1000), extra=train_extra)
    common.run([sys.executable, "-m", "render.preview", str(train_dir), f"--out={out / 'training_samples.png'}"])

    print("[2/4] rendering the test set (another seed)", flush=True)
    test_dir = out / "data" / "test_render"
    common.render_dataset(mesh, test_dir, FLAGS.num_test, FLAGS.seed + 1000, "complete", FLAGS.image_size,
                          FLAGS.workers, num_shards=1, extra=extra)
    bop_test = common.export_bop_test_set(test_dir, out / "data" / "test_bop", obj_id, mesh, diameter, symmetric)

    print("[3/4] training", flush=True)
    model_dir = out / "model"
    common.run([sys.executable, "-m", "pose_net.train", f"--dataset={train_dir}", f"--model_dir={model_dir}",
                f"--backbone={backbone}", f"--epochs={epochs}", f"--seed={FLAGS.seed}",
                f"--lambda_projection={FLAGS.lambda_projection}", "--max_val_images=256", f"--head={FLAGS.head}",
                f"--rotation_repr={FLAGS.rotation_repr}", f"--rotation_hypotheses={FLAGS.rotation_hypotheses}",
                f"--learning_rate={FLAGS.learning_rate or (3e-3 if FLAGS.head == 'coords' else 1e-3)}",
                f"--time_budget_min={FLAGS.time_budget_min}"] + train_flags)

    print("[4/4] evaluating", flush=True)
    from pose_net.evaluate import evaluate

    results = [evaluate(model_dir, bop_test, obj_id, "gt", report_dir=out / "report_rendered",
                        csv_path=out / "results_rendered.csv")]
    results.append(evaluate(model_dir, bop_test, obj_id, "predicted", report_dir=out / "report_rendered_predicted"))
    if obj.real_root is not None:
        for boxes in ("gt", "predicted"):
            results.append(evaluate(model_dir, obj.real_root, obj_id, boxes,
                                    report_dir=out / f"report_real_{boxes}", csv_path=out / f"results_real_{boxes}.csv"))
    write_report(out, results, time.time() - t_start, backbone)


def write_report(out: Path, results: list[dict], wall_s: float, backbone: str):
    from pose_net.evaluate import format_table

    history = [json.loads(line) for line in (out / "model" / "history.jsonl").read_text().splitlines()]
    lines = [f"# Demo report: {FLAGS.object}", "",
             f"Machine: {common.machine_description()}. Wall time: {wall_s / 60:.1f} min.",
             f"Command: `python -m experiments.demo {' '.join(sys.argv[1:])}`",
             f"Network: `{FLAGS.head}` head ({'dense object coordinates + RANSAC-PnP, docs/coordinates.md' if FLAGS.head == 'coords' else 'the thesis direct regression'}), backbone `{backbone}`.", "",
             "## Test results (recall at 10% of the diameter)", ""]
    lines.append(format_table(results))
    lines += ["Rendered test set: same object, other seed (other poses, backgrounds, lights). `gt` boxes crop around "
              "the true 2D box; `predicted` boxes come from the network's own box head (the coordinate head: its mask on the whole image). Real photos (a set of "
              "../shared/data) appear when the object is that set's own mesh. Translation: `box` fits the model, "
              "turned by the predicted rotation, into the given box (`pose_net.inference.TRANSLATION_SOURCES`); "
              "`regressed` is the translation head's; `ransac_pnp` the coordinate head's.", "", "## Training", "",
              "Validation images (held-out renderings). The rotation term is the training loss' Lq (mean point "
              "distance / diameter); a network that learnt nothing about rotation stays at the constant guess's "
              "level.", "",
              "| epoch | loss | val rotation term (constant guess) | val ADD % | val ADD-S % | s |",
              "|---|---|---|---|---|---|"]
    for h in history:
        rotation = (f"{h['rotation_term']:.3f} ({h['rotation_constant_level']:.3f})"
                    if "rotation_constant_level" in h else f"{h.get('rotation_term', float('nan')):.3f}")
        lines.append(f"| {h['epoch']} | {h['total']:.3f} | {rotation} | {100 * h['add_recall']:.1f} "
                     f"| {100 * h['add_s_recall']:.1f} | {h['epoch_time_s']:.0f} |")
    lines += ["", "## Pictures", "", "Training samples (box and pose axes from the stored labels):", "",
              "![training samples](training_samples.png)", "",
              "Rendered test set, true outline green, predicted red:", "",
              "![overlays](report_rendered/overlays.png)", "", "![accuracy](report_rendered/accuracy_vs_threshold.png)"]
    if (out / "report_real_gt").is_dir():
        lines += ["", "Real photos (ground-truth boxes):", "", "![real overlays](report_real_gt/overlays.png)", "",
                  "![real accuracy](report_real_gt/accuracy_vs_threshold.png)"]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    print(format_table(results))
    print(f"report: {out / 'REPORT.md'}")


if __name__ == "__main__":
    app.run(main)
