"""TFRecord files without TensorFlow: the framing and its masked CRC-32C, in numpy.

A TFRecord file is a sequence of ``uint64 length | uint32 masked_crc32c(length bytes) | data |
uint32 masked_crc32c(data)`` (little endian). Writing it here keeps TensorFlow out of the generator's processes
(importing TF costs seconds per run); the bytes are identical to ``tf.io.TFRecordWriter``'s (tested).

CRC-32C is computed over 16-byte lanes in parallel (numpy, one table step per byte column) and the lane CRCs are
combined pairwise with precomputed "shift by 2^k lanes" operators.
"""

from __future__ import annotations

import os
import struct

import numpy as np

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_LANE = 16          # bytes per lane
_LEVELS = 40        # combine operators for up to 2^40 lanes


def _make_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_TABLE = _make_table()
_TABLE_LIST = _TABLE.tolist()


def _byte_tables(op: np.ndarray) -> np.ndarray:
    """[4, 256] tables of a linear map given by the images ``op [32]`` of the 32 basis bits."""
    bits = ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1).astype(bool)  # [256, 8]
    out = np.zeros((4, 256), np.uint32)
    for k in range(4):
        imgs = op[8 * k:8 * k + 8]
        out[k] = np.bitwise_xor.reduce(np.where(bits, imgs[None, :], np.uint32(0)), axis=1)
    return out


def _apply(tables: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (tables[0][v & 0xFF] ^ tables[1][(v >> 8) & 0xFF] ^ tables[2][(v >> 16) & 0xFF]
            ^ tables[3][v >> 24])


def _make_shift_tables() -> list[np.ndarray]:
    # the register after one zero byte: s -> T[s & 0xFF] ^ (s >> 8); images of the basis bits after _LANE bytes
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    s = basis.copy()
    for _ in range(_LANE):
        s = _TABLE[s & 0xFF] ^ (s >> 8)
    tables = [_byte_tables(s)]
    for _ in range(1, _LEVELS):
        prev = tables[-1]
        tables.append(_byte_tables(_apply(prev, _apply(prev, basis))))  # shift twice as far
    return tables


_SHIFT = _make_shift_tables()


def _crc32c_small(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    t = _TABLE_LIST
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (init and final xor 0xFFFFFFFF)."""
    n = len(data)
    if n < 512:
        return _crc32c_small(data)
    lanes = 1 << max(0, (-(-n // _LANE) - 1).bit_length())  # a power of two >= n / _LANE
    buf = np.zeros(lanes * _LANE, np.uint8)
    pad = lanes * _LANE - n  # leading zero bytes do not change a zero register
    buf[pad:] = np.frombuffer(data, np.uint8)
    buf[pad:pad + 4] ^= 0xFF  # the initial register value 0xFFFFFFFF = xor into the first 4 data bytes
    cols = buf.reshape(lanes, _LANE)
    s = np.zeros(lanes, np.uint32)
    for j in range(_LANE):
        s = _TABLE[(s ^ cols[:, j]) & 0xFF] ^ (s >> 8)
    level = 0
    while len(s) > 1:
        s = _apply(_SHIFT[level], s[0::2]) ^ s[1::2]
        level += 1
    return int(s[0]) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record with its TFRecord framing."""
    length = struct.pack("<Q", len(record))
    return (length + struct.pack("<I", masked_crc32c(length)) + record
            + struct.pack("<I", masked_crc32c(record)))


class TFRecordWriter:
    """Minimal ``tf.io.TFRecordWriter`` replacement (uncompressed)."""

    def __init__(self, path):
        self._f = open(os.fspath(path), "wb")

    def write(self, record: bytes) -> None:
        self._f.write(frame(record))

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
