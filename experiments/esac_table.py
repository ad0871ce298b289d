"""ESAC (one network, an expert per object) against one coordinate model per object, at equal training time.

    python -m experiments.esac_table --out docs/results [--budget cpu] [--experts_minutes 20] [--esac_minutes 10]
        [--real_sets ycbv_banana,ycbv_box,ycbv_can]

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
FLAGS = tables.FLAGS
NUM_HYPOTHESES = 256  # ESAC's default, both modes


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


def train_stages(objects) -> dict:
    """The ESAC model's two stages (resumed or skipped when done); returns their training summaries."""
    from pose_net.esac import ESAC_FILE, train_esac

    datasets = [str(per_object_cells(obj)[0].data_dir()) for _, obj in objects]
    root = esac_dir(objects)
    quick = FLAGS.budget == "quick"
    kw = dict(input_size=tables.sizes()["input_size"], backbone=tables.sizes()["backbone"],
              backbone_weights=tables.sizes()["backbone_weights"], progress=True,
              max_steps=2 if quick else 0)
    summaries = {}
    for stage, minutes, init in (("experts", FLAGS.experts_minutes, None),
                                 ("esac", FLAGS.esac_minutes, root / "experts")):
        done = root / stage / ESAC_FILE
        if done.is_file() and "training" in (d := json.loads(done.read_text())) \
                and (d["training"]["train_seconds"] >= 60 * minutes or quick):
            summaries[stage] = d["training"]
            continue
        print(f"esac table: training stage {stage} ({minutes:g} min) in {root / stage}", flush=True)
        summaries[stage] = train_esac(datasets, root / stage, stage, minutes, init_from=init, **kw)
    return summaries


def evaluate_cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    r = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1))
    return r


def esac_results(objects) -> dict:
    """``{(stage, mode, set kind, real set): figures}`` of the ESAC stages on real and rendered test sets."""
    import keras

    from pose_net.esac import EsacEstimator, evaluate_esac

    out = {}
    for stage in ("experts", "esac"):
        model_dir = esac_dir(objects) / stage
        estimator = None
        for mode in ("esac", "top_expert"):
            for real_set, obj in objects:
                for kind, root in (("real", obj.real_root), ("rendered", tables.rendered_bop_test_set(obj))):
                    if root is None:
                        continue
                    path = model_dir / "eval" / f"{kind}_{real_set}_{mode}.json"

                    def compute():
                        nonlocal estimator
                        estimator = estimator or EsacEstimator(model_dir)
                        print(f"esac table: {stage} {mode} on {kind} {real_set}", flush=True)
                        return evaluate_esac(estimator, root, obj.obj_id, mode, num_hypotheses=NUM_HYPOTHESES,
                                             report_dir=model_dir / "eval" / f"{kind}_{real_set}",
                                             num_pictures=tables.sizes()["num_pictures"])
                    out[(stage, mode, kind, real_set)] = evaluate_cached(path, compute)
        keras.backend.clear_session()
    return out


def _figure(r: dict | None, kind: str) -> tuple[str, str]:
    if not r:
        return "-", "-"
    return f"{100 * r[f'{kind}_recall']:.1f}", f"{r[f'{kind}_median_mm']:.0f}"


