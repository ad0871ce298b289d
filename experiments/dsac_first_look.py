"""A first look at DSAC fine-tuning at equal steps (docs/dsac.md, "A first measurement").

    python -m experiments.dsac_first_look --stage1 MODEL_DIR --dataset DATA --real_set ycbv_banana \
        --rendered_bop BOP_DIR --out runs/dsac_first_look [--steps 200]

A finished coordinate model (``--stage1``, e.g. a method-table cell's ``model/``) and the renderings it trained on;
then ``--steps`` steps of each second stage (the coordinate loss continued, DSAC, NG-DSAC; pose_net.train
``--stage``) from it, each scored with ground-truth boxes on the real set's photos and a rendered BOP test set.
Figures go to OUT/results.json and the log; equal steps, not equal time (``make dsac-table`` compares at equal
time).
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from experiments import common

flags.DEFINE_string("stage1", None, "model folder of a finished coordinate-head run")
flags.DEFINE_string("dataset", None, "the renderings it trained on")
flags.DEFINE_string("real_set", "ycbv_banana", "real set of ../shared/data scored on")
flags.DEFINE_string("rendered_bop", None, "rendered BOP test folder of the same object")
flags.DEFINE_string("out", "runs/dsac_first_look", "output folder")
flags.DEFINE_integer("steps", 200, "steps of each second stage (batch 32)")
flags.DEFINE_float("learning_rate", 3e-4, "second stages' learning rate")
FLAGS = flags.FLAGS
KEEP = ("add_recall", "add_s_recall", "add_median_mm", "add_s_median_mm", "inlier_error_median_px", "pnp_failures")


def main(argv):
    del argv
    from pose_net.evaluate import evaluate
    from pose_net.train import default_flag_values, train

    for name in ("stage1", "dataset", "rendered_bop"):
        if not FLAGS[name].value or not Path(FLAGS[name].value).exists():
            raise SystemExit(f"--{name}: {FLAGS[name].value!r} does not exist")
    obj = common.resolve_object(FLAGS.real_set)
    if obj.real_root is None:
        raise SystemExit(f"--real_set {FLAGS.real_set}: no real photos ({obj.note})")
    out = Path(FLAGS.out)

    def score(model_dir, tag):
        r = {}
        for kind, root in (("real", obj.real_root), ("rendered", Path(FLAGS.rendered_bop))):
            m = evaluate(model_dir, root, obj.obj_id, "gt", report_dir=out / f"eval_{tag}_{kind}", num_pictures=6)
            r[kind] = {k: m.get(k) for k in KEEP}
        print("RESULT", tag, json.dumps(r), flush=True)
        return r

    results = {"stage1": score(Path(FLAGS.stage1), "stage1")}
    for stage in ("coords", "dsac", "ngdsac"):
        model_dir = out / stage
        train(default_flag_values(dataset=FLAGS.dataset, model_dir=str(model_dir), head="coords",
                                  backbone="efficientnet_lite0", backbone_weights="imagenet", freeze_backbone=True,
                                  input_size=128, batch_size=32, epochs=1, steps_per_epoch=FLAGS.steps,
                                  learning_rate=FLAGS.learning_rate, seed=0, progress=False, stage=stage,
                                  init_from=FLAGS.stage1, max_val_images=64))
        history = [json.loads(line) for line in (model_dir / "history.jsonl").read_text().splitlines()]
        results[stage] = dict(score(model_dir, stage), training={
            k: history[-1].get(k) for k in ("total", "coords", "mask", "dsac", "dsac_ok", "epoch_time_s")})
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
