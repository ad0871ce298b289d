"""Whole photos: the detector trained on renderings, its recall on real photos, and pose with its boxes.

    python -m experiments.detector_table --out docs/results [--budget quick|cpu] [--real_sets ycbv_banana,...]
        [--lmo_run runs/bop_lmo_cpu] [--real_runs 'runs/bop_{set}_{budget}']

Per real set of ../shared/data:

* training scenes of its object at its camera, shrunk to the detector's input (:func:`pose_net.detector.
  training_camera`), with 0-3 of the LINEMOD objects as unannotated distractors, at 0.2-0.8 of the image height:
  ``complete`` randomization, and as many on the real photos of ../shared/data/ycbv_backgrounds that do not show
  the object (``real_background``);
* the detector trained on them (pose_net/detector.py), its detection recall at IoU 0.5 on the real photos;
* the pose models of the other tables, when they have been trained (the direct head of ``make per-object``, the
  coordinate head after DSAC of ``make dsac-table``), scored with the true boxes and with the detector's.

With ``--lmo_run`` (an ``experiments.bop_train`` run of ../shared/data/lmo_models, ``make bop-train-lmo``): its
detector and pose models scored on rendered multi-object test scenes of the eight objects at LINEMOD's 640x480
camera (one BOP19 CSV, ``pose_net.evaluate --obj_id all``), with true and predicted boxes.

With ``--real_runs`` (the ``experiments.bop_train`` runs of the real sets' own models folders, ``make
bop-train-real``): each run's detector and pose model scored on its set's real photos, the one command a user holding
that mesh would run, with true and predicted boxes.

Writes ``OUT/detector_table.md`` and ``.json``. Resumable: scenes, detectors and evaluations already made are
reused (``RUNS/BUDGET/detectors/<set>/``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from absl import app, flags

from experiments import common, tables
from experiments.previous_results import previous_lmo_result, previous_pose_rows
from pose_net.detector import DIAGNOSTIC_TOP_K
from pose_net.evaluate import report_path

flags.DEFINE_list("real_sets", list(common.REAL_SETS), "real sets of ../shared/data")
flags.DEFINE_string("lmo_run", "runs/bop_lmo_cpu", "an experiments.bop_train run of lmo_models ('' to skip)")
flags.DEFINE_string("real_runs", "runs/bop_{set}_{budget}", "the experiments.bop_train runs of the real sets' "
                    "models folders (make bop-train-real), {set} and {budget} filled in ('' to skip)")
FLAGS = tables.FLAGS
# scenes per randomization mode and detector epochs. Many fresh scenes and few epochs: the head on cached features
# learns the renderings by heart (on 100 held-out rendered box scenes, recall 66% after 40 epochs against 74.5% after
# 12; real banana 42.5% against 60%), and 3,000 scenes per mode with 3 epochs found the real banana in 40 of 40
# frames against 60% for 1,000 with 12, in 18 min of the 2 cores (docs/results.md, "Whole photos: the detector")
BUDGETS = {"quick": dict(scenes=16, epochs=2, lmo_test_scenes=4, fine_tuned_epochs=1, fine_tuned_seeds=(0, 1)),
           "cpu": dict(scenes=3000, epochs=3, lmo_test_scenes=100, fine_tuned_epochs=6,
                       fine_tuned_seeds=(0, 1, 2, 3, 4)),
           "gpu": dict(scenes=5000, epochs=40, lmo_test_scenes=200, fine_tuned_epochs=6, fine_tuned_seeds=(0, 1, 2))}
# The fine-tuned variant: Lite0's last stage trained with the head (pose_net.detector.fit_head's ``backbone``) on the
# ``complete`` half's cached features alone, ``fine_tuned_epochs`` epochs, once per seed of ``fine_tuned_seeds``: the
# one setting that found the real box (5-45% over six lever runs, the head alone <= 5%; docs/results.md), and one run
# on 20-40 frames says little, hence the seeds. The seeds' detectors are also averaged into one
# (pose_net.detector.ensemble_detectors): the cure for that variance at 1.3-1.5x one detector's time per photo.
SCENE_MODES = ("complete", "real_background")
# the scenes' seed: that of the runs which measured the cpu budget's recipe first (runs/detector_levers); the
# 1,000-scene recipe before it used 1
SCENE_SEED = 101
# Distractors: the eight scanned LINEMOD objects, shown unannotated (random materials, as the object's)
DISTRACTORS = common.SHARED_DATA / "lmo_models"
# The objects' projected diameter over the image height in the scenes: a tabletop at 0.5-2 m (the real sets' objects
# span 0.39-0.59 of it; render.scenes' default, 0.15-0.5, is LINEMOD's range and misses the cracker box)
OBJECT_SIZE_FRAC = (0.2, 0.8)


def pose_models(obj: common.TestObject) -> list[tuple[str, Path]]:
    """``(label, model folder)`` of the other tables' models of ``obj`` (those not trained yet are left out)."""
    direct = tables.Cell(obj, "complete", FLAGS.projection_weight)
    first = tables.Cell(obj, "complete", 0.0, head="coords", minutes=10.0)
    dsac = tables.Cell(obj, "complete", 0.0, head="coords", minutes=5.0, stage="dsac", init=first)
    out = [("direct head (per-object table)", direct.folder() / "model"),
           ("coordinate head + DSAC (DSAC table)", dsac.folder() / "model")]
    return [(label, m) for label, m in out if (m / "config.json").is_file()]


