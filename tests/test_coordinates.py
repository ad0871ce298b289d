"""The coordinate head's geometry: symmetry-canonical targets, back-projection, normalisation, correspondences."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.transform import Rotation

from pose_core.symmetry import Symmetries, continuous_rotation, from_models_info_entry, symmetries_for_mesh
from pose_net import coordinates as pc

# LM-O's eggbox (obj 10): one discrete symmetry, a 180-degree turn about z with a small offset (models_info.json)
EGGBOX = {"symmetries_discrete": [[-0.999964, -0.00333777, -0.0077452, 0.232611, 0.00321462, -0.999869, 0.0158593,
                                   0.694388, -0.00779712, 0.0158338, 0.999844, -0.0792063, 0, 0, 0, 1]]}
CAN = {"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}
TILTED = {"symmetries_continuous": [{"axis": [1, 1, 0], "offset": [5, -3, 2]}]}


def _canonical(R_allo, sym):
    Rs, ts = pc.canonical_symmetry_transform(tf.constant(R_allo, tf.float32), sym)
    return Rs.numpy().astype(np.float64), ts.numpy().astype(np.float64)


def _orthonormalise(R):
    u, _, vt = np.linalg.svd(R)
    return u @ vt


@pytest.mark.parametrize("entry", [CAN, TILTED])
def test_continuous_symmetry_gives_one_target_per_look(entry):
    """Poses that look the same (P and P @ C(angle)) get the same canonical pose, which is symmetric to both."""
    sym = from_models_info_entry(entry)
    axis, offset = sym.continuous[0]
    rng = np.random.default_rng(0)
    R = Rotation.random(64, random_state=1).as_matrix()
    angles = rng.uniform(-np.pi, np.pi, 64)
    C = np.stack([continuous_rotation(axis, offset, a) for a in angles])
    R2 = R @ C[:, :3, :3]
    Rs1, ts1 = _canonical(R, sym)
    Rs2, ts2 = _canonical(R2, sym)
    canon1, canon2 = R @ Rs1, R2 @ Rs2
    np.testing.assert_allclose(canon1, canon2, atol=2e-4)
    # translation part: the same canonical model transform, S1 and C @ S2 agree
    np.testing.assert_allclose(ts1, np.einsum("bij,bj->bi", C[:, :3, :3], ts2) + C[:, :3, 3], atol=1e-3)
    # the chosen transform is a rotation about the symmetry axis (it maps the axis onto itself)
    np.testing.assert_allclose(np.einsum("bij,j->bi", Rs1, axis), np.tile(axis, (64, 1)), atol=1e-5)
    # and the canonical one is at least as close to the identity as 36 other equivalents
    for a in np.linspace(-np.pi, np.pi, 36):
        other = R @ continuous_rotation(axis, offset, a)[:3, :3]
        assert np.all(np.trace(canon1, axis1=1, axis2=2) >= np.trace(other, axis1=1, axis2=2) - 1e-4)


def test_discrete_symmetry_gives_one_target_per_look():
    sym = from_models_info_entry(EGGBOX)
    D = sym.discrete[0]
    R = Rotation.random(64, random_state=2).as_matrix()
    R2 = np.stack([_orthonormalise(r @ D[:3, :3]) for r in R])
    Rs1, _ = _canonical(R, sym)
    Rs2, _ = _canonical(R2, sym)
    # BOP's matrix is a 180-degree turn to about 3 decimals (D @ D = I within 6e-3), so the canonical poses of
    # R and R @ D agree to that precision, not to float precision
    agree = np.abs((R @ Rs1) - (R2 @ Rs2)).max(axis=(1, 2)) < 2e-2
    assert agree.all()
    best = np.maximum(np.trace(R, axis1=1, axis2=2), np.trace(R2, axis1=1, axis2=2))
    np.testing.assert_allclose(np.trace(R @ Rs1, axis1=1, axis2=2), best, atol=1e-3)


def test_no_symmetry_is_identity():
    R = Rotation.random(5, random_state=3).as_matrix()
    Rs, ts = _canonical(R, Symmetries())
    np.testing.assert_allclose(Rs, np.tile(np.eye(3), (5, 1, 1)), atol=1e-7)
    np.testing.assert_allclose(ts, 0.0, atol=1e-7)


def test_symmetries_for_mesh_reads_models_info_beside_the_mesh(tmp_path):
    (tmp_path / "models_info.json").write_text('{"10": {"diameter": 1.0, "symmetries_discrete": '
                                               + str(EGGBOX["symmetries_discrete"]) + "}}")
    sym, source = symmetries_for_mesh(tmp_path / "obj_000010.ply", 10, False)
    assert len(sym.discrete) == 1 and not sym.continuous and source.endswith("models_info.json")
    sym, source = symmetries_for_mesh(tmp_path / "obj_000011.ply", 11, True)  # not listed: the flag decides
    assert sym.continuous and "assumed" in source
    assert not symmetries_for_mesh(None, 1, False)[0].is_symmetric
    again = Symmetries.from_json(sym.to_json())
    np.testing.assert_allclose(again.continuous[0][0], sym.continuous[0][0])


def test_malformed_symmetry_is_a_clear_error():
    from pose_core import PoseInputError

    with pytest.raises(PoseInputError, match="symmetries_discrete\\[0\\]"):
        from_models_info_entry({"symmetries_discrete": [[1, 2, 3]]}, "models_info.json object 5")
    with pytest.raises(PoseInputError, match="zero or non-finite axis"):
        from_models_info_entry({"symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]})


def test_back_projection_inverts_projection():
    """A point projected to a pixel centre at its depth comes back as the same model point."""
    rng = np.random.default_rng(4)
    K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
    R = Rotation.random(random_state=5).as_matrix()
    t = np.array([3.0, -2.0, 400.0])
    depth = np.zeros((1, 64, 64))
    rows, cols = rng.integers(0, 64, 50), rng.integers(0, 64, 50)
    depth[0, rows, cols] = rng.uniform(350, 450, 50)
    xyz = pc.object_coordinates_from_depth(tf.constant(depth, tf.float32), K[None], R[None], t[None]).numpy()[0]
    cam = xyz[rows, cols] @ R.T + t
    uv = cam @ K.T
    np.testing.assert_allclose(uv[:, 0] / uv[:, 2], cols, atol=2e-3)
    np.testing.assert_allclose(uv[:, 1] / uv[:, 2], rows, atol=2e-3)
    np.testing.assert_allclose(cam[:, 2], depth[0, rows, cols], rtol=1e-5)
    assert np.all(xyz[depth[0] == 0] == 0)


def test_frame_round_trip_and_correspondences():
    pts = np.random.default_rng(6).uniform([-40, -10, 0], [40, 10, 90], (500, 3))
    frame = pc.CoordinateFrame.from_points(pts)
    n = frame.normalise(tf.constant(pts, tf.float32)).numpy()
    assert n.min() >= -0.5 and n.max() <= 0.5
    np.testing.assert_allclose(frame.denormalise(n).numpy(), pts, atol=1e-3)
    coords = np.zeros((1, 4, 4, 3), np.float32)
    coords[0, 1, 2] = n[0]
    mask = np.full((1, 4, 4, 1), -5.0, np.float32)
    mask[0, 1, 2] = 5.0
    pixels, coords_mm, valid, _ = pc.correspondences({"coords": coords, "mask": mask}, frame)
    assert valid.numpy().sum() == 1
    k = int(np.argmax(valid.numpy()[0]))
    np.testing.assert_allclose(pixels.numpy()[0, k], [2.0, 1.0])  # (x, y) = (col, row)
    np.testing.assert_allclose(coords_mm.numpy()[0, k], pts[0], atol=1e-3)


def test_shape_symmetries_of_an_untextured_box_and_none_for_the_toy():
    """A plain box of three different sides has exactly the three 180-degree turns about its axes; an irregular
    cluster of boxes has none; a plain cylinder's quarter turns about its axis are found too."""
    import trimesh

    from pose_core.mesh import load_mesh
    from pose_core.objects import builtin_model_path
    from pose_core.symmetry import detect_shape_symmetries, has_pattern

    box = trimesh.creation.box(extents=(60.0, 160.0, 210.0))
    sym = detect_shape_symmetries(box)
    assert len(sym.discrete) == 3
    angles = sorted(np.degrees(Rotation.from_matrix(T[:3, :3]).magnitude()) for T in sym.discrete)
    np.testing.assert_allclose(angles, [180, 180, 180], atol=1e-6)
    assert not has_pattern(box)
    assert has_pattern(load_mesh(builtin_model_path("toy")))  # vertex colours: its renderings show them
    parts = [trimesh.creation.box(extents=e) for e in ((100, 40, 30), (30, 90, 30), (20, 20, 70))]
    for part, offset in zip(parts, ((0, 0, 0), (35, 45, 0), (-40, 5, 35))):
        part.apply_translation(offset)
    assert not detect_shape_symmetries(trimesh.util.concatenate(parts)).is_symmetric
    cylinder = trimesh.creation.cylinder(radius=40.0, height=150.0, sections=64)
    assert len(detect_shape_symmetries(cylinder).discrete) >= 3


