"""Whole-image scenes of several objects in BOP layout (render/scenes.py): the files a BOP reader expects, masks
and boxes that agree with the poses, resuming, and clear errors for bad input."""
import json
import shutil

import numpy as np
import pytest
import trimesh

from pose_core import bop
from pose_core.geometry import project_points

CAMERA = {"cam_K": [200.0, 0, 79.5, 0, 200.0, 59.5, 0, 0, 1], "width": 160, "height": 120}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A BOP models folder of three small objects (a box, a cylinder, a cone), in mm."""
    root = tmp_path_factory.mktemp("models")
    shapes = {1: trimesh.creation.box(extents=(60, 40, 20)), 2: trimesh.creation.cylinder(radius=25, height=70),
              3: trimesh.creation.cone(radius=30, height=60)}
    info = {}
    for obj_id, mesh in shapes.items():
        mesh.export(root / f"obj_{obj_id:06d}.ply")
        info[str(obj_id)] = {"diameter": float(np.linalg.norm(mesh.extents))}
    (root / "models_info.json").write_text(json.dumps(info))
    return root


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    path = tmp_path_factory.mktemp("cam") / "camera.json"
    path.write_text(json.dumps(CAMERA))
    return path


def _render(models_dir, out, camera, n, **kw):
    """Renders in a subprocess (no GL context in the test process, which imports TensorFlow elsewhere); input that
    is refused before any rendering is checked in-process (render_scenes raises before it creates a context)."""
    from render.testing import run_scenes

    kw.setdefault("objects_per_image", (2, 3))
    if kw.pop("in_process", False):
        from render.scenes import render_scenes

        return render_scenes(models_dir, out, num_images=n, camera=str(camera), progress=False, **kw)
    if "obj_ids" in kw:
        kw["obj_ids"] = ",".join(map(str, kw["obj_ids"]))
    return run_scenes(models_dir, out, num_images=n, camera=str(camera), **kw)


def test_scenes_are_a_bop_folder_whose_masks_match_the_poses(models_dir, camera, tmp_path):
    from PIL import Image

    root = _render(models_dir, tmp_path / "bop", camera, 6)
    scene = root / "test" / "000000"
    gt = bop.load_scene_gt(scene / "scene_gt.json")
    info = bop.load_scene_gt_info(scene / "scene_gt_info.json")
    assert sorted(gt) == list(range(6))
    assert (root / "models" / "models_info.json").is_file() and (root / "models" / "obj_000002.ply").is_file()
    for im_id, instances in gt.items():
        assert 2 <= len(instances) <= 3 and len({i["obj_id"] for i in instances}) == len(instances)
        rgb = np.asarray(Image.open(scene / "rgb" / f"{im_id:06d}.png"))
        depth = np.asarray(Image.open(scene / "depth" / f"{im_id:06d}.png"))
        assert rgb.shape == (120, 160, 3) and depth.shape == (120, 160)
        for k, inst in enumerate(instances):
            visible = np.asarray(Image.open(scene / "mask_visib" / f"{im_id:06d}_{k:06d}.png")) > 0
            entry = info[im_id][k]
            assert entry["visib_fract"] == pytest.approx(visible.sum() / max(
                json.loads((scene / "scene_gt_info.json").read_text())[str(im_id)][k]["px_count_all"], 1))
            mesh = trimesh.load(root / "models" / f"obj_{inst['obj_id']:06d}.ply")
            uv, z = project_points(np.asarray(mesh.sample(3000, seed=0)), inst["R"], inst["t_mm"],
                                   np.asarray(CAMERA["cam_K"]).reshape(3, 3))
            assert np.all(z > 0)
            x0, y0, w, h = entry["bbox_obj"]
            inside = ((uv[:, 0] >= x0 - 1.5) & (uv[:, 0] <= x0 + w + 0.5) & (uv[:, 1] >= y0 - 1.5)
                      & (uv[:, 1] <= y0 + h + 0.5))
            on_image = (uv[:, 0] >= 0) & (uv[:, 0] <= 159) & (uv[:, 1] >= 0) & (uv[:, 1] <= 119)
            assert inside[on_image].mean() > 0.98  # the full silhouette's box holds the projected model
            if visible.any():  # the depth under a visible pixel is that object's surface, in front of the camera
                assert np.all(depth[visible] > 0)
    # the per-object reader of evaluation finds each object's instances
    images = bop.list_test_images(root, 2)
    assert images and all(i.depth_path is not None for i in images)


def test_scenes_resume_to_the_same_images_and_refuse_other_settings(models_dir, camera, tmp_path):
    from render.scenes import SceneError

    whole = _render(models_dir, tmp_path / "whole", camera, 12)
    part = _render(models_dir, tmp_path / "part", camera, 10)
    scene = part / "test" / "000000"
    # a run killed after image 10's files but before the JSON flush: the JSONs list 10, image 10 is redone
    shutil.copy(whole / "test" / "000000" / "rgb" / "000010.png", scene / "rgb" / "000010.png")
    _render(models_dir, part, camera, 12)
    for name in ("scene_gt.json", "scene_gt_info.json", "scene_camera.json"):
        assert json.loads((scene / name).read_text()) == json.loads((whole / "test" / "000000" / name).read_text())
    a = (whole / "test" / "000000" / "rgb" / "000011.png").read_bytes()
    assert a == (scene / "rgb" / "000011.png").read_bytes()
    with pytest.raises(SceneError, match="seed"):
        _render(models_dir, part, camera, 12, seed=1, in_process=True)
    with pytest.raises(SceneError, match="obj_ids"):
        _render(models_dir, part, camera, 12, obj_ids=[1, 2], in_process=True)
    assert len(json.loads((scene / "scene_gt.json").read_text())) == 12  # nothing lost


def test_bad_input_gets_a_clear_error(models_dir, camera, tmp_path):
    from pose_core.mesh import MeshError
    from render.scenes import SceneError, load_camera, parse_obj_ids

    no_info = tmp_path / "no_info"
    shutil.copytree(models_dir, no_info)
    (no_info / "models_info.json").unlink()
    with pytest.raises(SceneError, match="models_info.json"):
        _render(no_info, tmp_path / "a", camera, 2, in_process=True)
    with pytest.raises(SceneError, match="no object 7"):
        _render(models_dir, tmp_path / "b", camera, 2, obj_ids=[1, 7], in_process=True)
    metres = tmp_path / "metres"
    shutil.copytree(models_dir, metres)
    trimesh.creation.box(extents=(0.06, 0.04, 0.02)).export(metres / "obj_000001.ply")
    with pytest.raises(MeshError, match="obj_000001.ply.*metres"):
        _render(metres, tmp_path / "c", camera, 2, in_process=True)
    bad_cam = tmp_path / "cam.json"
    bad_cam.write_text(json.dumps({"fx": 500}))
    with pytest.raises(SceneError, match="cam_K"):
        load_camera(str(bad_cam))
    with pytest.raises(SceneError, match="obj_ids"):
        parse_obj_ids("1,x")
    with pytest.raises(SceneError, match="objects_per_image"):
        _render(models_dir, tmp_path / "d", camera, 2, objects_per_image=(3, 2), in_process=True)
    # the command line says what is wrong and exits 2
    with pytest.raises(AssertionError, match="no object 7"):
        _render(models_dir, tmp_path / "e", camera, 2, obj_ids=[1, 7])
    # a BOP scene_camera.json serves as --camera (its first camera)
    scene_cam = tmp_path / "scene_camera.json"
    scene_cam.write_text(json.dumps({"3": {"cam_K": CAMERA["cam_K"], "depth_scale": 1.0}}))
    K, w, h = load_camera(str(scene_cam))
    assert K[0, 0] == 200.0 and (w, h) == (640, 480)


def test_distractors_are_shown_but_not_annotated(models_dir, camera, tmp_path):
    """Objects of another models folder appear in the images (depth where no annotated object is, objects hidden
    behind them) without an entry in scene_gt.json; the annotated objects' poses are the same as without them."""
    from PIL import Image

    from pose_core.objects import builtin_models_dir

    plain = _render(models_dir, tmp_path / "plain", camera, 8, obj_ids=[1], objects_per_image=(1, 1))
    mixed = _render(models_dir, tmp_path / "mixed", camera, 8, obj_ids=[1], objects_per_image=(1, 1),
                    distractors_dir=builtin_models_dir())
    gt_plain = json.loads((plain / "test" / "000000" / "scene_gt.json").read_text())
    gt_mixed = json.loads((mixed / "test" / "000000" / "scene_gt.json").read_text())
    assert gt_plain == gt_mixed  # one annotated object per image, posed as without distractors
    assert [n.split(".")[0] for n in json.loads((mixed / "scenes.json").read_text())["distractors"]] == [
        f"obj_{i:06d}" for i in (1, 2, 3)]
    extra = 0
    for im_id in gt_mixed:
        scene = mixed / "test" / "000000"
        depth = np.asarray(Image.open(scene / "depth" / f"{int(im_id):06d}.png")) > 0
        visible = np.asarray(Image.open(scene / "mask_visib" / f"{int(im_id):06d}_000000.png")) > 0
        extra += int((depth & ~visible).sum())
    assert extra > 100  # something is drawn where the annotated object is not


