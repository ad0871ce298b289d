"""The tf.data input pipeline: rendered TFRecord shards -> network crops, targets and augmentation.

Per example (parallel map): parse, decode the PNG, choose the crop (whole image, or a jittered square around the
object's box), and draw the augmentation parameters from a stateless seed ``(seed, epoch, sample index)``, so a run
is reproducible and a resumed run sees the same data as an uninterrupted one. Per batch (vectorised map): crop and
resize with ``tf.image.crop_and_resize``, colour jitter, blur, noise and cutout occluders, and the targets
(box, scale-invariant translation, the crop's intrinsics; see :mod:`pose_net.parametrization`).
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from pose_core.symmetry import Symmetries
from pose_net import parametrization as param
from pose_net.coordinates import OUTPUT_STRIDE, CoordinateFrame, coordinate_targets
from render.dataset import load_dataset_info, read_samples, require_depth
from render.dataset import shard_paths as render_shard_paths
from render.records import parse_example


@dataclass
class PipelineConfig:
    input_size: int = 128
    input_mode: str = "roi"        # "roi": crops around the object's box; "full": the whole image (the thesis)
    full_image_prob: float = 0.2   # roi mode: share of whole-image crops, so the box head learns to detect
    roi_enlarge: float = 1.4       # roi crop side / longest box side (the value used at test time)
    roi_enlarge_jitter: float = 0.25  # training: enlarge drawn from roi_enlarge * (1 +- this)
    roi_shift_jitter: float = 0.12    # training: crop centre moved by up to this fraction of the box side
    augment: bool = True
    colour_jitter: float = 0.3
    blur_prob: float = 0.3
    noise_std: float = 6.0          # pixel values, 0..255
    cutout_prob: float = 0.4


def shard_paths(dataset_dir, split: str = "train") -> list[str]:
    """Shard files of a split. With more than one shard, the last one is the validation split ("val"), the others
    the training split ("train"); "all" is every shard."""
    paths = [str(p) for p in render_shard_paths(dataset_dir)]
    if split == "all" or len(paths) == 1:
        return paths
    return paths[:-1] if split == "train" else paths[-1:]


def raise_for_corrupt_records(paths) -> None:
    """Called when tf.data failed to read a dataset: reads it again record by record and raises
    :class:`render.dataset.DatasetError` naming the shard file and the record that is corrupt or truncated."""
    for _ in read_samples(paths):
        pass


def _parse(serialized, image_size: int, with_depth: bool = False):
    """One record (schema: :mod:`render.records`), keeping what training needs (``with_depth``: also the visible
    mask and the depth of the object, for the coordinate head's targets)."""
    ex = parse_example(serialized)
    keys = ("image", "R", "t_mm", "K", "bbox_xywh", "index") + (("mask", "depth_mm") if with_depth else ())
    out = {k: ex[k] for k in keys}
    out["image"] = tf.ensure_shape(out["image"], [image_size, image_size, 3])
    if with_depth:
        out["mask"] = tf.ensure_shape(out["mask"], [image_size, image_size])
        out["depth_mm"] = tf.ensure_shape(out["depth_mm"], [image_size, image_size])
    return out


def _choose_crop(ex, cfg: PipelineConfig, training: bool, seed, epoch):
    """Adds ``crop_center [2]``, ``crop_size []`` and the augmentation draws ``aug [8]`` to one example."""
    s = tf.stack([tf.cast(seed, tf.int64) * 1000003 + tf.cast(epoch, tf.int64), ex["index"]])
    u = tf.random.stateless_uniform([12], seed=s)
    h = tf.cast(tf.shape(ex["image"])[0], tf.float32)
    w = tf.cast(tf.shape(ex["image"])[1], tf.float32)
    full_center, full_size = tf.stack([(w - 1.0) / 2.0, (h - 1.0) / 2.0]), tf.maximum(h, w)
    box = ex["bbox_xywh"]
    enlarge = cfg.roi_enlarge
    roi_center, roi_size = param.roi_crop_from_box(box[None], enlarge)
    roi_center, roi_size = roi_center[0], roi_size[0]
    if training and cfg.augment:
        enlarge_factor = 1.0 + cfg.roi_enlarge_jitter * (2.0 * u[0] - 1.0)
        roi_size = roi_size * enlarge_factor
        roi_center = roi_center + cfg.roi_shift_jitter * tf.maximum(box[2], box[3]) * (2.0 * u[1:3] - 1.0)
        # whole-image crops get a mild random zoom/shift too (labels follow through K_crop)
        full_size = full_size * (0.85 + 0.3 * u[3])
        full_center = full_center + 0.08 * full_size * (2.0 * u[4:6] - 1.0)
    if cfg.input_mode == "full":
        use_full = tf.constant(True)
    elif training:
        use_full = u[6] < cfg.full_image_prob
    else:
        use_full = tf.constant(False)
    ex["crop_center"] = tf.where(use_full, full_center, roi_center)
    ex["crop_size"] = tf.where(use_full, full_size, roi_size)
    ex["aug"] = u[6:]
    return ex


def _blur(images):
    """3x3 binomial blur of ``[B, H, W, 3]`` images."""
    k = tf.constant([1.0, 2.0, 1.0]) / 4.0
    kernel = tf.tile((k[:, None] * k[None, :])[:, :, None, None], [1, 1, 3, 1])
    return tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")


def _augment(images, aug, cfg: PipelineConfig, seeds):
    """Colour jitter, blur, noise and cutout on a batch ``[B, S, S, 3]`` (0..255); ``aug [B, 6]`` uniforms.
    Returns the images and ``[B, S, S]`` bool: the pixels the cutout rectangle covers."""
    b = tf.shape(images)[0]
    x = images / 255.0
    j = cfg.colour_jitter
    u = tf.random.stateless_uniform([b, 8], seed=seeds)
    brightness = (u[:, 0] * 2 - 1) * j * 0.5
    contrast = 1.0 + (u[:, 1] * 2 - 1) * j
    saturation = 1.0 + (u[:, 2] * 2 - 1) * j
    gray = tf.reduce_mean(x, axis=-1, keepdims=True)
    x = gray + (x - gray) * saturation[:, None, None, None]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
    x = x * (1.0 + (u[:, 3:6] * 2 - 1) * j * 0.3)[:, None, None, :]  # per-channel gain (white balance)
    x = tf.where((aug[:, 0] < cfg.blur_prob)[:, None, None, None], _blur(x), x)
    noise = tf.random.stateless_normal(tf.shape(x), seed=seeds + 1) * (cfg.noise_std / 255.0)
    x = x + noise * u[:, 6][:, None, None, None]
    # cutout: one rectangle of a random colour, up to ~35% of the side, over part of the crop
    size = tf.cast(tf.shape(x)[1], tf.float32)
    cu = tf.random.stateless_uniform([b, 7], seed=seeds + 2)
    cx, cy = cu[:, 0] * size, cu[:, 1] * size
    hw, hh = (0.05 + 0.3 * cu[:, 2]) * size / 2, (0.05 + 0.3 * cu[:, 3]) * size / 2
    grid = tf.range(size)
    in_x = tf.abs(grid[None, :] - cx[:, None]) < hw[:, None]
    in_y = tf.abs(grid[None, :] - cy[:, None]) < hh[:, None]
    rect = tf.logical_and(in_y[:, :, None], in_x[:, None, :])
    rect = tf.logical_and(rect, (aug[:, 1] < cfg.cutout_prob)[:, None, None])
    x = tf.where(rect[..., None], cu[:, None, None, 4:7], x)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0, rect


@dataclass
class CoordinateTargetSpec:
    """What the coordinate head's targets need: the normalisation and the object's symmetries."""
    frame: "CoordinateFrame"
    symmetries: "Symmetries"


def make_batch_fn(cfg: PipelineConfig, diameter_mm: float, training: bool, seed: int, epoch,
                  coordinate_spec: CoordinateTargetSpec | None = None):
    """The per-batch map: crops, augmentation and targets (and the coordinate head's when ``coordinate_spec``)."""

    def batch_fn(ex):
        images = tf.cast(ex["image"], tf.float32)
        hw = images.shape[1:3]
        b = tf.shape(images)[0]
        boxes = param.crop_boxes_normalized(ex["crop_center"], ex["crop_size"], cfg.input_size, hw)
        crops = tf.image.crop_and_resize(images, boxes, tf.range(b), [cfg.input_size, cfg.input_size])
        occluded = None
        if training and cfg.augment:
            seeds = tf.stack([tf.cast(seed, tf.int64) * 7919 + tf.cast(epoch, tf.int64), ex["index"][0]])
            crops, occluded = _augment(crops, ex["aug"], cfg, seeds)
        out = {
            "image": crops,
            "R": ex["R"], "t_mm": ex["t_mm"], "K": ex["K"], "bbox_xywh": ex["bbox_xywh"], "index": ex["index"],
            "crop_center": ex["crop_center"], "crop_size": ex["crop_size"],
            "K_crop": param.crop_intrinsics(ex["K"], ex["crop_center"], ex["crop_size"], cfg.input_size),
            "box_target": param.box_to_crop_target(ex["bbox_xywh"], ex["crop_center"], ex["crop_size"]),
            "translation_target": param.translation_to_target(ex["t_mm"], ex["K"], ex["crop_center"],
                                                              ex["crop_size"], diameter_mm),
        }
        if coordinate_spec is not None:
            out_size = cfg.input_size // OUTPUT_STRIDE
            coords, mask = coordinate_targets(ex["depth_mm"], ex["mask"], ex["K"], ex["R"], ex["t_mm"],
                                              ex["crop_center"], ex["crop_size"], out_size, coordinate_spec.frame,
                                              coordinate_spec.symmetries)
            if occluded is not None:  # the cutout hides the object: no label there
                hidden = occluded[:, OUTPUT_STRIDE // 2::OUTPUT_STRIDE, OUTPUT_STRIDE // 2::OUTPUT_STRIDE]
                mask = mask * (1.0 - tf.cast(hidden, tf.float32))
                coords = coords * mask[..., None]
            out["coords_target"], out["mask_target"] = coords, mask
        return out

    return batch_fn


def make_dataset(dataset_dir, cfg: PipelineConfig, batch_size: int, split: str = "train", training: bool = True,
                 seed: int = 0, epoch=0, deterministic: bool = False, shuffle_buffer: int = 2048,
                 drop_remainder: bool | None = None, limit: int | None = None,
                 coordinate_spec: CoordinateTargetSpec | None = None) -> tf.data.Dataset:
    """Batches of crops and targets from a rendered dataset (one pass; call once per epoch with ``epoch``).

    Each batch: ``image [B, S, S, 3]`` float 0..255, ``R [B, 3, 3]``, ``t_mm [B, 3]``, ``K [B, 3, 3]``,
    ``K_crop [B, 3, 3]``, ``crop_center [B, 2]``, ``crop_size [B]``, ``box_target [B, 4]``,
    ``translation_target [B, 3]``, ``bbox_xywh [B, 4]``, ``index [B]``; with ``coordinate_spec`` also
    ``coords_target [B, S/2, S/2, 3]`` and ``mask_target [B, S/2, S/2]`` (:mod:`pose_net.coordinates`).
    """
    info = load_dataset_info(dataset_dir)
    with_depth = coordinate_spec is not None
    if with_depth:
        require_depth(dataset_dir)
    paths = shard_paths(dataset_dir, split)
    ds = tf.data.TFRecordDataset(paths, num_parallel_reads=1 if deterministic else tf.data.AUTOTUNE)
    if limit is not None:
        ds = ds.take(limit)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed * 1009 + int(epoch), reshuffle_each_iteration=False)
    ds = ds.map(lambda r: _parse(r, int(info["image_size"]), with_depth), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda ex: _choose_crop(ex, cfg, training, seed, epoch), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training if drop_remainder is None else drop_remainder)
    ds = ds.map(make_batch_fn(cfg, float(info["diameter_mm"]), training, seed, epoch, coordinate_spec),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)
