"""The thesis' Projection Loss table: the symmetric object trained without (lambda_projection 0) and with it.

    python -m experiments.projection_loss_table --out docs/results [--budget quick|cpu|gpu] [--projection_weight 0.1]

Real column: models trained on the ycbv_can mesh (rendered as symmetric), scored on its photos. Rendered column:
models trained on the built-in ``symmetric`` object, scored on its rendered test set. See experiments/tables.py.
"""

from __future__ import annotations

from absl import app

from experiments import common, tables

FLAGS = tables.FLAGS
THESIS = {"without": (34.5, 51.0), "with": (36.2, 60.7)}  # ADD / ADD-S %, real symmetric object


def rows() -> list[tables.Row]:
    real, rendered = common.resolve_object("ycbv_can"), common.resolve_object("symmetric")
    out = []
    for label, weight in (("without Projection Loss", 0.0), ("with Projection Loss", FLAGS.projection_weight)):
        real_cell = tables.Cell(real, "complete", weight) if real.real_root else None
        out.append(tables.Row(label, real_cell, tables.Cell(rendered, "complete", weight),
                              THESIS[label.split()[0]], None))
    return out


def main(argv):
    del argv
    real = common.resolve_object("ycbv_can")
    tables.run_table(
        "projection_loss_table", "Projection Loss", rows(),
        f"The symmetric object trained without (lambda_projection 0) and with the Projection Loss (lambda_projection "
        f"{FLAGS.projection_weight:g}). Real: trained on the ycbv_can mesh, scored on its photos; rendered: the "
        f"built-in `symmetric` object on its rendered test set. The thesis gives real figures only.",
        [real.note] if real.note else [])


if __name__ == "__main__":
    app.run(main)
