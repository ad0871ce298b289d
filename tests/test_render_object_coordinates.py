"""Depth and object coordinates in the record format (render/records.py) without rendering: the back-projection,
the depth scale, version-1 records (no depth) in numpy and in TF, and records whose depth does not match the mask."""

import json

import numpy as np
import pytest

from pose_core.geometry import object_coordinates_from_depth, project_points
from render.records import (FORMAT_VERSION, DepthUnavailableError, RecordError, decode_example, decode_features,
                            depth_scale_for, encode_example, encode_features)

H, W = 12, 16


def _sample(depth_max_mm=600.0, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), np.uint8)
    mask[3:9, 4:13] = 255
    depth = np.where(mask > 0, rng.uniform(0.8, 1.0, (H, W)) * depth_max_mm, 0.0)
    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return {"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "mask": mask, "depth_mm": depth,
            "R": R, "t_mm": [10.0, -20.0, depth_max_mm * 0.9], "K": [[40.0, 0, 7.5], [0, 40.0, 5.5], [0, 0, 1]],
            "bbox_xywh": [4, 3, 9, 6], "visib_fract": 1.0, "obj_id": 2, "index": 7}


def test_back_projection_inverts_the_projection():
    s = _sample()
    xyz = object_coordinates_from_depth(s["depth_mm"], s["K"], s["R"], s["t_mm"])
    assert xyz.shape == (H, W, 3)
    rows, cols = np.nonzero(s["mask"])
    uv, z = project_points(xyz[rows, cols], s["R"], s["t_mm"], s["K"])
    np.testing.assert_allclose(uv, np.stack([cols, rows], axis=1), atol=1e-9)
    np.testing.assert_allclose(z, s["depth_mm"][rows, cols], rtol=1e-12)
    assert not xyz[s["mask"] == 0].any()


def test_depth_round_trip_and_scale():
    s = _sample()
    back = decode_example(encode_example(s))
    assert back["depth_mm"].dtype == np.float32 and back["xyz"].dtype == np.float32
    np.testing.assert_allclose(back["depth_mm"], s["depth_mm"], atol=0.05 + 1e-3)  # 0.1 mm units
    assert depth_scale_for(6553.0) == np.float32(0.1) and depth_scale_for(6554.0) == np.float32(0.2)
    far = _sample(depth_max_mm=20000.0)  # 20 m: the scale grows so that the depth still fits in uint16
    back = decode_example(encode_example(far))
    scale = float(decode_features(encode_example(far))["depth/scale_mm"][0])
    assert scale == pytest.approx(0.4) and back["depth_mm"].max() > 15000
    np.testing.assert_allclose(back["depth_mm"], far["depth_mm"], atol=scale / 2 + 1e-2)


def test_every_mask_pixel_needs_a_depth():
    s = _sample()
    s["depth_mm"][5, 6] = 0.0
    with pytest.raises(RecordError, match="depth_mm is 0 at 1 of the 54 mask pixels"):
        encode_example(s)
    s = _sample()
    del s["depth_mm"]
    with pytest.raises(RecordError, match="no depth_mm"):
        encode_example(s)


def test_depth_outside_the_mask_is_a_corrupt_record():
    feats = decode_features(encode_example(_sample()))
    feats["mask/encoded"] = decode_features(encode_example(dict(_sample(), mask=np.pad(
        np.full((H - 2, W - 2), 255, np.uint8), 1), depth_mm=np.full((H, W), 500.0))))["mask/encoded"]
    with pytest.raises(RecordError, match="depth is nonzero at 54 pixels but the mask has 140"):
        decode_example(encode_features(feats))


def _version1_record(sample) -> bytes:
    feats = decode_features(encode_example(sample))
    return encode_features({k: v for k, v in feats.items() if not k.startswith("depth/")})


def test_version1_record_decodes_without_object_coordinates():
    import tensorflow as tf

    from render.records import parse_example

    s = _sample()
    data = _version1_record(s)
    assert tf.train.Example.FromString(data).SerializeToString(deterministic=True) == data
    back = decode_example(data)
    np.testing.assert_array_equal(back["mask"], s["mask"])
    assert "xyz" not in back and "depth_mm" not in back and back.get("xyz") is None
    with pytest.raises(DepthUnavailableError, match=r"format version 1 .*Re-render .*render\.generate"):
        back["xyz"]
    t = parse_example(tf.constant(data))
    assert float(t["depth_scale_mm"]) == 0.0  # the documented "no depth" marker
    assert t["depth_mm"].shape == (H, W) and not t["depth_mm"].numpy().any()
    np.testing.assert_array_equal(t["image"].numpy(), s["image"])
    t2 = parse_example(tf.constant(encode_example(s)))  # a version-2 record, for contrast
    assert float(t2["depth_scale_mm"]) == pytest.approx(0.1) and t2["depth_mm"].numpy().any()


def test_version1_dataset_read_samples(tmp_path):
    import tensorflow as tf

    from render.dataset import DatasetError, read_samples, require_depth

    d = tmp_path / "old_dataset"
    d.mkdir()
    with tf.io.TFRecordWriter(str(d / "train-00000-of-00001.tfrecord")) as w:
        for i in range(2):
            w.write(_version1_record(dict(_sample(seed=i), index=i)))
    (d / "dataset.json").write_text(json.dumps({
        "format_version": 1, "obj_id": 2, "num_shards": 1, "image_size": W, "model_points_mm": [[0, 0, 0]],
        "shards": [{"file": "train-00000-of-00001.tfrecord", "count": 2, "first_index": 0}]}))
    samples = list(read_samples(d))  # still readable
    assert [s["index"] for s in samples] == [0, 1]
    with pytest.raises(DepthUnavailableError, match=r"train-00000-of-00001\.tfrecord: record 1: no 'depth_mm'"):
        samples[1]["depth_mm"]
    for call in (lambda: require_depth(d), lambda: list(read_samples(d, require_object_coordinates=True)),
                 lambda: list(read_samples([d / "train-00000-of-00001.tfrecord"], require_object_coordinates=True))):
        with pytest.raises(DatasetError, match=r"old_dataset.*format.version.? ?1.*Re-render"):
            call()
    assert FORMAT_VERSION == 2
