"""The networks: the thesis' multi-task network (a backbone and three heads: 2D box, rotation, translation) and
the dense correspondence network (:func:`build_coordinate_model`, the ``coords`` head).

Input: ``[B, S, S, 3]`` float32 RGB in [0, 255] (the crop the network looks at, see :mod:`pose_net.parametrization`).
Outputs of the multi-task network (a dict):

* ``box [B, 4]``: (x0, y0, x1, y1) / crop size, the object's 2D box in the crop;
* ``rotation``: the allocentric rotation, ``[B, 4]`` a unit quaternion (w, x, y, z), sign canonical (w >= 0), or
  with ``rotation_repr="6d"`` ``[B, 6]`` the first two columns of its matrix, not yet orthonormalised
  (:func:`pose_net.parametrization.rotation_matrix` turns either into ``[B, 3, 3]``); with
  ``rotation_hypotheses=M > 1`` (6D only) the head proposes M rotations and scores them:
  ``rotation_hypotheses [B, M, 6]``, ``rotation_logits [B, M]``, and ``rotation`` is the best-scored hypothesis;
* ``translation [B, 3]``: (dx, dy, z_s), the scale-invariant translation.
"""

from __future__ import annotations

import keras
import tensorflow as tf

BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "efficientnet_b0", "small")
BN_MOMENTUM = 0.9
ROTATION_REPRS = ("quaternion", "6d")
# The anchors of the rotation hypotheses (rotation_hypotheses > 1): the farthest-point subset of this many random
# rotations (seed ROTATION_ANCHOR_SEED), so that the hypotheses start spread over SO(3).
ROTATION_ANCHOR_CANDIDATES = 4096
ROTATION_ANCHOR_SEED = 0
# Variance scale of the hypotheses' output layer at initialisation (Keras' VarianceScaling; 1 is the usual): small,
# so that each hypothesis starts near its anchor instead of at a random rotation.
HYPOTHESIS_INIT_SCALE = 0.01


# The layers whose outputs are the feature pyramid (strides 2, 4, 8, 16, 32) of each backbone that has one.
LITE0_PYRAMID = ("block0_project_bn", "block2_add", "block4_add", "block10_add", "head_relu6")
SMALL_PYRAMID = tuple(f"small_stage{k}_relu2" for k in range(5))


