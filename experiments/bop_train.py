"""One command per BOP models folder: renders and trains a pose model for each object, into one model folder.

    python -m experiments.bop_train --models_dir DIR [--obj_ids 1,5,6|all] --out RUN [--budget quick|cpu|gpu]
        [--head direct|coords | --esac] [--camera CAMERA.json] [--backgrounds PHOTOS]

First the detector of all the objects (``RUN/detector/``, pose_net/detector.py): scenes of 1-4 of the objects
rendered at the test camera (``--camera``: ``cam_K``, ``width``, ``height``, or a BOP ``scene_camera.json``; default
LINEMOD's) shrunk to the detector's input size, ``complete`` randomization, and as many again on real photos when
``--backgrounds`` is given (``real_background``; ``--exclude_obj_ids`` leaves out photos showing the objects), with
``--distractors_dir``'s objects shown unannotated and the objects at ``--object_size_frac`` of the image (and, with
``--detector_part_material_share``, their end parts in materials of their own: render.scenes; with
``--detector_scene_draws``, each seed on scenes of its own draw); Lite0's
last stage and the detector's head trained on them once per seed of the budget's ``detector_seeds``, the seeds'
maps averaged into one detector (:data:`DETECTOR_FINE_TUNE_STAGES`); then, for each object of ``--obj_ids`` (validated first: models_info.json, model files in millimetres, known ids):

1. its training renderings, ``RUN/data/obj_NNNNNN/`` (``render.generate``, ``complete`` randomization, its
   symmetry from models_info.json);
2. its pose network, ``RUN/obj_NNNNNN/`` (``pose_net.train`` with the budget's recipe, :data:`BUDGETS`);
3. ``RUN/objects.json`` lists the objects whose network is finished, so the folder is usable while later objects
   still train: ``pose_net.evaluate --model_dir RUN --obj_id all [--boxes predicted]`` scores every one of them on
   a BOP test folder into one BOP19 CSV, with the true boxes or the detector's (``render.scenes`` makes
   multi-object test folders from the same models), and ``pose_net.predict --model_dir RUN`` finds every object
   in a photo.

With ``--esac``, step 2 is one ESAC model of all the objects instead (pose_net/esac.py: a gating network over a
coordinate expert per object on one frozen backbone; its experts stage in ``RUN/esac_experts/``, then through the
solver in ``RUN/esac/``, ``esac_minutes_per_object`` times the objects in all), and ``objects.json`` points every
object at ``esac``: ``pose_net.evaluate`` scores it with ground-truth boxes, ``pose_net.predict`` with the detector's
boxes, the ESAC model naming each object itself.

Resumable: run the same command again and it goes on (finished renderings and networks are skipped, an
interrupted training resumes from its checkpoint); a folder made with another budget or head is refused. Progress
goes to stdout and ``RUN/bop_train.log``.

Budgets (``cpu``: the 8 objects of lmo_models within 90 minutes on the 2 cores, measured in docs/results.md):
``quick`` a smoke test of the path (seconds, figures meaningless); ``cpu`` the detector on 2,000 scenes (6 epochs,
3 seeds), then the demo's recipe cut to about 8 minutes an object: 12,000 renderings at 128 pixels, frozen ImageNet Lite0 with its stride-16 features cached
once, its last stage and the direct head (6D rotation) trained for 6 epochs (``--head coords``: the coordinate head
on the frozen backbone for 6 minutes of wall time, :data:`COORDS_CPU_TRAIN_MINUTES`); ``gpu`` fine-tuning at 256
pixels.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags

from experiments import common
from pose_core import PoseInputError, write_json_atomic
from pose_net.feature_cache import LITE0_TOP_STAGE_INPUT

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined only when run as a program: other modules of a process, such as
    render.generate, define flags of the same names)."""
    flags.DEFINE_string("models_dir", None, "BOP models folder (models_info.json, obj_NNNNNN.ply/.obj, millimetres)")
    flags.DEFINE_string("obj_ids", "all", "comma-separated object ids of the models folder, or 'all'")
    flags.DEFINE_string("out", None, "run folder: renderings, one model folder per object, objects.json")
    flags.DEFINE_enum("budget", "cpu", ["quick", "cpu", "gpu"], "sizes of the renderings and the training")
    flags.DEFINE_string("camera", None, "the test camera: JSON with cam_K, width, height, or a BOP scene_camera.json "
                        "(default: LINEMOD's 640x480 camera)")
    flags.DEFINE_string("backgrounds", None, "folder of real photos: as many detector scenes again on them (on the "
                        "real sets they cost the fine-tuned detector recall: docs/results.md)")
    flags.DEFINE_list("exclude_obj_ids", [], "background photos showing these ids (objects_in_frame.json) are left "
                      "out")
    flags.DEFINE_string("distractors_dir", None, "a BOP models folder of other objects, shown unannotated in the "
                        "detector's scenes")
    flags.DEFINE_list("object_size_frac", ["0.15", "0.5"], "MIN,MAX of an object's projected diameter over the "
                      "shorter image side in the detector's scenes (the distances seen in practice)")
    flags.DEFINE_float("detector_part_material_share", 0.0, "the chance that each end part of an object (a lid, a "
                       "base, a box's side) wears a material of its own in the detector's scenes "
                       "(render.scenes --part_material_share; measured on the real sets in docs/results.md: not the "
                       "default)")
    flags.DEFINE_bool("detector_scene_draws", False, "each seed of the detector's ensemble trains on scenes of its own "
                      "draw (scene seeds 0, 1, 2, ...: pose_net.detector.train_detector_on_renderings "
                      "scene_draw_per_seed) instead of all on the same scenes (docs/results.md)")
    flags.DEFINE_enum("head", "direct", ["direct", "coords"], "pose head of every object "
                      "(docs/results/method_table.md: the direct head has the lower real median errors of the two at "
                      "the CPU budget)")
    flags.DEFINE_bool("esac", False, "one ESAC model of all the objects (pose_net/esac.py: a gating network over "
                      "coordinate experts on one backbone, RUN/esac) instead of a model per object; "
                      "docs/results/esac_table.md compares the two")