def real_set_result(real_set: str, obj: common.TestObject, s: dict, previous_json: Path | None = None) -> dict:
    from pose_net import detector as det
    from pose_net.evaluate import evaluate
    from render.scenes import load_camera

    folder = tables.budget_dir() / "detectors" / real_set
    detector_dir = folder / "detector"
    t0 = time.time()
    if not det.is_trained(detector_dir):
        K, width, height = load_camera(obj.real_root / "test" / "000000" / "scene_camera.json")
        det.train_detector_on_renderings(
            obj.real_root / "models", detector_dir, [obj.obj_id], {m: folder / f"scenes_{m}" for m in SCENE_MODES},
            s["scenes"], K, width, height, epochs=s["epochs"], seed=SCENE_SEED, backgrounds=tables.backgrounds_dir(),
            exclude_obj_ids=[obj.obj_id], distractors_dir=DISTRACTORS if DISTRACTORS.is_dir() else None,
            object_size_frac=OBJECT_SIZE_FRAC, render_log=folder / "render.log", progress=True,
            keep_feature_cache=True, label=real_set)  # (the cache: other epochs or heads later, no backbone again)
    config = json.loads((detector_dir / det.DETECTOR_CONFIG).read_text())
    detector = det.Detector(detector_dir)
    recall = common.cached_json(folder / "detection_recall.json", lambda: det.detection_recall(detector, obj.real_root),
                                inputs=det.detector_files(detector_dir))
    features = cached_features(detector_dir)
    # the same head trained on the complete-mode scenes only (no real backgrounds), from the same cached features
    variant_dir = train_complete_only(folder / "detector_complete_only", folder, config, obj, features, s["epochs"])
    recall_complete = common.cached_json(folder / "detection_recall_complete_only.json",
                                         lambda: det.detection_recall(det.Detector(variant_dir), obj.real_root),
                                         inputs=det.detector_files(variant_dir))
    fine_tuned = fine_tuned_variants(folder, config, obj, features, s)
    ensemble = fine_tuned_ensemble(folder, obj, s)
    poses = []
    for label, model in pose_models(obj):
        row = {"pose_model": label, "model_dir": report_path(model)}
        for boxes in ("gt", "predicted"):
            name = f"eval_{model.parent.name}_{boxes}"
            row[boxes] = common.cached_json(folder / name / "metrics.json",
                                            lambda: evaluate(model, obj.real_root, obj.obj_id, boxes,
                                                             report_dir=folder / name, detector=detector),
                                            inputs=[model] + (det.detector_files(detector_dir) if boxes == "predicted"
                                                              else []))
        poses.append(row)
    if not poses and previous_json is not None:
        poses = previous_pose_rows(previous_json, real_set)
    return {"real_set": real_set, "obj_id": obj.obj_id, "symmetric": obj.symmetric, "detector": config,
            "recall": recall, "recall_complete_only": recall_complete,
            "fine_tuned_complete_only": fine_tuned, "fine_tuned_ensemble": ensemble, "poses": poses,
            "minutes_this_run": round((time.time() - t0) / 60, 1)}


