"""The coordinate head end to end on tiny rendered datasets: its targets lie on the mesh and reproject onto their
pixels, perfect coordinates give the true pose through RANSAC-PnP, training lowers its losses, and a trained model
goes through training, evaluation and prediction with its coordinate pictures."""
import json

import numpy as np
import pytest

from pose_core import metrics
from pose_core.mesh import load_mesh
from render.dataset import load_dataset_info
from render.testing import run_generate, surface_distance_mm

INPUT = 64


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """48 renderings each of the built-in toy and the built-in symmetric object at 64x64, in 2 shards."""
    root = tmp_path_factory.mktemp("coords")
    for name in ("toy", "symmetric"):
        proc = run_generate(root / name, mesh=name, num_images=48, num_shards=2, seed=4, image_size=INPUT, workers=1)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def _spec_and_batch(dataset_dir, n=24, training=False):
    from pose_core.symmetry import symmetries_for_mesh
    from pose_net import data as pdata
    from pose_net.coordinates import CoordinateFrame

    info = load_dataset_info(dataset_dir)
    sym, _ = symmetries_for_mesh(info["mesh"], info["obj_id"], info["symmetric"])
    spec = pdata.CoordinateTargetSpec(CoordinateFrame.from_points(info["model_points_mm"]), sym)
    cfg = pdata.PipelineConfig(input_size=INPUT, augment=training)
    batch = next(iter(pdata.make_dataset(dataset_dir, cfg, n, "train", training=training, coordinate_spec=spec)))
    return info, spec, batch


@pytest.mark.parametrize("name", ["toy", "symmetric"])
def test_targets_lie_on_the_mesh_and_reproject_onto_their_pixels(datasets, name):
    from pose_net import parametrization as param
    from pose_net.coordinates import OUTPUT_STRIDE, canonical_symmetry_transform

    info, spec, batch = _spec_and_batch(datasets / name)
    mesh = load_mesh(info["mesh"])
    out = INPUT // OUTPUT_STRIDE
    K_out = param.crop_intrinsics(batch["K"], batch["crop_center"], batch["crop_size"], out).numpy()
    R, t = batch["R"].numpy().astype(np.float64), batch["t_mm"].numpy().astype(np.float64)
    if spec.symmetries.is_symmetric:  # the targets show the canonical pose P @ S
        Rs, ts = canonical_symmetry_transform(param.egocentric_to_allocentric(batch["R"], batch["t_mm"]),
                                              spec.symmetries)
        Rs, ts = Rs.numpy().astype(np.float64), ts.numpy().astype(np.float64)
        t = np.einsum("bij,bj->bi", R, ts) + t
        R = R @ Rs
    coords = spec.frame.denormalise(batch["coords_target"]).numpy()
    mask = batch["mask_target"].numpy() > 0
    assert mask.sum() > 24 * 20, "too few object pixels to test"
    for b in range(len(R)):
        rows, cols = np.nonzero(mask[b])
        xyz = coords[b, rows, cols].astype(np.float64)
        dist = surface_distance_mm(mesh, xyz)
        assert np.quantile(dist, 0.98) < 0.02 * info["diameter_mm"], f"sample {b}: off the mesh"
        uvw = (xyz @ R[b].T + t[b]) @ K_out[b].T
        err = np.hypot(uvw[:, 0] / uvw[:, 2] - cols, uvw[:, 1] / uvw[:, 2] - rows)
        # nearest-pixel sampling of a 64-px rendering onto the 32-px grid: within one grid pixel
        assert np.quantile(err, 0.98) < 1.0, f"sample {b}: reprojection {np.quantile(err, 0.98):.2f} px"


def test_perfect_coordinates_give_the_true_pose(datasets):
    """The decoding path alone (correspondences -> tf_ops.ransac_pnp -> pose in the camera) on the targets."""
    import tensorflow as tf

    from pose_net.coordinates import PnPSettings, solve_pose

    info, spec, batch = _spec_and_batch(datasets / "toy")
    outputs = {"coords": batch["coords_target"], "mask": tf.where(batch["mask_target"][..., None] > 0, 10.0, -10.0)}
    R, t, ok, inliers, inlier_error = solve_pose(outputs, batch["K"], batch["crop_center"], batch["crop_size"],
                                                 spec.frame, info["diameter_mm"], PnPSettings(threshold_px=1.5))
    points = np.asarray(info["model_points_mm"])
    errors = metrics.add_batch(R, t, batch["R"].numpy(), batch["t_mm"].numpy(), points)
    assert ok.all() and np.all(inliers > 10)
    assert np.all(inlier_error < 1.5), inlier_error  # inliers are within the threshold by definition
    assert np.median(errors) < 0.02 * info["diameter_mm"], np.median(errors)
    assert metrics.recall(errors, info["diameter_mm"]) >= 0.9


