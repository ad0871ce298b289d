"""Mesh loading (mm, clear errors) and the built-in objects."""
import json

import numpy as np
import pytest

from pose_core import bop
from pose_core.mesh import MeshError, load_mesh, mesh_diameter
from pose_core.objects import BUILTIN_OBJECTS


def test_builtin_objects_in_bop_form(builtin_models):
    info = bop.load_models_info(builtin_models / "models_info.json")
    assert sorted(info) == [1, 2, 3]
    for name, spec in BUILTIN_OBJECTS.items():
        mesh = load_mesh(builtin_models / spec.filename)
        entry = info[spec.obj_id]
        assert 50 < entry["diameter"] < 400, name  # millimetres
        assert np.isclose(mesh_diameter(mesh), entry["diameter"], rtol=1e-3)
        assert bop.is_symmetric(entry) == spec.symmetric
    assert (builtin_models / "obj_000002.mtl").is_file()


def test_box_is_textured_and_symmetric_is_a_body_of_revolution(builtin_models):
    box = load_mesh(builtin_models / "obj_000002.obj")
    assert box.visual.kind == "texture"
    image = np.asarray(box.visual.material.image)
    assert image.std() > 20  # a real print, not a flat colour
    sym = load_mesh(builtin_models / "obj_000003.ply")
    v = np.asarray(sym.vertices)
    from pose_core.geometry import axis_angle_to_matrix
    from scipy.spatial import cKDTree

    rotated = v @ axis_angle_to_matrix([0, 0, 1], 2 * np.pi / 64).T
    assert cKDTree(v).query(rotated)[0].max() < 1e-3


def test_toy_is_asymmetric_and_non_convex(builtin_models):
    toy = load_mesh(builtin_models / "obj_000001.ply")
    assert toy.convex_hull.volume > 1.3 * toy.volume  # clearly non-convex
    v = np.asarray(toy.vertices)
    from scipy.spatial import cKDTree

    for flip in (np.diag([-1, 1, 1]), np.diag([1, -1, 1]), np.diag([-1, -1, 1])):
        assert cKDTree(v).query(v @ flip.T)[0].mean() > 3.0  # no mirror/180-degree symmetry


def test_builtin_generation_is_deterministic(tmp_path):
    from pose_core.objects import write_builtin_models

    a, b = write_builtin_models(tmp_path / "a"), write_builtin_models(tmp_path / "b")
    for f in ("obj_000001.ply", "obj_000003.ply", "models_info.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_missing_mesh(tmp_path):
    with pytest.raises(MeshError, match=r"nope.ply' does not exist"):
        load_mesh(tmp_path / "nope.ply")


def test_empty_mesh_file(tmp_path):
    (tmp_path / "empty.ply").write_bytes(b"")
    with pytest.raises(MeshError, match=r"empty.ply' is empty"):
        load_mesh(tmp_path / "empty.ply")


def test_not_a_mesh(tmp_path):
    (tmp_path / "junk.obj").write_text("this is not\na mesh at all\n")
    with pytest.raises(MeshError, match=r"junk.obj"):
        load_mesh(tmp_path / "junk.obj")
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(MeshError, match=r"junk.ply"):
        load_mesh(tmp_path / "junk.ply")


def test_mesh_without_faces(tmp_path):
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 10 0 0\nv 0 10 0\n")
    with pytest.raises(MeshError, match=r"points.obj"):
        load_mesh(tmp_path / "points.obj")


def test_metre_sized_mesh_names_the_flag(tmp_path):
    import trimesh

    trimesh.creation.box(extents=(0.1, 0.2, 0.05)).export(tmp_path / "metres.ply")
    with pytest.raises(MeshError, match=r"metres.*--mesh_scale=1000"):
        load_mesh(tmp_path / "metres.ply")
    mesh = load_mesh(tmp_path / "metres.ply", mesh_scale=1000)
    assert np.isclose(mesh_diameter(mesh), np.linalg.norm([100, 200, 50]))


def test_scanned_models_load_in_mm(shared_data):
    info = json.loads((shared_data / "lmo_models" / "models_info.json").read_text())
    mesh = load_mesh(shared_data / "lmo_models" / "obj_000001.ply")
    assert mesh.visual.kind == "vertex"
    assert np.isclose(mesh_diameter(mesh), info["1"]["diameter"], rtol=1e-3)
    banana = load_mesh(shared_data / "ycbv_banana" / "models" / "obj_000010.obj")
    assert banana.visual.kind == "texture"