def test_texture_photos_put_real_print_on_random_appearances(models_dir, tmp_path):
    """With ``texture_photos``, about texture_prob * photo_texture_prob of the random appearances (objects and
    distractors alike) wear a square cut from one of the photos; a photo showing an excluded object is never used;
    the poses are those of the same seed without photos, whose textures are all procedural."""
    from PIL import Image

    from render import randomize as rz
    from render.scenes import SceneSampler, load_models

    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    colours = {"red.png": (255, 0, 0), "green.png": (0, 255, 0)}
    for name, rgb in colours.items():
        Image.fromarray(np.full((60, 80, 3), rgb, np.uint8)).save(photos_dir / name)
    (photos_dir / "objects_in_frame.json").write_text(json.dumps({"green.png": [7], "red.png": []}))
    photos = [(p.rsplit("/", 1)[-1], (lambda p=p: np.asarray(Image.open(p).convert("RGB"))))
              for p in rz.list_backgrounds(str(photos_dir), [7])]
    assert [name for name, _ in photos] == ["red.png"]

    models = load_models(models_dir, None)
    K = np.asarray(CAMERA["cam_K"]).reshape(3, 3)
    plain = SceneSampler(models, K, 160, 120, "complete", seed=3)
    printed = SceneSampler(models, K, 160, 120, "complete", seed=3, texture_photos=photos)
    apps_plain, apps_printed = [], []
    for i in range(200):
        a, b = plain.params(i), printed.params(i)
        assert [x["R"].tolist() for x in a["instances"]] == [x["R"].tolist() for x in b["instances"]]
        apps_plain += [x["appearance"] for x in a["instances"]]
        apps_printed += [x["appearance"] for x in b["instances"]]
    from_photo = [a for a in apps_printed
                  if a["texture"] is not None and a["texture"].shape[0] == rz.PHOTO_TEXTURE_SIZE]
    share = len(from_photo) / len(apps_printed)
    expected = rz.Ranges().texture_prob * rz.Ranges().photo_texture_prob
    assert abs(share - expected) < 0.08, (share, expected)
    for a in from_photo:  # the red photo only: the green one shows obj 7
        assert a["texture"].shape == (rz.PHOTO_TEXTURE_SIZE, rz.PHOTO_TEXTURE_SIZE, 3)
        assert (a["texture"] == [255, 0, 0]).all()
    assert any(a["texture"] is not None and a["texture"].shape[0] != rz.PHOTO_TEXTURE_SIZE for a in apps_plain)
    assert not any(a["texture"] is not None and a["texture"].shape[0] == rz.PHOTO_TEXTURE_SIZE for a in apps_plain)


