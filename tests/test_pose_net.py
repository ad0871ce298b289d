"""pose_net end to end on tiny rendered datasets: the losses are wired right, the network can overfit, training
resumes after a kill, evaluation writes BOP results, and bad input gets clear errors."""
import json
import shutil

import numpy as np
import pytest

from pose_core import PoseInputError, bop, metrics
from render.dataset import load_dataset_info

INPUT = 64  # conftest.TINY_INPUT: the tiny dataset's images


def _fixed_batch(dataset_dir, n=64):
    from pose_net import data as pdata

    cfg = pdata.PipelineConfig(input_size=INPUT, augment=False)
    return next(iter(pdata.make_dataset(dataset_dir, cfg, n, "train", training=False)))


def _trainer(model, batch, weights, points, diameter, lr):
    import keras
    import tensorflow as tf

    from pose_net import losses

    optimizer = keras.optimizers.Adam(lr)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = model(batch["image"], training=True)
            total, terms = losses.total_loss(out, batch, model, weights, points, diameter, False, INPUT)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total, terms

    return step


def test_a_few_steps_lower_every_loss_term(tiny_dataset):
    import keras

    from pose_net import losses
    from pose_net.model import build_pose_model

    keras.utils.set_random_seed(1)
    info = load_dataset_info(tiny_dataset)
    points = np.asarray(info["model_points_mm"], np.float32)[:256]
    batch = _fixed_batch(tiny_dataset)
    model = build_pose_model("small", INPUT, dropout=0.0)
    weights = losses.LossWeights(projection=1.0, regularization=1e-4)
    step = _trainer(model, batch, weights, points, info["diameter_mm"], 1e-3)
    _, first = step()
    for _ in range(40):
        _, last = step()
    for name in ("box", "rotation", "translation", "projection", "regularization"):
        assert float(last[name]) < float(first[name]), (name, float(first[name]), float(last[name]))


def test_network_overfits_64_renderings(tiny_dataset):
    import keras

    from pose_net import losses
    from pose_net.inference import PoseEstimator
    from pose_net.model import build_pose_model

    keras.utils.set_random_seed(0)
    info = load_dataset_info(tiny_dataset)
    points = np.asarray(info["model_points_mm"], np.float32)
    diameter = info["diameter_mm"]
    batch = _fixed_batch(tiny_dataset)
    assert batch["image"].shape[0] == 64
    model = build_pose_model("small", INPUT, dropout=0.0)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, 300, alpha=0.01)
    step = _trainer(model, batch, losses.LossWeights(regularization=0.0), points[:256], diameter, schedule)
    for _ in range(300):
        step()
    estimator = PoseEstimator(model=model, config={"input_size": INPUT, "diameter_mm": diameter,
                                                   "model_points_mm": points.tolist()})
    R, t = estimator.estimate_batch(batch)
    errors = metrics.add_batch(R, t, batch["R"].numpy(), batch["t_mm"].numpy(), points)
    assert metrics.recall(errors, diameter) >= 0.9, np.sort(errors)


def _train_flags(dataset, model_dir, **overrides):
    from pose_net.train import default_flag_values

    values = default_flag_values(dataset=str(dataset), model_dir=str(model_dir), backbone="small",
                                 backbone_weights="none", input_size=INPUT, batch_size=16, epochs=3,
                                 lambda_projection=0.1, progress=False, max_val_images=32, checkpoint_every_steps=2)
    values.update(overrides)
    return values


def test_killed_training_resumes_to_the_same_figures(tiny_dataset, tmp_path):
    import tensorflow as tf

    from pose_net.train import train

    tf.config.experimental.enable_op_determinism()
    uninterrupted = train(_train_flags(tiny_dataset, tmp_path / "a"))
    # "kill" in the middle of epoch 2 (4 steps per epoch, checkpoints every 2 steps), then start again
    assert train(_train_flags(tiny_dataset, tmp_path / "b", stop_after_steps=7)) == {}
    assert not (tmp_path / "b" / "model.keras").exists()
    resumed = train(_train_flags(tiny_dataset, tmp_path / "b"))
    history = [json.loads(line) for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for key in ("add_mean_mm", "add_s_mean_mm"):
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=0.05), key
    assert (tmp_path / "b" / "model.keras").is_file() and (tmp_path / "b" / "logs").is_dir()


