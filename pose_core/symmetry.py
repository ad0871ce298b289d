"""Object symmetries in BOP form: which poses of a model look the same.

BOP's ``models_info.json`` declares them per object:

* ``symmetries_discrete``: a list of 4x4 row-major model-to-model transforms ``S`` (rotation, translation in mm) with
  ``S(model) = model``;
* ``symmetries_continuous``: a list of ``{"axis": [3], "offset": [3] mm}``: the model is unchanged by any rotation
  about the line through ``offset`` along ``axis``.

Two poses ``P`` and ``P @ S`` of a symmetric model give the same image, and the pixel that shows model point ``x``
under ``P`` shows ``S^-1 x`` under ``P @ S``. The coordinate head uses this to give every image ONE target
(:func:`pose_net.coordinates.canonical_symmetry_transform`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pose_core import PoseInputError


@dataclass
class Symmetries:
    """``discrete [K, 4, 4]`` transforms (the identity not included) and ``continuous``: a list of
    ``(axis [3] unit, offset_mm [3])``. At most one continuous axis is supported (every BOP object has 0 or 1)."""
    discrete: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    continuous: list = field(default_factory=list)

    @property
    def is_symmetric(self) -> bool:
        return len(self.discrete) > 0 or len(self.continuous) > 0

    def to_json(self) -> dict:
        return {"discrete": np.asarray(self.discrete).reshape(-1, 16).tolist(),
                "continuous": [{"axis": list(map(float, a)), "offset": list(map(float, o))}
                               for a, o in self.continuous]}

    @classmethod
    def from_json(cls, data: dict | None) -> "Symmetries":
        if not data:
            return cls()
        return from_models_info_entry({"symmetries_discrete": data.get("discrete", []),
                                       "symmetries_continuous": data.get("continuous", [])})


def from_models_info_entry(entry: dict, where: str = "models_info entry") -> Symmetries:
    """The symmetries of one ``models_info.json`` entry; a clear error naming ``where`` for a malformed field."""
    discrete = []
    for k, m in enumerate(entry.get("symmetries_discrete", []) or []):
        arr = np.asarray(m, np.float64)
        if arr.size != 16 or not np.all(np.isfinite(arr)):
            raise PoseInputError(f"{where}: symmetries_discrete[{k}] must be 16 finite numbers (4x4 row-major)")
        arr = arr.reshape(4, 4)
        if np.abs(arr[:3, :3] @ arr[:3, :3].T - np.eye(3)).max() > 1e-2:
            raise PoseInputError(f"{where}: symmetries_discrete[{k}] is not a rotation")
        discrete.append(arr)
    continuous = []
    for k, c in enumerate(entry.get("symmetries_continuous", []) or []):
        try:
            axis = np.asarray(c["axis"], np.float64).reshape(3)
            offset = np.asarray(c.get("offset", [0, 0, 0]), np.float64).reshape(3)
        except (KeyError, TypeError, ValueError):
            raise PoseInputError(f"{where}: symmetries_continuous[{k}] must hold 'axis' [3] and 'offset' [3]") from None
        if not (np.all(np.isfinite(axis)) and np.linalg.norm(axis) > 0):
            raise PoseInputError(f"{where}: symmetries_continuous[{k}] has a zero or non-finite axis")
        continuous.append((axis / np.linalg.norm(axis), offset))
    if len(continuous) > 1:
        raise PoseInputError(f"{where}: {len(continuous)} continuous symmetry axes; at most one is supported")
    return Symmetries(np.asarray(discrete).reshape(-1, 4, 4), continuous)


# Geometric symmetry detection (untextured meshes): a candidate rotation is a symmetry when the surface, turned by
# it, lies on itself within this fraction of the diameter (mean distance of dense surface samples to their nearest
# neighbour among the unturned samples).
SYMMETRY_TOLERANCE = 0.02
SYMMETRY_SAMPLES = 20000  # surface samples for the test (about 1-2 mm apart on a 20 cm object)
PATTERN_STD = 2.0  # a texture or vertex colours whose channels vary less than this (0..255) carry no pattern


def has_pattern(mesh) -> bool:
    """Whether the mesh's own look (texture image or vertex colours) varies over its surface. A mesh without a
    pattern (a CAD model, a scan without colour) looks the same under every symmetry of its shape."""
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        image = getattr(getattr(visual, "material", None), "image", None)
        if image is None:
            return False
        pixels = np.asarray(image).reshape(-1, np.asarray(image).shape[-1] if np.asarray(image).ndim == 3 else 1)
        return bool(pixels[:, :3].std(axis=0).max() > PATTERN_STD)
    if kind in ("vertex", "face"):
        colours = np.asarray(visual.vertex_colors if kind == "vertex" else visual.face_colors, np.float64)
        return bool(colours[:, :3].std(axis=0).max() > PATTERN_STD)
    return False


def detect_shape_symmetries(mesh, tolerance: float = SYMMETRY_TOLERANCE, seed: int = 0) -> Symmetries:
    """Discrete symmetries of a mesh's shape: the rotations by 90, 180 and 270 degrees about its principal axes
    (through the centroid of its surface) that map the surface onto itself within ``tolerance`` of its diameter.
    A box of three different sides gets the three 180-degree turns; a shape without symmetry gets none."""
    from scipy.spatial import cKDTree

    from pose_core.geometry import sample_model_points

    points = sample_model_points(mesh, SYMMETRY_SAMPLES, seed)
    centre = points.mean(axis=0)
    _, _, axes = np.linalg.svd(points - centre, full_matrices=False)
    diameter = np.linalg.norm(points.max(axis=0) - points.min(axis=0))
    tree = cKDTree(points)
    found = []
    for axis in axes:
        for quarter_turns in (1, 2, 3):
            T = continuous_rotation(axis, centre, quarter_turns * np.pi / 2)
            turned = points @ T[:3, :3].T + T[:3, 3]
            distance, _ = tree.query(turned)
            if distance.mean() < tolerance * diameter:
                found.append(T)
    return Symmetries(np.asarray(found).reshape(-1, 4, 4), [])


def symmetries_for_mesh(mesh_path, obj_id: int, symmetric_flag: bool) -> tuple[Symmetries, str]:
    """The symmetries of a dataset's object and where they came from.

    1. A ``models_info.json`` beside the mesh (a BOP ``models/`` folder, the built-in objects' folder) that lists
       ``obj_id`` with symmetries decides.
    2. Else, a mesh without a pattern of its own (:func:`has_pattern`: its renderings get random colours and
       textures, so only its shape shows) gets the symmetries of its shape (:func:`detect_shape_symmetries`).
    3. Else a dataset marked symmetric is taken as a body of revolution about its model z axis through the origin
       (the built-in ``symmetric`` object's declaration); otherwise no symmetry.
    """
    from pose_core.bop import load_models_info

    info_path = Path(str(mesh_path)).parent / "models_info.json" if mesh_path else None
    if info_path is not None and info_path.is_file():
        info = load_models_info(info_path)
        if int(obj_id) in info:
            declared = from_models_info_entry(info[int(obj_id)], f"{info_path} object {obj_id}")
            if declared.is_symmetric:
                return declared, str(info_path)
    if mesh_path and Path(str(mesh_path)).is_file():
        from pose_core.mesh import load_mesh

        mesh = load_mesh(mesh_path)
        if not has_pattern(mesh):
            shape = detect_shape_symmetries(mesh)
            if shape.is_symmetric:
                return shape, (f"detected from the shape of {Path(str(mesh_path)).name} (no texture or colours of "
                               f"its own): {len(shape.discrete)} discrete")
    if symmetric_flag:
        return Symmetries(continuous=[(np.array([0.0, 0.0, 1.0]), np.zeros(3))]), "assumed: z axis (marked symmetric)"
    return Symmetries(), "none declared"


def continuous_rotation(axis, offset_mm, angle_rad: float) -> np.ndarray:
    """4x4 transform: rotation by ``angle_rad`` about the line through ``offset_mm`` along unit ``axis``."""
    a = np.asarray(axis, np.float64)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    R = np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(offset_mm) - R @ np.asarray(offset_mm)
    return T
