"""THE definition of a training sample on disk: the tf.train.Example features, with a numpy encoder/decoder.

A shard is a TFRecord file ``train-00000-of-00016.tfrecord`` of serialized ``tf.train.Example`` protos with:

====================  ============  =====================================================================
feature               type          meaning
====================  ============  =====================================================================
``image/encoded``     bytes         PNG, RGB uint8, H x W
``mask/encoded``      bytes         PNG, uint8 0/255, H x W: the object's VISIBLE pixels
``image/height``      int64         H
``image/width``       int64         W
``pose/R``            float[9]      model-to-camera rotation, row-major
``pose/t_mm``         float[3]      model-to-camera translation in mm
``camera/K``          float[9]      OpenCV intrinsics, row-major
``bbox/xywh``         float[4]      tight box of the full (unoccluded) projected silhouette, clipped to the image,
                                    pixel-edge coordinates (like ``pose_core.geometry.bbox_from_mask``)
``visib_fract``       float         visible pixels / pixels of the unoccluded silhouette
``obj_id``            int64         object id
``sample/index``      int64         global index of the sample in the dataset
====================  ============  =====================================================================

:func:`encode_example` / :func:`decode_example` convert between a numpy sample dict and the serialized proto
WITHOUT TensorFlow (render workers must not import TF); the bytes are exactly what
``tf.train.Example.SerializeToString(deterministic=True)`` gives. :func:`feature_spec` and :func:`parse_example`
are the TF side for ``tf.data`` (they import TF when called).
"""

from __future__ import annotations

import io
import struct

import numpy as np

FORMAT_VERSION = 1

# name -> (proto kind, number of values or None for one bytes value). Sorted by name = serialization order.
FEATURES = {
    "bbox/xywh": ("float", 4),
    "camera/K": ("float", 9),
    "image/encoded": ("bytes", None),
    "image/height": ("int64", 1),
    "image/width": ("int64", 1),
    "mask/encoded": ("bytes", None),
    "obj_id": ("int64", 1),
    "pose/R": ("float", 9),
    "pose/t_mm": ("float", 3),
    "sample/index": ("int64", 1),
    "visib_fract": ("float", 1),
}

# numpy sample dict keys (what read_samples yields) <- feature names
SAMPLE_KEYS = ("image", "mask", "R", "t_mm", "K", "bbox_xywh", "visib_fract", "obj_id", "index")


class RecordError(ValueError):
    """A serialized example that is not a valid sample; the message says which feature is wrong."""


# --------------------------------------------------------------------------------------------- PNG
def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey) -> PNG bytes (deterministic for a given level)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG",
                                                                      compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im)


# --------------------------------------------------------------------------------------------- protobuf wire format
_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL_VARINTS[n]
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:  # length-delimited field
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _feature(kind: str, value) -> bytes:
    if kind == "bytes":
        inner = _ld(1, bytes(value))
        return _ld(1, inner)
    if kind == "float":
        arr = np.asarray(value, dtype="<f4").ravel()
        inner = _ld(1, arr.tobytes()) if arr.size else b""
        return _ld(2, inner)
    vals = np.asarray(value, dtype=np.int64).ravel()
    inner = _ld(1, b"".join(_varint(int(v)) for v in vals)) if vals.size else b""
    return _ld(3, inner)


def encode_features(features: dict) -> bytes:
    """``{feature name: value}`` (all of :data:`FEATURES`) -> serialized ``tf.train.Example``."""
    entries = b""
    for name in sorted(features):
        kind, _ = FEATURES[name]
        entry = _ld(1, name.encode()) + _ld(2, _feature(kind, features[name]))
        entries += _ld(1, entry)
    return _ld(1, entries)


