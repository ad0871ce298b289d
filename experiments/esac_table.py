"""ESAC (one network, an expert per object) against one coordinate model per object, at equal training time.

    python -m experiments.esac_table --out docs/results [--budget cpu] [--experts_minutes 20] [--esac_minutes 10]
        [--real_sets ycbv_banana,ycbv_box,ycbv_can] [--lmo_models ../shared/data/lmo_models]
        [--lmo_minutes_per_object 2]

On the renderings of the DSAC table's cells (experiments/dsac_table.py, `complete` mode, one dataset per real
set's object), with the same frozen ImageNet Lite0:

* **per object**: the DSAC table's coordinate models, one per object: stage 1 (``--first_stage_minutes``, 10)
  and stage 1 + 5 minutes of the coordinate loss; RANSAC-PnP with their 64 hypotheses (trained if missing);
* **ESAC** (pose_net/esac.py): one network with an expert per object and a gating network over one backbone,
  ``--experts_minutes`` of the gating's cross-entropy and the experts' coordinate losses, then
  ``--esac_minutes`` through the solver (the experts' expected pose loss, the gating by REINFORCE). Its total
  equals the per-object stage-1 models' summed time when ``experts + esac = objects x first stage``;
* scored twice: ESAC (256 hypotheses spread over the experts by the gating) and its fast mode, the top expert only
  (256 hypotheses from it); the ``experts`` stage alone is scored too, so the esac stage's effect shows.

**lmo_models** (``--lmo_models``, the eight objects of ../shared/data/lmo_models): ``--lmo_num_train`` renderings
of each object; one coordinate model per object for ``--lmo_minutes_per_object`` against one ESAC model of all
eight for the same total (two thirds experts stage, one third esac stage), scored on the rendered multi-object
test scenes of the detector table (``experiments.tables.lmo_test_scenes``: 2-5 objects per 640x480 image,
instances at least 10% visible).

Every crop comes from the ground-truth box; the ESAC model must name the object itself (a crop explained by
another object's expert is a wrong pose), the per-object models are told which object it is. Figures: ADD (the
banana) or ADD-S (the box's shape symmetries, the can) within 10% of the diameter, their medians, the gating's
accuracy on the crops, seconds per crop. Output: ``OUT/esac_table.md`` and ``.json``. Resumable: trained stages
and evaluations are kept under ``RUNS/BUDGET/esac/`` and reused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from experiments import common, tables

flags.DEFINE_float("experts_minutes", 20.0, "ESAC's experts stage (gating cross-entropy + coordinate losses)")
flags.DEFINE_float("esac_minutes", 10.0, "ESAC's esac stage (through the solver), from the experts stage")
flags.DEFINE_float("first_stage_minutes", 10.0, "the per-object coordinate models' stage 1 (the DSAC table's)")
flags.DEFINE_float("second_stage_minutes", 5.0, "the per-object models' continued coordinate loss")
flags.DEFINE_list("real_sets", list(common.REAL_SETS), "real sets of ../shared/data")
flags.DEFINE_string("lmo_models", str(common.SHARED_DATA / "lmo_models"), "a BOP models folder of several objects "
                    "('' to skip): per-object models against one ESAC model on its rendered multi-object scenes")
flags.DEFINE_float("lmo_minutes_per_object", 2.0, "lmo: each per-object model's training; ESAC gets the objects "
                   "times this, two thirds in its experts stage")
flags.DEFINE_integer("lmo_num_train", 4000, "lmo: training renderings per object")
FLAGS = tables.FLAGS
NUM_HYPOTHESES = 256  # ESAC's default, both modes
LMO_TEST_SCENES = {"quick": 4, "cpu": 100, "gpu": 200}  # the detector table's lmo test scenes
LMO_ESAC_BATCH_SIZE = 32  # experts stage, lmo: 4 crops of each of 8 objects


def figure_kind(real_set: str) -> str:
    """``add`` for an asymmetric object; ``add_s`` for the box (its shape symmetries) and the symmetric can."""
    return "add_s" if common.REAL_SETS[real_set][1] in ("box", "symmetric") else "add"


def per_object_cells(obj) -> tuple:
    first = tables.Cell(obj, "complete", 0.0, head="coords", minutes=FLAGS.first_stage_minutes)
    second = tables.Cell(obj, "complete", 0.0, head="coords", minutes=FLAGS.second_stage_minutes, stage="coords",
                         init=first)
    return first, second


def esac_dir(objects) -> Path:
    return tables.budget_dir() / "esac" / "+".join(o.name for _, o in objects)


def train_stages(root: Path, datasets: list[str], experts_minutes: float, esac_minutes: float,
                 experts_batch_size: int | None = None) -> dict:
    """An ESAC model's two stages in ``root/experts`` and ``root/esac`` (resumed, or skipped when done); returns
    their training summaries."""
    from pose_net.esac import ESAC_FILE, train_esac

    quick = FLAGS.budget == "quick"
    kw = dict(input_size=tables.sizes()["input_size"], backbone=tables.sizes()["backbone"],
              backbone_weights=tables.sizes()["backbone_weights"], progress=True, max_steps=2 if quick else 0)
    summaries = {}
    for stage, minutes, init, batch in (("experts", experts_minutes, None, experts_batch_size),
                                        ("esac", esac_minutes, root / "experts", None)):
        done = root / stage / ESAC_FILE
        if done.is_file() and "training" in (d := json.loads(done.read_text())) \
                and (d["training"]["train_seconds"] >= 60 * minutes or quick):
            summaries[stage] = d["training"]
            continue
        print(f"esac table: training stage {stage} ({minutes:g} min) in {root / stage}", flush=True)
        summaries[stage] = train_esac(datasets, root / stage, stage, minutes, batch_size=batch, init_from=init, **kw)
    return summaries


def esac_results(root: Path, test_sets: list[tuple[str, str, int, Path]]) -> dict:
    """``{(stage, mode, kind, key): figures}`` of the ESAC stages in ``root`` on ``test_sets``, a list of
    ``(kind, key, obj_id, BOP test folder)``; each evaluation is kept in ``root/<stage>/eval/`` and reused."""
    import keras

    from pose_net.esac import EsacEstimator, evaluate_esac

    out = {}
    for stage in ("experts", "esac"):
        model_dir = root / stage
        estimator = None
        for mode in ("esac", "top_expert"):
            for kind, key, obj_id, bop_root in test_sets:
                def compute():
                    nonlocal estimator
                    estimator = estimator or EsacEstimator(model_dir)
                    print(f"esac table: {stage} {mode} on {kind} {key}", flush=True)
                    return evaluate_esac(estimator, bop_root, obj_id, mode, num_hypotheses=NUM_HYPOTHESES,
                                         report_dir=model_dir / "eval" / f"{kind}_{key}",
                                         num_pictures=tables.sizes()["num_pictures"])
                out[(stage, mode, kind, key)] = common.cached_json(model_dir / "eval" / f"{kind}_{key}_{mode}.json",
                                                                compute, inputs=[model_dir])
        keras.backend.clear_session()
    return out


def _figure(r: dict | None, kind: str) -> str:
    if not r:
        return "-"
    return f"{100 * r[f'{kind}_recall']:.1f} / {r[f'{kind}_median_mm']:.0f}"


def section(title: str, columns: list[tuple[str, str]], methods: list[tuple[str, str, object]], json_rows: list,
            set_kind: str) -> list[str]:
    """A Markdown table: ``columns`` ``[(key, figure kind)]``, ``methods`` ``[(name, training minutes, get)]``
    where ``get(key)`` is the figures of that method on that column's test set (None: not run)."""
    n = len(columns)
    lines = [f"## {title}", "",
             "| method | training min (all objects) | " + " | ".join(
                 f"{key} {fk.upper().replace('_', '-')} % / median mm" for key, fk in columns)
             + " | mean % | gating accuracy % |", "|" + "---|" * (4 + n)]
    for name, minutes, get in methods:
        cells, recalls, gated = [], [], []
        for key, fk in columns:
            r = get(key)
            cells.append(_figure(r, fk))
            if r:
                recalls.append(100 * r[f"{fk}_recall"])
                if "gating_accuracy" in r:
                    gated.append((r["gating_accuracy"], r["instances"]))
            json_rows.append({"set": set_kind, "method": name, "test_set": key, "figure": fk,
                              **({k: v for k, v in r.items() if k not in ("bop_root", "model_dir")} if r else {})})
        mean = f"{np.mean(recalls):.1f}" if len(recalls) == n else "-"
        acc = f"{100 * sum(a * k for a, k in gated) / sum(k for _, k in gated):.1f}" if gated else "(told)"
        lines.append(f"| {name} | {minutes} | " + " | ".join(cells) + f" | {mean} | {acc} |")
    return lines + [""]