def test_evaluate_writes_bop_results_and_report(tiny_dataset, tmp_path):
    from experiments.common import export_bop_test_set
    from pose_core.objects import builtin_model_path
    from pose_net.evaluate import evaluate
    from pose_net.train import train

    # with rotation hypotheses (the default of the demo and the tables), which evaluation must load
    train(_train_flags(tiny_dataset, tmp_path / "m", epochs=1, rotation_repr="6d", rotation_hypotheses=4))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["rotation_hypotheses"] == 4
    history = [json.loads(line) for line in (tmp_path / "m" / "history.jsonl").read_text().splitlines()]
    assert {"rotation_hypotheses", "rotation_selection"} <= set(history[-1]), history[-1]
    info = json.loads((tiny_dataset / "dataset.json").read_text())
    root = export_bop_test_set(tiny_dataset, tmp_path / "bop", 1, str(builtin_model_path("toy")),
                               info["diameter_mm"], False)
    result = evaluate(tmp_path / "m", root, 1, "gt", csv_path=tmp_path / "r.csv", report_dir=tmp_path / "rep",
                      num_pictures=4)
    assert result["instances"] == 96
    assert 0.0 <= result["add_recall"] <= result["add_s_recall"] <= 1.0
    # the rotation's share: the angle of each estimate against the truth, and ADD with the true translation
    per_instance = json.loads((tmp_path / "rep" / "per_instance.json").read_text())
    for r in per_instance:
        assert 0.0 <= r["r_err_deg"] <= 180.0
        assert r["add_mm_true_translation"] <= r["add_mm"] + r["t_err_mm"] + 1e-3  # triangle inequality
    assert result["r_err_median_deg"] == pytest.approx(np.median([r["r_err_deg"] for r in per_instance]))
    assert result["add_recall_true_translation"] == pytest.approx(
        np.mean([r["add_mm_true_translation"] < 0.1 * result["diameter_mm"] for r in per_instance]))
    rows = bop.read_results_csv(tmp_path / "r.csv")
    assert len(rows) == 96 and all(r.obj_id == 1 for r in rows)
    for f in ("metrics.json", "table.md", "overlays.png", "accuracy_vs_threshold.png"):
        assert (tmp_path / "rep" / f).is_file(), f
    predicted = evaluate(tmp_path / "m", root, 1, "predicted")
    assert predicted["instances"] == 96
    for option in ("refine_boxes", "fit_box_model"):  # no detector in the model folder
        with pytest.raises(PoseInputError, match=f"--{option} works on a detector's boxes, and there is none"):
            evaluate(tmp_path / "m", root, 1, "predicted", **{option: True if option == "refine_boxes" else root})


def test_corrupt_shard_is_named_with_its_record(tiny_dataset, tmp_path):
    from pose_net.train import train
    from render.dataset import DatasetError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    shard = broken / "train-00000-of-00003.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"train-00000-of-00003.tfrecord: record \d+"):
        train(_train_flags(broken, tmp_path / "m", epochs=1))


def test_model_dir_of_another_object_is_refused(tiny_dataset, tmp_path):
    from pose_net.train import train

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"obj_id": 7, "diameter_mm": 50.0}))
    with pytest.raises(PoseInputError, match="holds a model of object 7"):
        train(_train_flags(tiny_dataset, model_dir, epochs=1))