def cached_features(detector_dir: Path):
    """A function returning the feature cache of the detector in ``detector_dir``, loaded on its first call only
    (about 1 GB for 6,000 images: not read at all when every variant is finished)."""
    from functools import cache

    from pose_net import detector as det

    return cache(lambda: det.load_cached_features(detector_dir / "feature_cache"))


def train_complete_only(variant_dir: Path, folder: Path, config: dict, obj: common.TestObject, features, epochs: int,
                        seed: int = 0, fine_tune_stages: int = 0) -> Path:
    """A detector of ``obj`` trained on the cached features (``features()``, :func:`cached_features`) of the
    ``complete`` half of ``folder``'s scenes alone, into ``variant_dir`` (skipped when finished): a new head, and
    with ``fine_tune_stages`` Lite0's top stages too (:func:`pose_net.detector.fit_head`). Its config is the table
    detector's ``config`` with what differs. Returns ``variant_dir``."""
    from pose_net import detector as det
    from pose_net.evaluate import report_path

    if det.is_trained(variant_dir):
        return variant_dir
    scenes = folder / f"scenes_{SCENE_MODES[0]}"
    n_complete = len(det.list_training_images([scenes], [obj.obj_id])[0])
    print(f"{folder.name}: {variant_dir.name}: training on the {n_complete} complete scenes, seed {seed}, {epochs} "
          f"epochs, {fine_tune_stages} backbone stage(s) trained", flush=True)
    backbone = det.build_backbone()
    t0 = time.time()
    head, history = det.fit_head(features(), 1, epochs, index=np.arange(n_complete), seed=seed,
                                 progress=fine_tune_stages > 0, backbone=backbone if fine_tune_stages else None,
                                 fine_tune_stages=fine_tune_stages)
    if not np.isfinite(history[-1]["total"]):
        raise det.DetectorError(f"{variant_dir}: the loss is not finite ({history[-1]}): not saved")
    det.save_detector(variant_dir, det.build_detector(backbone, head),
                      dict(config, scenes=[report_path(scenes)], images=n_complete, epochs=epochs, seed=seed,
                           fine_tune_stages=fine_tune_stages,
                           steps=det.training_steps(n_complete, epochs, config["batch_size"]),
                           seconds_features=0.0, seconds_training=round(time.time() - t0, 1),
                           first_epoch_loss=history[0], final_loss=history[-1]))
    return variant_dir


def fine_tuned_variants(folder: Path, config: dict, obj: common.TestObject, features, s: dict) -> list[dict]:
    """The fine-tuned, complete-only variant (see ``BUDGETS``), trained once per seed into
    ``folder/detector_complete_fine_tuned_seed<seed>`` (:func:`train_complete_only` with Lite0's last stage); its
    detection recall on the real photos per seed (finished variants and recalls are reused)."""
    from pose_net import detector as det

    out = []
    for seed in s["fine_tuned_seeds"]:
        variant_dir = train_complete_only(folder / f"detector_complete_fine_tuned_seed{seed}", folder, config, obj,
                                          features, s["fine_tuned_epochs"], seed=seed, fine_tune_stages=1)
        recall = common.cached_json(folder / f"detection_recall_{variant_dir.name}.json",
                                    lambda: det.detection_recall(det.Detector(variant_dir), obj.real_root),
                                    inputs=det.detector_files(variant_dir))
        cfg = json.loads((variant_dir / det.DETECTOR_CONFIG).read_text())
        out.append({"seed": seed, "epochs": cfg["epochs"], "images": cfg["images"],
                    "seconds_training": cfg["seconds_training"], "recall": recall})
    return out


