"""render.generate: reproducible byte for byte, resumable after a kill, shardable, clear errors for bad input;
the record schema, the reader's errors for damaged shards, and the preview."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from render.dataset import DatasetError, load_dataset_info, read_samples
from render.generate import TEST_HOOK_ENV
from render.records import FEATURES, decode_example, encode_example
from render.testing import run_generate, run_many, start_generate

FLAGS = dict(mesh="toy", num_images=12, image_size=64, seed=7, num_shards=3, chunk_size=2)
SHARDS = [f"train-0000{k}-of-00003.tfrecord" for k in range(3)]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The same dataset made with 2 workers and with 1 worker."""
    root = tmp_path_factory.mktemp("gen")
    run_many([(root / "w2", dict(FLAGS, workers=2)), (root / "w1", dict(FLAGS, workers=1))])
    return root


def _bytes(d):
    return [(Path(d) / s).read_bytes() for s in SHARDS]


def test_same_seed_gives_identical_shards_whatever_the_workers(ref):
    assert _bytes(ref / "w2") == _bytes(ref / "w1")
    a, b = (json.loads((ref / d / "dataset.json").read_text()) for d in ("w2", "w1"))
    assert a == b  # --workers is an execution flag, not part of the dataset


def test_dataset_json(ref):
    info = load_dataset_info(ref / "w2")
    assert info["obj_id"] == 1 and info["symmetric"] is False and info["randomization"] == "complete"
    assert len(info["model_points_mm"]) == 1024 and info["num_images"] == 12 and info["seed"] == 7
    assert [s["file"] for s in info["shards"]] == SHARDS and [s["count"] for s in info["shards"]] == [4, 4, 4]
    assert 100 < info["diameter_mm"] < 200 and info["flags"]["image_size"] == 64
    # recorded only when set, so that datasets written before these flags existed still resume
    assert "photo_background_prob" not in info["flags"] and "own_appearance_prob" not in info["flags"]
    samples = list(read_samples(ref / "w2"))
    assert [s["index"] for s in samples] == list(range(12))
    assert len(list(read_samples([ref / "w2" / SHARDS[1]]))) == 4


def test_killed_run_resumes_to_the_same_shards(tmp_path, ref):
    out = tmp_path / "killed"
    env_hook = {TEST_HOOK_ENV: "sleep:6"}  # a worker stalls in shard 1: shard 0 is done, shard 1 half-written
    os.environ.update(env_hook)
    try:
        proc = start_generate(out, **dict(FLAGS, workers=1))
    finally:
        del os.environ[TEST_HOOK_ENV]
    deadline = time.time() + 120
    while not (out / SHARDS[0]).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert (out / SHARDS[0]).is_file()
    assert not (out / SHARDS[1]).exists() and not (out / SHARDS[2]).exists()
    stat0 = (out / SHARDS[0]).stat()
    r = run_generate(out, **dict(FLAGS, workers=1))
    assert r.returncode == 0, r.stderr
    assert _bytes(out) == _bytes(ref / "w2")
    stat1 = (out / SHARDS[0]).stat()
    assert (stat0.st_ino, stat0.st_mtime_ns) == (stat1.st_ino, stat1.st_mtime_ns)  # finished shard untouched
    assert not list(out.glob("*.tmp*"))


def test_one_shard_per_job_then_the_rest(tmp_path, ref):
    out = tmp_path / "cluster"
    r = run_generate(out, **dict(FLAGS, workers=1, shard_index=2))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [SHARDS[2]]
    assert (out / SHARDS[2]).read_bytes() == (ref / "w2" / SHARDS[2]).read_bytes()


