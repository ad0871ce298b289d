"""Direct regression (the thesis' network) against dense object coordinates + RANSAC-PnP, head to head.

    python -m experiments.method_table --out docs/results [--budget quick|cpu|gpu] [--minutes_per_cell 20]

One pair of rows per real set of ../shared/data: the ``direct`` head (box, rotation and translation regressed,
with the Projection Loss) and the ``coords`` head (object coordinates and mask per pixel, the pose by
``tf_ops.ransac_pnp``), trained on the SAME renderings of the set's mesh (`complete` mode), from the same backbone
initialisation, for the same wall-clock training time (``--minutes_per_cell``; the learning rate follows a cosine
over that time). Real column: the set's photos with ground-truth boxes; rendered column: a test set rendered from
the same mesh with another seed. See experiments/tables.py for the cells, resuming and the outputs.
"""

from __future__ import annotations

from absl import app, flags

from experiments import common, tables

flags.DEFINE_float("minutes_per_cell", 20.0, "wall-clock training time of each cell, minutes")
flags.DEFINE_list("real_sets", list(common.REAL_SETS), "real sets of ../shared/data to compare the heads on")
FLAGS = tables.FLAGS
HEADS = ("coords", "direct")


def rows() -> list[tables.Row]:
    out = []
    for real_set, obj in tables.real_set_objects(FLAGS.real_sets):
        kind = common.REAL_SETS[real_set][1]
        for head in HEADS:
            cell = tables.Cell(obj, "complete", FLAGS.projection_weight, head=head, minutes=FLAGS.minutes_per_cell)
            out.append(tables.Row(f"{obj.name} {head}", cell if obj.real_root else None, cell,
                                  common.THESIS[kind] if obj.real_root else None))
    return out


def main(argv):
    del argv
    tables.run_table(
        "method_table", "Direct regression vs object coordinates + RANSAC-PnP", rows(),
        f"Each real set's mesh rendered once (`complete` mode); on those very renderings the thesis' `direct` network "
        f"(with the Projection Loss, weight {FLAGS.projection_weight:g}) and the `coords` network (dense object "
        f"coordinates + mask, pose by RANSAC-PnP) each train for {FLAGS.minutes_per_cell:g} minutes of wall time "
        f"from the same backbone initialisation. The thesis column is its figure for the object of the same kind "
        f"on its own real photos.",
        ["Training steps per cell (what each head's wall-clock budget bought): the cells' `cell.json`, key "
         "`training`.", "The coordinate head ignores the Projection Loss weight (it has no pose output to draw); "
         "it shares the cell name's `pl` only to train on the same renderings."])


if __name__ == "__main__":
    app.run(main)
