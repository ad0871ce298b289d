"""The BOP format: reading the real test sets, the results CSV round trip, and clear errors for bad files."""
import json

import numpy as np
import pytest

from pose_core import bop
from pose_core.bop import BopFormatError, PoseEstimate


def test_results_csv_round_trip_is_identical(tmp_path):
    rng = np.random.default_rng(0)
    from pose_core.geometry import random_rotations

    estimates = [
        PoseEstimate(int(s), int(i), 7, float(rng.uniform()), R, rng.normal(size=3) * 100, float(rng.uniform()))
        for s, i, R in zip(rng.integers(0, 50, 20), rng.integers(0, 1000, 20), random_rotations(20, rng))
    ]
    path = tmp_path / "results.csv"
    bop.write_results_csv(path, estimates)
    assert path.read_text().splitlines()[0] == "scene_id,im_id,obj_id,score,R,t,time"
    back = bop.read_results_csv(path)
    assert len(back) == len(estimates)
    for a, b in zip(estimates, back):
        assert (a.scene_id, a.im_id, a.obj_id, a.score, a.time_s) == (b.scene_id, b.im_id, b.obj_id, b.score, b.time_s)
        assert np.array_equal(a.R, b.R) and np.array_equal(a.t_mm, b.t_mm)
    bop.write_results_csv(tmp_path / "again.csv", back)
    assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("row, problem", [
    ("1,2,3,0.5,1 0 0 0 1 0 0 0 1,0 0 1", "fields"),
    ("1,2,3,0.5,1 0 0 0 1 0 0 0,0 0 1,-1", "R needs 9"),
    ("1,2,3,abc,1 0 0 0 1 0 0 0 1,0 0 1,-1", "malformed"),
    ("x,2,3,0.5,1 0 0 0 1 0 0 0 1,0 0 1,-1", "malformed"),
])
def test_malformed_csv_row_names_file_and_line(tmp_path, row, problem):
    path = tmp_path / "bad.csv"
    path.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,2,3,0.5,1 0 0 0 1 0 0 0 1,0 0 1,-1\n" + row + "\n")
    with pytest.raises(BopFormatError, match=rf"bad.csv: line 3.*{problem}"):
        bop.read_results_csv(path)


def test_csv_without_header(tmp_path):
    path = tmp_path / "nohead.csv"
    path.write_text("1,2,3,0.5,1 0 0 0 1 0 0 0 1,0 0 1,-1\n")
    with pytest.raises(BopFormatError, match="nohead.csv: line 1 must be the header"):
        bop.read_results_csv(path)


def test_missing_scene_gt(tmp_path):
    with pytest.raises(BopFormatError, match="scene_gt.json: file not found"):
        bop.load_scene_gt(tmp_path / "scene_gt.json")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"0": [{"cam_t_m2c": [0, 0, 1], "obj_id": 1}]}', "image 0 instance 0 has no 'cam_R_m2c'"),
    ('{"0": [{"cam_R_m2c": [1, 0, 0], "cam_t_m2c": [0, 0, 1], "obj_id": 1}]}', "cam_R_m2c has 3 numbers"),
    ('{"a": []}', "key 'a' is not an integer"),
])
def test_malformed_scene_gt(tmp_path, content, problem):
    path = tmp_path / "scene_gt.json"
    path.write_text(content)
    with pytest.raises(BopFormatError, match=problem) as err:
        bop.load_scene_gt(path)
    assert str(path) in str(err.value)


def test_models_info_without_the_object(tmp_path):
    path = tmp_path / "models_info.json"
    path.write_text(json.dumps({"1": {"diameter": 100.0}}))
    with pytest.raises(BopFormatError, match=r"models_info.json: object 5 is not listed"):
        bop.model_info(path, 5)
    assert bop.model_info(path, 1)["diameter"] == 100.0


def test_scene_camera_without_K(tmp_path):
    path = tmp_path / "scene_camera.json"
    path.write_text('{"0": {"depth_scale": 1.0}}')
    with pytest.raises(BopFormatError, match="image 0 has no 'cam_K'"):
        bop.load_scene_camera(path)


def test_scene_gt_info(tmp_path):
    path = tmp_path / "scene_gt_info.json"
    path.write_text('{"3": [{"bbox_obj": [1, 2, 3, 4], "bbox_visib": [1, 2, 3, 3], "visib_fract": 0.8}]}')
    info = bop.load_scene_gt_info(path)
    assert np.array_equal(info[3][0]["bbox_obj"], [1, 2, 3, 4]) and info[3][0]["visib_fract"] == 0.8


@pytest.mark.parametrize("name, obj_id, frames", [("ycbv_banana", 10, 40), ("ycbv_box", 2, 40), ("ycbv_can", 1, 20)])
def test_reads_real_test_sets(shared_data, name, obj_id, frames):
    root = shared_data / name
    images = bop.list_test_images(root, obj_id)
    assert len(images) == frames
    for im in images:
        assert im.rgb_path.is_file()
        assert np.isclose(np.linalg.det(im.instances[0]["R"]), 1.0, atol=1e-4)
        assert im.instances[0]["t_mm"][2] > 100  # millimetres, in front of the camera
    info = bop.model_info(root / "models" / "models_info.json", obj_id)
    assert info["diameter"] > 50
    assert bop.find_model_file(root / "models", obj_id).suffix == ".obj"


def test_lmo_models_info(shared_data):
    info = bop.load_models_info(shared_data / "lmo_models" / "models_info.json")
    assert bop.is_symmetric(info[10]) and bop.is_symmetric(info[11]) and not bop.is_symmetric(info[1])
