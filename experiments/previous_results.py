"""Figures of a table's last JSON kept when the runs behind them are not on this machine.

A table (experiments/detector_table.py) is remade on a machine that may lack some of the runs it scores: the
``bop_train`` run of lmo_models, the per-object and DSAC tables' pose models (hours of CPU each). Their figures are
then carried over from the table's previous JSON, each marked with where it came from, rather than dropped.
Plain functions of a JSON file: no flags, so tests import them beside any other module.
"""

from __future__ import annotations

import json
from pathlib import Path

from pose_net.evaluate import report_path


def previous_lmo_result(previous_json: Path, run: str) -> dict | None:
    """The LMO section of the table's last JSON when it scored ``run`` and that run is no longer on this machine
    (its folder is hours of CPU: the figures are kept, marked as carried over, rather than dropped)."""
    try:
        lmo = json.loads(previous_json.read_text()).get("lmo")
    except (OSError, ValueError):
        return None
    if not lmo or lmo.get("run") != run:
        return None
    print(f"{run}: not here; the LMO section is carried over from {report_path(previous_json)}")
    return dict(lmo, carried_over_from=report_path(previous_json))


def previous_pose_rows(previous_json: Path, real_set: str) -> list[dict]:
    """The pose rows of ``real_set`` in the table's last JSON, for when the other tables' pose models are not on this
    machine (their runs are hours of CPU): kept and marked as carried over, with the detector they were scored
    with (its training images and epochs), rather than dropped. No rows when that JSON is absent or broken."""
    try:
        sets = json.loads(previous_json.read_text()).get("real_sets", [])
        entry = next((r for r in sets if r.get("real_set") == real_set), None)
    except (OSError, ValueError, AttributeError):
        return []
    if not entry or not entry.get("poses"):
        return []
    print(f"{real_set}: no pose model here; its pose rows are carried over from {report_path(previous_json)}")
    then = entry.get("detector", {})
    mark = {"carried_over_from": report_path(previous_json),
            "detector_then": {k: then.get(k) for k in ("images", "epochs")}}
    return [p if p.get("carried_over_from") else dict(p, **mark) for p in entry["poses"]]