def esac_methods(esac: dict, summaries: dict, kind: str) -> list:
    experts_min = summaries["experts"]["train_seconds"] / 60
    all_min = experts_min + summaries["esac"]["train_seconds"] / 60
    return [(label, f"{minutes:.1f}", lambda key, st=stage, mo=mode: esac.get((st, mo, kind, key)))
            for label, minutes, stage, mode in (
                ("ESAC, experts stage only", experts_min, "experts", "esac"),
                ("ESAC, experts stage, top expert only", experts_min, "experts", "top_expert"),
                ("ESAC (+ esac stage)", all_min, "esac", "esac"),
                ("ESAC (+ esac stage), top expert only", all_min, "esac", "top_expert"))]


def _seconds(r: dict) -> float:
    return r.get("training", {}).get("train_seconds", 0.0)


def _training_note(name: str, summaries: dict) -> str:
    e, a = summaries["experts"], summaries["esac"]
    return (f"- {name}: experts stage {e['steps']} steps in {e['train_seconds'] / 60:.1f} min, esac stage "
            f"{a['steps']} steps in {a['train_seconds'] / 60:.1f} min.")


def write_table(objects, real: dict, lmo: dict | None, wall_s: float) -> Path:
    from pose_net.evaluate import report_path

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    per_object = real["per_object"]
    first_min = sum(_seconds(per_object[o.name]["first"]) for _, o in objects) / 60
    second_min = sum(_seconds(per_object[o.name]["second"]) for _, o in objects) / 60
    columns = [(rs, figure_kind(rs)) for rs, _ in objects]
    name_of = {rs: o.name for rs, o in objects}
    lines = ["# ESAC: one network for several objects, against a model per object", "",
             "Generated by `python -m experiments.esac_table` (`make esac-table`); the reading is in "
             "[README.md](README.md#esac-one-network-for-several-objects-esac_tablemd). Ground-truth boxes; the ESAC "
             "model names the object itself (a crop explained by another object's expert counts as wrong), the "
             "per-object models are told which object it is. Figures within 10% of the diameter: recall %, then the "
             "median in mm; ADD for asymmetric objects, ADD-S for symmetric ones and the box (its shape "
             "symmetries). Gating accuracy: the share of crops whose true expert the gating ranks first.", ""]
    json_rows = []
    for kind, title in (("real", "Real photos (the three real sets)"),
                        ("rendered", "Rendered test sets of the real sets' objects")):
        methods = [("per object, stage 1", f"{first_min:.1f}",
                    lambda key, k=kind: per_object[name_of[key]]["first"].get(k)),
                   ("per object, stage 1 + coordinate loss", f"{first_min + second_min:.1f}",
                    lambda key, k=kind: per_object[name_of[key]]["second"].get(k))]
        lines += section(title, columns, methods + esac_methods(real["esac"], real["summaries"], kind), json_rows,
                         kind)
    notes = [_training_note("ESAC of the real sets' objects", real["summaries"])]
    if lmo is not None:
        objs = lmo["objects"]
        lmo_min = sum(_seconds(lmo["per_object"][o.name]) for o in lmo["trained"]) / 60
        methods = [(f"per object ({FLAGS.lmo_minutes_per_object:g} min each)", f"{lmo_min:.1f}",
                    lambda key: lmo["per_object"].get(key))]
        lines += section(f"lmo_models: rendered multi-object scenes (`{report_path(lmo['test_root'])}`)",
                         [(o.name, "add_s" if o.symmetric else "add") for o in objs],
                         methods + esac_methods(lmo["esac"], lmo["summaries"], "rendered"), json_rows, "lmo")
        notes.append(_training_note(f"ESAC of the {len(lmo['trained'])} lmo objects", lmo["summaries"]))
        if len(objs) < len(lmo["trained"]):
            notes.append(f"- lmo: {len(lmo['trained']) - len(objs)} of the {len(lmo['trained'])} objects have no "
                         "instance in these test scenes (at least 10% visible): no column.")
    secs = [r["seconds_per_crop"] for key, r in real["esac"].items() if key[0] == "esac"]
    lines += ["## Notes", "", *notes,
              "- Training minutes are the wall time of the training steps on these 2 cores, for the per-object "
              "models as for ESAC.",
              f"- Inference: {np.mean(secs):.3f} s per crop (ESAC of the real sets' objects, both modes: every "
              "expert's maps, then RANSAC-PnP)." if secs else "- Inference: not measured.",
              "- Per-object models: RANSAC-PnP with 64 hypotheses (their configuration); ESAC: 256 over all experts "
              "(ESAC's default; with a confident gating nearly all go to one expert).",
              f"- Folders: `{report_path(tables.budget_dir() / 'esac')}` (ESAC models, their `eval/` overlays; lmo "
              f"per-object models), `{report_path(tables.budget_dir() / 'cells')}` (the real sets' per-object cells).",
              f"- This run: {wall_s / 60:.1f} min of wall time (what was not already done).", ""]
    md = out / "esac_table.md"
    md.write_text("\n".join(lines))
    training = {"real_sets": real["summaries"], "lmo": lmo["summaries"] if lmo else None}
    (out / "esac_table.json").write_text(json.dumps({"rows": json_rows, "training": training}, indent=1))
    print(f"wrote {md}", flush=True)
    return md