def test_resting_poses_put_a_bounding_box_face_down_on_a_table_seen_from_above(models_dir, camera, tmp_path):
    """``--poses resting``: every rotation is a proper one with a model axis pointing down the table's normal, which
    the camera sees from 10-70 degrees above (rolled by at most 10): that axis points down the image and away from
    the camera. Uniform rotations rarely do; a bad mode is refused; the folder records the mode."""
    from render.scenes import SceneError, SceneRanges, SceneSampler, load_models, resting_rotation

    def down_axes(R) -> list[int]:  # signed model axes (0-5: +x, +y, +z, -x, -y, -z) that, in the camera, point
        cols = np.concatenate([R, -R], axis=1).T  # down the image, away from it, and hardly sideways
        lo_e, hi_e = np.deg2rad(SceneRanges.camera_elevation_deg)
        roll = np.deg2rad(SceneRanges.camera_roll_deg)
        ok = ((cols[:, 1] >= np.cos(hi_e) * np.cos(roll) - 1e-9) & (cols[:, 2] >= np.sin(lo_e) - 1e-9)
              & (np.abs(cols[:, 0]) <= np.sin(roll) * np.cos(lo_e) + 1e-9))
        return [int(k) for k in np.flatnonzero(ok)]

    def face_down(R) -> bool:
        return len(down_axes(R)) > 0

    rng = np.random.default_rng(0)
    rests = [resting_rotation(rng, SceneRanges.camera_elevation_deg, SceneRanges.camera_roll_deg) for _ in range(200)]
    for R in rests:
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.linalg.det(R) == pytest.approx(1.0)
        assert face_down(R)
    assert {k for R in rests for k in down_axes(R)} == set(range(6))  # every face of the box comes down
    models = load_models(models_dir, [1, 2])
    K = np.array(CAMERA["cam_K"]).reshape(3, 3)
    uniform = SceneSampler(models, K, 160, 120, "complete", 0)
    resting = SceneSampler(models, K, 160, 120, "complete", 0, SceneRanges(poses="resting"))
    Rs_uniform = [inst["R"] for i in range(30) for inst in uniform.params(i)["instances"]]
    Rs_resting = [inst["R"] for i in range(30) for inst in resting.params(i)["instances"]]
    assert all(face_down(R) for R in Rs_resting)
    assert np.mean([face_down(R) for R in Rs_uniform]) < 0.5
    with pytest.raises(SceneError, match="--poses must be one of uniform, resting"):
        _render(models_dir, tmp_path / "bad", camera, 2, poses="sideways", in_process=True)
    out = _render(models_dir, tmp_path / "rest", camera, 2, poses="resting")
    assert json.loads((out / "scenes.json").read_text())["poses"] == "resting"