BUDGETS = {
    "quick": dict(detector_scenes=16, detector_epochs=1, detector_seeds=(0, 1), num_train=32, image_size=64, input_size=64, num_shards=1,
                  esac_minutes_per_object=0.02, train=dict(
        backbone="small", backbone_weights="none", freeze_backbone=False, epochs=1, steps_per_epoch=2,
        batch_size=8, max_val_images=4)),
    "cpu": dict(detector_scenes=2000, detector_epochs=6, detector_seeds=(0, 1, 2), num_train=12000, image_size=128, input_size=128,
                num_shards=6, esac_minutes_per_object=6.0, train=dict(
        backbone="efficientnet_lite0", backbone_weights="imagenet", freeze_backbone=True, feature_cache=True,
        feature_cache_layer=LITE0_TOP_STAGE_INPUT, rotation_repr="6d", rotation_hypotheses=8, epochs=6,
        batch_size=32)),
    "gpu": dict(detector_scenes=10000, detector_epochs=6, detector_seeds=(0, 1, 2, 3, 4), num_train=20000, image_size=256, input_size=128,
                num_shards=10, esac_minutes_per_object=20.0, train=dict(
        backbone="efficientnet_lite0", backbone_weights="imagenet", freeze_backbone=False, epochs=30,
        batch_size=64)),
}
# The coordinate head's recipe within the ``cpu`` budget: the feature cache serves the direct head only (the
# coordinate head's per-pixel targets follow each crop's own jitter), so the frozen backbone runs at every step
# (about 100 crops/s on the 2 cores against thousands from the cache) and the training stops on wall time instead,
# chosen so that an object costs about what the direct head's does (7-9 minutes with its rendering).
COORDS_CPU_TRAIN_MINUTES = 6.0
COORDS_CPU_MAX_EPOCHS = 30  # a cap the wall time reaches first on the 2 cores (about 3 epochs of 12,000 in 6 min)
DIRECT_ONLY_TRAIN_KEYS = ("feature_cache", "feature_cache_layer", "rotation_repr", "rotation_hypotheses")


def train_recipe(budget: str, head: str) -> dict:
    """``pose_net.train`` flag values of one object's pose network for ``budget`` and ``head`` (direct or coords):
    the budget's ``train`` settings, the direct head's Projection Loss weight, and for the coordinate head within
    the ``cpu`` budget a wall-time budget instead of the feature cache (:data:`COORDS_CPU_TRAIN_MINUTES`)."""
    recipe = dict(BUDGETS[budget]["train"])
    if head == "direct":
        return {"lambda_projection": 0.1, **recipe}
    for key in DIRECT_ONLY_TRAIN_KEYS:
        recipe.pop(key, None)
    if budget == "cpu":
        recipe.update(time_budget_min=COORDS_CPU_TRAIN_MINUTES, epochs=COORDS_CPU_MAX_EPOCHS)
    return recipe


