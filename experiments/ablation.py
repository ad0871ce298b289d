"""The thesis' domain randomization ablation: one model per randomization mode, ADD / ADD-S on real photos and on a
rendered test set, beside the thesis' figures.

    python -m experiments.ablation --out docs/results [--budget quick|cpu|gpu] [--object ycbv_banana]

Every mode trains on renderings of the object's mesh (the real set's own scan for ``ycbv_*``). Real Background
renders onto the photos of ../shared/data/ycbv_backgrounds that do not show the object. See experiments/tables.py
for the cells, resuming and the outputs.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import common, tables

flags.DEFINE_string("object", "ycbv_banana", "a real set of ../shared/data (ycbv_banana, ycbv_box, ycbv_can) or a "
                    "built-in object (toy, box, symmetric)")
FLAGS = flags.FLAGS

# Thesis, ADD / ADD-S in %: (real images, synthetic images) per mode
THESIS = {
    "complete": ((43.9, 48.7), (67.8, 71.9)),
    "fixed_light": ((21.7, 29.6), (78.4, 81.3)),
    "real_background": ((24.3, 27.0), (81.3, 84.7)),
    "fixed_object": ((41.2, 44.7), (72.5, 76.9)),
    "none": ((0.0, 0.0), (81.3, 84.7)),
}


def rows() -> list[tables.Row]:
    obj = common.resolve_object(FLAGS.object)
    out = []
    for mode, (real, synthetic) in THESIS.items():
        cell = tables.Cell(obj, mode, FLAGS.projection_weight)
        out.append(tables.Row(tables.MODE_NAMES[mode], cell, cell, real, synthetic))
    return out


def main(argv):
    del argv
    r = rows()
    obj = r[0].real_cell.obj
    tables.run_table(
        "ablation", "Domain randomization ablation", r,
        f"One model per randomization mode, trained on renderings of `{obj.name}` ({os.path.relpath(obj.mesh, common.REPO_ROOT)}), scored on its real "
        f"photos and on a rendered test set of the same mesh. Thesis: its toy object (real) and its synthetic test "
        f"set.", [obj.note] if obj.note else [])


if __name__ == "__main__":
    app.run(main)