def test_occluders_stand_in_front_of_an_object_and_overlap_it(models_dir, camera, tmp_path):
    """``--occluder_share 1``: every distractor stands between the camera and one of the annotated objects, its
    projected centre within that object's projected diameter, so it hides part of it; the objects' own poses are
    those without occluders, and so are the scenes of share 0; the share is checked and recorded."""
    from pose_core.objects import builtin_models_dir
    from render.scenes import (OCCLUDER_DEPTH_SHARE, OCCLUDER_OFFSET, SceneError, SceneRanges, SceneSampler,
                               load_models)

    models = load_models(models_dir, [1, 2])
    distractors = load_models(builtin_models_dir(), None)
    K = np.array(CAMERA["cam_K"]).reshape(3, 3)

    def centre(inst, m):
        c = inst["R"] @ ((m.mesh.bounds[0] + m.mesh.bounds[1]) / 2.0) + inst["t_mm"]
        return c, (K @ c)[:2] / c[2]

    plain = SceneSampler(models, K, 160, 120, "complete", 0, distractors=distractors)
    occluded = SceneSampler(models, K, 160, 120, "complete", 0, SceneRanges(occluder_share=1.0),
                            distractors=distractors)
    everything = models + distractors
    checked = 0
    for i in range(20):
        p, q = plain.params(i), occluded.params(i)
        assert [inst["t_mm"].tolist() for inst in p["instances"]] == [inst["t_mm"].tolist() for inst in q["instances"]]
        for d in q["distractors"]:
            c_d, uv_d = centre(d, everything[d["model"]])
            fronted = []
            for inst in q["instances"]:
                c_o, uv_o = centre(inst, everything[inst["model"]])
                size_px = K[0, 0] * everything[inst["model"]].diameter_mm / c_o[2]
                ratio, offset = c_d[2] / c_o[2], np.linalg.norm(uv_d - uv_o) / size_px
                fronted.append(OCCLUDER_DEPTH_SHARE[0] - 1e-9 <= ratio <= OCCLUDER_DEPTH_SHARE[1] + 1e-9
                               and OCCLUDER_OFFSET[0] - 1e-9 <= offset <= OCCLUDER_OFFSET[1] + 1e-9)
            assert any(fronted)
            checked += 1
    assert checked >= 10
    # share 0 is the sampler of old: the same distractors in the same places
    zero = SceneSampler(models, K, 160, 120, "complete", 0, SceneRanges(occluder_share=0.0), distractors=distractors)
    assert [d["t_mm"].tolist() for d in zero.params(3)["distractors"]] == [
        d["t_mm"].tolist() for d in plain.params(3)["distractors"]]
    with pytest.raises(SceneError, match="--occluder_share must be in"):
        _render(models_dir, tmp_path / "bad", camera, 2, occluder_share=1.5, distractors_dir=builtin_models_dir(),
                in_process=True)
    with pytest.raises(SceneError, match="give --distractors_dir"):
        _render(models_dir, tmp_path / "bad", camera, 2, occluder_share=0.5, in_process=True)
    out = _render(models_dir, tmp_path / "occ", camera, 4, obj_ids=[1], objects_per_image=(1, 1),
                  distractors_dir=builtin_models_dir(), occluder_share=1.0)
    assert json.loads((out / "scenes.json").read_text())["occluder_share"] == 1.0
    info = json.loads((out / "test" / "000000" / "scene_gt_info.json").read_text())
    assert min(v[0]["visib_fract"] for v in info.values()) < 1.0  # something hides part of the object