def fine_tuned_ensemble(folder: Path, obj: common.TestObject, s: dict) -> dict | None:
    """The fine-tuned variants of every seed averaged into one detector (``folder/detector_complete_fine_tuned_
    ensemble``, :func:`pose_net.detector.ensemble_detectors`) and its detection recall on the real photos; None with
    fewer than two seeds. An ensemble of other seeds (the budget changed) is made again, and scored again: its
    recall lives in its folder, which the rebuild removes."""
    from pose_net import detector as det

    if len(s["fine_tuned_seeds"]) < 2:
        return None
    out = folder / "detector_complete_fine_tuned_ensemble"
    det.ensemble_detectors([folder / f"detector_complete_fine_tuned_seed{seed}" for seed in s["fine_tuned_seeds"]],
                           out, rebuild_other=True)
    recall = common.cached_json(out / "detection_recall.json",
                                lambda: det.detection_recall(det.Detector(out), obj.real_root),
                                inputs=det.detector_files(out))
    return {"seeds": list(s["fine_tuned_seeds"]), "recall": recall}


def lmo_result(run: Path, s: dict) -> dict | None:
    """The bop_train run of lmo_models on rendered multi-object test scenes, with true and predicted boxes."""
    return bop_run_result(run, tables.lmo_test_scenes(s["lmo_test_scenes"]), "eval_lmo_scenes",
                          "make bop-train-lmo", "LMO section")


def real_bop_run_result(real_set: str, obj: common.TestObject) -> dict | None:
    """The bop_train run of a real set's models folder (``make bop-train-real``) on that set's real photos."""
    run = Path(FLAGS.real_runs.format(set=real_set, budget=FLAGS.budget))
    result = bop_run_result(run, obj.real_root, "eval_real", "make bop-train-real", f"{real_set}'s bop_train row")
    return None if result is None else dict(result, real_set=real_set)


def bop_run_result(run: Path, test_root: Path, eval_name: str, make_target: str, what: str) -> dict | None:
    """A finished bop_train run (its detector and pose models) scored on the BOP folder ``test_root``: the
    detector's recall, and every object's pose with the true boxes (``RUN/<eval_name>/``) and with the detector's
    (``RUN/detector/<eval_name>/``: what the detector decides goes with it when it is retrained). None, with a line
    saying so, when the run is not finished. Each figure is kept (``cached_json``) until the detector or a pose
    model it came from is trained again."""
    from pose_net import detector as det
    from pose_net.evaluate import evaluate_all
    from pose_net.inference import MODEL_SET_FILE

    if not (run / MODEL_SET_FILE).is_file() or not det.is_trained(run / det.DETECTOR_SUBDIR):
        print(f"{run}: no finished bop_train run with a detector ({make_target}): the {what} is left out")
        return None
    folder = run / eval_name
    detector_folder = run / det.DETECTOR_SUBDIR / eval_name
    detector = det.detector_files(run / det.DETECTOR_SUBDIR)
    recall = common.cached_json(detector_folder / "detection_recall.json",
                                lambda: det.detection_recall(det.Detector(run / det.DETECTOR_SUBDIR), test_root),
                                inputs=detector)
    models = [run / MODEL_SET_FILE] + [run / name for name in
                                       json.loads((run / MODEL_SET_FILE).read_text())["objects"].values()]
    out = {"run": report_path(run), "test_set": report_path(test_root), "recall": recall,
           "bop_train": json.loads((run / "bop_train.json").read_text())}
    for boxes, where in (("gt", folder), ("predicted", detector_folder)):
        out[boxes] = common.cached_json(where / f"{boxes}.json", lambda: evaluate_all(
            run, test_root, boxes, csv_path=where / f"{boxes}.csv", report_dir=where / boxes),
            inputs=models + (detector if boxes == "predicted" else []))
    log = run / "bop_train.log"
    out["log_stages"] = [line for line in log.read_text().splitlines() if "done in" in line or " min this run" in line
                         ] if log.is_file() else []  # each stage's wall time, of every (resumed) run
    return out


