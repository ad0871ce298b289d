"""Shared foundation: geometry, the BOP dataset format, meshes, metrics and the built-in objects.

Nothing here imports TensorFlow, so the renderer and the tools can use it without loading TF.
"""


class PoseInputError(ValueError):
    """Bad input from a user (a file, a flag, an array): the message names the thing and the problem."""