def test_untextured_mesh_without_declaration_gets_its_shape_symmetries(tmp_path):
    import trimesh

    path = tmp_path / "plain_box.ply"
    trimesh.creation.box(extents=(60.0, 160.0, 210.0)).export(path)
    sym, source = symmetries_for_mesh(path, 1, False)
    assert len(sym.discrete) == 3 and "detected from the shape" in source


def test_mask_extent_reads_the_largest_region_between_cells():
    """The box of a coordinate head's mask (pose_net.inference.mask_extent): a stray blob elsewhere is left out,
    and each side lies where the probability crosses 0.5 between two cell centres."""
    from pose_net.inference import mask_extent

    n = 16
    prob = np.zeros((n, n))
    prob[5:11, 4:10] = 1.0  # the object: rows 5-10, columns 4-9
    prob[5:11, 3] = 0.25  # a soft left edge: 0.25 at column 3's centre (3.5), 1 at column 4's (4.5)
    prob[13, 13] = 0.9  # a stray cell on something else
    x0, y0, x1, y1 = mask_extent(prob) * n
    assert x0 == pytest.approx(4.5 - 0.5 / 0.75)  # 3.83: where 0.25 -> 1 crosses 0.5
    assert (y0, x1, y1) == pytest.approx((5.0, 10.0, 11.0))  # hard edges: the cells' own edges
    assert mask_extent(np.full((n, n), 0.2)) is None  # nothing above the threshold
    full = mask_extent(np.ones((n, n)))
    assert full == pytest.approx([0.0, 0.0, 1.0, 1.0])  # a mask reaching the crop's sides ends there