def test_depth_gives_the_targets_camera_points_and_rgbd_ransac_the_true_pose(datasets):
    """RGB-D: the camera points read from the depth image at the grid pixels are the true pose applied to the
    coordinate targets (what DSAC's RGB-D stage trains with), and RANSAC-Kabsch on the targets, with a third of
    them replaced by outliers, gives the true pose."""
    import itertools

    import tensorflow as tf

    from pose_core.symmetry import Symmetries
    from pose_net import parametrization as param
    from pose_net.coordinates import (CoordinateFrame, camera_points_from_depth, coordinate_targets,
                                      solve_pose_rgbd)
    from render.dataset import read_samples

    info = load_dataset_info(datasets / "toy")
    samples = list(itertools.islice(read_samples(datasets / "toy"), 8))
    stack = lambda key: tf.constant(np.stack([s[key] for s in samples]), tf.float32)  # noqa: E731
    depth, K, R, t = stack("depth_mm"), stack("K"), stack("R"), stack("t_mm")
    center, size = param.roi_crop_from_box(stack("bbox_xywh"))
    frame = CoordinateFrame.from_points(info["model_points_mm"])
    s = INPUT // 2
    coords, mask = coordinate_targets(depth, stack("mask"), K, R, t, center, size, s, frame, Symmetries())
    cam = camera_points_from_depth(depth, K, center, size, s).numpy()
    expected = np.einsum("bij,bhwj->bhwi", R.numpy(), frame.denormalise(coords).numpy()) + t.numpy()[:, None, None]
    on = mask.numpy() > 0
    assert on.sum() > 100 and np.all(cam[~on][..., 2] == 0)
    np.testing.assert_allclose(cam[on], expected[on], atol=0.5)  # mm
    rng = np.random.default_rng(0)
    noisy = coords.numpy().copy()
    bad = on & (rng.random(on.shape) < 0.33)
    noisy[bad] = rng.uniform(-0.5, 0.5, (int(bad.sum()), 3))
    outputs = {"coords": tf.constant(noisy), "mask": tf.where(mask[..., None] > 0, 10.0, -10.0)}
    R_est, t_est, ok, inliers, error_mm = solve_pose_rgbd(outputs, cam, K, center, size, frame, info["diameter_mm"])
    errors = metrics.add_batch(R_est, t_est, R.numpy(), t.numpy(), np.asarray(info["model_points_mm"]))
    assert ok.all() and np.all(inliers >= 0.5 * on.reshape(8, -1).sum(1)), inliers
    assert np.all(errors < 0.02 * info["diameter_mm"]), errors
    assert np.all(error_mm < 0.05 * info["diameter_mm"])
    # no depth at all: not ok, the fallback pose, no crash
    R_fb, t_fb, ok, _, _ = solve_pose_rgbd(outputs, np.zeros_like(cam), K, center, size, frame, info["diameter_mm"])
    assert not ok.any() and np.all(np.isfinite(t_fb))