# The detector: Lite0's last stage trained with its head (pose_net.detector, fine_tune_stages 1), once per seed of
# ``detector_seeds`` on the same cached features, the seeds' maps averaged. The recipe of docs/results/
# detector_table.md, where on the real sets (five seeds on 3,000 scenes) it finds the banana, box and can in
# 100 / 85 / 95% of the frames, the head alone in 100 / 0 / 35%; with this budget (three seeds on 2,000 scenes,
# `make bop-train-real`) 100 / 32.5 / 100%; on lmo_models' rendered test scenes 78.8% against the head alone's
# 68.8% (docs/results.md). The box's figure turns on the draw of the scenes as much as on the seeds.
DETECTOR_FINE_TUNE_STAGES = 1
RUN_FILE = "bop_train.json"  # what the run folder was made with
ESAC_SUBDIR = "esac"  # --esac: the ESAC model (its experts stage in esac_experts/)
ESAC_EXPERTS_SHARE = 2 / 3  # --esac: the share of its training time in the experts stage, the rest through the solver


def log(run: Path, text: str):
    print(text, flush=True)
    with open(run / "bop_train.log", "a") as fh:
        fh.write(text + "\n")


def bop_train(models_dir, out, obj_ids: list[int] | None, budget: str = "cpu", head: str = "direct",
              camera=None, backgrounds=None, exclude_obj_ids=(), distractors_dir=None,
              object_size_frac=(0.15, 0.5), esac: bool = False, detector_part_material_share: float = 0.0,
              detector_scene_draws: bool = False) -> Path:
    """Renders and trains the detector and every object's pose network; returns the run folder (see the module
    docstring)."""
    from pose_core import bop
    from pose_net.inference import MODEL_SET_FILE
    from pose_net.train import default_flag_values, train
    from render.scenes import load_camera, load_models

    models = load_models(models_dir, obj_ids)  # every object checked before anything is written
    K, width, height = load_camera(camera)
    run = Path(out)
    if esac and len(models) < 2:
        raise PoseInputError(f"--esac: one model of several objects needs at least 2, --obj_ids chose {len(models)}")
    head = "esac" if esac else head
    wanted = {"budget": budget, "head": head, "models_dir": str(Path(models_dir).resolve())}
    if (run / RUN_FILE).is_file():
        have = json.loads((run / RUN_FILE).read_text())
        differing = [k for k in ("budget", "head") if have.get(k) != wanted[k]]
        if differing:
            raise PoseInputError(f"{run} was made with {', '.join(f'--{k}={have.get(k)}' for k in differing)}, this "
                                 f"run asks for {', '.join(f'--{k}={wanted[k]}' for k in differing)}: use another "
                                 f"--out")
    run.mkdir(parents=True, exist_ok=True)
    (run / RUN_FILE).write_text(json.dumps(wanted, indent=1))
    index_path = run / MODEL_SET_FILE
    index = json.loads(index_path.read_text())["objects"] if index_path.is_file() else {}
    s = BUDGETS[budget]
    info = bop.load_models_info(Path(models_dir) / "models_info.json")
    t_all = time.time()
    train_run_detector(run, models_dir, [m.obj_id for m in models], s, K, width, height, backgrounds,
                       exclude_obj_ids, distractors_dir, object_size_frac, detector_part_material_share,
                       detector_scene_draws)
    for k, m in enumerate(models):
        name = f"obj_{m.obj_id:06d}"
        model_dir = run / name
        if str(m.obj_id) in index and ((model_dir / "model.keras").is_file() or esac):
            log(run, f"[{k + 1}/{len(models)}] object {m.obj_id}: trained, skipping")
            continue
        t0 = time.time()
        symmetric = bop.is_symmetric(info[m.obj_id])
        data = run / "data" / name
        log(run, f"[{k + 1}/{len(models)}] object {m.obj_id} ({m.path.name}, {m.diameter_mm:.0f} mm"
                 f"{', symmetric' if symmetric else ''}): rendering {s['num_train']} images")
        common.render_dataset(str(m.path), data, s["num_train"], 0, "complete", s["image_size"],
                              num_shards=s["num_shards"],
                              extra=[f"--obj_id={m.obj_id}"] + (["--symmetric"] if symmetric else []),
                              log=run / "render.log")
        if esac:  # the ESAC model trains on every object's renderings at once, below
            continue
        log(run, f"[{k + 1}/{len(models)}] object {m.obj_id}: training the {head} head ({budget} budget)")
        train(default_flag_values(dataset=str(data), model_dir=str(model_dir), head=head,
                                  input_size=s["input_size"], progress=False, seed=0, **train_recipe(budget, head)))
        import keras

        keras.backend.clear_session()
        index[str(m.obj_id)] = name
        write_json_atomic(index_path, {"objects": index}, indent=1)
        log(run, f"[{k + 1}/{len(models)}] object {m.obj_id}: done in {(time.time() - t0) / 60:.1f} min")
    if esac and not all(str(m.obj_id) in index for m in models):
        train_run_esac(run, [run / "data" / f"obj_{m.obj_id:06d}" for m in models], s)
        index.update({str(m.obj_id): ESAC_SUBDIR for m in models})
        write_json_atomic(index_path, {"objects": index}, indent=1)
    log(run, f"{len(models)} objects in {run} ({(time.time() - t_all) / 60:.1f} min this run); evaluate with "
             f"python -m pose_net.evaluate --model_dir {run} --bop_root BOP_ROOT --obj_id all")
    return run