def encode_example(sample: dict, compress_level: int = 1) -> bytes:
    """A numpy sample dict -> serialized ``tf.train.Example``.

    ``sample``: ``image`` uint8 [H, W, 3], ``mask`` uint8 [H, W] (0/255, nonzero = visible object), ``R`` [3, 3],
    ``t_mm`` [3], ``K`` [3, 3], ``bbox_xywh`` [4], ``visib_fract``, ``obj_id``, ``index``. ``image``/``mask`` may
    instead be given already PNG-encoded as ``image_png``/``mask_png``.
    """
    image_png = sample.get("image_png")
    if image_png is None:
        image = np.asarray(sample["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RecordError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        image_png = encode_png(image, compress_level)
        h, w = image.shape[:2]
    else:
        h, w = sample["height"], sample["width"]
    mask_png = sample.get("mask_png")
    if mask_png is None:
        mask = np.asarray(sample["mask"])
        if mask.shape != (h, w):
            raise RecordError(f"mask must be [H, W] = {(h, w)}, got {mask.shape}")
        mask_png = encode_png(np.where(mask > 0, 255, 0).astype(np.uint8), compress_level)
    return encode_features({
        "image/encoded": image_png,
        "mask/encoded": mask_png,
        "image/height": [int(h)],
        "image/width": [int(w)],
        "pose/R": np.asarray(sample["R"], dtype=np.float64).reshape(9),
        "pose/t_mm": np.asarray(sample["t_mm"], dtype=np.float64).reshape(3),
        "camera/K": np.asarray(sample["K"], dtype=np.float64).reshape(9),
        "bbox/xywh": np.asarray(sample["bbox_xywh"], dtype=np.float64).reshape(4),
        "visib_fract": [float(sample["visib_fract"])],
        "obj_id": [int(sample["obj_id"])],
        "sample/index": [int(sample["index"])],
    })


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise RecordError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yields (field number, wire type, value) of a message; value is bytes for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise RecordError("truncated length-delimited field")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire == 0:
            v, pos = _read_varint(buf, pos)
            yield field, wire, v
        elif wire == 5:
            yield field, wire, buf[pos:pos + 4]
            pos += 4
        elif wire == 1:
            yield field, wire, buf[pos:pos + 8]
            pos += 8
        else:
            raise RecordError(f"unsupported wire type {wire}")


def decode_features(data: bytes) -> dict:
    """Serialized ``tf.train.Example`` -> ``{feature name: bytes | np.ndarray}``."""
    out = {}
    for f, _, features in _fields(data):
        if f != 1:
            continue
        for f2, _, entry in _fields(features):
            if f2 != 1:
                continue
            name, feature = None, b""
            for f3, _, v in _fields(entry):
                if f3 == 1:
                    name = v.decode()
                elif f3 == 2:
                    feature = v
            values = []
            kind = None
            for kf, _, lst in _fields(feature):
                kind = {1: "bytes", 2: "float", 3: "int64"}.get(kf)
                for vf, wire, v in _fields(lst):
                    if vf != 1:
                        continue
                    if kind == "bytes":
                        values.append(v)
                    elif kind == "float":
                        values.extend(np.frombuffer(v, dtype="<f4").tolist() if wire == 2 else
                                      [struct.unpack("<f", v)[0]])
                    else:
                        if wire == 2:
                            p = 0
                            while p < len(v):
                                x, p = _read_varint(v, p)
                                values.append(x - (1 << 64) if x >= 1 << 63 else x)
                        else:
                            values.append(v - (1 << 64) if v >= 1 << 63 else v)
            out[name] = values[0] if kind == "bytes" and values else np.asarray(values)
    return out


def decode_example(data: bytes) -> dict:
    """Serialized ``tf.train.Example`` -> the numpy sample dict (``image`` [H, W, 3] uint8, ``mask`` [H, W] uint8,
    ``R`` [3, 3], ``t_mm`` [3], ``K`` [3, 3], ``bbox_xywh`` [4], ``visib_fract``, ``obj_id``, ``index``).
    Raises :class:`RecordError` naming the missing or malformed feature."""
    feats = decode_features(bytes(data))
    for name, (kind, n) in FEATURES.items():
        if name not in feats:
            raise RecordError(f"feature {name!r} is missing")
        if n is not None and np.size(feats[name]) != n:
            raise RecordError(f"feature {name!r} has {np.size(feats[name])} values, expected {n}")
    try:
        image = decode_png(feats["image/encoded"])
        mask = decode_png(feats["mask/encoded"])
    except Exception as e:
        raise RecordError(f"image/mask PNG cannot be decoded: {e}") from None
    h, w = int(feats["image/height"][0]), int(feats["image/width"][0])
    if image.shape != (h, w, 3) or mask.shape != (h, w):
        raise RecordError(f"image {image.shape} / mask {mask.shape} do not match image/height,width {(h, w)}")
    return {
        "image": image,
        "mask": mask,
        "R": feats["pose/R"].astype(np.float64).reshape(3, 3),
        "t_mm": feats["pose/t_mm"].astype(np.float64),
        "K": feats["camera/K"].astype(np.float64).reshape(3, 3),
        "bbox_xywh": feats["bbox/xywh"].astype(np.float64),
        "visib_fract": float(feats["visib_fract"][0]),
        "obj_id": int(feats["obj_id"][0]),
        "index": int(feats["sample/index"][0]),
    }


# --------------------------------------------------------------------------------------------- TF side
def feature_spec() -> dict:
    """``tf.io.parse_single_example`` spec of :data:`FEATURES` (imports TF)."""
    import tensorflow as tf

    spec = {}
    for name, (kind, n) in FEATURES.items():
        if kind == "bytes":
            spec[name] = tf.io.FixedLenFeature([], tf.string)
        elif kind == "float":
            spec[name] = tf.io.FixedLenFeature([n], tf.float32)
        else:
            spec[name] = tf.io.FixedLenFeature([n], tf.int64)
    return spec


def parse_example(serialized):
    """TF graph-mode parse of one serialized example into tensors keyed like :data:`SAMPLE_KEYS`
    (``image`` uint8 [H, W, 3], ``mask`` uint8 [H, W], ``R`` float32 [3, 3], ``t_mm`` [3], ``K`` [3, 3],
    ``bbox_xywh`` [4], ``visib_fract`` [], ``obj_id`` int64 [], ``index`` int64 [])."""
    import tensorflow as tf

    f = tf.io.parse_single_example(serialized, feature_spec())
    return {
        "image": tf.io.decode_png(f["image/encoded"], channels=3),
        "mask": tf.io.decode_png(f["mask/encoded"], channels=1)[..., 0],
        "R": tf.reshape(f["pose/R"], [3, 3]),
        "t_mm": f["pose/t_mm"],
        "K": tf.reshape(f["camera/K"], [3, 3]),
        "bbox_xywh": f["bbox/xywh"],
        "visib_fract": f["visib_fract"][0],
        "obj_id": f["obj_id"][0],
        "index": f["sample/index"][0],
    }


def shard_name(shard_index: int, num_shards: int, prefix: str = "train") -> str:
    return f"{prefix}-{shard_index:05d}-of-{num_shards:05d}.tfrecord"