def test_end_parts_of_an_object_wear_their_own_materials(models_dir, camera, tmp_path):
    """``--part_material_share``: model_parts splits a cylinder into its core and the ends along its axis (every
    face in exactly one part); each end of a random appearance wears its own material with that chance, drawn from
    a stream of its own, so poses and the body's appearance are those of the same seed without parts; the rendered
    scene's annotations are the same, its pixels not; the share is checked and recorded."""
    from PIL import Image

    from render.scenes import PART_END_SHARE, SceneError, SceneRanges, SceneSampler, load_models, model_parts

    cylinder = trimesh.creation.cylinder(radius=25, height=70, sections=24).subdivide().subdivide()
    parts = model_parts(cylinder.vertices, cylinder.faces)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(cylinder.faces)))  # a partition
    centre_z = cylinder.vertices[cylinder.faces].mean(axis=1)[:, 2]
    edge = 35 * (1 - 2 * PART_END_SHARE)  # within PART_END_SHARE of the 70 mm height from an end
    assert len(parts) == 7  # the core (empty: a surface's faces all lie near a side), base, lid, four sides
    assert len(parts[0]) == 0 and centre_z[parts[1]].max() < -edge and centre_z[parts[2]].min() > edge
    assert len(parts[1]) + len(parts[2]) == int((np.abs(centre_z) > edge).sum())  # z first: all of the lid, base
    box = trimesh.creation.box(extents=(60, 40, 20))
    assert [len(f) for f in model_parts(box.vertices, box.faces)] == [0, 2, 2, 2, 2, 2, 2]  # one face each

    models = load_models(models_dir, None)
    K = np.asarray(CAMERA["cam_K"]).reshape(3, 3)
    plain = SceneSampler(models, K, 160, 120, "complete", seed=5)
    zero = SceneSampler(models, K, 160, 120, "complete", 5, SceneRanges(part_material_share=0.0))
    half = SceneSampler(models, K, 160, 120, "complete", 5, SceneRanges(part_material_share=0.5))
    own = []
    for i in range(60):
        a, z, b = plain.params(i), zero.params(i), half.params(i)
        for x, y, w in zip(a["instances"], b["instances"], z["instances"]):
            assert x["R"].tolist() == y["R"].tolist() and x["appearance"]["colour"] == y["appearance"]["colour"]
            assert "part_appearances" not in w
            assert len(y["part_appearances"]) == len(half.parts[y["model"]]) - 1
            own += [p is not None for p in y["part_appearances"]]
    assert abs(np.mean(own) - 0.5) < 0.1, np.mean(own)

    with pytest.raises(SceneError, match="--part_material_share must be in"):
        _render(models_dir, tmp_path / "bad", camera, 2, part_material_share=1.5, in_process=True)
    a = _render(models_dir, tmp_path / "plain", camera, 3, obj_ids=[2], objects_per_image=(1, 1), seed=4)
    b = _render(models_dir, tmp_path / "parts", camera, 3, obj_ids=[2], objects_per_image=(1, 1), seed=4,
                part_material_share=1.0)
    assert json.loads((b / "scenes.json").read_text())["part_material_share"] == 1.0
    for name in ("scene_gt.json", "scene_gt_info.json"):
        assert (a / "test/000000" / name).read_text() == (b / "test/000000" / name).read_text()
    differ = 0
    for f in sorted((a / "test/000000/rgb").iterdir()):
        x, y = (np.asarray(Image.open(r / "test/000000/rgb" / f.name), np.int16) for r in (a, b))
        differ += int(np.abs(x - y).max() > 30)
    assert differ >= 2