def test_a_few_steps_lower_the_coordinate_and_mask_losses(datasets):
    import keras
    import tensorflow as tf

    from pose_net import losses
    from pose_net.model import build_coordinate_model

    keras.utils.set_random_seed(2)
    _, _, batch = _spec_and_batch(datasets / "toy")
    model = build_coordinate_model("small", INPUT)
    weights = losses.LossWeights(regularization=0.0)
    optimizer = keras.optimizers.Adam(2e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            total, terms = losses.coordinate_head_loss(model(batch["image"], training=True), batch, model, weights)
        optimizer.apply_gradients(zip(tape.gradient(total, model.trainable_variables), model.trainable_variables))
        return terms

    first = {k: float(v) for k, v in step().items()}
    for _ in range(40):
        last = {k: float(v) for k, v in step().items()}
    assert last["coords"] < 0.6 * first["coords"], (first, last)
    assert last["mask"] < 0.5 * first["mask"], (first, last)


def test_train_evaluate_predict_with_the_coordinate_head(datasets, tmp_path):
    from PIL import Image

    from experiments.common import export_bop_test_set
    from pose_net.evaluate import evaluate
    from pose_net.predict import predict
    from pose_net.train import default_flag_values, train

    data = datasets / "symmetric"
    model_dir = tmp_path / "m"
    flags = default_flag_values(dataset=str(data), model_dir=str(model_dir), head="coords", backbone="small",
                                backbone_weights="none", input_size=INPUT, batch_size=8, epochs=1, progress=False,
                                max_val_images=8)
    train(flags)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["head"] == "coords" and config["symmetries"]["continuous"], config.get("symmetries")
    info = load_dataset_info(data)
    root = export_bop_test_set(data, tmp_path / "bop", info["obj_id"], info["mesh"], info["diameter_mm"], True)
    result = evaluate(model_dir, root, info["obj_id"], "gt", report_dir=tmp_path / "rep", num_pictures=4)
    assert result["head"] == "coords" and result["instances"] == 48
    assert (tmp_path / "rep" / "overlays.png").is_file()
    predicted = evaluate(model_dir, root, info["obj_id"], "predicted")  # box from the mask on the whole image
    assert predicted["instances"] == 48
    image = root / "test" / "000000" / "rgb" / "000000.png"
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps({"cam_K": json.loads((root / "test" / "000000" / "scene_camera.json").read_text())
                               ["0"]["cam_K"]}))
    out = predict(model_dir, image, cam, out=tmp_path / "overlay.png")
    assert len(out["R"]) == 9 and "ok" in out and "num_inliers" in out
    assert Image.open(tmp_path / "overlay.png").width > INPUT  # the photo, then the zoom and the maps beside it
    # resuming a model folder with the other head is refused
    from pose_core import PoseInputError

    with pytest.raises(PoseInputError, match="head"):
        train(dict(flags, head="direct"))


def test_a_dataset_without_depth_is_refused_with_a_clear_error(datasets, tmp_path):
    import shutil

    from pose_net import data as pdata
    from render.dataset import DatasetError

    old = tmp_path / "old"
    shutil.copytree(datasets / "toy", old)
    info = json.loads((old / "dataset.json").read_text())
    info["format_version"] = 1
    (old / "dataset.json").write_text(json.dumps(info))
    _, spec, _ = _spec_and_batch(datasets / "toy", n=2)
    with pytest.raises(DatasetError, match="Re-render it"):
        pdata.make_dataset(old, pdata.PipelineConfig(input_size=INPUT), 2, coordinate_spec=spec)


@pytest.mark.parametrize("name", ["toy", "symmetric"])
def test_dsac_loss_is_near_zero_on_the_targets(datasets, name):
    """Perfect coordinate maps give hypotheses at the true pose; for the symmetric object the DSAC term compares
    against the canonical pose the targets were made with (pose_net.dsac.canonical_true_pose)."""
    import tensorflow as tf

    from pose_net import dsac

    info, spec, batch = _spec_and_batch(datasets / name, n=8)
    outputs = {"coords": batch["coords_target"], "mask": tf.where(batch["mask_target"][..., None] > 0, 10.0, -10.0)}
    settings = dsac.DsacSettings(num_hypotheses=16, threshold_px=1.5)
    loss, terms = dsac.coordinate_dsac_loss(outputs, batch, spec.frame, spec.symmetries,
                                            np.asarray(info["model_points_mm"], np.float32), info["diameter_mm"],
                                            settings)
    assert float(terms["dsac_ok"]) == 1.0
    # degrees + 0.1 / mm: nearest-pixel targets on a 32-px grid leave a few degrees
    assert float(loss) < 10.0, float(loss)
    noisy = dict(outputs, coords=outputs["coords"] + tf.random.normal(tf.shape(outputs["coords"]), stddev=0.1, seed=1))
    worse, _ = dsac.coordinate_dsac_loss(noisy, batch, spec.frame, spec.symmetries,
                                         np.asarray(info["model_points_mm"], np.float32), info["diameter_mm"], settings)
    assert float(worse) > float(loss)
    rgbd, terms = dsac.coordinate_dsac_loss(outputs, batch, spec.frame, spec.symmetries,
                                            np.asarray(info["model_points_mm"], np.float32), info["diameter_mm"],
                                            settings, rgbd=True)
    assert float(terms["dsac_ok"]) == 1.0 and float(rgbd) < 2.0, float(rgbd)  # exact 3D-3D: near 0
    worse, _ = dsac.coordinate_dsac_loss(noisy, batch, spec.frame, spec.symmetries,
                                         np.asarray(info["model_points_mm"], np.float32), info["diameter_mm"],
                                         settings, rgbd=True)
    assert float(worse) > float(rgbd)