def score(r: dict, symmetric: bool) -> str:
    return f"{100 * r['add_s_recall' if symmetric else 'add_recall']:.1f}"


def median(r: dict, symmetric: bool) -> str:
    v = r["add_s_median_mm" if symmetric else "add_median_mm"]
    return "inf" if v == float("inf") else f"{v:.0f}"


def markdown(results: list[dict], lmo: dict | None, real_runs: list[dict] = ()) -> str:
    s = BUDGETS[FLAGS.budget]
    lines = ["# Whole photos: the detector trained on renderings", "",
             f"Made by `python -m experiments.detector_table --budget {FLAGS.budget}` (`make detector-table`); "
             "pose_net/detector.py says what the detector is, docs/detector.md why it is ours.", "",
             f"Per real set: {s['scenes']} scenes of its object per randomization mode ({', '.join(SCENE_MODES)}; "
             "the real backgrounds never show the object), rendered at its camera shrunk to the detector's "
             f"320-pixel input, and {s['epochs']} epochs of the detector's head on the frozen Lite0 features. "
             "Detection recall: the share of the real photos' instances whose detection overlaps the true box "
             "(the projected model's) by IoU >= 0.5; the detection used is the object's best-scoring one. "
             f"Among its {DIAGNOSTIC_TOP_K} best: the same with any of the object's {DIAGNOSTIC_TOP_K} best-scoring detections "
             "(a diagnostic, not a recall: a missed object that was seen but ranked low, or never seen).", "",
             "| set | training images | features + training (s) | detection recall (IoU 0.5) | median IoU | "
             f"among its {DIAGNOSTIC_TOP_K} best | ms per photo | recall, complete scenes only | "
             "median IoU, complete scenes only |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, rc, ro = r["detector"], r["recall"], r["recall_complete_only"]
        lines.append(f"| {r['real_set']} | {c['images']} | {c['seconds_features']:.0f} + {c['seconds_training']:.0f} "
                     f"| **{100 * rc['detection_recall']:.1f}%** ({rc['instances']} instances) | "
                     f"{rc['median_iou']:.2f} | {top_k_share(rc)} | {1000 * rc['seconds_per_photo_median']:.0f} | "
                     f"{100 * ro['detection_recall']:.1f}% | {ro['median_iou']:.2f} |")
    lines += ["", "Complete scenes only: the same head trained on the cached features of the `complete` half alone "
              "(no real backgrounds), the same epochs."]
    lines += ["", "Pose with the true boxes and with the detector's (ADD for the banana, ADD-S for the box and the "
              "can, recall at 10% of the diameter and the median error; a missed object counts as a wrong pose, "
              "its error infinite):", "",
              "| set | pose model | recall, true boxes | recall, detector boxes | median mm, true boxes | "
              "median mm, detector boxes |", "|---|---|---|---|---|---|"]
    carried = set()
    for r in results:
        sym = r["symmetric"]
        for p in r["poses"]:
            mark = ""
            if p.get("carried_over_from"):
                then = p.get("detector_then", {})
                carried.add((p["carried_over_from"], then.get("images"), then.get("epochs")))
                mark = " *"
            lines.append(f"| {r['real_set']} | {p['pose_model']}{mark} | {score(p['gt'], sym)} | "
                         f"{score(p['predicted'], sym)} | {median(p['gt'], sym)} | {median(p['predicted'], sym)} |")
        if not r["poses"]:
            lines.append(f"| {r['real_set']} | (no pose model yet: make per-object / make dsac-table) | | | | |")
    for source, images, epochs in sorted(carried, key=str):
        lines += ["", f"\\* Carried over from the previous `{source}`: the pose models were not on the machine that "
                  f"made this table, so these rows were scored with that table's detector ({images} training images, "
                  f"{epochs} epochs), not the one above."]
    lines += fine_tuned_lines(results)
    if lmo:
        rc = lmo["recall"]
        lines += ["", f"## lmo_models: `{lmo['run']}` (experiments.bop_train, budget `{lmo['bop_train']['budget']}`)",
                  "", f"Rendered multi-object test scenes (`{lmo['test_set']}`, {rc['instances']} instances at "
                  "least 10% visible, LINEMOD's 640x480 camera, 2-5 objects each, `complete` randomization, seed "
                  f"{tables.LMO_TEST_SEED}). Detection recall (IoU 0.5) **{100 * rc['detection_recall']:.1f}%**, median "
                  f"IoU {rc['median_iou']:.2f}, {1000 * rc['seconds_per_photo_median']:.0f} ms per photo."
                  + (f" Carried over from the previous `{lmo['carried_over_from']}`: the run's folder was not on the "
                     "machine that made this table, so its detector is the one of that run's own recipe "
                     "(experiments/bop_train.py), not this table's." if lmo.get("carried_over_from") else ""), "",
                  "| obj | detection recall | ADD(-S) true boxes | ADD(-S) detector boxes | median mm, true boxes | "
                  "median mm, detector boxes |", "|---|---|---|---|---|---|"]
        for obj_id, g in lmo["gt"]["objects"].items():
            p = lmo["predicted"]["objects"].get(obj_id)
            if g is None or p is None:
                continue
            sym = g["symmetric"]
            lines.append(f"| {obj_id}{' (sym.)' if sym else ''} | {100 * {str(k): v for k, v in rc['per_object'].items()}.get(str(obj_id), 0):.1f} | "
                         f"{score(g, sym)} | {score(p, sym)} | {median(g, sym)} | {median(p, sym)} |")
        lines.append(f"| mean | {100 * rc['detection_recall']:.1f} | "
                     f"{100 * lmo['gt']['mean']['score_recall']:.1f} | "
                     f"{100 * lmo['predicted']['mean']['score_recall']:.1f} | | |")
        if lmo.get("log_stages"):
            lines += ["", f"The run's log, its stages (wall time; `{lmo['run']}/bop_train.log` has every line):", "",
                      "```", *lmo["log_stages"], "```"]
    lines += real_runs_lines(real_runs)
    return "\n".join(lines) + "\n"


def real_runs_lines(real_runs: list[dict]) -> list[str]:
    """The section of ``make bop-train-real``: one command per real set's models folder, scored on its photos."""
    if not real_runs:
        return []
    lines = ["", "## One command per real set: experiments.bop_train on its models folder", "",
             "`make bop-train-real`: `experiments.bop_train` on each real set's `models/` folder with that set's "
             "camera, LINEMOD's objects as distractors and the object at 0.2-0.8 of the image, as a user holding "
             "that mesh would run it; then `pose_net.evaluate --obj_id all` on the real photos with the true boxes "
             "and with the run's detector. Recall at 10% of the diameter; a missed object counts as a wrong pose. The "
             "runs are the folders of `--real_runs` (`runs/bop_<set>_<budget>` by default; the JSON names each).", "",
             "| set | run | detection recall (IoU 0.5) | median IoU | ADD true / detector boxes | "
             "ADD-S true / detector boxes | median ADD-S mm, true / detector boxes | wall time (min) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in real_runs:
        rc = r["recall"]
        g, p = r["gt"]["mean"], r["predicted"]["mean"]
        gm = [o["add_s_median_mm"] for o in r["gt"]["objects"].values()]
        pm = [o["add_s_median_mm"] for o in r["predicted"]["objects"].values()]
        minutes = sum(float(m.group(1)) for line in r["log_stages"]
                      if (m := re.search(r"\(([\d.]+) min this run", line)))
        lines.append(f"| {r['real_set']} | `{Path(r['run']).name}` | **{100 * rc['detection_recall']:.1f}%** "
                     f"({rc['instances']} instances) | {rc['median_iou']:.2f} | "
                     f"{100 * g['add_recall']:.1f} / {100 * p['add_recall']:.1f} | "
                     f"{100 * g['add_s_recall']:.1f} / {100 * p['add_s_recall']:.1f} | "
                     f"{' '.join(f'{v:.0f}' for v in gm)} / {' '.join(f'{v:.0f}' for v in pm)} | {minutes:.1f} |")
    return lines


def fine_tuned_lines(results: list[dict]) -> list[str]:
    """The fine-tuned, complete-only variant's section: one row per set, its seeds' recalls and their mean."""
    rows = [r for r in results if r.get("fine_tuned_complete_only")]
    if not rows:
        return []
    first = rows[0]["fine_tuned_complete_only"][0]
    lines = ["", "## Fine-tuned on the complete scenes only", "",
             f"Lite0's last stage (blocks 11-15) trained with a new head on the cached features of the `complete` half "
             f"alone ({first['images']} images, {first['epochs']} epochs, its learning rate a tenth of the head's), "
             "once per seed: the spread between seeds is that of one training run on these few real viewpoints.", "",
             "Ensemble: the seeds' detectors in one, their maps averaged (`pose_net.detector.ensemble_detectors`: the "
             "frozen blocks below run once, the trained stage and the head once per seed).", "",
             "| set | detection recall per seed (IoU 0.5) | mean | **ensemble of the seeds** | ensemble: median IoU, "
             "among its 3 best, ms per photo | among its 3 best, per seed | median IoU, per seed | "
             "training (s) per seed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        runs = r["fine_tuned_complete_only"]
        recalls = [100 * v["recall"]["detection_recall"] for v in runs]
        per_seed = " / ".join(f"{x:.1f}%" for x in recalls)
        seeds = ", ".join(str(v["seed"]) for v in runs)
        e = (r.get("fine_tuned_ensemble") or {}).get("recall")
        ens = ("-", "-") if e is None else (f"**{100 * e['detection_recall']:.1f}%**", f"{e['median_iou']:.2f}, "
                                          f"{top_k_share(e)}, {1000 * e['seconds_per_photo_median']:.0f}")
        lines.append(f"| {r['real_set']} | {per_seed} (seeds {seeds}) | **{np.mean(recalls):.1f}%** | {ens[0]} | {ens[1]} | "
                     f"{' / '.join(top_k_share(v['recall']) for v in runs)} | "
                     f"{' / '.join(format(v['recall']['median_iou'], '.2f') for v in runs)} | "
                     f"{' / '.join(format(v['seconds_training'], '.0f') for v in runs)} |")
    return lines


def top_k_share(recall: dict) -> str:
    """The "among its K best" diagnostic of a detection_recall result ('-' in results made before it existed)."""
    v = recall.get(f"detection_recall_top{DIAGNOSTIC_TOP_K}")
    return "-" if v is None else f"{100 * v:.1f}%"


def main(argv):
    del argv
    s = BUDGETS[FLAGS.budget]
    out = Path(FLAGS.out)
    previous_json = out / "detector_table.json"  # read before it is overwritten: rows to carry over
    results, real_runs = [], []
    for real_set, obj in tables.real_set_objects(FLAGS.real_sets):
        if obj.real_root is None:
            print(f"{real_set}: {obj.note}: no real photos to detect in, left out")
            continue
        results.append(real_set_result(real_set, obj, s, previous_json))
        if FLAGS.real_runs and (run := real_bop_run_result(real_set, obj)) is not None:
            real_runs.append(run)
    lmo = lmo_result(Path(FLAGS.lmo_run), s) if FLAGS.lmo_run else None
    out.mkdir(parents=True, exist_ok=True)
    if lmo is None and FLAGS.lmo_run:
        lmo = previous_lmo_result(previous_json, FLAGS.lmo_run)
    (out / "detector_table.json").write_text(json.dumps(common.report_paths(
        {"real_sets": results, "lmo": lmo, "real_bop_train_runs": real_runs}), indent=1, default=str))
    (out / "detector_table.md").write_text(markdown(results, lmo, real_runs))
    print((out / "detector_table.md").read_text())


if __name__ == "__main__":
    app.run(main)