def test_clear_errors_for_predict_inputs(tmp_path):
    from pose_net.inference import PoseEstimator
    from pose_net.predict import load_camera, load_image

    (tmp_path / "empty_model").mkdir()
    with pytest.raises(PoseInputError, match="holds no trained model"):
        PoseEstimator(tmp_path / "empty_model")
    with pytest.raises(PoseInputError, match="does not exist"):
        PoseEstimator(tmp_path / "nowhere")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PoseInputError, match="bad.png cannot be read"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "cam.json").write_text('{"width": 640}')
    with pytest.raises(PoseInputError, match="cam.json has no 'K'"):
        load_camera(tmp_path / "cam.json")
    (tmp_path / "cam2.json").write_text('{"cam_K": [1, 0, 2, 0, 1, 3, 0, 0, 1]}')
    assert np.allclose(load_camera(tmp_path / "cam2.json"), [[1, 0, 2], [0, 1, 3], [0, 0, 1]])
    # a camera of another image size: named, not a silently wrong pose
    linemod = {"cam_K": [572.4, 0, 325.3, 0, 573.6, 242.0, 0, 0, 1], "width": 640, "height": 480}
    (tmp_path / "cam3.json").write_text(json.dumps(linemod))
    assert load_camera(tmp_path / "cam3.json", (480, 640)).shape == (3, 3)
    with pytest.raises(PoseInputError, match="for 640x480 images, the image is 320x240"):
        load_camera(tmp_path / "cam3.json", (240, 320))
    (tmp_path / "cam4.json").write_text(json.dumps({"cam_K": linemod["cam_K"]}))
    with pytest.raises(PoseInputError, match="320x240.*another image size"):
        load_camera(tmp_path / "cam4.json", (240, 320))


def test_translation_from_the_box_fits_the_model_into_the_box():
    """``translation="box"``: the returned translation is :func:`translation_from_box`'s for the network's own
    rotation, the box the crop was made from and the regressed translation as the start; the rotation is the
    network's either way; ``auto`` fits given boxes only, and blends a detector's box fit with the regressed
    translation; an unknown source is named."""
    import keras

    from pose_core.geometry import translation_from_box
    from pose_net.inference import PoseEstimator
    from pose_net.model import build_pose_model

    keras.utils.set_random_seed(0)
    points = np.random.default_rng(0).normal(size=(500, 3)) * np.array([40.0, 20.0, 10.0])
    config = {"input_size": INPUT, "diameter_mm": 120.0, "model_points_mm": points.tolist()}
    model = build_pose_model("small", INPUT)
    image = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    K = np.array([[150.0, 0, 79.5], [0, 150.0, 59.5], [0, 0, 1]])
    box = np.array([50.0, 30.0, 40.0, 36.0])
    regressed = PoseEstimator(model=model, config=config, translation="regressed").estimate(image, K, box)
    fitted = PoseEstimator(model=model, config=config, translation="box").estimate(image, K, box)
    assert fitted.ok and (fitted.translation, regressed.translation) == ("box", "regressed")
    # the default fits the box when one is given, and keeps the regressed translation behind the network's own box
    auto = PoseEstimator(model=model, config=config)
    np.testing.assert_allclose(auto.estimate(image, K, box).t_mm, fitted.t_mm)
    assert auto.estimate(image, K).translation == "regressed"
    np.testing.assert_allclose(fitted.R, regressed.R)
    expected, ok = translation_from_box(np.float32(points), regressed.R, box, K, regressed.t_mm, image.shape[:2])
    assert ok
    np.testing.assert_allclose(fitted.t_mm, expected)
    np.testing.assert_allclose(fitted.t_regressed_mm, regressed.t_mm)  # kept beside it, for the thesis' figure
    assert np.linalg.norm(fitted.t_mm - regressed.t_mm) > 1.0  # an untrained head's translation is not the box's
    # a detector's box: auto blends the fit with the regressed translation (the fit is only as good as the box)
    from pose_net.inference import DETECTION_BOX_FIT_WEIGHT

    blended = auto.estimate(image, K, box, box_is_detection=True)
    assert blended.translation == "blend" and 0.0 < DETECTION_BOX_FIT_WEIGHT < 1.0
    np.testing.assert_allclose(blended.t_mm, DETECTION_BOX_FIT_WEIGHT * fitted.t_mm
                               + (1 - DETECTION_BOX_FIT_WEIGHT) * regressed.t_mm, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(PoseEstimator(model=model, config=config, translation="blend").estimate(
        image, K, box).t_mm, blended.t_mm, rtol=1e-5, atol=1e-4)
    with pytest.raises(PoseInputError, match="unknown translation source"):
        PoseEstimator(model=model, config=config, translation="depth")
