"""Reading rendered datasets: ``dataset.json`` and the TFRecord shards (schema: render/records.py).

Uses TensorFlow's TFRecord reader (checks every record's CRC), so it must not run in a render worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from pose_core import PoseInputError
from render.records import RecordError, decode_example

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
    return info


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


def read_samples(dir_or_shard_paths: str | os.PathLike | Iterable) -> Iterator[dict]:
    """Samples of a dataset folder (all shards in order) or of the given shard files, as numpy dicts:
    ``image`` [H, W, 3] uint8, ``mask`` [H, W] uint8 (0/255, visible object), ``R`` [3, 3], ``t_mm`` [3],
    ``K`` [3, 3], ``bbox_xywh`` [4], ``visib_fract`` float, ``obj_id`` int, ``index`` int (global sample index).
    Raises :class:`DatasetError` naming the file and the record index for a corrupt or truncated shard."""
    for path in _resolve(dir_or_shard_paths):
        for i, data in read_records(path):
            try:
                yield decode_example(data)
            except RecordError as e:
                raise DatasetError(f"{path}: record {i} is not a valid sample ({e})") from None


def count_samples(dir_or_shard_paths) -> int:
    return sum(1 for p in _resolve(dir_or_shard_paths) for _ in read_records(p))