def test_refuses_to_resume_with_other_flags(ref):
    r = run_generate(ref / "w1", **dict(FLAGS, seed=8, workers=1))
    assert r.returncode != 0
    assert "refusing to resume" in r.stderr and "--seed" in r.stderr


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_bad_input_clear_error_and_no_shard(tmp_path, builtin_models):
    import trimesh

    from pose_core.mesh import load_mesh

    metres = load_mesh(builtin_models / "obj_000001.ply")
    metres.apply_scale(0.001)
    metres_path = tmp_path / "metres.ply"
    metres.export(str(metres_path))
    points = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).uniform(0, 50, (20, 3))).export(str(points))
    (tmp_path / "empty.ply").write_bytes(b"")
    (tmp_path / "empty_bg").mkdir()
    corrupt_bg = tmp_path / "corrupt_bg"
    corrupt_bg.mkdir()
    (corrupt_bg / "a.png").write_bytes(b"not a png")
    not_a_dir = tmp_path / "file_not_dir"
    not_a_dir.write_text("x")
    base = dict(mesh="toy", num_images=4, image_size=32, num_shards=1, workers=1)
    cases = {
        "missing": (dict(base, mesh=str(tmp_path / "nope.ply")), "does not exist"),
        "empty": (dict(base, mesh=str(tmp_path / "empty.ply")), "is empty"),
        "not_mesh": (dict(base, mesh=_write(tmp_path / "junk.ply", "hello, no mesh here\n")), "could not be read"),
        "no_faces": (dict(base, mesh=str(points)), "no faces|not a triangle mesh"),
        "metres": (dict(base, mesh=str(metres_path)), "metres.*--mesh_scale"),
        "mode": (dict(base, randomization="everything"), "unknown randomization mode"),
        "no_backgrounds": (dict(base, randomization="real_background"), "needs --backgrounds"),
        "empty_backgrounds": (dict(base, randomization="real_background", backgrounds=str(tmp_path / "empty_bg")),
                              "holds no images"),
        "empty_texture_photos": (dict(base, texture_photos=str(tmp_path / "empty_bg")),
                                 "--texture_photos folder .* holds no images"),
        "photo_backgrounds_without_photos": (dict(base, photo_background_prob=0.5),
                                             "--photo_background_prob needs --backgrounds"),
        "photo_backgrounds_in_a_plain_mode": (dict(base, randomization="none", photo_background_prob=0.5),
                                              "mixes into a random background; mode none"),
        "own_appearance_out_of_range": (dict(base, own_appearance_prob=1.5),
                                        r"--own_appearance_prob must lie in \[0, 1\]"),
        "unwritable": (dict(base, out=str(not_a_dir / "sub")), "not writable"),
        "worker_failure": (dict(base, randomization="real_background", backgrounds=str(corrupt_bg)),
                           "rendering failed"),
    }
    jobs = []
    for name, (flags, _) in cases.items():
        flags = dict(flags)
        out = flags.pop("out", str(tmp_path / f"out_{name}"))
        jobs.append((out, flags))
    results = run_many(jobs, check=False)
    import re

    for (name, (_, pattern)), (out, _), (rc, err) in zip(cases.items(), jobs, results):
        assert rc != 0, f"{name}: exit code 0"
        assert re.search(pattern, err), f"{name}: expected /{pattern}/ in the error, got:\n{err[-2000:]}"
        assert "Traceback" not in err, f"{name}: a traceback instead of a clear message:\n{err[-2000:]}"
        if Path(out).is_dir():
            assert not list(Path(out).glob("*.tfrecord")), f"{name}: a shard was left looking complete"
            assert not list(Path(out).glob("*.tmp")), f"{name}: a temporary shard was left behind"


def test_texture_photos_are_recorded_and_change_only_the_appearance(tmp_path, ref):
    """--texture_photos: the photos used are named in dataset.json, the poses are those of the same seed without
    them, and some images differ (object appearances cut from the photo)."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((48, 64, 3), (250, 20, 20), np.uint8)).save(photos / "red.png")
    out = tmp_path / "printed"
    proc = run_generate(out, **dict(FLAGS, workers=1, texture_photos=str(photos)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = load_dataset_info(out)
    assert info["texture_photo_files"] == ["red.png"] and info["flags"]["texture_photos"] == str(photos)
    plain, printed = list(read_samples(ref / "w1")), list(read_samples(out))
    poses = [[(s["R"].tolist(), s["t_mm"].tolist()) for s in samples] for samples in (plain, printed)]
    assert poses[0] == poses[1]
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(plain, printed))


def test_photo_backgrounds_and_own_appearance_are_recorded_and_keep_the_poses(tmp_path, ref):
    """--photo_background_prob / --own_appearance_prob with --backgrounds: recorded in dataset.json (with the photos
    used), the poses those of the same seed without them, some images different."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((48, 64, 3), (20, 200, 20), np.uint8)).save(photos / "green.png")
    out = tmp_path / "mixed"
    proc = run_generate(out, **dict(FLAGS, workers=1, backgrounds=str(photos), photo_background_prob=0.5,
                                    own_appearance_prob=0.5))
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = load_dataset_info(out)
    assert info["flags"]["photo_background_prob"] == 0.5 and info["flags"]["own_appearance_prob"] == 0.5
    assert info["background_files"] == ["green.png"]
    plain, mixed = list(read_samples(ref / "w1")), list(read_samples(out))
    poses = [[(s["R"].tolist(), s["t_mm"].tolist()) for s in samples] for samples in (plain, mixed)]
    assert poses[0] == poses[1]
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(plain, mixed))


