"""One command per models folder (experiments/bop_train.py) and ``pose_net.evaluate --obj_id all``: its model
folder scored on a BOP folder of multi-object scenes (render/scenes.py) into one BOP19 CSV and one per-object table;
BOP19's min_visib and test targets; resuming and refusals."""
import json

import numpy as np
import pytest

from pose_core import PoseInputError, bop

CAMERA = {"cam_K": [240.0, 0, 79.5, 0, 240.0, 59.5, 0, 0, 1], "width": 160, "height": 120}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The built-in models folder (toy 1, box 2, symmetric 3): 4 scene images of all three, and a quick
    ``experiments.bop_train`` run of the toy and the symmetric object (the box left untrained)."""
    from experiments.bop_train import bop_train
    from pose_core.objects import builtin_models_dir
    from render.testing import run_scenes

    root = tmp_path_factory.mktemp("all")
    cam = root / "camera.json"
    cam.write_text(json.dumps(CAMERA))
    bop_root = run_scenes(builtin_models_dir(), root / "bop", num_images=4, camera=str(cam),
                          objects_per_image=(3, 3))  # a subprocess: no GL context beside TensorFlow
    run = bop_train(builtin_models_dir(), root / "set", [1, 3], budget="quick")
    model_dirs = json.loads((run / "objects.json").read_text())["objects"]
    return root, bop_root, {int(k): v for k, v in model_dirs.items()}, 2


def test_all_objects_into_one_csv_and_one_table(setup, tmp_path):
    from pose_net.evaluate import evaluate_all

    root, bop_root, model_dirs, other = setup
    trained = sorted(model_dirs)
    result = evaluate_all(root / "set", bop_root, csv_path=tmp_path / "all.csv", report_dir=tmp_path / "rep",
                          num_pictures=2, min_visib=0.0)
    assert sorted(int(k) for k in result["objects"]) == trained
    assert result["not_trained"] == [other] and result["not_in_test_set"] == []
    rows = bop.read_results_csv(tmp_path / "all.csv")
    assert sorted({r.obj_id for r in rows}) == trained
    assert len(rows) == 8 == result["mean"]["instances"]  # 4 images x the 2 trained of the 3 objects in each
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "mean over 2 objects" in table and f"not in the model folder: {other}" in table
    for obj_id in trained:
        assert (tmp_path / "rep" / f"obj_{obj_id:06d}" / "metrics.json").is_file()
    sym = [v for v in result["objects"].values() if v["symmetric"]]
    assert len(sym) == 1  # the symmetric object scored by ADD-S in the mean
    expected = np.mean([v["add_s_recall" if v["symmetric"] else "add_recall"] for v in result["objects"].values()])
    assert result["mean"]["score_recall"] == pytest.approx(expected)


def test_min_visib_and_test_targets_choose_the_instances(setup, tmp_path):
    from pose_net.evaluate import evaluate, evaluate_all

    root, bop_root, model_dirs, _ = setup
    trained = sorted(model_dirs)
    info = bop.load_scene_gt_info(bop_root / "test" / "000000" / "scene_gt_info.json")
    gt = bop.load_scene_gt(bop_root / "test" / "000000" / "scene_gt.json")
    obj = trained[0]
    visib = [info[i][k]["visib_fract"] for i in gt for k, inst in enumerate(gt[i]) if inst["obj_id"] == obj]
    threshold = float(np.median(visib))
    kept = evaluate(root / "set" / model_dirs[obj], bop_root, obj, min_visib=threshold)
    assert kept["instances"] == sum(v >= threshold for v in visib)
    with pytest.raises(PoseInputError, match="no instance"):
        evaluate_all(root / "set", bop_root, min_visib=1.01)
    (bop_root / bop.TEST_TARGETS_FILE).write_text(json.dumps([{"scene_id": 0, "im_id": 1, "obj_id": obj,
                                                                "inst_count": 1}]))
    try:
        result = evaluate_all(root / "set", bop_root, min_visib=0.0)
        assert result["objects"][str(obj)]["instances"] == 1
        assert all(v is None for k, v in result["objects"].items() if int(k) != obj)
    finally:
        (bop_root / bop.TEST_TARGETS_FILE).unlink()


def test_a_model_folder_index_naming_a_missing_model_is_refused(setup, tmp_path):
    from pose_net.inference import model_set

    root, _, model_dirs, _ = setup
    trained = sorted(model_dirs)
    (tmp_path / "objects.json").write_text(json.dumps({"objects": {str(trained[0]): "nowhere"}}))
    with pytest.raises(PoseInputError, match="nowhere"):
        model_set(tmp_path)
    (tmp_path / "objects.json").write_text("[1, 2]")
    with pytest.raises(PoseInputError, match="objects"):
        model_set(tmp_path)
    one = root / "set" / model_dirs[trained[0]]
    assert list(model_set(one)) == [json.loads((one / "config.json").read_text())["obj_id"]] == [trained[0]]


def test_bop_train_resumes_and_refuses_another_recipe(setup, capsys):
    from experiments.bop_train import bop_train
    from pose_core.objects import builtin_models_dir
    from render.scenes import SceneError

    root, _, _, _ = setup
    before = (root / "set" / "obj_000001" / "model.keras").stat().st_mtime
    bop_train(builtin_models_dir(), root / "set", [1, 3], budget="quick")  # nothing left to do
    assert "trained, skipping" in capsys.readouterr().out
    assert (root / "set" / "obj_000001" / "model.keras").stat().st_mtime == before
    with pytest.raises(PoseInputError, match="--head=direct"):
        bop_train(builtin_models_dir(), root / "set", [1], budget="quick", head="coords")
    with pytest.raises(SceneError, match="no object 9"):
        bop_train(builtin_models_dir(), root / "other", [1, 9], budget="quick")
    assert not (root / "other").exists()  # refused before anything was written


@pytest.mark.parametrize("budget", ["quick", "cpu", "gpu"])
@pytest.mark.parametrize("head", ["direct", "coords"])
def test_bop_train_recipe_is_one_pose_net_train_accepts(budget, head):
    """Every budget's recipe for every head passes ``pose_net.train``'s flag checks (the ``cpu`` budget's feature
    cache serves the direct head only: the coordinate head trains on wall time instead)."""
    from experiments.bop_train import COORDS_CPU_TRAIN_MINUTES, train_recipe
    from pose_net.train import check_training_flags, default_flag_values

    recipe = train_recipe(budget, head)
    check_training_flags(default_flag_values(dataset="data", model_dir="model", head=head, **recipe))
    assert recipe.get("feature_cache", False) == (budget == "cpu" and head == "direct")
    if budget == "cpu" and head == "coords":
        assert recipe["time_budget_min"] == COORDS_CPU_TRAIN_MINUTES and recipe["freeze_backbone"]
    with pytest.raises(PoseInputError, match="--feature_cache needs"):
        check_training_flags(default_flag_values(dataset="data", model_dir="model", head="coords",
                                                 **train_recipe("cpu", "direct")))


def test_bop_train_command_line_names_a_bad_object(tmp_path):
    """The command exits 2 naming the problem; importing it beside modules with flags of the same names (as a
    test process does) defines no flags twice."""
    import subprocess
    import sys

    import render.generate  # noqa: F401  (defines --out)
    import experiments.bop_train  # noqa: F401
    from pose_core.objects import builtin_models_dir
    from render.testing import REPO_ROOT, subprocess_env

    proc = subprocess.run([sys.executable, "-m", "experiments.bop_train", f"--models_dir={builtin_models_dir()}",
                           f"--out={tmp_path / 'run'}", "--obj_ids=1,9", "--budget=quick"], cwd=REPO_ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no object 9" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_bop_train_esac_one_model_scored_and_used_like_the_per_object_ones(setup, tmp_path):
    """``bop_train --esac``: one ESAC model of the toy and the symmetric object (RUN/esac, objects.json pointing
    both at it), scored by ``evaluate_all`` into one CSV (each row under the object the model named) and used by
    ``predict`` on the detector's boxes; an ESAC model asked for predicted boxes is refused by name."""
    import shutil

    from experiments.bop_train import bop_train
    from pose_core.objects import builtin_models_dir
    from pose_net.evaluate import evaluate_all
    from pose_net.predict import predict

    root, bop_root, _, other = setup
    run = tmp_path / "esac_run"
    run.mkdir()
    shutil.copytree(root / "set" / "detector", run / "detector")  # the same objects' detector: not trained again
    bop_train(builtin_models_dir(), run, [1, 3], budget="quick", esac=True)
    assert json.loads((run / "objects.json").read_text())["objects"] == {"1": "esac", "3": "esac"}
    assert json.loads((run / "esac" / "esac.json").read_text())["init_from"] == str(run / "esac_experts")
    result = evaluate_all(run, bop_root, csv_path=tmp_path / "all.csv", min_visib=0.0)
    assert sorted(int(k) for k in result["objects"]) == [1, 3] and result["not_trained"] == [other]
    assert all(0.0 <= v["gating_accuracy"] <= 1.0 and v["head"] == "esac" for v in result["objects"].values())
    rows = bop.read_results_csv(tmp_path / "all.csv")
    assert len(rows) == 8 and {r.obj_id for r in rows} <= {1, 3}
    with pytest.raises(PoseInputError, match="ground-truth boxes"):
        evaluate_all(run, bop_root, boxes="predicted", min_visib=0.0)
    cam = tmp_path / "camera.json"
    cam.write_text(json.dumps(CAMERA))
    image = sorted((bop_root / "test" / "000000" / "rgb").iterdir())[0]
    out = predict(run, image, cam, out=tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()
    for o in out["objects"]:
        assert o["obj_id"] in (1, 3) and 0.0 <= o["gating_probability"] <= 1.0 and len(o["R"]) == 9
    single = predict(run / "esac", image, cam, box=[40, 30, 60, 50])
    assert single["obj_id"] in (1, 3)
    with pytest.raises(PoseInputError, match="--box"):
        predict(run / "esac", image, cam)
