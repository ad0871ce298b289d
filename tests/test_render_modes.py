"""Each randomization mode changes exactly the axes of the table in render/modes.py.

With one seed, every mode draws the same pose, background, appearance, light and noise for a sample (one random
stream per axis), so two modes' images of the same sample differ only where their tables differ.
"""

import numpy as np
import pytest
from scipy import ndimage

from pose_core.objects import builtin_model_path
from pose_core.mesh import load_mesh
from render import randomize as rz
from render.dataset import read_samples
from render.engine import ParamSampler, RenderConfig
from render.modes import MODES, mode_axes
from pose_core import shared_data_dir
from render.testing import run_many

SIZE = 96
N = 8
OWN_RGB = (70, 150, 190)  # the built-in `symmetric` object's colour


@pytest.fixture(scope="module")
def mode_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    modes = ["complete", "fixed_light", "fixed_object", "none"]
    backgrounds = shared_data_dir() / "ycbv_backgrounds"
    extra = {}
    if backgrounds.is_dir():
        modes.append("real_background")
        extra = {"backgrounds": str(backgrounds), "exclude_obj_id": 1}
    jobs = [(root / m, dict(mesh="symmetric", num_images=N, image_size=SIZE, seed=11, workers=1, num_shards=1,
                            randomization=m, **(extra if m == "real_background" else {}))) for m in modes]
    run_many(jobs)
    return {m: list(read_samples(root / m)) for m in modes}


def _regions(mask):
    m = mask > 0
    inside = ndimage.binary_erosion(m, iterations=4)
    outside = ~ndimage.binary_dilation(m, iterations=8)  # blur spreads a few pixels
    return inside, outside


def _diff(a, b, region):
    return np.abs(a.astype(np.int16) - b.astype(np.int16))[region]


def test_same_pose_and_mask_in_every_mode(mode_data):
    ref = mode_data["complete"]
    for mode, samples in mode_data.items():
        for a, b in zip(ref, samples):
            np.testing.assert_allclose(a["R"], b["R"], atol=1e-6)
            np.testing.assert_allclose(a["t_mm"], b["t_mm"], rtol=1e-6)
            assert (a["mask"] != b["mask"]).mean() < 0.002, mode


@pytest.mark.parametrize("mode, changes", [("fixed_light", "object"), ("fixed_object", "object"),
                                           ("real_background", "background")])
def test_mode_changes_only_its_axis(mode_data, mode, changes):
    if mode not in mode_data:
        pytest.skip(f"real background photos {shared_data_dir() / 'ycbv_backgrounds'} are absent")
    for a, b in zip(mode_data["complete"], mode_data[mode]):
        inside, outside = _regions(a["mask"])
        d_in, d_out = _diff(a["image"], b["image"], inside), _diff(a["image"], b["image"], outside)
        if changes == "object":  # light or appearance: object pixels change, the background does not
            assert d_out.max(initial=0) == 0, f"{mode} sample {a['index']}: background changed"
            assert d_in.mean() > 2.0, f"{mode} sample {a['index']}: object pixels did not change"
        else:  # background photos: the object is untouched, the background changes
            assert d_in.max(initial=0) == 0, f"{mode} sample {a['index']}: object pixels changed"
            assert d_out.mean() > 5.0, f"{mode} sample {a['index']}: background did not change"


def test_none_has_plain_background_and_no_noise(mode_data):
    for s in mode_data["none"]:
        _, outside = _regions(s["mask"])
        bg = s["image"][outside]
        assert np.all(bg == np.array(rz.PLAIN_BACKGROUND_RGB, np.uint8)), "plain background expected"


def _object_mean(s):
    inside, _ = _regions(s["mask"])
    return s["image"][inside].astype(np.float64).mean(axis=0)


def test_own_appearance_kept_in_fixed_object_and_none(mode_data):
    # the object is blue-green (R < G < B); light colour, jitter and noise never reverse that order
    for mode in ("fixed_object", "none"):
        for s in mode_data[mode]:
            r, g, b = _object_mean(s)
            assert r < g and r < b, f"{mode} sample {s['index']}: object colour {r, g, b} is not its own"
    # ... while random appearance does, for some samples
    colours = [_object_mean(s) for s in mode_data["complete"]]
    assert any(not (c[0] < c[1] and c[0] < c[2]) for c in colours), colours


def test_parameter_axes_per_mode(builtin_models):
    """The sampled parameters follow the table: fixed axes are constant over samples, random ones vary."""
    mesh = load_mesh(builtin_model_path("toy"))
    for mode in MODES:
        axes = mode_axes(mode)
        files = [] if axes["background"] != "real" else ["unused.png"]
        sampler = ParamSampler(RenderConfig(mesh_path="toy", obj_id=1, image_size=32, seed=1, mode=mode,
                                            background_files=files), mesh)
        if axes["background"] == "real":  # no photo is loaded for the other axes' checks
            sampler._photos = [("p.png", lambda: np.zeros((48, 64, 3), np.uint8))]
        ps = [sampler.sample_params(i) for i in range(6)]
        assert (ps[0]["light"] is rz.FIXED_LIGHT) == (axes["light"] == "fixed")
        assert all((p["light"] is rz.FIXED_LIGHT) == (axes["light"] == "fixed") for p in ps)
        assert all((p["appearance"] == "own") == (axes["object"] == "own") for p in ps)
        assert all((p["noise_rng_seed"] is not None) == axes["noise"] for p in ps)
        kinds = {p["background_kind"] for p in ps}
        assert kinds == {"random": {"procedural"}, "real": {"p.png"}, "plain": {"plain"}}[axes["background"]]
        if axes["background"] == "random":
            assert not np.array_equal(ps[0]["background"], ps[1]["background"])
        # poses vary in every mode
        assert not np.allclose(ps[0]["R"], ps[1]["R"])


