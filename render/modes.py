"""The randomization modes of the ablation: which axis each mode randomizes. THE one table."""

from __future__ import annotations

from pose_core import PoseInputError

# axis -> value per mode.
#   background: "random" (procedural), "real" (random crops of photos from --backgrounds), "plain" (one fixed grey)
#   object:     "random" (random colour / procedural texture / material), "own" (the mesh's own colours/texture)
#   light:      "random" (number, type, direction, colour, intensity, ambient), "fixed" (one fixed rig)
#   noise:      True: image noise, blur and colour jitter; False: the clean rendering
# Pose is randomized in every mode (a dataset of one pose teaches nothing); distractors are the separate
# --distractors switch.
AXES = ("background", "object", "light", "noise")
MODES = {
    "complete":        {"background": "random", "object": "random", "light": "random", "noise": True},
    "fixed_light":     {"background": "random", "object": "random", "light": "fixed",  "noise": True},
    "real_background": {"background": "real",   "object": "random", "light": "random", "noise": True},
    "fixed_object":    {"background": "random", "object": "own",    "light": "random", "noise": True},
    "none":            {"background": "plain",  "object": "own",    "light": "fixed",  "noise": False},
}


def mode_axes(mode: str) -> dict:
    """The axis table row of ``mode``; a clear error naming the valid modes otherwise."""
    if mode not in MODES:
        raise PoseInputError(f"unknown randomization mode {mode!r}; choose one of {', '.join(MODES)}")
    return dict(MODES[mode])


def markdown_table() -> str:
    """The mode table as Markdown (docs/render.md carries a copy)."""
    lines = ["| mode | " + " | ".join(AXES) + " |", "|---" * (len(AXES) + 1) + "|"]
    for mode, row in MODES.items():
        lines.append(f"| `{mode}` | " + " | ".join(str(row[a]) for a in AXES) + " |")
    return "\n".join(lines)