def test_records_match_tensorflow_and_round_trip():
    import tensorflow as tf

    from render.records import feature_spec, parse_example

    rng = np.random.default_rng(0)
    sample = {"image": rng.integers(0, 256, (8, 10, 3), dtype=np.uint8),
              "mask": np.where(rng.uniform(size=(8, 10)) > 0.5, 255, 0).astype(np.uint8),
              "R": np.eye(3), "t_mm": [1.5, -2.0, 400.0], "K": [[50, 0, 4.5], [0, 50, 3.5], [0, 0, 1]],
              "bbox_xywh": [1, 2, 3, 4], "visib_fract": 0.75, "obj_id": 5, "index": 123456789012}
    sample["depth_mm"] = np.where(sample["mask"] > 0, rng.uniform(300.0, 500.0, (8, 10)), 0.0)
    data = encode_example(sample)
    back = decode_example(data)
    np.testing.assert_array_equal(back["image"], sample["image"])
    np.testing.assert_array_equal(back["mask"], sample["mask"])
    np.testing.assert_allclose(back["depth_mm"], sample["depth_mm"], atol=0.05 + 1e-4)  # 0.1 mm units
    assert back["index"] == 123456789012 and back["obj_id"] == 5 and back["visib_fract"] == 0.75
    np.testing.assert_allclose(back["t_mm"], sample["t_mm"])
    # the same bytes as TensorFlow's own serialization
    ex = tf.train.Example.FromString(data)
    assert ex.SerializeToString(deterministic=True) == data
    assert set(ex.features.feature) == set(FEATURES) == set(feature_spec())
    t = parse_example(tf.constant(data))
    np.testing.assert_array_equal(t["image"].numpy(), sample["image"])
    assert t["R"].shape == (3, 3) and int(t["index"]) == 123456789012
    np.testing.assert_array_equal(t["depth_mm"].numpy(), back["depth_mm"])  # bit for bit
    assert float(t["depth_scale_mm"]) == pytest.approx(0.1)


def test_damaged_shard_names_file_and_record(tmp_path, ref):
    import struct

    data = (ref / "w2" / SHARDS[0]).read_bytes()
    starts, pos = [], 0
    while pos < len(data):  # TFRecord framing: u64 length, u32 crc, data, u32 crc
        starts.append(pos)
        pos += 16 + struct.unpack("<Q", data[pos:pos + 8])[0]
    assert len(starts) == 4
    truncated = tmp_path / "truncated.tfrecord"
    truncated.write_bytes(data[: starts[2] + 100])  # record 2 cut short
    with pytest.raises(DatasetError, match=r"truncated\.tfrecord: record 2 is corrupt or truncated"):
        list(read_samples([truncated]))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad = tmp_path / "flipped.tfrecord"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(DatasetError, match=r"flipped\.tfrecord: record \d+ is corrupt"):
        list(read_samples([bad]))
    with pytest.raises(DatasetError, match="dataset.json"):
        load_dataset_info(tmp_path)


def test_incomplete_dataset_is_reported(tmp_path, ref):
    import shutil

    d = tmp_path / "partial"
    shutil.copytree(ref / "w2", d)
    (d / SHARDS[1]).unlink()
    with pytest.raises(DatasetError, match="shard missing"):
        list(read_samples(d))


def test_preview_contact_sheet(tmp_path, ref):
    from render.preview import contact_sheet

    sheet = contact_sheet(ref / "w2", num=6, cols=3, scale=2)
    assert sheet.shape == (2 * (128 + 2), 3 * (128 + 2), 3) and sheet.dtype == np.uint8
    assert sheet.std() > 10


def test_tfrecord_writer_matches_tensorflow(tmp_path):
    """The generator frames records without TensorFlow (render/tfrecord.py): same bytes as tf.io.TFRecordWriter."""
    import tensorflow as tf

    from render.tfrecord import TFRecordWriter, _crc32c_small, crc32c

    assert _crc32c_small(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = np.random.default_rng(1)
    records = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 1, 7, 511, 512, 513, 4097, 40000)]
    for r in records:
        assert crc32c(r) == _crc32c_small(r)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as w:
        for r in records:
            w.write(r)
    with TFRecordWriter(tmp_path / "ours.tfrecord") as w:
        for r in records:
            w.write(r)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
