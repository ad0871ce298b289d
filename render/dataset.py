"""Reading rendered datasets: ``dataset.json`` and the TFRecord shards (schema: render/records.py).

Uses TensorFlow's TFRecord reader (checks every record's CRC), so it must not run in a render worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from pose_core import PoseInputError
from render.records import FORMAT_VERSION, RecordError, decode_example

DATASET_JSON = "dataset.json"


class DatasetError(PoseInputError):
    """A rendered dataset that cannot be read; the message names the file (and the record index)."""


def load_dataset_info(dataset_dir) -> dict:
    """``dataset.json`` of a rendered dataset folder as a dict."""
    path = Path(dataset_dir) / DATASET_JSON
    if not path.is_file():
        raise DatasetError(f"{path}: not found (is {str(dataset_dir)!r} a folder written by render.generate?)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    for key in ("format_version", "obj_id", "num_shards", "shards", "image_size", "model_points_mm"):
        if key not in info:
            raise DatasetError(f"{path}: key {key!r} is missing")
    if not isinstance(info["format_version"], int) or not 1 <= info["format_version"] <= FORMAT_VERSION:
        raise DatasetError(f"{path}: format_version {info['format_version']!r} is not one this code reads "
                           f"(1..{FORMAT_VERSION}): update the code, or re-render the dataset")
    return info


def has_object_coordinates(dataset_dir) -> bool:
    """Whether the dataset's samples hold ``depth_mm`` and ``xyz`` (format version >= 2)."""
    return load_dataset_info(dataset_dir)["format_version"] >= 2


def require_depth(dataset_dir) -> None:
    """Raises :class:`DatasetError` naming the dataset and saying to re-render it when its samples have no depth
    (format version 1): for consumers that need ``depth_mm`` / ``xyz``."""
    info = load_dataset_info(dataset_dir)
    if info["format_version"] < 2:
        raise DatasetError(
            f"{Path(dataset_dir) / DATASET_JSON}: the dataset {str(dataset_dir)!r} has format_version "
            f"{info['format_version']}, which stores no depth: object coordinates (depth_mm, xyz) are not available. "
            f"Re-render it with `python -m render.generate` (format version {FORMAT_VERSION}) into a new --out folder "
            f"(same flags).")


def shard_paths(dataset_dir, complete_only: bool = True) -> list[Path]:
    """The shard files listed in dataset.json; a clear error for a missing one when ``complete_only``."""
    info = load_dataset_info(dataset_dir)
    paths = []
    for s in info["shards"]:
        p = Path(dataset_dir) / s["file"]
        if not p.is_file():
            if complete_only:
                raise DatasetError(f"{p}: shard missing (the dataset is incomplete: run render.generate again "
                                   f"with the same flags to finish it)")
            continue
        paths.append(p)
    return paths


def _resolve(dir_or_shard_paths) -> list[Path]:
    if isinstance(dir_or_shard_paths, (str, os.PathLike)):
        p = Path(dir_or_shard_paths)
        if p.is_dir():
            return shard_paths(p)
        return [p]
    return [Path(p) for p in dir_or_shard_paths]


def read_records(path) -> Iterator[tuple[int, bytes]]:
    """``(record index, serialized example)`` of one TFRecord file; :class:`DatasetError` naming the file and the
    record index when it is truncated or corrupt."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: shard file not found")
    ds = iter(tf.data.TFRecordDataset(str(path)))
    i = 0
    while True:
        try:
            rec = next(ds)
        except StopIteration:
            return
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as e:
            msg = _short_tf_message(e)
            raise DatasetError(f"{path}: record {i} is corrupt or truncated ({msg})") from None
        yield i, rec.numpy()
        i += 1


def _short_tf_message(e) -> str:
    import re

    text = getattr(e, "message", None) or str(e) or type(e).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text, flags=re.S)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def read_samples(dir_or_shard_paths: str | os.PathLike | Iterable,
                 require_object_coordinates: bool = False) -> Iterator[dict]:
    """Samples of a dataset folder (all shards in order) or of the given shard files, as numpy dicts
    (:class:`render.records.Sample`): ``image`` [H, W, 3] uint8, ``mask`` [H, W] uint8 (0/255, visible object),
    ``R`` [3, 3], ``t_mm`` [3], ``K`` [3, 3], ``bbox_xywh`` [4], ``visib_fract`` float, ``obj_id`` int, ``index`` int
    (global sample index), and (format version >= 2) ``depth_mm`` float32 [H, W] (z-depth of the visible object in
    mm, 0 where no object) and ``xyz`` float32 [H, W, 3] (object coordinates in mm in the model frame, valid where
    ``mask`` is set, 0 elsewhere).

    Samples of format-version-1 records have no ``depth_mm``/``xyz``; asking one for them raises
    :class:`render.records.DepthUnavailableError` naming the shard and record and saying to re-render. With
    ``require_object_coordinates``, such a dataset raises :class:`DatasetError` before the first sample.
    Raises :class:`DatasetError` naming the file and the record index for a corrupt or truncated shard."""
    if require_object_coordinates and isinstance(dir_or_shard_paths, (str, os.PathLike)) \
            and Path(dir_or_shard_paths).is_dir():
        require_depth(dir_or_shard_paths)
    for path in _resolve(dir_or_shard_paths):
        for i, data in read_records(path):
            try:
                sample = decode_example(data)
            except RecordError as e:
                raise DatasetError(f"{path}: record {i} is not a valid sample ({e})") from None
            sample.source = f"{path}: record {i}"
            if require_object_coordinates and "xyz" not in sample:
                raise DatasetError(
                    f"{path}: record {i} was written by render format version {sample.format_version}, which stores "
                    f"no depth: object coordinates (depth_mm, xyz) are not available. Re-render the dataset with "
                    f"`python -m render.generate` (format version {FORMAT_VERSION}) into a new --out folder.")
            yield sample


def count_samples(dir_or_shard_paths) -> int:
    return sum(1 for p in _resolve(dir_or_shard_paths) for _ in read_records(p))
