"""The multi-task Keras network: a backbone and three heads (2D box, rotation, translation).

Input: ``[B, S, S, 3]`` float32 RGB in [0, 255] (the crop the network looks at, see :mod:`pose_net.parametrization`).
Outputs (a dict):

* ``box [B, 4]``: (x0, y0, x1, y1) / crop size, the object's 2D box in the crop;
* ``rotation [B, 4]``: a unit quaternion (w, x, y, z) of the allocentric rotation, sign canonical (w >= 0);
* ``translation [B, 3]``: (dx, dy, z_s), the scale-invariant translation.
"""

from __future__ import annotations

import keras
import tensorflow as tf

BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "efficientnet_b0", "small")
BN_MOMENTUM = 0.9


def _small_backbone(inputs):
    """A small plain CNN (~0.5 M parameters): fast on CPUs, for tests and quick runs."""
    x = inputs
    for filters in (32, 48, 64, 96, 128):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    return x


def build_backbone(name: str, input_size: int, weights=None, freeze: bool = False):
    """A feature extractor ``[B, S, S, 3] (0..255) -> [B, S/32, S/32, C]``.

    Args:
      name: one of :data:`BACKBONES`.
      weights: ``None`` (random initialisation) or ``"imagenet"``. For ``efficientnet_lite0`` these are the
        converted weights cached on disk (offline; random initialisation with one printed line when unavailable,
        see docs/pretrained_backbone.md); for the Keras applications Keras downloads them (needs network access).
      freeze: keep the backbone fixed (weights and batch-norm statistics).
    """
    if name == "efficientnet_lite0":
        from pose_net.backbones.efficientnet_lite import build_lite0_backbone, freeze_batch_norm

        backbone = build_lite0_backbone(input_size, weights, freeze)
        if getattr(backbone, "imagenet_weights_loaded", False) and not freeze:
            freeze_batch_norm(backbone)  # fine-tune the convolutions, keep the real-image BN statistics
        return backbone
    inputs = keras.Input((input_size, input_size, 3), name="image")
    if name == "mobilenet_v2":
        x = keras.applications.mobilenet_v2.preprocess_input(inputs)
        base = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), include_top=False,
                                              weights=weights, alpha=1.0)
        features = base(x)
    elif name == "efficientnet_b0":  # EfficientNet normalises its input itself
        base = keras.applications.EfficientNetB0(input_shape=(input_size, input_size, 3), include_top=False,
                                                 weights=weights)
        features = base(inputs)
    elif name == "small":
        if weights is not None:
            raise ValueError("the 'small' backbone has no pretrained weights; use --backbone_weights=none")
        features = _small_backbone(keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs))
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    backbone = keras.Model(inputs, features, name=f"backbone_{name}")
    if freeze:
        backbone.trainable = False
    # Keras' defaults (0.99, 0.999 in MobileNetV2) let the inference statistics lag far behind the weights in
    # short trainings from scratch; 0.9 tracks them.
    for layer in backbone._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return backbone


def build_pose_model(backbone: str = "efficientnet_lite0", input_size: int = 128, backbone_weights=None,
                     head_width: int = 256, dropout: float = 0.1, freeze_backbone: bool = False) -> keras.Model:
    """The multi-task pose network (see the module docstring for inputs and outputs)."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    features = build_backbone(backbone, input_size, backbone_weights, freeze_backbone)(inputs)
    # Keep the spatial layout (where the object is matters for box and translation): reduce channels, flatten.
    x = keras.layers.Conv2D(64, 1, activation="relu", name="reduce")(features)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(head_width, activation="relu", name="shared_fc")(x)
    x = keras.layers.Dropout(dropout)(x)

    def head(name, units, hidden=128):
        h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_fc")(x)
        return keras.layers.Dense(units, name=f"{name}_out")(h)

    box = head("box", 4)
    rot = head("rotation", 4)
    # bias the quaternion head towards the identity so early normalisation is well defined
    rotation = CanonicalQuaternion(name="rotation")(rot)
    translation = PositiveDepth(name="translation")(head("translation", 3))
    box = keras.layers.Activation("linear", name="box")(box)
    return keras.Model(inputs, {"box": box, "rotation": rotation, "translation": translation}, name="pose_net")


@keras.saving.register_keras_serializable(package="pose_net")
class CanonicalQuaternion(keras.layers.Layer):
    """``[B, 4]`` -> unit quaternion with w >= 0; the raw output is biased towards the identity (1, 0, 0, 0)."""

    def call(self, q):
        q = tf.math.l2_normalize(q + tf.constant([[1.0, 0.0, 0.0, 0.0]]), axis=-1)
        return tf.where(q[:, :1] < 0.0, -q, q)


@keras.saving.register_keras_serializable(package="pose_net")
class PositiveDepth(keras.layers.Layer):
    """``[B, 3]`` (dx, dy, log z_s) -> (dx, dy, z_s): the depth term is positive and of order 1."""

    def call(self, v):
        return tf.concat([v[:, :2], tf.exp(tf.clip_by_value(v[:, 2:], -4.0, 4.0))], axis=-1)
