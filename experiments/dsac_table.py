"""The coordinate head trained through RANSAC-PnP (DSAC, NG-DSAC) against its coordinate loss alone.

    python -m experiments.dsac_table --out docs/results [--budget quick|cpu|gpu] [--first_stage_minutes 10]
        [--second_stage_minutes 5] [--real_sets ycbv_banana,ycbv_box,ycbv_can]

Per real set of ../shared/data, on the same renderings of its mesh (`complete` mode):

* stage 1: the coordinate head trained on its coordinate and mask losses for ``--first_stage_minutes``;
* then, each from that model and for ``--second_stage_minutes`` at the same learning rate: the coordinate loss
  alone, continued (the baseline at equal total training time); + DSAC's expected pose loss through RANSAC-PnP;
  + NG-DSAC (DSAC, and the sampling weights learned by NG-RANSAC's policy gradient); + DSAC RGB-D (the expected
  pose loss of hypotheses made from the crops' depth, for RGB-D cameras). See pose_net/dsac.py.

Columns beyond the other tables': the median over test images of the inliers' mean reprojection error (pixels of
the 64x64 coordinate grid) on real photos and renderings (DSAC's claim: end-to-end training lowers it), and each
cell's training minutes; every cell scored on the rendered test set with its depth images too (RANSAC-Kabsch,
``pose_net.evaluate --depth``), the real sets having none. The real NG-DSAC cell's overlays (``eval_real/``) show the learned sampling weights beside
the coordinate maps. Resumable like every table (experiments/tables.py).
"""

from __future__ import annotations

from absl import app, flags

from experiments import common, tables

flags.DEFINE_float("first_stage_minutes", 10.0, "wall-clock training of the coordinate-loss stage, minutes")
flags.DEFINE_float("second_stage_minutes", 5.0, "wall-clock training of each second stage, minutes")
flags.DEFINE_list("real_sets", list(common.REAL_SETS), "real sets of ../shared/data")
FLAGS = tables.FLAGS
SECOND_STAGES = (("coords", "coordinate loss only"), ("dsac", "+ DSAC"), ("ngdsac", "+ NG-DSAC"),
                 ("dsac_rgbd", "+ DSAC RGB-D"))


def rows() -> list[tables.Row]:
    out = []
    for real_set, obj in tables.real_set_objects(FLAGS.real_sets):
        kind = common.REAL_SETS[real_set][1]
        # the coordinate head has no pose output to draw: no Projection Loss, whatever --projection_weight says
        first = tables.Cell(obj, "complete", 0.0, head="coords", minutes=FLAGS.first_stage_minutes)
        thesis = common.THESIS[kind] if obj.real_root else None
        out.append(tables.Row(f"{obj.name} stage 1 ({FLAGS.first_stage_minutes:g} min)",
                              first if obj.real_root else None, first, thesis))
        for stage, label in SECOND_STAGES:
            cell = tables.Cell(obj, "complete", 0.0, head="coords", minutes=FLAGS.second_stage_minutes,
                               stage=stage, init=first)
            out.append(tables.Row(f"{obj.name} {label}", cell if obj.real_root else None, cell, thesis))
    return out


def _inlier_error(kind: str):
    def value(row: tables.Row) -> str:
        r = row.results.get(kind)
        if not isinstance(r, dict) or r.get("inlier_error_median_px") is None:
            return "-"
        return f"{r['inlier_error_median_px']:.2f}"
    return value


def _rgbd(key: str, percent: bool):
    def value(row: tables.Row) -> str:
        rendered = row.results.get("rendered")
        r = rendered.get("rgbd") if isinstance(rendered, dict) else None
        if not r:
            return "-"
        return f"{100 * r[key]:.1f}" if percent else f"{r[key]:.1f}"
    return value


def _training_minutes(row: tables.Row) -> str:
    cell = row.rendered_cell
    done = cell.result() if cell else None
    if not done or "training" not in done:
        return "-"
    own = done["training"]["train_seconds"] / 60
    first = cell.init.result() if cell.init is not None else None
    if first and "training" in first:
        return f"{first['training']['train_seconds'] / 60:.1f} + {own:.1f}"
    return f"{own:.1f}"


def main(argv):
    del argv
    tables.run_table(
        "dsac_table", "DSAC: the coordinate head trained through RANSAC-PnP", rows(),
        f"Per real set, on the same renderings of its mesh: the coordinate head trained on its coordinate loss for "
        f"{FLAGS.first_stage_minutes:g} minutes (stage 1), then from that model for "
        f"{FLAGS.second_stage_minutes:g} more minutes each: the coordinate loss alone (the baseline at equal total "
        f"time), + DSAC's expected pose loss (pose_net/dsac.py), + NG-DSAC (learned sampling weights), + DSAC's "
        f"RGB-D loss (for RGB-D cameras). The thesis "
        f"column is its direct network's figure for the object of the same kind on its own photos.",
        ["Inlier px: the median over test images of the inliers' mean reprojection error under the estimated "
         "pose, in pixels of the coordinate grid (half the crop's resolution).",
         "Training min: the cell's own training wall time (second stages: stage 1 + their own).",
         "The NG-DSAC cells' evaluation pictures (`eval_real/`, `eval_rendered/` in the cell folders) show the "
         "learned sampling weights beside the coordinate maps.",
         "Rendered RGB-D: the same cell on the rendered test set with its depth images (`pose_net.evaluate "
         "--depth`: RANSAC-Kabsch on 3D-3D correspondences; the renderer gives depth on the object only, the rest "
         "is a wall one diameter behind it, experiments/common.py). The real sets have no depth.",
         "+ DSAC RGB-D: the RGB-D form of the expected pose loss (hypotheses from three camera-space points of the "
         "crop's depth, `--stage dsac_rgbd`), for RGB-D cameras: compare its RGB-D columns."],
        extra_columns=[("real inlier px", _inlier_error("real")), ("rendered inlier px", _inlier_error("rendered")),
                       ("rendered RGB-D ADD", _rgbd("add_recall", True)),
                       ("rendered RGB-D ADD-S", _rgbd("add_s_recall", True)),
                       ("rendered RGB-D median ADD mm", _rgbd("add_median_mm", False)),
                       ("training min", _training_minutes)],
        after_cell=tables.add_rgbd_evaluation)


if __name__ == "__main__":
    app.run(main)