def write_table(objects, per_object: dict, esac: dict, summaries: dict, wall_s: float) -> Path:
    from pose_net.evaluate import report_path

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(objects)
    esac_min = sum(s["train_seconds"] for s in summaries.values()) / 60
    experts_min = summaries["experts"]["train_seconds"] / 60
    first_min = {o.name: per_object[o.name]["first"].get("training", {}).get("train_seconds", 0) / 60
                 for _, o in objects}
    second_min = {o.name: per_object[o.name]["second"].get("training", {}).get("train_seconds", 0) / 60
                  for _, o in objects}
    methods = [
        ("per object, stage 1", lambda rs, o, k: per_object[o.name]["first"].get(k),
         f"{sum(first_min.values()):.1f} ({n} x {FLAGS.first_stage_minutes:g})"),
        ("per object, stage 1 + coordinate loss", lambda rs, o, k: per_object[o.name]["second"].get(k),
         f"{sum(first_min.values()) + sum(second_min.values()):.1f}"),
        ("ESAC, experts stage only", lambda rs, o, k: esac[("experts", "esac", k, rs)], f"{experts_min:.1f}"),
        ("ESAC, experts stage, top expert only", lambda rs, o, k: esac[("experts", "top_expert", k, rs)],
         f"{experts_min:.1f}"),
        ("ESAC (+ esac stage)", lambda rs, o, k: esac[("esac", "esac", k, rs)], f"{esac_min:.1f}"),
        ("ESAC (+ esac stage), top expert only", lambda rs, o, k: esac[("esac", "top_expert", k, rs)],
         f"{esac_min:.1f}"),
    ]
    lines = ["# ESAC: one network for several objects, against a model per object", "",
             "Generated by `python -m experiments.esac_table` (`make esac-table`); the reading is in "
             "[README.md](README.md#esac-one-network-for-several-objects-esac_tablemd). Ground-truth boxes; the ESAC "
             "model names the object itself (a crop explained by another object's expert counts as wrong), the "
             "per-object models are told which object it is. Figure: ADD for the banana, ADD-S for the box and the "
             "can, within 10% of the diameter (recall %, then the median in mm).", ""]
    json_rows = []
    for kind in ("real", "rendered"):
        lines += [f"## {'Real photos' if kind == 'real' else 'Rendered test sets'}", ""]
        head = "| method | training min (all objects) | " + " | ".join(
            f"{rs} {figure_kind(rs).upper().replace('_', '-')} % / median mm" for rs, _ in objects) + \
            " | mean % | gating accuracy % |"
        lines += [head, "|" + "---|" * (4 + n)]
        for name, get, minutes in methods:
            cells, recalls, gated = [], [], []
            for rs, o in objects:
                r = get(rs, o, kind)
                fk = figure_kind(rs)
                rec, med = _figure(r, fk)
                cells.append(f"{rec} / {med}")
                if r:
                    recalls.append(100 * r[f"{fk}_recall"])
                    if "gating_accuracy" in r:
                        gated.append((r["gating_accuracy"], r["instances"]))
                json_rows.append({"set": kind, "method": name, "real_set": rs, "figure": fk,
                                  **({k: v for k, v in r.items() if k != "bop_root"} if r else {})})
            mean = f"{np.mean(recalls):.1f}" if len(recalls) == n else "-"
            acc = (f"{100 * sum(a * k for a, k in gated) / sum(k for _, k in gated):.1f}" if gated else
                   "(told)")
            lines.append(f"| {name} | {minutes} | " + " | ".join(cells) + f" | {mean} | {acc} |")
        lines.append("")
    secs = [r["seconds_per_crop"] for key, r in esac.items() if key[0] == "esac" and key[1] == "esac"]
    secs_top = [r["seconds_per_crop"] for key, r in esac.items() if key[0] == "esac" and key[1] == "top_expert"]
    lines += ["## Notes", "",
              f"- ESAC's training: experts stage {summaries['experts']['steps']} steps in {experts_min:.1f} min, "
              f"esac stage {summaries['esac']['steps']} steps in {summaries['esac']['train_seconds'] / 60:.1f} min "
              f"(wall time of the steps, on these 2 cores; the per-object models' minutes are theirs likewise).",
              f"- Inference, seconds per crop (all experts' maps, then RANSAC-PnP): ESAC {np.mean(secs):.3f}, "
              f"top expert only {np.mean(secs_top):.3f}." if secs and secs_top else "- Inference: not measured.",
              "- Per-object models: RANSAC-PnP with 64 hypotheses (their configuration); ESAC: 256 over all experts "
              "(ESAC's default; with a confident gating nearly all go to one expert).",
              f"- Folders: `{report_path(esac_dir(objects))}` (ESAC stages, their `eval/` overlays), "
              f"`{report_path(tables.budget_dir() / 'cells')}` (the per-object cells).",
              f"- This run: {wall_s / 60:.1f} min of wall time (training, rendering and evaluations not already "
              "done).", ""]
    md = out / "esac_table.md"
    md.write_text("\n".join(lines))
    (out / "esac_table.json").write_text(json.dumps({"rows": json_rows, "training": summaries}, indent=1))
    print(f"wrote {md}", flush=True)
    return md


def main(argv):
    del argv
    t0 = time.time()
    objects = tables.real_set_objects(FLAGS.real_sets)
    if len(objects) < 2:
        raise SystemExit("--real_sets: ESAC needs at least 2 objects")
    tables.require_backbone_weights([per_object_cells(o)[0] for _, o in objects])
    per_object = {}
    for _, obj in objects:
        first, second = per_object_cells(obj)
        per_object[obj.name] = {"first": tables.run_cell(first), "second": tables.run_cell(second)}
    summaries = train_stages(objects)
    esac = esac_results(objects)
    write_table(objects, per_object, esac, summaries, time.time() - t0)


if __name__ == "__main__":
    app.run(main)
