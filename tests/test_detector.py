"""The whole-photo detector (pose_net/detector.py): its targets decode back to the boxes they came from, detections
pair with true boxes without looking at the truth to choose them, a short training on rendered scenes finds the
objects of those scenes, and ``pose_net.evaluate --boxes predicted`` / ``pose_net.predict`` use it; bad input is
named."""
import json
from pathlib import Path

import numpy as np
import pytest

from pose_core import PoseInputError

CAMERA = {"cam_K": [240.0, 0, 79.5, 0, 240.0, 59.5, 0, 0, 1], "width": 160, "height": 120}


def test_targets_decode_to_their_boxes():
    from pose_net import detector as det

    boxes = [np.array([30.0, 40, 80, 50]), np.array([150.0, 100, 40, 90])]  # photo pixels
    scale, h_in, w_in = det.input_shape(480, 640)
    assert (scale, h_in, w_in) == (0.5, 256, 320)  # 320x240, padded to a multiple of 32
    hw = (h_in // det.STRIDE, w_in // det.STRIDE)
    shrunk = [b * scale for b in boxes]
    t = det.instance_targets(shrunk, [0, 1], [False, False], hw)
    heat = det.gaussian_heatmap(shrunk, [0, 1], [False, False], hw, 2)
    assert t["valid"].sum() == 2 and heat.max() == pytest.approx(1.0)
    size = np.zeros((1, *hw, 2), np.float32)
    offset = np.zeros((1, *hw, 2), np.float32)
    for k in range(2):
        iy, ix = divmod(int(t["centre_index"][k]), hw[1])
        assert heat[iy, ix, k] == pytest.approx(1.0)
        size[0, iy, ix], offset[0, iy, ix] = t["size_log"][k], t["offset"][k]
    p = np.clip(heat, 1e-6, 1 - 1e-6)
    found = det.decode({"heatmap": np.log(p / (1 - p))[None], "size": size, "offset": offset}, [5, 7], scale,
                       (480, 640))
    assert sorted(d.obj_id for d in found) == [5, 7]  # the Gaussians' shoulders are no peaks
    for d in found:
        true = boxes[[5, 7].index(d.obj_id)]
        np.testing.assert_allclose(d.bbox_xywh, true, atol=1e-3)
    # an ignored (too occluded) instance is no positive, and its box is left out of the heatmap's loss
    t = det.instance_targets(shrunk, [0, 1], [False, True], hw)
    assert t["valid"].sum() == 1 and t["weight"].min() == 0.0
    assert det.gaussian_heatmap(shrunk, [0, 1], [False, True], hw, 2)[..., 1].max() == 0.0


def test_the_loss_is_lowest_at_the_targets():
    import tensorflow as tf

    from pose_net import detector as det

    hw = (8, 10)
    boxes, classes = [np.array([16.0, 16, 24, 32])], [0]
    t = det.instance_targets(boxes, classes, [False], hw)
    heat = det.gaussian_heatmap(boxes, classes, [False], hw, 1)
    batch = {k: tf.constant(v[None], tf.float32) for k, v in t.items() if k != "centre_index"}
    batch["centre_index"] = tf.constant(t["centre_index"][None])
    batch["heatmap"] = tf.constant(heat[None])
    iy, ix = divmod(int(t["centre_index"][0]), hw[1])
    size = np.zeros((1, *hw, 2), np.float32)
    offset = np.zeros((1, *hw, 2), np.float32)
    size[0, iy, ix], offset[0, iy, ix] = t["size_log"][0], t["offset"][0]
    logits = np.where(heat >= 1 - 1e-6, 8.0, -8.0)[None].astype(np.float32)
    good = det.detection_loss({"heatmap": logits, "size": size, "offset": offset}, batch)
    bad = det.detection_loss({"heatmap": -logits, "size": size + 1, "offset": offset - 0.5}, batch)
    for k in ("heatmap", "size", "offset"):
        assert float(good[k]) < float(bad[k])
    assert float(good["size"]) == pytest.approx(0.0, abs=1e-6)


def test_detections_pair_with_the_true_boxes_they_overlap():
    from pose_net.detector import (Detection, best_iou_among_top, box_iou, detected_share, match_detections,
                                   match_with_ious)

    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    dets = [Detection(3, 0.9, np.array([100.0, 100, 20, 20])), Detection(4, 0.8, np.array([0.0, 0, 20, 20])),
            Detection(3, 0.7, np.array([0.0, 0, 20, 20])), Detection(3, 0.2, np.array([50.0, 50, 5, 5]))]
    truth = [np.array([1.0, 1, 20, 20]), np.array([99.0, 99, 20, 20])]
    matched = match_detections(dets, 3, truth)
    assert [m.score for m in matched] == [0.7, 0.9]  # the top two of object 3, each to the box it overlaps
    assert match_detections(dets, 3, truth[:1])[0].score == 0.9  # one instance: the best detection, wherever
    assert match_detections(dets, 5, truth) == [None, None]
    matched, ious = match_with_ious(dets, 3, truth)  # what evaluate and detection_recall score
    assert matched == match_detections(dets, 3, truth)
    assert ious == pytest.approx([box_iou(m.bbox_xywh, g) for m, g in zip(matched, truth)])
    assert match_with_ious(dets, 5, truth)[1] == [0.0, 0.0]
    assert detected_share([0.9, 0.5, 0.49, 0.0]) == 0.5  # at least DETECTION_IOU (0.5)
    # the diagnostic: one instance at (1, 1), missed by object 3's best detection, found by its second
    assert best_iou_among_top(dets, 3, truth[:1], 1) == [0.0]
    assert best_iou_among_top(dets, 3, truth[:1], 2) == pytest.approx([box_iou(dets[2].bbox_xywh, truth[0])])
    assert best_iou_among_top(dets, 5, truth, 3) == [0.0, 0.0]


def test_bad_input_is_named(tmp_path):
    from pose_net import detector as det

    with pytest.raises(det.DetectorError, match="RGB image"):
        det.prepare_image(np.zeros((10, 10)))
    with pytest.raises(det.DetectorError, match="no trained detector"):
        det.Detector(tmp_path)
    with pytest.raises(det.DetectorError, match="no scene folders"):
        det.list_training_images([tmp_path], None)
    with pytest.raises(det.DetectorError, match="holds no trained detector"):
        det.find_detector(tmp_path, tmp_path / "nothing")
    assert det.find_detector(tmp_path) is None


def test_fewer_training_images_than_one_batch_is_named_before_any_work(tmp_path):
    """Too few images for one batch would train no step (and then fail on an empty record): a clear error instead,
    from fit_head before it builds anything, and from train_detector before the backbone runs."""
    from pose_net import detector as det

    data = {f"features{k}": np.zeros((3, 4, 4, c), np.float16) for k, c in enumerate((40, 112, 320))}
    with pytest.raises(det.DetectorError, match="3 training images, fewer than one batch of 16: render more scenes "
                                                "or lower --batch_size"):
        det.fit_head(data, 1, epochs=2, batch_size=16, progress=False)
    with pytest.raises(det.DetectorError, match="2 training images, fewer than one batch of 3"):
        det.fit_head(data, 1, epochs=2, batch_size=3, index=[0, 2], progress=False)
    with pytest.raises(det.DetectorError, match="--epochs and --batch_size must be >= 1"):
        det.training_steps(10, 0, 4)
    assert det.training_steps(10, 3, 4) == 6  # full batches only, the last partial one left out
    scene = tmp_path / "scenes" / "test" / "000000"
    scene.mkdir(parents=True)
    inst = {"obj_id": 1}
    (scene / "scene_gt.json").write_text(json.dumps({str(i): [inst] for i in range(3)}))
    (scene / "scene_gt_info.json").write_text(json.dumps({str(i): [{"bbox_obj": [1, 1, 5, 5], "visib_fract": 1.0}]
                                                          for i in range(3)}))  # (no images: none is read)
    with pytest.raises(det.DetectorError, match="3 training images, fewer than one batch of 8"):
        det.train_detector([tmp_path / "scenes"], tmp_path / "detector", batch_size=8, progress=False)
    assert not (tmp_path / "detector").exists()  # no features computed, nothing written


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """24 scenes of the built-in toy and box (1-2 per image) at a 160x120 camera, and a detector trained on them:
    on the ImageNet Lite0 when its weights are cached (make pretrained), else on a random one, which trains and
    runs the same path but finds nothing (a random frozen Lite0's features do not localise)."""
    from pose_core.objects import builtin_models_dir
    from pose_net.backbones import pretrained_weights_path
    from pose_net.detector import train_detector
    from render.testing import run_scenes

    root = tmp_path_factory.mktemp("det")
    cam = root / "camera.json"
    cam.write_text(json.dumps(CAMERA))
    scenes = run_scenes(builtin_models_dir(), root / "scenes", num_images=24, camera=str(cam), obj_ids=(1, 2),
                        objects_per_image=(1, 2))
    weights = "imagenet" if pretrained_weights_path() is not None else "none"
    cfg = train_detector([scenes], root / "detector", epochs=60, batch_size=8, backbone_weights=weights,
                         progress=False)
    return root, scenes, cfg


def needs_imagenet(cfg):
    if not cfg["imagenet_weights"]:
        pytest.skip("the ImageNet Lite0 weights are not cached (make pretrained): a detector on a random frozen "
                    "backbone finds nothing to measure")


def test_a_short_training_lowers_the_loss_and_finds_the_objects_of_its_scenes(trained):
    from pose_net.detector import Detector, detection_recall

    root, scenes, cfg = trained
    assert cfg["obj_ids"] == [1, 2]
    assert cfg["final_loss"]["total"] < 0.8 * cfg["first_epoch_loss"]["total"]
    assert not (root / "detector" / "feature_cache").exists()  # removed once the detector is saved
    result = detection_recall(Detector(root / "detector"), scenes, min_visib=0.3)
    assert set(result["per_object"]) == {1, 2} and result["instances"] > 0
    assert result["detection_recall_top3"] >= result["detection_recall"]  # more detections looked at, never fewer
    needs_imagenet(cfg)
    assert cfg["final_loss"]["total"] < 1.0
    assert result["detection_recall"] >= 0.7, result


def test_an_ensemble_of_seeds_trains_each_member_on_features_computed_once(trained, tmp_path, monkeypatch):
    """train_detector_ensemble: one detector per seed under out/members, the backbone's features computed for the
    first and loaded for the others, their ensemble in out (removing the cache); one seed, or a seed twice, is a
    clear error."""
    from pose_net import detector as det

    root, scenes, _ = trained
    caches_found = []
    cache_features = det.cache_features

    def spy(backbone, items, ids, cache_dir, **kw):
        caches_found.append((Path(cache_dir) / "done").is_file())
        return cache_features(backbone, items, ids, cache_dir, **kw)

    monkeypatch.setattr(det, "cache_features", spy)
    weights = "imagenet" if trained[2]["imagenet_weights"] else "none"
    cfg = det.train_detector_ensemble([scenes], tmp_path / "ens", None, (3, 7), epochs=2, batch_size=8,
                                      backbone_weights=weights, progress=False, fine_tune_stages=1)
    assert caches_found == [False, True]
    assert cfg["seeds"] == [3, 7] and cfg["fine_tune_stages"] == 1 and cfg["obj_ids"] == [1, 2]
    assert [json.loads((tmp_path / "ens" / "members" / f"seed{k}" / det.DETECTOR_CONFIG).read_text())["seed"]
            for k in (3, 7)] == [3, 7]
    assert not (tmp_path / "ens" / "feature_cache").exists()
    assert det.Detector(tmp_path / "ens").config["ensemble"]
    for bad in ((3,), (3, 3)):
        with pytest.raises(det.DetectorError, match="at least 2 different seeds"):
            det.train_detector_ensemble([scenes], tmp_path / "bad", None, bad)
    assert not (tmp_path / "bad").exists()


def test_an_ensemble_over_scene_draws_trains_each_member_on_scenes_of_its_own(trained, tmp_path):
    """train_detector_on_renderings(scene_draw_per_seed=True): the i-th training seed's member trains on scenes
    rendered with scene seed ``seed + i``, the first in the given folder, the next beside it (``_draw<seed>``);
    every member's features are removed once it is trained, and the ensemble loads and runs."""
    from pose_core.objects import builtin_models_dir
    from pose_net import detector as det

    weights_cached = trained[2]["imagenet_weights"]
    if not weights_cached:
        pytest.skip("the ImageNet Lite0 weights are not cached (make pretrained): the trainer loads them")
    K = np.asarray(CAMERA["cam_K"], np.float64).reshape(3, 3)
    cfg = det.train_detector_on_renderings(builtin_models_dir(), tmp_path / "det", [1], {"complete": tmp_path /
                                           "scenes"}, 16, K, CAMERA["width"], CAMERA["height"], epochs=1, seed=5,
                                           training_seeds=(0, 1), scene_draw_per_seed=True, progress=False,
                                           fine_tune_stages=1, say=lambda text: None)
    made = {p.name: json.loads((p / "scenes.json").read_text())["seed"] for p in tmp_path.glob("scenes*") if p.is_dir()}
    assert made == {"scenes": 5, "scenes_draw6": 6}
    members = [json.loads((tmp_path / "det" / "members" / f"seed{k}" / det.DETECTOR_CONFIG).read_text())
               for k in (0, 1)]
    assert [Path(m["scenes"][0]).name for m in members] == ["scenes", "scenes_draw6"]
    assert [m["seed"] for m in members] == [0, 1] and cfg["seeds"] == [0, 1]
    assert not list((tmp_path / "det").rglob("feature_cache"))
    det.Detector(tmp_path / "det").detect(np.zeros((120, 160, 3), np.uint8))


def test_fine_tuning_the_last_stage_changes_only_that_stage_and_is_saved(trained, tmp_path):
    """--fine_tune_stages 1: Lite0's blocks 11-15 train with the head (from the cached stride-16 features); the
    saved detector carries them, changed, while every block below is the ImageNet one; its loss falls as the
    head's."""
    import keras

    from pose_net import detector as det

    root, scenes, _ = trained
    cfg = det.train_detector([scenes], tmp_path / "tuned", epochs=6, batch_size=8, progress=False,
                             backbone_weights="imagenet" if trained[2]["imagenet_weights"] else "none",
                             fine_tune_stages=1)
    assert cfg["fine_tune_stages"] == 1 and cfg["final_loss"]["total"] < cfg["first_epoch_loss"]["total"]
    saved = keras.models.load_model(tmp_path / "tuned" / det.DETECTOR_MODEL, compile=False)
    fresh = det.build_backbone("imagenet" if cfg["imagenet_weights"] else "none")
    saved_backbone = saved.get_layer("detector_backbone")

    def kernel(model, name):
        return model.get_layer(name).get_weights()[0]

    for name in ("block2_expand_conv", "block10_project_conv"):  # below the split: untouched
        if not cfg["imagenet_weights"]:
            break  # (a random backbone differs between builds anyway)
        np.testing.assert_array_equal(kernel(saved_backbone, name), kernel(fresh, name))
    tuned = [n for n in ("block11_expand_conv", "block15_project_conv")
             if not np.array_equal(kernel(saved_backbone, n), kernel(fresh, n))]
    assert tuned == ["block11_expand_conv", "block15_project_conv"] or not cfg["imagenet_weights"]
    det.Detector(tmp_path / "tuned").detect(np.zeros((120, 160, 3), np.uint8))  # loads and runs


def test_evaluate_and_predict_use_the_detector(trained, tmp_path):
    """A pose model folder of the toy with the detector in it: evaluate --boxes predicted reports the detection
    recall, and predict finds the toy in a scene photo with no box given."""
    import shutil

    from experiments.bop_train import bop_train
    from pose_core.objects import builtin_models_dir
    from pose_net.evaluate import NOT_DETECTED, evaluate
    from pose_net.predict import predict

    root, scenes, _ = trained
    run = bop_train(builtin_models_dir(), tmp_path / "run", [1], budget="quick",
                    camera=str(root / "camera.json"), detector_part_material_share=0.5, detector_scene_draws=True)
    for folder, seed in (("detector_scenes_complete", 0), ("detector_scenes_complete_draw1", 1)):  # a draw per seed
        scenes_made = json.loads((run / "data" / folder / "scenes.json").read_text())
        assert scenes_made["part_material_share"] == 0.5  # --detector_part_material_share reaches the scenes
        assert scenes_made["seed"] == seed
    model = run / "obj_000001"
    shutil.rmtree(run / "detector")
    shutil.copytree(root / "detector", model / "detector")  # the trained one, not the quick budget's
    gt = evaluate(model, scenes, 1, boxes="gt", min_visib=0.3)
    result = evaluate(model, scenes, 1, boxes="predicted", min_visib=0.3, csv_path=tmp_path / "pred.csv",
                      report_dir=tmp_path / "rep")
    assert result["box_source"] == "detector" and result["instances"] == gt["instances"]
    assert "detection_recall" not in gt
    rows = (tmp_path / "pred.csv").read_text().strip().splitlines()[1:]
    per_instance = json.loads((tmp_path / "rep" / "per_instance.json").read_text())
    missed = sum(r["translation"] == NOT_DETECTED for r in per_instance)
    assert len(rows) == result["instances"] - missed  # missed instances have no estimate, and a wrong pose
    assert all(r["add_mm"] == float("inf") for r in per_instance if r["translation"] == NOT_DETECTED)
    assert result["depth_err_median_percent"] == pytest.approx(
        100 * np.median([abs(r["depth_err_rel"]) for r in per_instance]))
    # the detector's box sizes against the true boxes', over the matched detections, as evaluate matched them
    from pose_core import bop
    from pose_net.detector import Detector, match_with_ious
    from pose_net.evaluate import gt_box, load_test_object

    points = load_test_object(scenes, 1)[0]
    detector, ratios = Detector(model / "detector"), []
    for im in bop.list_test_images(scenes, 1, "test", 0.3, None):
        truth = [gt_box(inst, points, im.K, (CAMERA["height"], CAMERA["width"])) for inst in im.instances]
        matched, _ = match_with_ious(detector.detect_file(im.rgb_path), 1, truth)
        ratios += [np.log(d.bbox_xywh[2:] / np.asarray(t)[2:]) for d, t in zip(matched, truth) if d is not None]
    assert result["detector_box_width_log_ratio_median"] == pytest.approx(np.median(np.array(ratios)[:, 0]), abs=1e-6)
    assert result["detector_box_size_error_median_percent"] == pytest.approx(100 * np.median(np.abs(ratios)),
                                                                            abs=1e-4)
    assert "the detector's boxes against the true ones" in (tmp_path / "rep" / "table.md").read_text()
    with pytest.raises(PoseInputError, match="needs --boxes predicted"):
        evaluate(model, scenes, 1, boxes="gt", refine_boxes=True)
    refined = evaluate(model, scenes, 1, boxes="predicted", min_visib=0.3, refine_boxes=True)
    assert refined["box_source"] == "detector, refined by the pose network"
    assert refined["instances"] == gt["instances"] and 0.0 <= refined["detection_recall"] <= 1.0
    from PIL import Image

    from pose_net import detector as det
    from pose_net.inference import PoseEstimator

    rgb = np.asarray(Image.open(next((scenes / "test" / "000000" / "rgb").glob("*.png"))).convert("RGB"))
    K = np.asarray(CAMERA["cam_K"], np.float64).reshape(3, 3)
    estimator = PoseEstimator(model)
    box = estimator.refine_box(rgb, K, [40.0, 30.0, 50.0, 40.0])
    assert box.shape == (4,) and np.all(np.isfinite(box)) and box[2] > 0 and box[3] > 0
    found = det.Detection(1, 0.9, np.array([40.0, 30.0, 50.0, 40.0]))
    refined_once = estimator.refine_detection(rgb, K, found)
    np.testing.assert_allclose(refined_once.bbox_xywh, box, rtol=1e-5)
    assert refined_once.detector_box.tolist() == found.bbox_xywh.tolist() == found.detector_box.tolist()
    again = estimator.refine_detection(rgb, K, refined_once)  # always from the detector's own box
    np.testing.assert_allclose(again.bbox_xywh, box, rtol=1e-5)
    assert again.detector_box.tolist() == found.bbox_xywh.tolist()
    # --fit_box_model: a coordinate head's mask gives the box the translation is fitted into
    from pose_net.evaluate import report_path
    from pose_net.train import default_flag_values, train

    coords = tmp_path / "coords"
    train(default_flag_values(dataset=str(run / "data" / "obj_000001"), model_dir=str(coords), head="coords",
                              backbone="small", backbone_weights="none", input_size=64, epochs=1, steps_per_epoch=2,
                              batch_size=8, max_val_images=4, progress=False))
    fitted = evaluate(model, scenes, 1, boxes="predicted", min_visib=0.3, fit_box_model=coords,
                      report_dir=tmp_path / "rep_fit")
    assert "coordinate head's mask" in fitted["box_source"] and fitted["fit_box_model"] == report_path(coords)
    assert fitted["translation"] == "box" and np.isfinite(fitted["fit_box_size_error_median_percent"])
    assert fitted["detection_recall"] == result["detection_recall"]  # the same detections, another translation
    fitted_rows = json.loads((tmp_path / "rep_fit" / "per_instance.json").read_text())
    assert [r["add_mm_true_translation"] for r in fitted_rows if "add_mm_true_translation" in r] == \
        [r["add_mm_true_translation"] for r in per_instance if "add_mm_true_translation" in r]  # same crops, rotations
    with pytest.raises(PoseInputError, match="the direct head; the box comes from a coordinate head's mask"):
        evaluate(model, scenes, 1, boxes="predicted", min_visib=0.3, fit_box_model=model)
    with pytest.raises(PoseInputError, match="needs --boxes predicted"):
        evaluate(model, scenes, 1, boxes="gt", fit_box_model=coords)
    from pose_net.inference import mask_box_estimator

    with pytest.raises(PoseInputError, match="has no model of object 3"):
        mask_box_estimator(coords, 3)
    with pytest.raises(PoseInputError, match="finds objects"):
        evaluate(run / "obj_000001", scenes, 3, boxes="predicted", detector=model / "detector",
                 models_dir=builtin_models_dir(), allow_object_mismatch=True)
    needs_imagenet(json.loads((model / "detector" / "detector.json").read_text()))
    assert result["detection_recall"] >= 0.7 and missed <= 0.3 * result["instances"]
    gt_json = json.loads((scenes / "test" / "000000" / "scene_gt.json").read_text())
    im_id = next(k for k, v in gt_json.items() if any(i["obj_id"] == 1 for i in v))
    (tmp_path / "cam.json").write_text(json.dumps({"cam_K": CAMERA["cam_K"]}))
    out = predict(model, scenes / "test" / "000000" / "rgb" / f"{int(im_id):06d}.png", tmp_path / "cam.json",
                  out=tmp_path / "all.png")
    assert [o["obj_id"] for o in out["objects"]] == [1] and (tmp_path / "all.png").is_file()
    assert len(out["objects"][0]["R"]) == 9 and out["objects"][0]["score"] >= 0.1
    plain_entry = out["objects"][0]
    assert "detector_bbox_xywh" not in plain_entry
    out = predict(model, scenes / "test" / "000000" / "rgb" / f"{int(im_id):06d}.png", tmp_path / "cam.json",
                  refine_boxes=True)
    entry = out["objects"][0]  # the refined box reported, the detector's beside it, the pose fitted into that one
    assert entry["detector_bbox_xywh"] == plain_entry["bbox_xywh"] and entry["bbox_xywh"] != plain_entry["bbox_xywh"]
    np.testing.assert_allclose(entry["t_mm"], plain_entry["t_mm"], rtol=1e-4)
    out = predict(model, scenes / "test" / "000000" / "rgb" / f"{int(im_id):06d}.png", tmp_path / "cam.json",
                  fit_box_model=coords)
    entry = out["objects"][0]  # the rotation from the same crop, the translation fitted into the mask's box
    assert entry["translation"] == "box" and len(entry["fit_bbox_xywh"]) == 4 and entry["R"] == plain_entry["R"]
    with pytest.raises(PoseInputError, match="--box was given"):
        predict(model, scenes / "test" / "000000" / "rgb" / f"{int(im_id):06d}.png", tmp_path / "cam.json",
                box=[40.0, 30.0, 50.0, 40.0], fit_box_model=coords)


def test_fine_tuning_two_stages_trains_blocks_5_to_15_from_the_stride_8_features(tmp_path):
    """fine_tune_stages=2: fit_head runs Lite0's blocks 5-15 on the cached stride-8 features, so a block of the
    middle stage changes too, while the blocks below stay; an unknown count is a clear error, before training."""
    from pose_net import detector as det

    rng = np.random.default_rng(0)
    out_hw = (8, 8)  # a 64x64 input's stride-8 map
    box = np.array([16.0, 8.0, 24.0, 32.0])  # in input pixels
    data = {"features0": rng.normal(size=(4, 8, 8, 40)).astype(np.float16),
            "features1": np.zeros((4, 4, 4, 112), np.float16),  # not used: blocks 5-10 recompute them
            "features2": np.zeros((4, 2, 2, 320), np.float16)}
    data.update({k: np.stack([v] * 4) for k, v in det.instance_targets([box], [0], [False], out_hw).items()})
    data["heatmap"] = np.stack([det.gaussian_heatmap([box], [0], [False], out_hw, 1)] * 4)
    backbone = det.build_backbone("none")

    def kernel(name):
        return backbone.get_layer(name).get_weights()[0].copy()

    before = {n: kernel(n) for n in ("block4_project_conv", "block6_expand_conv", "block12_expand_conv")}
    head, history = det.fit_head(data, 1, 2, batch_size=2, backbone=backbone, fine_tune_stages=2, progress=False)
    assert np.isfinite(history[-1]["total"])
    changed = {n for n, k in before.items() if not np.array_equal(kernel(n), k)}
    assert changed == {"block6_expand_conv", "block12_expand_conv"}
    with pytest.raises(det.DetectorError, match="fine_tune_stages"):
        det.backbone_top_stage(det.build_backbone("none"), 3)
    with pytest.raises(det.DetectorError, match="fine_tune_stages"):
        det.train_detector([tmp_path], tmp_path / "out", fine_tune_stages=5)


def test_an_ensemble_averages_its_members_maps_and_runs_their_shared_backbone_once(tmp_path):
    """ensemble_detectors: three detectors whose last stage was trained apart (here: perturbed) become one folder
    whose maps are the mean of the members' maps; members with other objects, or another frozen backbone below the
    trained stage, are a clear error and write nothing; an out folder of other members is refused, or rebuilt when
    asked."""
    import keras

    from pose_net import detector as det

    def member(name, seed, obj_ids=(2,), backbone_seed=0):
        keras.utils.set_random_seed(backbone_seed)  # the same random "frozen" backbone for every member
        backbone = det.build_backbone("none")
        rng = np.random.default_rng(seed)
        for v in det.backbone_top_stage(backbone, 1).trainable_variables:  # as fit_head's fine-tuning would
            v.assign(v + 0.05 * rng.normal(size=v.shape).astype(np.float32))
        keras.utils.set_random_seed(100 + seed)
        det.save_detector(tmp_path / name, det.build_detector(backbone, det.build_head(len(obj_ids))),
                          {"obj_ids": list(obj_ids), "input_long_side": det.INPUT_LONG_SIDE,
                           "feature_layers": list(det.FEATURE_LAYERS), "fine_tune_stages": 1, "seed": seed,
                           "seconds_training": 1.0})
        return tmp_path / name

    members = [member(f"seed{s}", s) for s in range(3)]
    cfg = det.ensemble_detectors(members, tmp_path / "ensemble")
    assert len(cfg["ensemble"]) == 3 and cfg["seeds"] == [0, 1, 2] and "seed" not in cfg
    assert det.ensemble_detectors(members, tmp_path / "ensemble") == cfg  # finished: not rebuilt
    with pytest.raises(det.DetectorError, match="holds another detector"):  # not silently the old members
        det.ensemble_detectors(members[:2], tmp_path / "ensemble")
    ensemble = det.Detector(tmp_path / "ensemble")
    x, _ = det.prepare_image(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    got = ensemble._run(x[None])
    outs = [det.Detector(m)._run(x[None]) for m in members]
    for name in ("heatmap", "size", "offset"):
        maps = [np.asarray(o[name]) for o in outs]
        assert not np.allclose(maps[0], maps[1])  # the members differ, so the mean is a real test
        np.testing.assert_allclose(np.asarray(got[name]), np.mean(maps, axis=0), atol=1e-4)
    with pytest.raises(det.DetectorError, match="obj_ids"):
        det.ensemble_detectors([members[0], member("other_objects", 3, obj_ids=(1,))], tmp_path / "bad1")
    with pytest.raises(det.DetectorError, match="share the frozen backbone"):
        det.ensemble_detectors([members[0], member("other_backbone", 4, backbone_seed=1)], tmp_path / "bad2")
    with pytest.raises(det.DetectorError, match="at least 2"):
        det.ensemble_detectors(members[:1], tmp_path / "bad3")
    with pytest.raises(det.DetectorError, match="already an ensemble"):
        det.ensemble_detectors([members[0], tmp_path / "ensemble"], tmp_path / "bad4")
    assert not any((tmp_path / f"bad{k}").exists() for k in (1, 2, 3, 4))
    (tmp_path / "ensemble" / "detection_recall.json").write_text("{}")  # a score of the old members, kept inside
    cfg2 = det.ensemble_detectors(members[:2], tmp_path / "ensemble", rebuild_other=True)
    assert cfg2["seeds"] == [0, 1] and not (tmp_path / "ensemble" / "detection_recall.json").exists()
    np.testing.assert_allclose(np.asarray(det.Detector(tmp_path / "ensemble")._run(x[None])["heatmap"]),
                               np.mean([np.asarray(o["heatmap"]) for o in outs[:2]], axis=0), atol=1e-4)
