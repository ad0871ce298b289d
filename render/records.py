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
``depth/encoded``     bytes         PNG, uint16 (16-bit grey), H x W: z-depth (along the optical axis) of the
                                    object's visible surface in units of ``depth/scale_mm``; nonzero exactly at the
                                    pixels of ``mask/encoded``, 0 = no object. Format version >= 2.
``depth/scale_mm``    float         mm per depth unit: 0.1 * 2^k with the smallest k >= 0 such that the largest
                                    depth fits in 65535 units (0.1 mm up to 6.55 m). Format version >= 2.
``visib_fract``       float         visible pixels / pixels of the unoccluded silhouette
``obj_id``            int64         object id
``sample/index``      int64         global index of the sample in the dataset
====================  ============  =====================================================================

Format versions (``FORMAT_VERSION``, also ``format_version`` in dataset.json): 1 = without the two ``depth/``
features; 2 = with them. Version-1 records still decode: :func:`decode_example` then gives no ``depth_mm`` / ``xyz``
(asking the returned :class:`Sample` for them raises :class:`DepthUnavailableError`, which says to re-render), and
:func:`parse_example` gives ``depth_scale_mm`` = 0 and an all-zero ``depth_mm``: test ``depth_scale_mm > 0`` before
using the depth.

Object coordinates: the depth of a mask pixel (row r, column c) back-projects through the pixel centre (u = c, v = r)
to the point of the model surface that the pixel shows, ``xyz = R^T (depth * K^-1 [u, v, 1]^T - t)``
(:func:`pose_core.geometry.object_coordinates_from_depth`). The renderer reads the depth at the pixel centres, so
every mask pixel's ``xyz`` lies on the mesh surface and projects back onto that pixel's centre.