def real_sets_section(objects) -> dict:
    per_object = {}
    for _, obj in objects:
        first, second = per_object_cells(obj)
        per_object[obj.name] = {"first": tables.run_cell(first), "second": tables.run_cell(second)}
    root = esac_dir(objects)
    summaries = train_stages(root, [str(per_object_cells(obj)[0].data_dir()) for _, obj in objects],
                             FLAGS.experts_minutes, FLAGS.esac_minutes)
    test_sets = [(kind, rs, obj.obj_id, bop_root) for rs, obj in objects
                 for kind, bop_root in (("real", obj.real_root), ("rendered", tables.rendered_bop_test_set(obj)))
                 if bop_root is not None]
    return {"per_object": per_object, "summaries": summaries, "esac": esac_results(root, test_sets)}


def lmo_objects(models_dir: Path) -> list[common.TestObject]:
    from pose_core import bop

    info = bop.load_models_info(models_dir / "models_info.json")
    return [common.TestObject(f"obj_{obj_id:06d}", str(bop.find_model_file(models_dir, obj_id)), obj_id,
                              float(entry["diameter"]), bop.is_symmetric(entry))
            for obj_id, entry in sorted(info.items())]


def lmo_section(models_dir: Path) -> dict:
    """Per-object coordinate models against one ESAC model of all of ``models_dir``'s objects, on the rendered
    multi-object test scenes; everything kept under ``BUDGET/esac/lmo/``."""
    import keras

    from pose_net.evaluate import evaluate
    from pose_net.train import default_flag_values, train

    objects = lmo_objects(models_dir)
    root = tables.budget_dir() / "esac" / "lmo"
    s = tables.sizes()
    quick = FLAGS.budget == "quick"
    num_train = s["num_train"] if quick else FLAGS.lmo_num_train
    data = {o.obj_id: root / "data" / o.name for o in objects}
    tables.render_datasets([dict(mesh=o.mesh, randomization="complete", obj_id=o.obj_id,
                                 symmetric=o.symmetric or None, out=str(data[o.obj_id]), num_images=num_train,
                                 seed=FLAGS.train_seed, num_shards=4 if not quick else 2,
                                 image_size=s["image_size"], workers=s["workers"], progress=False)
                            for o in objects if not common.dataset_complete(data[o.obj_id])])
    test_root = tables.lmo_test_scenes(LMO_TEST_SCENES[FLAGS.budget])
    from pose_core import bop

    targets = bop.load_test_targets(test_root)
    shown = [o for o in objects if bop.list_test_images(test_root, o.obj_id, "test", bop.DEFAULT_MIN_VISIB, targets)]
    minutes = FLAGS.lmo_minutes_per_object
    per_object = {}
    for o in objects:
        folder = root / "per_object" / o.name
        def compute():
            print(f"esac table: lmo per-object model of {o.name} ({minutes:g} min)", flush=True)
            train(default_flag_values(
                dataset=str(data[o.obj_id]), model_dir=str(folder / "model"), head="coords",
                backbone=s["backbone"], backbone_weights=s["backbone_weights"], freeze_backbone=s["freeze_backbone"],
                input_size=s["input_size"], epochs=10_000 if not quick else 1, steps_per_epoch=s["steps_per_epoch"],
                batch_size=s["batch_size"], seed=FLAGS.train_seed, lambda_projection=0.0, progress=False,
                time_budget_min=minutes, **tables.HEAD_SETTINGS["coords"]))
            keras.backend.clear_session()
            r = {"instances": 0}  # a scene set too small to show every object (the quick budget)
            if o in shown:
                r = evaluate(folder / "model", test_root, o.obj_id, "gt", report_dir=folder / "eval_lmo_scenes",
                             num_pictures=s["num_pictures"])
            history = [json.loads(line) for line in (folder / "model" / "history.jsonl").read_text().splitlines()
                       if line.strip()]
            r["training"] = {"steps": sum(e["steps"] for e in history),
                             "train_seconds": history[-1].get("train_seconds", 0.0) if history else 0.0}
            return r
        per_object[o.name] = common.cached_json(folder / "result.json", compute)
    summaries = train_stages(root / "esac_model", [str(data[o.obj_id]) for o in objects],
                             len(objects) * minutes * 2 / 3, len(objects) * minutes / 3,
                             experts_batch_size=LMO_ESAC_BATCH_SIZE)
    esac = esac_results(root / "esac_model", [("rendered", o.name, o.obj_id, test_root) for o in shown])
    return {"objects": shown, "trained": objects, "per_object": per_object, "summaries": summaries, "esac": esac,
            "test_root": test_root}


def main(argv):
    del argv
    t0 = time.time()
    objects = tables.real_set_objects(FLAGS.real_sets)
    if len(objects) < 2:
        raise SystemExit("--real_sets: ESAC needs at least 2 objects")
    tables.require_backbone_weights([per_object_cells(o)[0] for _, o in objects])
    real = real_sets_section(objects)
    lmo = None
    if FLAGS.lmo_models:
        if not (Path(FLAGS.lmo_models) / "models_info.json").is_file():
            raise SystemExit(f"--lmo_models {FLAGS.lmo_models}: no models_info.json there ('' skips the section)")
        lmo = lmo_section(Path(FLAGS.lmo_models))
    write_table(objects, real, lmo, time.time() - t0)


if __name__ == "__main__":
    app.run(main)