def test_dsac_and_ngdsac_stages_start_from_a_coordinate_model(datasets, tmp_path):
    """--stage dsac / ngdsac: weights from --init_from, the stage recorded, NG-DSAC's sampling output used by
    evaluation (its weights drawn beside the coordinate maps); wrong combinations are refused."""
    from pose_core import PoseInputError
    from experiments.common import export_bop_test_set
    from pose_net.evaluate import evaluate
    from pose_net.train import default_flag_values, train

    data = datasets / "toy"
    base = dict(dataset=str(data), head="coords", backbone="small", backbone_weights="none", input_size=INPUT,
                batch_size=8, epochs=1, progress=False, max_val_images=8)
    train(default_flag_values(model_dir=str(tmp_path / "stage1"), **base))
    info = load_dataset_info(data)
    root = export_bop_test_set(data, tmp_path / "bop", info["obj_id"], info["mesh"], info["diameter_mm"], False)
    widths = {}
    for stage in ("dsac", "ngdsac", "dsac_rgbd"):
        model_dir = tmp_path / stage
        train(default_flag_values(model_dir=str(model_dir), stage=stage, init_from=str(tmp_path / "stage1"),
                                  **base))
        config = json.loads((model_dir / "config.json").read_text())
        history = [json.loads(line) for line in (model_dir / "history.jsonl").read_text().splitlines()]
        assert config["stage"] == stage and "dsac" in history[-1] and np.isfinite(history[-1]["total"])
        result = evaluate(model_dir, root, info["obj_id"], "gt", report_dir=tmp_path / f"rep_{stage}",
                          num_pictures=2)
        assert result["instances"] == 48 and "inlier_error_median_px" in result
        from pose_net.inference import PoseEstimator

        est = PoseEstimator(model_dir)
        widths[stage] = est.estimate(np.zeros((INPUT, INPUT, 3), np.uint8), np.array(
            [[INPUT, 0, INPUT / 2], [0, INPUT, INPUT / 2], [0, 0, 1.0]]), [16, 16, 32, 32]).coordinate_picture.shape[1]
    assert widths["ngdsac"] > widths["dsac"]  # the sampling weights' panel
    # the RGB-D test set: depth images exported, poses by RANSAC-Kabsch
    rgbd = evaluate(tmp_path / "dsac_rgbd", root, info["obj_id"], "gt", depth=True)
    assert rgbd["instances"] == 48 and rgbd["depth"] and rgbd["translation"] == "ransac_kabsch"
    (root / "test" / "000000" / "depth" / "000003.png").unlink()
    with pytest.raises(PoseInputError, match="000003.png"):
        evaluate(tmp_path / "dsac_rgbd", root, info["obj_id"], "gt", depth=True)
    # a killed NG-DSAC run (checkpoints, no export) still loads, sampling head included
    import shutil

    from pose_net.inference import load_config, load_model

    killed = tmp_path / "ngdsac_killed"
    shutil.copytree(tmp_path / "ngdsac", killed)
    (killed / "model.keras").unlink()
    assert "sampling" in load_model(killed, load_config(killed)).output
    with pytest.raises(PoseInputError, match="head coords"):
        train(default_flag_values(model_dir=str(tmp_path / "x"), **dict(base, head="direct"), stage="dsac"))
    with pytest.raises(PoseInputError, match="no model.keras"):
        train(default_flag_values(model_dir=str(tmp_path / "y"), stage="dsac", init_from=str(tmp_path), **base))
    with pytest.raises(PoseInputError, match="stage"):  # a dsac model folder does not resume as another stage
        train(default_flag_values(model_dir=str(tmp_path / "dsac"), stage="ngdsac",
                                  init_from=str(tmp_path / "stage1"), **base))
