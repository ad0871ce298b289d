"""What the three thesis tables share: budgets, cells (one run each: render, train, evaluate), the table, CSV and plots.

A *cell* is one trained model: an object (a real set of ../shared/data such as ``ycbv_banana``, trained on that set's
mesh, or a built-in object such as ``toy``), a randomization mode and a Projection Loss weight. Its folder
``RUNS_DIR/<budget>/cells/<cell>/`` holds the training renderings, the model and the evaluation reports; ``cell.json``
(written last, with the figures) marks it finished. Cells are shared between the tables (the thesis' tables share
runs too: its per-object "toy" row is the ablation's "Complete" row and its "symmetric" row the Projection Loss
"with" row), so a cell already run for one table is not run again for another. Started again, a script skips the
finished cells and resumes a killed one (rendering and training resume themselves). The table is rebuilt from the
cells' json files; cells not run yet show as "not run".

Each table's script (``experiments.ablation``, ``experiments.projection_loss_table``, ``experiments.per_object``)
defines its rows and calls :func:`run_table`.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from experiments import common
from render import modes as render_modes
from pose_net.feature_cache import LITE0_TOP_STAGE_INPUT

FLAGS = flags.FLAGS
# Names differ from pose_net.train's and render.generate's flags (train is imported into this process).
flags.DEFINE_string("out", "docs/results", "folder for the tables (Markdown, CSV) and plots")
flags.DEFINE_string("runs_dir", "runs/experiments", "folder for the cells (BUDGET/cells/<cell>/, BUDGET/test_sets/)")
flags.DEFINE_enum("budget", "cpu", ["quick", "cpu", "gpu"], "sizes: quick (a smoke test of the whole path, "
                  "minutes), cpu (hours on a 2-core CPU), gpu (larger, for a GPU)")
flags.DEFINE_integer("num_train", 0, "training renderings per cell (0: the budget's)")
flags.DEFINE_integer("num_test", 0, "rendered test images per object (0: the budget's)")
flags.DEFINE_integer("train_epochs", 0, "training epochs per cell (0: the budget's)")
flags.DEFINE_integer("train_seed", 0, "seed of the training renderings and of training; the rendered test set "
                     "uses train_seed + 1000")
flags.DEFINE_float("crop_enlarge", 0.0, "side of the square each cell's network sees, over the 2D box's longer side "
                   "(pose_net.train --roi_enlarge); 0: the budget's (cpu: 1.2), else the trainer's default (1.4). "
                   "Recorded in cell.json when set or the budget's")
flags.DEFINE_float("projection_weight", 0.1, "lambda_projection of the cells 'with Projection Loss' (and of the "
                   "ablation and per-object cells)")

# Sizes per budget. quick: every cell runs end to end in seconds (figures mean nothing);
# cpu: a few hours for a table on 2 cores; gpu: closer to the thesis' scale.
BUDGETS = {
    "quick": dict(num_train=48, num_test=16, image_size=64, input_size=64, backbone="small", backbone_weights="none",
                  freeze_backbone=False, epochs=1, steps_per_epoch=2, batch_size=16, num_shards=2, workers=1,
                  num_pictures=4),
    # The demo's recipe (experiments/demo.py): the ImageNet backbone's stride-16 features of each training crop
    # computed once (block10_add), Lite0's last stage and the heads trained on them for 8 epochs (about 3,500
    # steps), 8 rotation hypotheses trained winner-takes-all: about 2.5 minutes of rendering, 9 of features and
    # training and 1 of evaluation on 2 quiet cores; rendered toy ADD 33% (15.5% with one rotation). The last two
    # stages on 256-pixel renderings reach 50% in 12 minutes of training but need twice the rendering
    # (docs/results/README.md, "Why rotation did not train", fifth round). Cells scored on real photos print half
    # their random textures from photos (Cell.texture_photos), in every budget where the photos are present.
    # The crop is 1.2 times the box's longer side, not the trainer's 1.4: on the real banana the 1.4 square holds
    # the neighbouring objects, and 1.2 halves the real rotation error on the same renderings and steps (twelfth
    # and thirteenth sessions, docs/results/README.md).
    "cpu": dict(num_train=16000, num_test=200, image_size=128, input_size=128, backbone="efficientnet_lite0",
                backbone_weights="imagenet", freeze_backbone=True, feature_cache=True,
                feature_cache_layer=LITE0_TOP_STAGE_INPUT, rotation_repr="6d", rotation_hypotheses=8, epochs=8,
                steps_per_epoch=0, batch_size=32, num_shards=8, workers=2, num_pictures=12, roi_enlarge=1.2),
    "gpu": dict(num_train=20000, num_test=500, image_size=256, input_size=128, backbone="efficientnet_lite0",
                backbone_weights="imagenet", freeze_backbone=False, epochs=30, steps_per_epoch=0, batch_size=64,
                num_shards=10, workers=8, num_pictures=12),
}
MODE_NAMES = {"complete": "Complete", "fixed_light": "Fixed Light", "real_background": "Real Background",
              "fixed_object": "Fixed Object", "none": "Without Randomization"}
NOT_RUN = "not run"


def sizes() -> dict:
    """The budget's sizes with the command line's overrides."""
    s = dict(BUDGETS[FLAGS.budget])
    for name, key in (("num_train", "num_train"), ("num_test", "num_test"), ("train_epochs", "epochs"),
                      ("crop_enlarge", "roi_enlarge")):
        if FLAGS[name].value:
            s[key] = FLAGS[name].value
    return s


# -------------------------------------------------------------------------------------------------------- cells
# Backbone variants of a cell (experiments.backbone_table): the same renderings, the same steps, three
# initialisations of EfficientNet-Lite0.
BACKBONE_VARIANTS = {
    "scratch": dict(backbone="efficientnet_lite0", backbone_weights="none", freeze_backbone=False),
    "frozen": dict(backbone="efficientnet_lite0", backbone_weights="imagenet", freeze_backbone=True),
    "finetuned": dict(backbone="efficientnet_lite0", backbone_weights="imagenet", freeze_backbone=False),
}


# Per-head training settings of the method table's cells: the coordinate head (batch-normed decoder, frozen
# backbone) learns faster at 3e-3 (4-minute runs on the banana: loss 0.215 against 0.242 at 1e-3); the direct head
# keeps the learning rate every other table uses.
HEAD_SETTINGS = {"direct": dict(learning_rate=1e-3), "coords": dict(learning_rate=3e-3)}
# The second stage of the coordinate head (experiments.dsac_table) fine-tunes a trained model: a tenth of the first
# stage's rate, the same for all three variants (coordinate loss continued, DSAC, NG-DSAC).
SECOND_STAGE_LEARNING_RATE = 3e-4


@dataclass
class Cell:
    obj: common.TestObject
    mode: str = "complete"
    lambda_projection: float = 0.0
    variant: str = ""  # a key of BACKBONE_VARIANTS ("": the budget's backbone)
    head: str = ""  # "direct" or "coords" with a wall-clock training budget (experiments.method_table); "": epochs
    minutes: float = 0.0  # the training budget of a head cell, minutes of wall time
    # A second training stage of the coordinate head (experiments.dsac_table): "coords" (the coordinate loss
    # alone, continued), "dsac" or "ngdsac" (through RANSAC-PnP, pose_net/dsac.py), starting from `init`'s model.
    stage: str = ""
    init: "Cell | None" = None

    @property
    def base_name(self) -> str:
        return (f"{self.obj.name}-{self.mode}-pl{self.lambda_projection:g}"
                + ("-phototex" if self.texture_photos() else ""))

    def texture_photos(self) -> Path | None:
        """The photos this cell's random object appearances cut textures from, or None.

        Cells scored on real photos (an object with a real set) whose mode randomizes the object's appearance
        (``complete``, ``fixed_light``, ``real_background``) print half of their random textures from
        ../shared/data/ycbv_backgrounds, the photos showing the object left out: on the real banana that took
        `complete` from 0% / 88 mm to 7.5% / 29 mm (real ADD / median ADD, docs/results/README.md, "Photo
        textures"). Built-in objects are scored on renderings with procedural textures and keep them; so does every
        cell when the photos are absent. Such cells are named ``...-phototex`` (their own renderings)."""
        if (self.obj.real_root is None or not backgrounds_dir().is_dir()
                or render_modes.MODES[self.mode]["object"] != "random"):
            return None
        return backgrounds_dir()

    @property
    def name(self) -> str:
        if self.init is not None:
            return f"{self.init.name}-then-{self.stage}-{self.minutes:g}min"
        return (self.base_name + (f"-{self.variant}" if self.variant else "")
                + (f"-{self.head}-{self.minutes:g}min" if self.head else ""))

    def folder(self) -> Path:
        return budget_dir() / "cells" / self.name

    def data_dir(self) -> Path:
        """The training renderings; a backbone variant trains on its base cell's (the very same images)."""
        return budget_dir() / "cells" / self.base_name / "data" / "train"

    def training(self) -> dict:
        """The budget's sizes with this cell's backbone variant applied."""
        s = sizes()
        if self.variant:
            s.update(BACKBONE_VARIANTS[self.variant])
        if not s["freeze_backbone"]:  # features change while training: nothing to cache
            s["feature_cache"] = False
            s.pop("feature_cache_layer", None)
        if self.head:  # the wall clock decides, not the epochs (the quick budget's smoke test keeps its steps)
            s.update(head=self.head, time_budget_min=self.minutes, **HEAD_SETTINGS[self.head])
            for key in ("feature_cache", "feature_cache_layer", "rotation_repr", "rotation_hypotheses"):
                # head cells train end to end
                s.pop(key, None)
            if FLAGS.budget != "quick":
                s["epochs"] = 10_000
        if self.init is not None:
            s.update(stage=self.stage, learning_rate=SECOND_STAGE_LEARNING_RATE)
        return s

    def config(self) -> dict:
        c = {"object": self.obj.name, "mesh": self.obj.mesh, "mode": self.mode,
             "lambda_projection": self.lambda_projection, "seed": FLAGS.train_seed, "budget": FLAGS.budget,
             **{k: v for k, v in self.training().items() if k not in ("workers", "num_pictures")}}
        if self.variant:
            c["variant"] = self.variant
        if photos := self.texture_photos():  # recorded only when used: the cells run before photo textures stay valid
            c["texture_photos"] = os.path.relpath(photos, common.REPO_ROOT)
        if self.init is not None:
            c["init"] = self.init.name
        return c

    def result(self) -> dict | None:
        """The figures of a finished cell; refuses a cell.json written with other settings."""
        path = self.folder() / "cell.json"
        if not path.is_file():
            return None
        done = json.loads(path.read_text())
        if done["config"] != self.config():
            raise SystemExit(f"{path} was run with other settings ({done['config']}, now {self.config()}): use "
                             f"another --runs_dir or remove that cell folder")
        return done

    def missing_input(self) -> str:
        """Why this cell cannot run here ("" when it can)."""
        if self.mode == "real_background" and not backgrounds_dir().is_dir():
            return "not run: no background photos"
        return ""

    def render_opts(self, photo_textures: bool = True) -> dict:
        """render.generate's options (its flags by name) for this cell's object and mode; ``photo_textures=False``
        leaves out :meth:`texture_photos` (the rendered test sets keep procedural textures in every cell)."""
        opts = {"mesh": self.obj.mesh, "randomization": self.mode, "obj_id": self.obj.obj_id,
                "symmetric": self.obj.symmetric or None}
        if self.mode == "real_background":
            opts["backgrounds"] = str(backgrounds_dir())
        if photo_textures and (photos := self.texture_photos()):
            opts["texture_photos"] = str(photos)
        if self.obj.real_root is not None and ("backgrounds" in opts or "texture_photos" in opts):
            opts["exclude_obj_id"] = self.obj.obj_id  # photos showing the test object are left out
        return opts


def real_set_objects(names: list[str]) -> list[tuple[str, common.TestObject]]:
    """``(real set, its object)`` for the ``--real_sets`` of a comparison table; exits naming an unknown set."""
    out = []
    for real_set in names:
        if real_set not in common.REAL_SETS:
            raise SystemExit(f"--real_sets: unknown real set {real_set!r}; known: {', '.join(common.REAL_SETS)}")
        out.append((real_set, common.resolve_object(real_set)))
    return out


def budget_dir() -> Path:
    return Path(FLAGS.runs_dir).resolve() / FLAGS.budget


def backgrounds_dir() -> Path:
    return common.SHARED_DATA / "ycbv_backgrounds"


def test_set_dir(obj: common.TestObject) -> Path:
    return budget_dir() / "test_sets" / obj.name


def render_jobs(cells: list[Cell]) -> list[dict]:
    """The datasets the unfinished cells need and do not have yet: their training sets and their objects' rendered
    test sets (render.generate's options by name)."""
    s = sizes()
    jobs = {}  # output folder -> job (cells sharing renderings or a test set render it once)
    for c in cells:
        if c.result() is not None or c.missing_input():
            continue
        common_opts = dict(image_size=s["image_size"], workers=s["workers"], progress=False)
        jobs[str(c.data_dir())] = dict(c.render_opts(), out=str(c.data_dir()), num_images=s["num_train"],
                                       seed=FLAGS.train_seed, num_shards=s["num_shards"], **common_opts)
        test_render = test_set_dir(c.obj) / "render"
        jobs[str(test_render)] = dict(Cell(c.obj).render_opts(photo_textures=False), out=str(test_render),
                                      num_images=s["num_test"], seed=FLAGS.train_seed + 1000, num_shards=1,
                                      **common_opts)
    todo = []
    for job in jobs.values():
        out = Path(job["out"])
        if not common.dataset_complete(out):
            todo.append(job)
            continue
        have = json.loads((out / "dataset.json").read_text())
        if (have.get("num_images"), have.get("num_shards")) != (job["num_images"], job["num_shards"]):
            raise SystemExit(f"{out} holds {have.get('num_images')} renderings in {have.get('num_shards')} shards, "
                             f"this budget wants {job['num_images']} in {job['num_shards']}: remove that folder "
                             f"(or the budget's cells folder) or use another --runs_dir")
    return todo


# One process renders all datasets (TensorFlow, which render.generate's writer needs, is imported once, not once per
# dataset). A separate process: render.generate's flags clash with these scripts' flags, and a process that trains
# must not create a GL context (render.generate's workers are fresh processes of their own).
_RENDER_MANY = """import json, sys
from render import generate as g
for job in json.loads(sys.argv[1]):
    opts = {n: g.FLAGS[n].default for n in g.DATA_FLAGS + g.EXECUTION_FLAGS}
    opts.update(job)
    print("render.generate " + " ".join(f"--{k}={v}" for k, v in job.items()), flush=True)
    g.generate(opts)
"""


def render_datasets(jobs: list[dict]):
    """Runs render.generate jobs (its options by name, ``out`` included) in one subprocess; each dataset resumes
    from its finished shards. Log: ``BUDGET/render.log``."""
    if jobs:
        print(f"rendering {len(jobs)} dataset(s), log: {budget_dir() / 'render.log'}", flush=True)
        common.run([sys.executable, "-c", _RENDER_MANY, json.dumps(jobs)], log=budget_dir() / "render.log")


def render_all(cells: list[Cell]):
    """Renders what the cells need (each dataset resumes from its finished shards)."""
    render_datasets(render_jobs(cells))


# The rendered lmo_models test scenes' seed (experiments.detector_table, experiments.esac_table): not one of the
# training scenes' (bop_train renders with seed 0).
LMO_TEST_SEED = 1000


def lmo_test_scenes(num_scenes: int) -> Path:
    """The rendered multi-object test scenes of ../shared/data/lmo_models (a BOP test folder, rendered once):
    LINEMOD's 640x480 camera, 2-5 objects each, `complete` randomization, seed :data:`LMO_TEST_SEED`."""
    from render.scenes import DEFAULT_CAMERA, render_scenes_in_subprocess

    test_root = budget_dir() / "test_sets" / "lmo_scenes"
    camera = test_root.parent / "lmo_scenes_camera.json"
    camera.parent.mkdir(parents=True, exist_ok=True)
    camera.write_text(json.dumps(DEFAULT_CAMERA))
    return render_scenes_in_subprocess(common.SHARED_DATA / "lmo_models", test_root,
                                       log=test_root.parent / "render.log", num_images=num_scenes, camera=camera,
                                       seed=LMO_TEST_SEED, objects_per_image=(2, 5), randomization="complete")


# What a cell keeps of pose_net.evaluate's figures (cell.json)
# The rotation's share of the real error (pose_net.evaluate): the median angle, and ADD recall with the true
# translation. On the real banana the box-fitted depth turns a 21-degree rotation error into 28 mm of translation
# error: Real Background's ADD is 12.5% with it and 77.5% with the true translation (docs/results/README.md).
ROTATION_FIGURES = ("r_err_median_deg", "add_recall_true_translation", "add_s_recall_true_translation")
KEPT_FIGURES = ("instances", "add_recall", "add_s_recall", "add_median_mm", "add_s_median_mm", "diameter_mm",
                "inlier_error_median_px") + ROTATION_FIGURES


def rendered_bop_test_set(obj: common.TestObject) -> Path:
    """The object's rendered test set as a BOP folder (exported once; depth/ added to older exports)."""
    return common.export_bop_test_set(test_set_dir(obj) / "render", test_set_dir(obj) / "bop", obj.obj_id,
                                      obj.mesh, obj.diameter_mm, obj.symmetric)


def run_cell(cell: Cell) -> dict:
    """Renders (when needed), trains, evaluates one cell; writes and returns cell.json's content."""
    from pose_net.evaluate import evaluate
    from pose_net.train import default_flag_values, train

    done = cell.result()
    if done is not None:
        print(f"cell {cell.name}: finished, skipping", flush=True)
        return done
    if cell.init is not None and cell.init.result() is None:  # a second stage starts from its first's model
        run_cell(cell.init)
    s, folder, obj = cell.training(), cell.folder(), cell.obj
    print(f"cell {cell.name}: running in {folder}", flush=True)
    # the crop (--crop_enlarge or the budget's): passed to training only when set (else the trainer's default), with a
    # feature cache of its own
    crop = {"roi_enlarge": s["roi_enlarge"]} if "roi_enlarge" in s else {}
    cache_name = f"feature_cache_{s['backbone']}_{s['input_size']}" + (f"_crop{s['roi_enlarge']:g}" if crop else "")
    t0 = time.time()
    render_all([cell])
    bop_test = rendered_bop_test_set(obj)
    train(default_flag_values(
        dataset=str(cell.data_dir()), model_dir=str(folder / "model"), backbone=s["backbone"],
        backbone_weights=s["backbone_weights"], freeze_backbone=s["freeze_backbone"], input_size=s["input_size"],
        epochs=s["epochs"],
        steps_per_epoch=s["steps_per_epoch"], batch_size=s["batch_size"], seed=FLAGS.train_seed,
        lambda_projection=cell.lambda_projection, progress=False, head=s.get("head", "direct"),
        learning_rate=s.get("learning_rate", 1e-3), rotation_repr=s.get("rotation_repr", "quaternion"),
        rotation_hypotheses=s.get("rotation_hypotheses", 1),
        feature_cache=s.get("feature_cache", False), feature_cache_layer=s.get("feature_cache_layer", ""),
        # cells on the same renderings (with and without Projection Loss) share the features of their crops
        feature_cache_dir=str(cell.data_dir().parent / cache_name), **crop,
        time_budget_min=s.get("time_budget_min", 0.0), stage=s.get("stage", "coords"),
        init_from=str(cell.init.folder() / "model") if cell.init is not None else None))
    import keras

    keras.backend.clear_session()
    keep = KEPT_FIGURES
    r = evaluate(folder / "model", bop_test, obj.obj_id, "gt", report_dir=folder / "eval_rendered",
                 num_pictures=s["num_pictures"])
    result = {"name": cell.name, "config": cell.config(), "rendered": {k: r[k] for k in keep if k in r}, "real": None,
              "note": obj.note}
    if obj.real_root is not None:
        r = evaluate(folder / "model", obj.real_root, obj.obj_id, "gt", report_dir=folder / "eval_real",
                     num_pictures=s["num_pictures"])
        result["real"] = {k: r[k] for k in keep if k in r}
    result["wall_s"] = time.time() - t0
    history = folder / "model" / "history.jsonl"
    if history.is_file():  # what the training bought: its steps and its own wall time (evaluation excluded)
        epochs = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        result["training"] = {"steps": sum(e["steps"] for e in epochs), "epochs": len(epochs),
                              "train_seconds": epochs[-1].get("train_seconds",
                                                              sum(e["epoch_time_s"] for e in epochs))}
    (folder / "cell.json").write_text(json.dumps(result, indent=1))
    return result


def add_rotation_figures(cell: Cell) -> dict | None:
    """:data:`ROTATION_FIGURES` on the real photos for a finished cell that has a real set and was scored before they
    existed: its model evaluated again on the real photos (the same figures, the same report folder, the rotation's
    added). Returns the cell's real figures (None for an unfinished cell or one without real photos)."""
    from pose_net.evaluate import evaluate

    done = cell.result()
    if done is None or not done.get("real") or all(k in done["real"] for k in ROTATION_FIGURES):
        return done and done.get("real")
    print(f"cell {cell.name}: the rotation's share of the real error", flush=True)
    r = evaluate(cell.folder() / "model", cell.obj.real_root, cell.obj.obj_id, "gt",
                 report_dir=cell.folder() / "eval_real", num_pictures=sizes()["num_pictures"])
    done["real"].update({k: r.get(k) for k in ROTATION_FIGURES})  # None: a model evaluate scores otherwise (ESAC)
    (cell.folder() / "cell.json").write_text(json.dumps(done, indent=1))
    return done["real"]


def add_rgbd_evaluation(cell: Cell) -> dict | None:
    """A finished coordinate-head cell scored on its object's rendered test set with the depth images too
    (``pose_net.evaluate --depth``: RANSAC-Kabsch); kept in its cell.json as ``rendered_rgbd``, computed once.
    Returns the figures (None for an unfinished cell)."""
    from pose_net.evaluate import evaluate

    done = cell.result()
    if done is None or "rendered_rgbd" in done:
        return done and done.get("rendered_rgbd")
    print(f"cell {cell.name}: RGB-D evaluation on the rendered test set", flush=True)
    r = evaluate(cell.folder() / "model", rendered_bop_test_set(cell.obj), cell.obj.obj_id, "gt", depth=True)
    done["rendered_rgbd"] = {k: r[k] for k in KEPT_FIGURES if k in r}
    (cell.folder() / "cell.json").write_text(json.dumps(done, indent=1))
    return done["rendered_rgbd"]


# -------------------------------------------------------------------------------------------------------- table
@dataclass
class Row:
    """One table row: the cell scored on real photos and the cell scored on its rendered test set (often the same
    cell), with the thesis' ADD / ADD-S (%) for each, when the thesis gives them."""
    label: str
    real_cell: Cell | None
    rendered_cell: Cell | None
    thesis_real: tuple | None = None
    thesis_rendered: tuple | None = None
    results: dict = field(default_factory=dict)  # "real"/"rendered" -> figures, or a string saying why none


# Recalls in %, then the median errors in mm: they still rank rows whose recalls are all near 0.
# Then the rotation's share of the real error (ROTATION_FIGURES): ADD (ADD-S for a symmetric object) with the true
# translation, and the median rotation angle (for a symmetric object it counts the turn about its axis too).
COLUMNS = ["real ADD", "real ADD-S", "thesis real ADD", "thesis real ADD-S", "real median ADD mm",
           "real median ADD-S mm", "real ADD(-S) with true t", "real median rotation error deg", "rendered ADD",
           "rendered ADD-S", "thesis rendered ADD", "thesis rendered ADD-S",
           "rendered median ADD mm", "rendered median ADD-S mm"]


def collect(rows: list[Row]):
    """Fills each row's figures from its cells' cell.json files."""
    for row in rows:
        for kind, cell in (("real", row.real_cell), ("rendered", row.rendered_cell)):
            done = cell.result() if cell else None
            if cell is None:
                row.results[kind] = "no real set"
            elif done is None:
                row.results[kind] = cell.missing_input() or NOT_RUN
            elif done[kind] is None:
                row.results[kind] = done.get("note") or "no real photos"
            else:  # (with add_rgbd_evaluation's figures, when the cell has them, as "rgbd")
                row.results[kind] = dict(done[kind], cell=cell.name, wall_s=done["wall_s"],
                                         **({"rgbd": done["rendered_rgbd"]}
                                            if kind == "rendered" and done.get("rendered_rgbd") else {}))


def _pct(v) -> str:
    return f"{100 * v:.1f}"


def row_values(row: Row) -> list[str]:
    out = []
    for kind, thesis in (("real", row.thesis_real), ("rendered", row.thesis_rendered)):
        r = row.results[kind]
        out += [_pct(r["add_recall"]), _pct(r["add_s_recall"])] if isinstance(r, dict) else [r, r]
        out += [f"{v:.1f}" for v in thesis] if thesis else ["-", "-"]
        out += [f"{r['add_median_mm']:.1f}", f"{r['add_s_median_mm']:.1f}"] if isinstance(r, dict) else [r, r]
        if kind == "real":  # ADD-S with the true translation for a symmetric object, else ADD
            have = isinstance(r, dict) and all(r.get(k) is not None for k in ROTATION_FIGURES)
            if have:
                symmetric = row.real_cell.obj.symmetric
                out += [_pct(r["add_s_recall_true_translation" if symmetric else "add_recall_true_translation"]),
                        f"{r['r_err_median_deg']:.1f}"]
            else:
                out += [r if isinstance(r, str) else "-"] * 2
    return out


def write_outputs(table: str, title: str, rows: list[Row], intro: str, wall_s: float, extra_notes: list[str],
                  verbose: bool = False, extra_columns=()):
    """``OUT/<table>.md``, ``.csv``, ``_bars.png`` and ``_curves_<real|rendered>.png``. ``extra_columns``:
    ``(name, fn(row) -> str)`` pairs appended to :data:`COLUMNS`."""
    columns = COLUMNS + [name for name, _ in extra_columns]

    def values(row: Row) -> list[str]:
        return row_values(row) + [fn(row) for _, fn in extra_columns]

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    collect(rows)
    s = sizes()
    with open(out / f"{table}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row"] + columns + ["real cell", "rendered cell"])
        for row in rows:
            w.writerow([row.label] + values(row) + [row.real_cell.name if row.real_cell else "",
                                                        row.rendered_cell.name if row.rendered_cell else ""])
    plots = [plot_bars(out / f"{table}_bars.png", title, rows)]
    plots += [p for kind in ("real", "rendered") if (p := plot_curves(out / f"{table}_curves_{kind}.png", title, rows,
                                                                         kind))]
    cell_time = sum({r["cell"]: r["wall_s"] for row in rows for r in row.results.values()  # each cell once
                     if isinstance(r, dict)}.values())
    lines = [f"# {title}", "", intro, "",
             "ADD / ADD-S: % of poses within 10% of the object diameter (ground-truth 2D boxes); median ADD / ADD-S mm: "
             "the median error, which still ranks rows whose recalls are near 0; real ADD(-S) with true t and the "
             "median rotation error: the rotation's share of the real error (the translation fitted into the box "
             "turns a rotation error into a depth error). \"real\": the real "
             "photos of ../shared/data (a few distinct viewpoints each: a check of sim-to-real transfer, not a "
             "benchmark); \"rendered\": a test set rendered in `complete` mode with another seed. "
             "\"not run\": the cell has not been run yet.", "",
             "| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {row.label} | " + " | ".join(values(row)) + " |" for row in rows]
    lines += ["", "## How this was made", "",
              f"- Command: `python -m experiments.{table} {' '.join(shlex.quote(a) for a in sys.argv[1:])}`",
              f"- Budget `{FLAGS.budget}`: {json.dumps(s)}",
              f"- Seeds: training renderings and training {FLAGS.train_seed}, rendered test sets "
              f"{FLAGS.train_seed + 1000}; Projection Loss weight {FLAGS.projection_weight:g} where used",
              f"- Wall time: the cells' own runs {cell_time / 60:.1f} min in all; this invocation {wall_s / 60:.1f} min "
              f"(finished cells are not run again)",
              f"- Machine: {common.machine_description()}",
              f"- Cells: `{os.path.relpath(budget_dir(), common.REPO_ROOT)}/cells/`"] + [f"- {n}" for n in extra_notes]
    if FLAGS.budget == "quick":
        lines.append("- **quick budget: a smoke test of the pipeline; its figures mean nothing.**")
    elif (out / "README.md").is_file():
        lines.append("- What these figures say, beside the thesis: [README.md](README.md) (written by hand)")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / f"{table}.md").write_text("\n".join(lines) + "\n")
    if verbose:
        print("\n".join(lines), flush=True)
    print(f"written {out / (table + '.md')}", flush=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(path: Path, title: str, rows: list[Row]) -> Path:
    """Grouped bars per row: ours vs the thesis, ADD and ADD-S, real and rendered side by side."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    x = np.arange(len(rows))
    for ax, kind in zip(axes, ("real", "rendered")):
        series = []
        for k, metric in enumerate(("ADD", "ADD-S")):
            ours = [100 * r.results[kind][("add_recall", "add_s_recall")[k]] if isinstance(r.results[kind], dict)
                    else np.nan for r in rows]
            theirs = [(getattr(r, f"thesis_{kind}") or (np.nan, np.nan))[k] for r in rows]
            series += [(f"ours {metric}", ours), (f"thesis {metric}", theirs)]
        width = 0.8 / len(series)
        for j, (label, values) in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * width, values, width, label=label,
                   hatch="//" if label.startswith("thesis") else None, alpha=0.85)
        ax.set_xticks(x, [r.label for r in rows], rotation=20, ha="right")
        ax.set_title(f"{kind} test images")
        ax.set_ylim(0, 118)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("correct poses (%, 10% of diameter)")
    axes[1].legend(fontsize=7, ncol=4, loc="upper center")
    fig.suptitle(f"{title} (missing bars: not run / not given)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(path: Path, title: str, rows: list[Row], kind: str) -> Path | None:
    """Accuracy vs threshold per row, from the cells' evaluation reports (ADD-S for symmetric objects, else ADD)."""
    from pose_core import metrics

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for row in rows:
        r = row.results[kind]
        if not isinstance(r, dict):
            continue
        per_instance = Path(budget_dir() / "cells" / r["cell"] / f"eval_{kind}" / "per_instance.json")
        if not per_instance.is_file():
            continue
        cell = row.real_cell if kind == "real" else row.rendered_cell
        key, metric = ("add_s_mm", "ADD-S") if cell.obj.symmetric else ("add_mm", "ADD")
        errors = [e[key] for e in json.loads(per_instance.read_text())]
        th, acc = metrics.accuracy_vs_threshold(errors, r["diameter_mm"])
        ax.plot(100 * th, 100 * acc, label=f"{row.label} ({metric})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.axvline(10, color="gray", ls=":", lw=1)
    ax.set_ylim(0, 100)
    ax.set_xlabel("threshold (% of diameter)")
    ax.set_ylabel("correct poses (%)")
    ax.set_title(f"{title}: {kind} test images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def require_backbone_weights(cells: list[Cell]):
    """Refuses to start cells that ask for ImageNet weights that cannot be had (a frozen random backbone would train
    and mean nothing). The quick budget, a smoke test, goes on with random initialisation (one printed line)."""
    if FLAGS.budget == "quick" or not any(c.training()["backbone_weights"] == "imagenet" for c in cells):
        return
    from pose_net.backbones.efficientnet_lite import ensure_pretrained_weights

    if ensure_pretrained_weights(verbose=False) is None:
        raise SystemExit(f"budget {FLAGS.budget} needs the EfficientNet-Lite0 ImageNet weights: install them with "
                         f"`make pretrained` (converted once, then cached), or use --budget quick")


def run_table(table: str, title: str, rows: list[Row], intro: str, notes: list[str] = (), extra_columns=(),
              after_cell=None):
    """Runs the rows' unfinished cells (rendering all first), rewriting the table after each cell.
    ``after_cell(cell)``: more work on each finished cell (run once the cells are done, also on cells finished by
    an earlier invocation), e.g. :func:`add_rgbd_evaluation`."""
    t0 = time.time()
    cells = {c.name: c for row in rows for c in (row.real_cell, row.rendered_cell) if c is not None}
    write_outputs(table, title, rows, intro, time.time() - t0, list(notes), extra_columns=extra_columns)
    todo = [c for c in cells.values() if c.result() is None]
    require_backbone_weights(todo)
    print(f"{table}: {len(cells) - len(todo)} of {len(cells)} cells already finished (skipped)", flush=True)
    skipped = [c for c in todo if c.missing_input()]
    for c in skipped:
        print(f"cell {c.name}: {c.missing_input()}", flush=True)
    todo = [c for c in todo if c not in skipped]
    notes = list(notes) + [f"`{c.name}` not run: needs the real background photos of {backgrounds_dir()}"
                           for c in skipped]
    if todo:
        render_all(todo)
    for c in todo:
        run_cell(c)
        write_outputs(table, title, rows, intro, time.time() - t0, list(notes), extra_columns=extra_columns)
    for c in cells.values():
        if c.result() is not None:
            add_rotation_figures(c)
            if after_cell is not None:
                after_cell(c)
    write_outputs(table, title, rows, intro, time.time() - t0, list(notes), verbose=True, extra_columns=extra_columns)