def _small_backbone(inputs):
    """A small plain CNN (~0.5 M parameters): fast on CPUs, for tests and quick runs. Five stride-2 stages; the
    last layer of each is named in :data:`SMALL_PYRAMID`."""
    x = inputs
    for k, filters in enumerate((32, 48, 64, 96, 128)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(name=f"small_stage{k}_relu2")(x)
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


def build_direct_head(feature_shape, head_width: int = 256, dropout: float = 0.1,
                      rotation_repr: str = "quaternion", rotation_hypotheses: int = 1) -> keras.Model:
    """The thesis' three heads on the backbone's last features: ``[B, h, w, C] -> {box, rotation, translation}``.

    A separate model so that a frozen backbone's features can be computed once and the heads trained on them
    (:mod:`pose_net.feature_cache`); :func:`build_pose_model` calls it on the backbone's output.
    ``rotation_repr``: ``quaternion`` (the thesis: ``rotation [B, 4]``) or ``6d`` (Zhou et al. 2019, the first two
    columns of the matrix: ``rotation [B, 6]``); :func:`pose_net.parametrization.rotation_matrix` reads both.
    ``rotation_hypotheses`` M > 1 (6D only): M rotations, each biased towards its own anchor rotation, and a score
    per rotation (``rotation_hypotheses [B, M, 6]``, ``rotation_logits [B, M]``; ``rotation`` the best-scored one),
    trained winner-takes-all (:func:`pose_net.losses.rotation_hypotheses_loss`).
    """
    if rotation_repr not in ROTATION_REPRS:
        raise ValueError(f"unknown rotation representation {rotation_repr!r}: choose one of {ROTATION_REPRS}")
    if rotation_hypotheses < 1 or (rotation_hypotheses > 1 and rotation_repr != "6d"):
        raise ValueError(f"rotation_hypotheses must be 1, or more with the 6d representation; got "
                         f"{rotation_hypotheses} with {rotation_repr!r}")
    features = keras.Input(tuple(feature_shape), name="features")
    # Keep the spatial layout (where the object is matters for box and translation): reduce channels, flatten.
    x = keras.layers.Conv2D(64, 1, activation="relu", name="reduce")(features)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(head_width, activation="relu", name="shared_fc")(x)
    x = keras.layers.Dropout(dropout)(x)

    def head(name, units, hidden=128, out_init="glorot_uniform"):
        h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_fc")(x)
        return keras.layers.Dense(units, name=f"{name}_out", kernel_initializer=out_init)(h)

    box = keras.layers.Activation("linear", name="box")(head("box", 4))
    extra = {}
    if rotation_hypotheses > 1:
        # small initial outputs: each hypothesis starts at its anchor
        hypotheses = AnchoredSixDRotations(rotation_hypotheses, name="rotation_hypotheses")(
            head("rotation", 6 * rotation_hypotheses, out_init=keras.initializers.VarianceScaling(
                HYPOTHESIS_INIT_SCALE, seed=ROTATION_ANCHOR_SEED)))
        logits = keras.layers.Activation("linear", name="rotation_logits")(head("rotation_score", rotation_hypotheses))
        rotation = SelectRotation(name="rotation")([hypotheses, logits])
        extra = {"rotation_hypotheses": hypotheses, "rotation_logits": logits}
    elif rotation_repr == "6d":
        rotation = SixDRotation(name="rotation")(head("rotation", 6))
    else:
        # biased towards the identity so that early normalisation is well defined
        rotation = CanonicalQuaternion(name="rotation")(head("rotation", 4))
    translation = PositiveDepth(name="translation")(head("translation", 3))
    return keras.Model(features, {"box": box, "rotation": rotation, "translation": translation, **extra},
                       name="direct_head")


def build_pose_model(backbone: str = "efficientnet_lite0", input_size: int = 128, backbone_weights=None,
                     head_width: int = 256, dropout: float = 0.1, freeze_backbone: bool = False,
                     rotation_repr: str = "quaternion", rotation_hypotheses: int = 1) -> keras.Model:
    """The multi-task pose network (see the module docstring for inputs and outputs): the backbone (a sub-model
    named ``backbone_<name>``) and :func:`build_direct_head` (named ``direct_head``)."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    features_model = build_backbone(backbone, input_size, backbone_weights, freeze_backbone)
    head = build_direct_head(features_model.output.shape[1:], head_width, dropout, rotation_repr, rotation_hypotheses)
    outputs = head(features_model(inputs))
    model = keras.Model(inputs, dict(outputs), name="pose_net")
    model.imagenet_weights_loaded = getattr(features_model, "imagenet_weights_loaded", False)
    return model


def build_feature_pyramid(backbone: str, input_size: int, weights=None, freeze: bool = False) -> keras.Model:
    """The backbone's features at strides 2, 4, 8, 16 and 32: ``[B, S, S, 3] (0..255) -> [s2, s4, s8, s16, s32]``
    (``efficientnet_lite0``: 16, 24, 40, 112, 1280 channels; ``small``: 32, 48, 64, 96, 128)."""
    names = {"efficientnet_lite0": LITE0_PYRAMID, "small": SMALL_PYRAMID}.get(backbone)
    if names is None:
        raise ValueError(f"the coordinate head needs a backbone with a feature pyramid: {sorted(('efficientnet_lite0', 'small'))}, got {backbone!r}")
    full = build_backbone(backbone, input_size, weights, freeze)
    pyramid = keras.Model(full.inputs, [full.get_layer(n).output for n in names], name=f"pyramid_{backbone}")
    pyramid.imagenet_weights_loaded = getattr(full, "imagenet_weights_loaded", False)
    return pyramid


def coordinate_decoder(pyramid, decoder_widths=(128, 96, 64, 32), prefix: str = ""):
    """The coordinate head's U-Net decoder over a feature pyramid ``[s2, s4, s8, s16, s32]`` (Keras tensors).

    From stride 32 up to stride 2, each step a bilinear 2x upsampling, the lateral feature (1x1 conv) concatenated,
    and a 3x3 conv; every conv with batch norm and ReLU. ``decoder_widths``: channels at strides 16, 8, 4, 2.
    ``prefix`` names the layers (ESAC's experts, :mod:`pose_net.esac`, each have their own).
    Returns ``(coords [B, s, s, 3], mask logit [B, s, s, 1], last features)`` at stride 2.
    """
    s2, s4, s8, s16, s32 = pyramid

    def conv_bn_relu(x, width, kernel, name):
        x = keras.layers.Conv2D(width, kernel, padding="same", use_bias=False, name=prefix + name)(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=prefix + name + "_bn")(x)
        return keras.layers.ReLU(name=prefix + name + "_relu")(x)

    x = conv_bn_relu(s32, decoder_widths[0], 1, "decoder_top")
    for k, (skip, width) in enumerate(zip((s16, s8, s4, s2), decoder_widths)):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{prefix}decoder_up{k}")(x)
        lateral = conv_bn_relu(skip, width, 1, f"decoder_lateral{k}")
        x = keras.layers.Concatenate(name=f"{prefix}decoder_concat{k}")([x, lateral])
        x = conv_bn_relu(x, width, 3, f"decoder_conv{k}")
    coords = keras.layers.Conv2D(3, 1, name=prefix + "coords")(x)
    mask = keras.layers.Conv2D(1, 1, name=prefix + "mask", bias_initializer=keras.initializers.Constant(-2.0))(x)
    return coords, mask, x


def build_coordinate_model(backbone: str = "efficientnet_lite0", input_size: int = 128, backbone_weights=None,
                           freeze_backbone: bool = False, decoder_widths=(128, 96, 64, 32),
                           sampling_head: bool = False) -> keras.Model:
    """The dense correspondence network: a U-Net decoder over the backbone's feature pyramid.

    Input: ``[B, S, S, 3]`` float32 RGB in [0, 255]. Outputs (a dict), at stride 2 (``S/2 x S/2``, 64x64 for a
    128 crop):

    * ``coords [B, S/2, S/2, 3]``: the object coordinates each pixel shows, normalised to the model's box
      (:class:`pose_net.coordinates.CoordinateFrame`: ``(x_mm - centre) / size``, in [-0.5, 0.5] on the model);
    * ``mask [B, S/2, S/2, 1]``: the logit that the pixel shows the object (visible part).

    Decoder: :func:`coordinate_decoder` (its batch norms matter: without them, the frozen backbone's large
    activations kill the ReLUs in the first steps and the maps collapse to a constant).

    ``sampling_head`` (NG-DSAC, :mod:`pose_net.dsac`) adds ``sampling [B, S/2, S/2, 1]``: a logit per pixel of how
    much a minimal set should draw on it, a 1x1 conv on the decoder's last features with their gradient stopped
    (as NG-DSAC++ does), so its policy gradient does not reach the coordinates.
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    pyramid = build_feature_pyramid(backbone, input_size, backbone_weights, freeze_backbone)(inputs)
    coords, mask, x = coordinate_decoder(pyramid, decoder_widths)
    outputs = {"coords": coords, "mask": mask}
    if sampling_head:
        outputs["sampling"] = keras.layers.Conv2D(1, 1, name="sampling", kernel_initializer="zeros")(
            StopGradient(name="sampling_stop_gradient")(x))
    return keras.Model(inputs, outputs, name="coordinate_net")


def build_model(head: str, backbone: str, input_size: int, backbone_weights=None, freeze_backbone: bool = False,
                rotation_repr: str = "quaternion", sampling_head: bool = False, rotation_hypotheses: int = 1):
    """``head="direct"``: :func:`build_pose_model` (the thesis' network, with ``rotation_repr`` and
    ``rotation_hypotheses``); ``"coords"``:
    :func:`build_coordinate_model` (``sampling_head``: NG-DSAC's sampling output)."""
    if head == "coords":
        return build_coordinate_model(backbone, input_size, backbone_weights, freeze_backbone,
                                      sampling_head=sampling_head)
    if head == "direct":
        return build_pose_model(backbone, input_size, backbone_weights, freeze_backbone=freeze_backbone,
                                rotation_repr=rotation_repr, rotation_hypotheses=rotation_hypotheses)
    raise ValueError(f"unknown head {head!r}: choose direct or coords")


@keras.saving.register_keras_serializable(package="pose_net")
class StopGradient(keras.layers.Layer):
    """The identity whose gradient is zero (NG-DSAC's sampling head reads the decoder without training it)."""

    def call(self, x):
        return tf.stop_gradient(x)


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


@keras.saving.register_keras_serializable(package="pose_net")
class SixDRotation(keras.layers.Layer):
    """``[B, 6]`` -> the 6D rotation representation (Zhou et al., CVPR'19): two 3-vectors, the first two columns
    of the rotation matrix before Gram-Schmidt; the raw output is biased towards the identity's columns."""

    def call(self, v):
        return v + tf.constant([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])


def rotation_anchors(num: int):
    """``[num, 3, 3]`` float32 rotations spread over SO(3): the identity first, then each next one the farthest
    (largest smallest angle) from those chosen, among :data:`ROTATION_ANCHOR_CANDIDATES` random rotations."""
    import numpy as np

    from pose_core.geometry import random_rotations

    candidates = random_rotations(ROTATION_ANCHOR_CANDIDATES, np.random.default_rng(ROTATION_ANCHOR_SEED))
    chosen = [np.eye(3)]
    # the angle between rotations A and B grows as trace(A^T B) falls
    nearest_trace = np.einsum("nij,ij->n", candidates, chosen[0])
    while len(chosen) < num:
        k = int(np.argmin(nearest_trace))
        chosen.append(candidates[k])
        nearest_trace = np.maximum(nearest_trace, np.einsum("nij,ij->n", candidates, candidates[k]))
    return np.asarray(chosen, np.float32)


@keras.saving.register_keras_serializable(package="pose_net")
class AnchoredSixDRotations(keras.layers.Layer):
    """``[B, 6 M]`` -> ``[B, M, 6]``: M rotations in the 6D representation, the k-th biased towards the k-th of
    :func:`rotation_anchors` (so that the hypotheses start spread over SO(3), not all at the identity)."""

    def __init__(self, num_hypotheses: int, anchors_six_d=None, **kwargs):
        super().__init__(**kwargs)
        self.num_hypotheses = int(num_hypotheses)
        if anchors_six_d is None:
            from pose_net.parametrization import matrix_to_six_d

            anchors_six_d = matrix_to_six_d(rotation_anchors(self.num_hypotheses)).tolist()
        self.anchors_six_d = [[float(x) for x in a] for a in anchors_six_d]  # saved with the model
        if len(self.anchors_six_d) != self.num_hypotheses:
            raise ValueError(f"{len(self.anchors_six_d)} anchors for {self.num_hypotheses} rotation hypotheses")
        self._anchor_six_d = tf.constant([self.anchors_six_d], tf.float32)

    def call(self, v):
        return tf.reshape(v, [-1, self.num_hypotheses, 6]) + self._anchor_six_d

    def get_config(self):
        return {**super().get_config(), "num_hypotheses": self.num_hypotheses, "anchors_six_d": self.anchors_six_d}


@keras.saving.register_keras_serializable(package="pose_net")
class SelectRotation(keras.layers.Layer):
    """``([B, M, 6] hypotheses, [B, M] logits)`` -> ``[B, 6]``: the hypothesis with the highest score."""

    def call(self, inputs):
        hypotheses, logits = inputs
        return tf.gather(hypotheses, tf.argmax(logits, axis=-1), batch_dims=1)
