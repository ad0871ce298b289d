"""Shared foundation: geometry, the BOP dataset format, meshes, metrics and the built-in objects.

Nothing here imports TensorFlow, so the renderer and the tools can use it without loading TF.
"""


class PoseInputError(ValueError):
    """Bad input from a user (a file, a flag, an array): the message names the thing and the problem."""


def shared_data_dir():
    """The real-data folder: ``$SYNTHPOSE_SHARED_DATA``, else ``shared/data`` beside the repository checkout
    (scanned models, small real test sets, background photos; see its README). It may be absent."""
    import os
    from pathlib import Path

    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("SYNTHPOSE_SHARED_DATA", default))


def write_json_atomic(path, data, indent=None):
    """Writes ``data`` as JSON to ``path`` through a temporary file: a killed run leaves the old file or the new one,
    never half of one."""
    import json
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    tmp.replace(path)