def test_photo_backgrounds_and_own_appearance_mix_into_the_random_axes(tmp_path, builtin_models):
    """--photo_background_prob / --own_appearance_prob replace that share of the procedural backgrounds / random
    appearances by photo crops / the mesh's own look; every other draw stays that of the same seed without them."""
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), (20, 200, 20), np.uint8)).save(tmp_path / "green.png")
    mesh = load_mesh(builtin_model_path("toy"))

    def params(photo_p, own_p, n=40):
        ranges = rz.Ranges()
        ranges.photo_background_prob, ranges.own_appearance_prob = photo_p, own_p
        sampler = ParamSampler(RenderConfig(mesh_path="toy", obj_id=1, image_size=32, seed=3, mode="complete",
                                            background_files=[str(tmp_path / "green.png")], ranges=ranges), mesh)
        return [sampler.sample_params(i) for i in range(n)]

    plain, mixed = params(0.0, 0.0), params(0.5, 0.5)
    photo = [p["background_kind"] == "green.png" for p in mixed]
    own = [p["appearance"] == "own" for p in mixed]
    assert all(p["background_kind"] == "procedural" and p["appearance"] != "own" for p in plain)
    assert 8 <= sum(photo) <= 32 and 8 <= sum(own) <= 32, (sum(photo), sum(own))
    assert any(a != b for a, b in zip(photo, own))  # drawn independently
    for a, b, is_photo, is_own in zip(plain, mixed, photo, own):
        np.testing.assert_array_equal(a["R"], b["R"])
        assert a["light"] == b["light"]
        if is_photo:
            assert (b["background"] == (20, 200, 20)).all()
        else:
            np.testing.assert_array_equal(a["background"], b["background"])
        if not is_own:
            assert a["appearance"]["colour"] == b["appearance"]["colour"]
    everything = params(1.0, 1.0, n=8)
    assert all(p["background_kind"] == "green.png" and p["appearance"] == "own" for p in everything)


def test_unknown_mode_lists_valid_ones():
    from pose_core import PoseInputError

    with pytest.raises(PoseInputError, match="complete"):
        mode_axes("everything")


def test_view_range_and_object_size():
    """--elevation_range_deg limits the camera elevation; the distance gives the requested projected size."""
    mesh = load_mesh(builtin_model_path("symmetric"))
    ranges = rz.Ranges()
    ranges.elevation_deg = (30.0, 60.0)
    ranges.object_size_frac = (0.5, 0.5)
    sampler = ParamSampler(RenderConfig(mesh_path="symmetric", obj_id=3, image_size=100, seed=2, ranges=ranges),
                           mesh)
    for i in range(20):
        p = sampler.sample_params(i)
        to_camera = -p["R"][2]  # the camera's -z axis in model coordinates
        elevation = np.degrees(np.arcsin(to_camera[2]))
        assert 30.0 - 1e-6 <= elevation <= 60.0 + 1e-6
        # a diameter-long segment at the object's depth spans half the image
        depth = (p["R"] @ sampler.centre_mm + p["t_mm"])[2]
        assert sampler.K[0, 0] * sampler.diameter_mm / depth == pytest.approx(50.0, rel=1e-6)


def test_backgrounds_skip_photos_showing_the_object(tmp_path):
    import json

    from render.randomize import BackgroundError, list_backgrounds

    for name in ("a.png", "b.png", "c.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "objects_in_frame.json").write_text(json.dumps({"a.png": [1, 2], "b.png": [3], "c.jpg": []}))
    names = lambda files: [p.rsplit("/", 1)[-1] for p in files]  # noqa: E731
    assert names(list_backgrounds(str(tmp_path), None)) == ["a.png", "b.png", "c.jpg"]
    assert names(list_backgrounds(str(tmp_path), 1)) == ["b.png", "c.jpg"]
    (tmp_path / "objects_in_frame.json").write_text(json.dumps({"a.png": [1], "b.png": [1], "c.jpg": [1]}))
    with pytest.raises(BackgroundError, match="no background left"):
        list_backgrounds(str(tmp_path), 1)
    real = shared_data_dir() / "ycbv_backgrounds"
    if real.is_dir():
        shown = json.loads((real / "objects_in_frame.json").read_text())
        kept = names(list_backgrounds(str(real), 1))
        assert kept and all(1 not in shown.get(n, []) for n in kept)
