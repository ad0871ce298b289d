"""Training the direct head on cached features of a frozen backbone (``pose_net.train --feature_cache``).

With the backbone frozen, its features of a training crop are the same at every step, so they are computed once:
each *pass* runs :func:`pose_net.data.make_dataset` over the training renderings (a new crop jitter and
augmentation per pass, drawn from ``(seed, pass)``) through the backbone, and keeps the features (float16) with the
targets the loss needs. The heads then train on these arrays for as many epochs as wanted, at a small fraction of
the cost of a full forward pass (on 2 CPU cores: about 160 crops/s through Lite0, thousands per second through the
heads). Fresh renderings, not more passes over the same ones, are what keep the heads from over-fitting.

Each pass is saved as ``CACHE/pass_K/`` (one ``.npy`` per array, ``done`` written last; ``CACHE`` is
``MODEL_DIR/feature_cache`` or ``--feature_cache_dir``), so a resumed run reloads it instead of computing it again,
and runs that differ only in their heads can share one cache. ``CACHE/key.json`` records what the features depend
on (dataset, backbone, crop settings, seed); a cache made with other settings is refused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

# Lite0's stride-16 output: what ``--feature_cache_layer`` names to train the last stage (blocks 11-15 and the
# 1280-channel head convolution) on cached features (about 13x the cost of a heads-only step, docs/benchmarks.md).
LITE0_TOP_STAGE_INPUT = "block10_add"
# Lite0's stride-8 output: the last two stages (blocks 5-15 and the head convolution) train on cached features, at
# about twice the cost of a last-stage step. With 40,000 renderings at 256 pixels and 45 minutes they learn rotation
# far better (make train); at the demo's size (16,000 at 128 pixels, 12 minutes) the last stage alone does better
# (docs/results/README.md).
LITE0_TOP_TWO_STAGES_INPUT = "block4_add"

# What the loss and its projection term read from a batch, besides the features.
TARGET_KEYS = ("box_target", "translation_target", "R", "t_mm", "K", "crop_center", "crop_size", "K_crop")
CACHE_DIR = "feature_cache"


class FeatureCache:
    """Backbone features ``[N, h, w, C]`` (float16) of training crops and their targets (:data:`TARGET_KEYS`)."""

    def __init__(self, arrays: dict[str, np.ndarray], seconds: float):
        self.arrays = arrays
        self.seconds = seconds  # wall time spent computing the features (passes loaded from disk included)

    def __len__(self) -> int:
        return len(self.arrays["features"])

    def batches(self, batch_size: int, seed: int, epoch: int):
        """One epoch: every cached example once in an order drawn from ``(seed, epoch)``, full batches only; each a
        dict of tensors (``features`` as float32)."""
        import tensorflow as tf

        order = np.random.default_rng([seed, epoch, 17]).permutation(len(self))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = np.sort(order[start:start + batch_size])
            batch = {k: tf.constant(v[idx]) for k, v in self.arrays.items()}
            batch["features"] = tf.cast(batch["features"], tf.float32)
            yield batch


def _compute_pass(backbone, make_pass_dataset, out_dir: Path, progress: bool) -> tuple[dict[str, np.ndarray], float]:
    import tensorflow as tf
    from tqdm import tqdm

    t0 = time.time()
    features_of = tf.function(lambda x: backbone(x, training=False))
    parts: dict[str, list] = {"features": [], **{k: [] for k in TARGET_KEYS}}
    bar = tqdm(desc=f"features {out_dir.name}", unit="crop", disable=not progress, file=sys.stdout,
               dynamic_ncols=True)
    for batch in make_pass_dataset():
        parts["features"].append(features_of(batch["image"]).numpy().astype(np.float16))
        for k in TARGET_KEYS:
            parts[k].append(batch[k].numpy())
        bar.update(len(parts["features"][-1]))
    bar.close()
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(out_dir / f"{k}.npy", v)
    seconds = time.time() - t0
    (out_dir / "done").write_text(json.dumps({"count": len(arrays["features"]), "seconds": seconds}))
    return arrays, seconds


def _load_pass(pass_dir: Path) -> tuple[dict[str, np.ndarray], float] | None:
    done = pass_dir / "done"
    if not done.is_file():
        return None
    arrays = {k: np.load(pass_dir / f"{k}.npy") for k in ("features",) + TARGET_KEYS}
    return arrays, float(json.loads(done.read_text()).get("seconds", 0.0))


def build_feature_cache(backbone, make_pass_dataset, cache_dir, key: dict, passes: int,
                        progress: bool = True) -> FeatureCache:
    """The cache of ``passes`` passes (loaded where saved, computed otherwise).

    Args:
      backbone: the frozen feature extractor ``[B, S, S, 3] -> [B, h, w, C]``.
      make_pass_dataset: ``pass_index -> tf.data.Dataset`` of training batches (:func:`pose_net.data.make_dataset`
        with a per-pass epoch).
      cache_dir: the folder of the passes.
      key: what the features depend on (JSON-able); must equal the key of an existing cache.
    Raises:
      PoseInputError: ``cache_dir`` holds features made with another key.
    """
    from pose_core import PoseInputError

    cache_dir = Path(cache_dir)
    key_path = cache_dir / "key.json"
    key = json.loads(json.dumps(key))
    if key_path.is_file():
        old = json.loads(key_path.read_text())
        if old != key:
            diff = {k: (old.get(k), key.get(k)) for k in set(old) | set(key) if old.get(k) != key.get(k)}
            raise PoseInputError(f"feature cache {cache_dir} was made with other settings (cached, now): {diff}; "
                                 f"use another --feature_cache_dir")
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        key_path.write_text(json.dumps(key, indent=1))
    arrays, seconds = [], 0.0
    for k in range(passes):
        pass_dir = cache_dir / f"pass_{k}"
        loaded = _load_pass(pass_dir)
        if loaded is None:
            loaded = _compute_pass(backbone, lambda: make_pass_dataset(k), pass_dir, progress)
            print(f"feature cache pass {k + 1}/{passes}: {len(loaded[0]['features'])} crops in "
                  f"{loaded[1]:.0f} s", flush=True)
        arrays.append(loaded[0])
        seconds += loaded[1]
    merged = {key: np.concatenate([a[key] for a in arrays]) for key in arrays[0]}
    return FeatureCache(merged, seconds)


def split_backbone(backbone, layer: str | None):
    """``(lower, top)``: the frozen part of ``backbone`` up to ``layer``'s output, whose features are cached, and
    the rest, trained (``None`` when ``layer`` is empty or the backbone's last layer: everything is cached).

    The top part's convolutions become trainable; its batch norms stay frozen (inference mode, the ImageNet
    statistics), as when fine-tuning with small batches.

    Raises:
      PoseInputError: ``layer`` is not a layer of the backbone.
    """
    import keras

    from pose_core import PoseInputError

    if not layer or layer == backbone.layers[-1].name:
        return backbone, None
    try:
        split = backbone.get_layer(layer)
    except ValueError:
        names = [l.name for l in backbone.layers if l.name.endswith("_add")]
        raise PoseInputError(f"--feature_cache_layer {layer!r} is not a layer of {backbone.name}; block outputs: "
                             f"{', '.join(names) or 'none'}") from None
    lower = keras.Model(backbone.input, split.output, name=f"{backbone.name}_cached")
    top = keras.Model(split.output, backbone.output, name=f"{backbone.name}_top")
    train_only(backbone, top)
    return lower, top


def train_only(backbone, top):
    """Makes ``top`` (a model on layers of ``backbone``) the only trainable part of ``backbone``: its convolutions
    train, its batch norms stay frozen (inference mode, the ImageNet statistics), as when fine-tuning with small
    batches; every layer outside ``top`` is frozen."""
    import keras

    backbone.trainable = True  # then every layer below the split and every batch norm back to frozen
    top_layers = {id(l) for l in top.layers}
    for l in backbone.layers:
        l.trainable = id(l) in top_layers and not isinstance(l, keras.layers.BatchNormalization)
