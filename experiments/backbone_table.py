"""What ImageNet pretraining does to sim-to-real accuracy: EfficientNet-Lite0 trained from scratch, pretrained and
frozen, pretrained and fine-tuned, on the same renderings for the same number of steps, scored on each real set.

    python -m experiments.backbone_table --out docs/results [--budget quick|cpu|gpu] [--train_epochs 6] [--real_sets ycbv_can]

One row per real set of ../shared/data and variant (tables.BACKBONE_VARIANTS). The three variants of a real set train
on the very same renderings: those of the set's `complete` cell with the Projection Loss, the cell the per-object
table uses. The real column is the set's photos; the rendered column is a test set rendered from the same mesh.
See experiments/tables.py for the cells, resuming and the outputs.
"""

from __future__ import annotations

from absl import app, flags

from experiments import common, tables

flags.DEFINE_list("real_sets", list(common.REAL_SETS), "real sets of ../shared/data to compare the variants on")
FLAGS = tables.FLAGS


def rows() -> list[tables.Row]:
    out = []
    for _, obj in tables.real_set_objects(FLAGS.real_sets):
        for variant in tables.BACKBONE_VARIANTS:
            cell = tables.Cell(obj, "complete", FLAGS.projection_weight, variant)
            out.append(tables.Row(f"{obj.name} {variant}", cell if obj.real_root else None, cell))
    return out


def main(argv):
    del argv
    variants = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in opts.items())}"
                         for name, opts in tables.BACKBONE_VARIANTS.items())
    tables.run_table(
        "backbone_table", "Backbone initialisation", rows(),
        "EfficientNet-Lite0 from scratch, ImageNet-pretrained and frozen (weights and batch-norm statistics), "
        "ImageNet-pretrained and fine-tuned (batch-norm statistics frozen), trained on the same renderings of each "
        "real set's mesh (`complete` mode, Projection Loss) for the same number of steps. The thesis has no such "
        "table.", [f"Variants (they replace the budget's backbone settings): {variants}"])


if __name__ == "__main__":
    app.run(main)