def train_run_esac(run: Path, datasets: list[Path], s: dict):
    """``--esac``: one ESAC model of all the objects, its experts stage in ``RUN/esac_experts`` and the stage through
    the solver in ``RUN/esac`` (each resumed from its checkpoint), ``esac_minutes_per_object`` per object in all."""
    import keras

    from pose_net.esac import train_esac

    minutes = s["esac_minutes_per_object"] * len(datasets)
    t = s["train"]
    kw = dict(input_size=s["input_size"], backbone=t["backbone"], backbone_weights=t["backbone_weights"],
              progress=False, seed=0)
    for stage, folder, share, init in (("experts", "esac_experts", ESAC_EXPERTS_SHARE, None),
                                       ("esac", ESAC_SUBDIR, 1 - ESAC_EXPERTS_SHARE, run / "esac_experts")):
        t0 = time.time()
        log(run, f"ESAC of {len(datasets)} objects: {stage} stage, {minutes * share:.1f} min, in {run / folder}")
        summary = train_esac([str(d) for d in datasets], run / folder, stage, minutes * share, init_from=init, **kw)
        keras.backend.clear_session()
        log(run, f"ESAC {stage} stage: {summary['steps']} steps, done in {(time.time() - t0) / 60:.1f} min")


def train_run_detector(run: Path, models_dir, obj_ids, s: dict, K, width, height, backgrounds, exclude_obj_ids,
                       distractors_dir=None, object_size_frac=(0.15, 0.5), part_material_share: float = 0.0,
                       scene_draws: bool = False):
    """``RUN/detector/`` of all the objects, on scenes rendered at the test camera (skipped when finished)."""
    from pose_net import detector as det

    if det.is_trained(run / det.DETECTOR_SUBDIR):
        log(run, f"detector of objects {obj_ids}: trained, skipping")
        return
    t0 = time.time()
    modes = ["complete"] + (["real_background"] if backgrounds else [])
    det.train_detector_on_renderings(
        models_dir, run / det.DETECTOR_SUBDIR, obj_ids, {m: run / "data" / f"detector_scenes_{m}" for m in modes},
        s["detector_scenes"] // len(modes), K, width, height, epochs=s["detector_epochs"], seed=0,
        fine_tune_stages=DETECTOR_FINE_TUNE_STAGES, training_seeds=s["detector_seeds"],
        backgrounds=backgrounds, exclude_obj_ids=exclude_obj_ids, distractors_dir=distractors_dir,
        object_size_frac=tuple(object_size_frac), part_material_share=part_material_share,
        scene_draw_per_seed=scene_draws, render_log=run / "render.log", progress=False,
        say=lambda text: log(run, text))
    import keras

    keras.backend.clear_session()
    log(run, f"detector: done in {(time.time() - t0) / 60:.1f} min")


def main(argv):
    del argv
    from render.scenes import parse_obj_ids

    if not FLAGS.models_dir or not FLAGS.out:
        raise app.UsageError("--models_dir and --out are required")
    try:
        bop_train(FLAGS.models_dir, FLAGS.out, parse_obj_ids(FLAGS.obj_ids), FLAGS.budget, FLAGS.head, FLAGS.camera,
                  FLAGS.backgrounds, [int(x) for x in FLAGS.exclude_obj_ids], FLAGS.distractors_dir,
                  tuple(float(x) for x in FLAGS.object_size_frac), FLAGS.esac, FLAGS.detector_part_material_share,
                  FLAGS.detector_scene_draws)
    except PoseInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
