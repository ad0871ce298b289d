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