:func:`encode_example` / :func:`decode_example` convert between a numpy sample dict and the serialized proto
WITHOUT TensorFlow (render workers must not import TF); the bytes are exactly what
``tf.train.Example.SerializeToString(deterministic=True)`` gives. :func:`feature_spec` and :func:`parse_example`
are the TF side for ``tf.data`` (they import TF when called).
"""

from __future__ import annotations

import io
import struct

import numpy as np

FORMAT_VERSION = 2

# name -> (proto kind, number of values or None for one bytes value). Sorted by name = serialization order.
FEATURES = {
    "bbox/xywh": ("float", 4),
    "camera/K": ("float", 9),
    "depth/encoded": ("bytes", None),
    "depth/scale_mm": ("float", 1),
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

# The features added by format version 2; a version-1 record has all the others.
DEPTH_FEATURES = ("depth/encoded", "depth/scale_mm")
FEATURES_V1 = {name: spec for name, spec in FEATURES.items() if name not in DEPTH_FEATURES}

# numpy sample dict keys (what read_samples yields) <- feature names
SAMPLE_KEYS = ("image", "mask", "R", "t_mm", "K", "bbox_xywh", "visib_fract", "obj_id", "index")
# ... plus, for format version >= 2 (decode_example computes xyz from depth_mm and the pose):
DEPTH_SAMPLE_KEYS = ("depth_mm", "xyz")

DEPTH_SCALE_MM = 0.1      # finest depth unit; doubled until the largest depth fits in uint16
DEPTH_MAX_UNITS = 65535


class RecordError(ValueError):
    """A serialized example that is not a valid sample; the message says which feature is wrong."""


class DepthUnavailableError(RecordError):
    """``depth_mm`` / ``xyz`` asked of a sample from a format-version-1 record, which has no depth."""


class Sample(dict):
    """The numpy sample dict of :func:`decode_example`. ``source`` names where it was read from (set by
    :func:`render.dataset.read_samples`: the shard file and record index). For a version-1 record, ``sample["xyz"]``
    and ``sample["depth_mm"]`` raise :class:`DepthUnavailableError` saying to re-render (``"xyz" in sample`` is
    False, ``sample.get("xyz")`` is None)."""

    source: str = "a format-version-1 record"
    format_version: int = FORMAT_VERSION

    def __missing__(self, key):
        if key in DEPTH_SAMPLE_KEYS:
            raise DepthUnavailableError(
                f"{self.source}: no {key!r}: the record was written by render format version {self.format_version} "
                f"(before depth and object coordinates were stored). Re-render the dataset with "
                f"`python -m render.generate` (format version {FORMAT_VERSION}) into a new --out folder.")
        raise KeyError(key)


# --------------------------------------------------------------------------------------------- PNG
def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey) -> PNG bytes (deterministic for a given level)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG",
                                                                      compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 ``[H, W, 3]`` / ``[H, W]``, or uint16 ``[H, W]`` for a 16-bit grey PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I"):  # 16-bit grey (Pillow may open it as 32-bit "I")
            arr = np.asarray(im)
            if arr.dtype != np.uint16:
                if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                    raise ValueError(f"16-bit PNG holds values outside 0..65535 (mode {im.mode})")
                arr = arr.astype(np.uint16)
            return arr
        return np.asarray(im)


def depth_scale_for(max_depth_mm: float) -> np.float32:
    """``depth/scale_mm`` for a depth image whose largest value is ``max_depth_mm``: ``0.1 * 2^k`` mm (as float32,
    the value stored) with the smallest ``k >= 0`` such that ``max_depth_mm`` fits in :data:`DEPTH_MAX_UNITS`."""
    if not np.isfinite(max_depth_mm) or max_depth_mm < 0:
        raise RecordError(f"depth must be finite and >= 0, got a largest value of {max_depth_mm}")
    k = 0
    while np.rint(max_depth_mm / float(np.float32(DEPTH_SCALE_MM * 2 ** k))) > DEPTH_MAX_UNITS:
        k += 1
    return np.float32(DEPTH_SCALE_MM * 2 ** k)


def encode_depth(depth_mm: np.ndarray, mask: np.ndarray, compress_level: int = 1) -> tuple[bytes, np.float32]:
    """``depth_mm`` [H, W] (mm, z-depth) at the pixels of ``mask`` [H, W] -> ``(16-bit PNG bytes, scale_mm)``.
    Pixels outside the mask are stored as 0; every mask pixel must have a depth > 0."""
    depth = np.asarray(depth_mm, dtype=np.float64)
    inside = np.asarray(mask) > 0
    if depth.shape != inside.shape:
        raise RecordError(f"depth_mm must be [H, W] = {inside.shape}, got {depth.shape}")
    d = np.where(inside, depth, 0.0)
    if not np.all(np.isfinite(d)) or d.min(initial=0.0) < 0:
        raise RecordError("depth_mm must be finite and >= 0 at the mask pixels")
    missing = int((inside & ~(d > 0)).sum())
    if missing:
        raise RecordError(f"depth_mm is 0 at {missing} of the {int(inside.sum())} mask pixels: every visible object "
                          f"pixel needs its depth")
    scale = depth_scale_for(float(d.max(initial=0.0)))
    units = np.rint(d / float(scale))
    units[inside] = np.maximum(units[inside], 1)  # a depth below half a unit still marks an object pixel
    return encode_png16(units.astype(np.uint16), compress_level), scale


def encode_png16(array: np.ndarray, compress_level: int = 1) -> bytes:
    """uint16 ``[H, W]`` -> 16-bit grey PNG bytes (deterministic for a given level)."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint16 or arr.ndim != 2:
        raise RecordError(f"a 16-bit PNG needs uint16 [H, W], got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


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
    """A numpy sample dict -> serialized ``tf.train.Example`` (format version :data:`FORMAT_VERSION`).

    ``sample``: ``image`` uint8 [H, W, 3], ``mask`` uint8 [H, W] (0/255, nonzero = visible object), ``depth_mm``
    [H, W] (z-depth of the object's visible surface in mm, > 0 at every mask pixel; stored only at the mask pixels),
    ``R`` [3, 3], ``t_mm`` [3], ``K`` [3, 3], ``bbox_xywh`` [4], ``visib_fract``, ``obj_id``, ``index``.
    ``image``/``mask`` may instead be given already PNG-encoded as ``image_png``/``mask_png`` (with ``height``,
    ``width``), and the depth as ``depth_png`` with ``depth_scale_mm``.
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
    mask = None
    if mask_png is None:
        mask = np.asarray(sample["mask"])
        if mask.shape != (h, w):
            raise RecordError(f"mask must be [H, W] = {(h, w)}, got {mask.shape}")
        mask_png = encode_png(np.where(mask > 0, 255, 0).astype(np.uint8), compress_level)
    depth_png = sample.get("depth_png")
    if depth_png is not None:
        depth_scale_mm = float(sample["depth_scale_mm"])
    elif "depth_mm" in sample:
        if mask is None:
            mask = decode_png(mask_png)
        depth_png, depth_scale_mm = encode_depth(sample["depth_mm"], mask, compress_level)
    else:
        raise RecordError("the sample has no depth_mm (format version 2 stores the depth of the visible object)")
    return encode_features({
        "image/encoded": image_png,
        "mask/encoded": mask_png,
        "depth/encoded": depth_png,
        "depth/scale_mm": [depth_scale_mm],
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


def decode_example(data: bytes) -> Sample:
    """Serialized ``tf.train.Example`` -> the numpy sample dict (a :class:`Sample`): ``image`` [H, W, 3] uint8,
    ``mask`` [H, W] uint8, ``R`` [3, 3], ``t_mm`` [3], ``K`` [3, 3], ``bbox_xywh`` [4], ``visib_fract``, ``obj_id``,
    ``index``, and for format version >= 2 ``depth_mm`` float32 [H, W] (mm, 0 where no object) and ``xyz`` float32
    [H, W, 3] (object coordinates in mm in the model frame where ``mask`` is set, 0 elsewhere). A version-1 record
    (no ``depth/`` features) decodes without ``depth_mm``/``xyz`` (see :class:`Sample`).
    Raises :class:`RecordError` naming the missing or malformed feature."""
    from pose_core.geometry import object_coordinates_from_depth

    feats = decode_features(bytes(data))
    has_depth = any(name in feats for name in DEPTH_FEATURES)
    for name, (kind, n) in (FEATURES if has_depth else FEATURES_V1).items():
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
    sample = Sample(
        image=image,
        mask=mask,
        R=feats["pose/R"].astype(np.float64).reshape(3, 3),
        t_mm=feats["pose/t_mm"].astype(np.float64),
        K=feats["camera/K"].astype(np.float64).reshape(3, 3),
        bbox_xywh=feats["bbox/xywh"].astype(np.float64),
        visib_fract=float(feats["visib_fract"][0]),
        obj_id=int(feats["obj_id"][0]),
        index=int(feats["sample/index"][0]),
    )
    if not has_depth:
        sample.format_version = 1
        return sample
    scale = np.float32(feats["depth/scale_mm"][0])
    if not (np.isfinite(scale) and scale > 0):
        raise RecordError(f"feature 'depth/scale_mm' must be > 0, got {float(scale)}")
    try:
        units = decode_png(feats["depth/encoded"])
    except Exception as e:
        raise RecordError(f"depth PNG cannot be decoded: {e}") from None
    if units.dtype != np.uint16 or units.shape != (h, w):
        raise RecordError(f"depth PNG must be 16-bit grey {(h, w)}, got {units.dtype} {units.shape}")
    if not np.array_equal(units > 0, mask > 0):
        raise RecordError(f"depth is nonzero at {int((units > 0).sum())} pixels but the mask has "
                          f"{int((mask > 0).sum())}: they must be the same pixels")
    depth_mm = units.astype(np.float32) * scale  # float32 product: the same values as parse_example's
    sample["depth_mm"] = depth_mm
    sample["xyz"] = object_coordinates_from_depth(depth_mm, sample["K"], sample["R"], sample["t_mm"]).astype(
        np.float32)
    sample.format_version = FORMAT_VERSION
    return sample


# --------------------------------------------------------------------------------------------- TF side
def feature_spec() -> dict:
    """``tf.io.parse_single_example`` spec of :data:`FEATURES` (imports TF). The ``depth/`` features have defaults
    so that version-1 records parse: ``depth/encoded`` = b"" and ``depth/scale_mm`` = 0."""
    import tensorflow as tf

    spec = {}
    for name, (kind, n) in FEATURES.items():
        if kind == "bytes":
            spec[name] = tf.io.FixedLenFeature([], tf.string)
        elif kind == "float":
            spec[name] = tf.io.FixedLenFeature([n], tf.float32)
        else:
            spec[name] = tf.io.FixedLenFeature([n], tf.int64)
    spec["depth/encoded"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    spec["depth/scale_mm"] = tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])
    return spec


def parse_example(serialized):
    """TF graph-mode parse of one serialized example into tensors keyed like :data:`SAMPLE_KEYS`
    (``image`` uint8 [H, W, 3], ``mask`` uint8 [H, W], ``R`` float32 [3, 3], ``t_mm`` [3], ``K`` [3, 3],
    ``bbox_xywh`` [4], ``visib_fract`` [], ``obj_id`` int64 [], ``index`` int64 []) plus ``depth_mm`` float32 [H, W]
    (z-depth of the visible object in mm, 0 where no object; equal to :func:`decode_example`'s) and
    ``depth_scale_mm`` float32 [] (mm per stored depth unit). A version-1 record has no depth: ``depth_scale_mm`` is
    then 0 and ``depth_mm`` all zeros, so check ``depth_scale_mm > 0`` before using the depth."""
    import tensorflow as tf

    f = tf.io.parse_single_example(serialized, feature_spec())
    depth_scale_mm = f["depth/scale_mm"][0]
    height = tf.cast(f["image/height"][0], tf.int32)
    width = tf.cast(f["image/width"][0], tf.int32)

    def decode_depth():
        units = tf.io.decode_png(f["depth/encoded"], channels=1, dtype=tf.uint16)[..., 0]
        return tf.cast(units, tf.float32) * depth_scale_mm

    depth_mm = tf.cond(depth_scale_mm > 0, decode_depth, lambda: tf.zeros(tf.stack([height, width]), tf.float32))
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
        "depth_mm": depth_mm,
        "depth_scale_mm": depth_scale_mm,
    }


def shard_name(shard_index: int, num_shards: int, prefix: str = "train") -> str:
    return f"{prefix}-{shard_index:05d}-of-{num_shards:05d}.tfrecord"
