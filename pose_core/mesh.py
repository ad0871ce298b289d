"""Loading object meshes in millimetres, with clear errors for broken input.

Any file trimesh can read works (PLY with vertex colours, OBJ with a texture, STL, GLB, ...). A scene with several
geometries is merged into one mesh. Units: the project works in millimetres; a mesh whose diameter is below
:data:`MIN_DIAMETER_MM` almost certainly is in metres, and is refused unless the caller scales it (``mesh_scale``).
"""

from __future__ import annotations

import os

import numpy as np

from pose_core import PoseInputError

# An object smaller than this (in the file's units read as mm) is most likely modelled in metres.
MIN_DIAMETER_MM = 5.0
MESH_SCALE_FLAG = "--mesh_scale"


class MeshError(PoseInputError):
    """A mesh file that cannot be used; the message names the file and the problem."""


def load_mesh(path: str, mesh_scale: float = 1.0, check_units: bool = True):
    """Loads ``path`` as one ``trimesh.Trimesh`` in millimetres.

    Args:
      path: a mesh file trimesh can read.
      mesh_scale: multiplies the vertex coordinates (1000 for a file in metres).
      check_units: refuse meshes whose diameter (after scaling) is below ``MIN_DIAMETER_MM``.
    Raises:
      MeshError: missing, empty or unreadable file, no faces, non-finite vertices, or metre-sized.
    """
    import trimesh

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeshError(f"mesh file {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise MeshError(f"mesh file {path!r} is empty")
    if not (mesh_scale > 0 and np.isfinite(mesh_scale)):
        raise MeshError(f"{MESH_SCALE_FLAG} must be a positive number, got {mesh_scale}")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as e:  # trimesh raises many kinds of errors for bad files
        raise MeshError(f"mesh file {path!r} could not be read as a mesh: {type(e).__name__}: {e}") from None
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
        if not geoms:
            raise MeshError(f"mesh file {path!r} holds no triangle mesh")
        loaded = geoms[0] if len(geoms) == 1 else trimesh.util.concatenate(geoms)
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError(f"mesh file {path!r} is not a triangle mesh (trimesh read a {type(loaded).__name__})")
    if len(loaded.vertices) == 0:
        raise MeshError(f"mesh file {path!r} has no vertices")
    if len(loaded.faces) == 0:
        raise MeshError(f"mesh file {path!r} has no faces (a point cloud is not enough to render)")
    if not np.all(np.isfinite(loaded.vertices)):
        raise MeshError(f"mesh file {path!r} has non-finite vertex coordinates")
    if mesh_scale != 1.0:
        loaded.apply_scale(mesh_scale)
    if check_units:
        diameter = mesh_diameter(loaded)
        if diameter < MIN_DIAMETER_MM:
            raise MeshError(
                f"mesh file {path!r} is only {diameter:.4g} units across: it looks like it is in metres, but "
                f"millimetres are expected. Pass {MESH_SCALE_FLAG}=1000 to convert it."
            )
    return loaded


def mesh_diameter(mesh) -> float:
    """The largest distance between two vertices (BOP's ``diameter``), in mesh units (mm)."""
    from scipy.spatial.distance import pdist

    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    try:
        vertices = np.asarray(mesh.convex_hull.vertices, dtype=np.float64)
    except Exception:  # degenerate (flat) meshes have no 3D hull: fall back to all vertices
        pass
    if len(vertices) > 5000:
        vertices = vertices[np.random.default_rng(0).choice(len(vertices), 5000, replace=False)]
    return float(pdist(vertices).max()) if len(vertices) > 1 else 0.0


def models_info_entry(mesh) -> dict:
    """The ``models_info.json`` record of a mesh in mm: diameter, min_x/y/z and size_x/y/z."""
    lo = mesh.vertices.min(axis=0)
    size = mesh.vertices.max(axis=0) - lo
    return {
        "diameter": mesh_diameter(mesh),
        "min_x": float(lo[0]), "min_y": float(lo[1]), "min_z": float(lo[2]),
        "size_x": float(size[0]), "size_y": float(size[1]), "size_z": float(size[2]),
    }
