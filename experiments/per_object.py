"""The thesis' per-object table: toy, box and symmetric object, trained in `complete` mode with the Projection Loss.

    python -m experiments.per_object --out docs/results [--budget quick|cpu|gpu]

Real column: models trained on the real sets' meshes (ycbv_banana, ycbv_box, ycbv_can), scored on their photos.
Rendered column: models trained on the built-in toy / box / symmetric objects, scored on their rendered test sets.
The toy (banana) and symmetric (can) real cells are the ablation's Complete and the Projection Loss table's "with"
cells: run there, they are not run again. See experiments/tables.py.
"""

from __future__ import annotations

from absl import app

from experiments import common, tables

FLAGS = tables.FLAGS


def rows() -> list[tables.Row]:
    out = []
    for real_set, (_, kind) in common.REAL_SETS.items():
        real = common.resolve_object(real_set)
        real_cell = tables.Cell(real, "complete", FLAGS.projection_weight) if real.real_root else None
        rendered_cell = tables.Cell(common.resolve_object(kind), "complete", FLAGS.projection_weight)
        out.append(tables.Row(f"{kind} (real: {real_set})", real_cell, rendered_cell, common.THESIS[kind], None))
    return out


def main(argv):
    del argv
    absent = not (common.SHARED_DATA).is_dir()
    tables.run_table(
        "per_object", "Per object", rows(),
        "Each object trained in `complete` mode with the Projection Loss. Real: trained on the real set's own mesh, "
        "scored on its photos; rendered: the built-in object of the same kind on its rendered test set. The thesis "
        "gives real figures only.",
        [f"{common.SHARED_DATA} is absent: no real column"] if absent else [])


if __name__ == "__main__":
    app.run(main)
