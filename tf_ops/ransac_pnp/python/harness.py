"""ctypes harness over the framework-free core ``tf_ops/lib/libransac_pnp_core.so`` (no TensorFlow).

Runs ``rp_cpu_ransac_pnp``, the training form ``rp_cpu_ransac_pnp_hypotheses`` with its backward
``rp_cpu_ransac_pnp_hypotheses_backward``, and the P3P solver ``rp_p3p`` on numpy arrays. Build the library with
``make build-ops`` or, without TensorFlow, ``python -m tf_ops.build --core-only``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from tf_ops.loading import open_core_library

LIB_PATH = Path(__file__).resolve().parents[2] / "lib" / "libransac_pnp_core.so"

# Item status codes (RP_ITEM_* in core/ransac_pnp_core.h).
ITEM_OK = 0
ITEM_TOO_FEW_POINTS = 1
ITEM_SINGULAR_K = 2
ITEM_COLLINEAR_POINTS = 3
ITEM_NO_HYPOTHESIS = 4

_f32p = ctypes.POINTER(ctypes.c_float)
_u8p = ctypes.POINTER(ctypes.c_uint8)
_i32p = ctypes.POINTER(ctypes.c_int32)
_int = ctypes.c_int
_float = ctypes.c_float
_u64 = ctypes.c_uint64

# Keys of the training form's outputs that its backward takes (besides the inputs).
HYPOTHESES_OUTPUTS = ("R", "t_mm", "score", "minimal_sets", "ok", "R_init", "t_init_mm")


class CoreError(RuntimeError):
    pass


def _f32(x, shape_tail: tuple, name: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 1 + len(shape_tail) or any(t is not None and a.shape[1 + i] != t for i, t in enumerate(shape_tail)):
        raise ValueError(f"{name} must be [B, {', '.join('N' if t is None else str(t) for t in shape_tail)}], "
                         f"got shape {a.shape}")
    return a


class CoreLib:
    """The core library's C ABI on numpy arrays."""

    def __init__(self, path: str | Path | None = None):
        lib = open_core_library(path, LIB_PATH.name)
        lib.rp_error_string.restype = ctypes.c_char_p
        lib.rp_error_string.argtypes = [_int]
        lib.rp_item_status_string.restype = ctypes.c_char_p
        lib.rp_item_status_string.argtypes = [_int]
        lib.rp_check_parameters.argtypes = [_int, _float, _int]
        lib.rp_cpu_ransac_pnp.argtypes = [_f32p, _f32p, _f32p, _f32p, _u8p, _int, _int, _int, _float, _int, _u64,
                                          _f32p, _f32p, _u8p, _f32p, _u8p, _i32p, _int, _int]
        lib.rp_cpu_ransac_pnp_hypotheses.argtypes = [
            _f32p, _f32p, _f32p, _f32p, _u8p, _int, _int, _int, _float, _int, _int, _u64,
            _f32p, _f32p, _f32p, _i32p, _u8p, _f32p, _f32p, _i32p, _int, _int]
        lib.rp_cpu_ransac_pnp_hypotheses_backward.argtypes = [
            _f32p, _f32p, _f32p, _u8p, _int, _int, _int, _float, _int, _int,
            _f32p, _f32p, _f32p, _f32p, _i32p, _u8p, _f32p, _f32p, _f32p, _f32p, _f32p, _f32p, _int, _int]
        lib.rp_p3p.argtypes = [_f32p, _f32p, _f32p, _f32p, _f32p]
        self.lib = lib
        self.path = path

    def item_status_string(self, status: int) -> str:
        return self.lib.rp_item_status_string(int(status)).decode()

    @staticmethod
    def _inputs(pixels, coords_mm, K, weights, valid):
        """Contiguous arrays and ctypes pointers of the common inputs: (b, n, arrays, pointers)."""
        pixels = _f32(pixels, (None, 2), "pixels")
        b, n = pixels.shape[:2]
        coords = _f32(coords_mm, (n, 3), "coords_mm")
        K = np.asarray(K, np.float32)
        if K.shape == (3, 3):
            K = np.broadcast_to(K, (b, 3, 3))
        K = _f32(K, (3, 3), "K")
        if coords.shape[0] != b or K.shape[0] != b:
            raise ValueError(f"batch sizes differ: pixels {pixels.shape}, coords_mm {coords.shape}, K {K.shape}")
        w_ptr = None
        if weights is not None:
            weights = _f32(weights, (n,), "weights")
            w_ptr = weights.ctypes.data_as(_f32p)
        v_ptr = None
        if valid is not None:
            valid = np.ascontiguousarray(valid, dtype=np.uint8)
            if valid.shape != (b, n):
                raise ValueError(f"valid must be [B, N] = [{b}, {n}], got {valid.shape}")
            v_ptr = valid.ctypes.data_as(_u8p)
        arrays = (pixels, coords, K, weights, valid)  # kept alive while the pointers are used
        pointers = (pixels.ctypes.data_as(_f32p), coords.ctypes.data_as(_f32p), K.ctypes.data_as(_f32p), w_ptr, v_ptr)
        return b, n, arrays, pointers

    def ransac_pnp(self, pixels, coords_mm, K, weights=None, valid=None, num_hypotheses: int = 64,
                   threshold_px: float = 10.0, seed: int = 0, max_refine_iterations: int = 10,
                   batch_range: tuple[int, int] | None = None) -> dict:
        """``rp_cpu_ransac_pnp`` on numpy arrays.

        pixels ``[B, N, 2]``, coords_mm ``[B, N, 3]``, K ``[B, 3, 3]`` (or ``[3, 3]``, shared), weights ``[B, N]``
        or None, valid ``[B, N]`` bool or None. Returns R ``[B, 3, 3]``, t_mm ``[B, 3]``, inliers ``[B, N]`` bool,
        score ``[B]``, ok ``[B]`` bool and status ``[B]`` int32 (ITEM_*). Raises CoreError on an invalid argument.
        """
        b, n, _arrays, (px_ptr, xyz_ptr, K_ptr, w_ptr, v_ptr) = self._inputs(pixels, coords_mm, K, weights, valid)
        R = np.zeros((b, 3, 3), np.float32)
        t = np.zeros((b, 3), np.float32)
        inl = np.zeros((b, n), np.uint8)
        score = np.zeros(b, np.float32)
        ok = np.zeros(b, np.uint8)
        status = np.full(b, -1, np.int32)
        lo, hi = batch_range if batch_range else (0, b)
        rc = self.lib.rp_cpu_ransac_pnp(
            px_ptr, xyz_ptr, K_ptr, w_ptr, v_ptr, b, n,
            int(num_hypotheses), float(threshold_px), int(max_refine_iterations), int(seed) & (2**64 - 1),
            R.ctypes.data_as(_f32p), t.ctypes.data_as(_f32p), inl.ctypes.data_as(_u8p), score.ctypes.data_as(_f32p),
            ok.ctypes.data_as(_u8p), status.ctypes.data_as(_i32p), lo, hi)
        if rc != 0:
            raise CoreError(f"rp_cpu_ransac_pnp: {self.lib.rp_error_string(rc).decode()} (code {rc})")
        return dict(R=R, t_mm=t, inliers=inl.astype(bool), score=score, ok=ok.astype(bool), status=status)

    def ransac_pnp_hypotheses(self, pixels, coords_mm, K, weights=None, valid=None, num_hypotheses: int = 64,
                              threshold_px: float = 10.0, seed: int = 0, max_refine_iterations: int = 10,
                              max_refine_points: int = 0, batch_range: tuple[int, int] | None = None) -> dict:
        """``rp_cpu_ransac_pnp_hypotheses`` (the training form: every hypothesis) on numpy arrays.

        Inputs as :meth:`ransac_pnp`; ``max_refine_points`` > 0 refines on every stride-th used correspondence only
        where an item has more (docs/ransac_pnp.md, "Training form (DSAC)"), 0 on all inliers. Returns, with H = num_hypotheses, R ``[B, H, 3, 3]``, t_mm ``[B, H, 3]``
        (refined), score ``[B, H]`` (of the minimal-solver pose), minimal_sets ``[B, H, 4]`` int32 (indices into N,
        -1 where no hypothesis), ok ``[B, H]`` bool, R_init ``[B, H, 3, 3]``, t_init_mm ``[B, H, 3]`` (the minimal
        solver's pose) and status ``[B]`` int32 (ITEM_*). Raises CoreError on an invalid argument.
        """
        b, n, _arrays, (px_ptr, xyz_ptr, K_ptr, w_ptr, v_ptr) = self._inputs(pixels, coords_mm, K, weights, valid)
        h = int(num_hypotheses)
        hh = max(h, 0)
        out = dict(R=np.zeros((b, hh, 3, 3), np.float32), t_mm=np.zeros((b, hh, 3), np.float32),
                   score=np.zeros((b, hh), np.float32), minimal_sets=np.zeros((b, hh, 4), np.int32),
                   ok=np.zeros((b, hh), np.uint8), R_init=np.zeros((b, hh, 3, 3), np.float32),
                   t_init_mm=np.zeros((b, hh, 3), np.float32), status=np.full(b, -1, np.int32))
        lo, hi = batch_range if batch_range else (0, b)
        ptr = {k: v.ctypes.data_as(_u8p if v.dtype == np.uint8 else _i32p if v.dtype == np.int32 else _f32p)
               for k, v in out.items()}
        rc = self.lib.rp_cpu_ransac_pnp_hypotheses(
            px_ptr, xyz_ptr, K_ptr, w_ptr, v_ptr, b, n, h, float(threshold_px), int(max_refine_iterations),
            int(max_refine_points), int(seed) & (2**64 - 1), ptr["R"], ptr["t_mm"], ptr["score"], ptr["minimal_sets"], ptr["ok"],
            ptr["R_init"], ptr["t_init_mm"], ptr["status"], lo, hi)
        if rc != 0:
            raise CoreError(f"rp_cpu_ransac_pnp_hypotheses: {self.lib.rp_error_string(rc).decode()} (code {rc})")
        out["ok"] = out["ok"].astype(bool)
        return out

    def ransac_pnp_hypotheses_backward(self, pixels, coords_mm, K, forward: dict, valid=None, grad_R=None,
                                       grad_t_mm=None, grad_score=None, grad_R_init=None, grad_t_init_mm=None,
                                       num_hypotheses: int = 64, threshold_px: float = 10.0,
                                       max_refine_iterations: int = 10, max_refine_points: int = 0,
                                       batch_range: tuple[int, int] | None = None) -> np.ndarray:
        """``rp_cpu_ransac_pnp_hypotheses_backward``: dL/dcoords_mm ``[B, N, 3]`` float32.

        ``forward`` is :meth:`ransac_pnp_hypotheses`' result for the same inputs and parameters (max_refine_points
        included); the upstream
        gradients (shapes of R, t_mm, score, R_init, t_init_mm) may be None (zero). Raises CoreError on an invalid
        argument.
        """
        b, n, _arrays, (px_ptr, xyz_ptr, K_ptr, _, v_ptr) = self._inputs(pixels, coords_mm, K, None, valid)
        h = int(num_hypotheses)
        shapes = dict(R=(b, h, 3, 3), t_mm=(b, h, 3), score=(b, h), minimal_sets=(b, h, 4), ok=(b, h),
                      R_init=(b, h, 3, 3), t_init_mm=(b, h, 3))
        fw = {}
        for key in HYPOTHESES_OUTPUTS:
            dtype = np.int32 if key == "minimal_sets" else np.uint8 if key == "ok" else np.float32
            fw[key] = np.ascontiguousarray(forward[key], dtype)
            if fw[key].shape != shapes[key]:
                raise ValueError(f"forward[{key!r}] must have shape {shapes[key]}, got {fw[key].shape}")
        grads = {}
        for key, g in (("R", grad_R), ("t_mm", grad_t_mm), ("score", grad_score), ("R_init", grad_R_init),
                       ("t_init_mm", grad_t_init_mm)):
            if g is None:
                grads[key] = None
                continue
            grads[key] = np.ascontiguousarray(g, np.float32)
            if grads[key].shape != shapes[key]:
                raise ValueError(f"grad of {key} must have shape {shapes[key]}, got {grads[key].shape}")
        gptr = {k: (None if v is None else v.ctypes.data_as(_f32p)) for k, v in grads.items()}
        out = np.zeros((b, n, 3), np.float32)
        lo, hi = batch_range if batch_range else (0, b)
        rc = self.lib.rp_cpu_ransac_pnp_hypotheses_backward(
            px_ptr, xyz_ptr, K_ptr, v_ptr, b, n, h, float(threshold_px), int(max_refine_iterations),
            int(max_refine_points), fw["R"].ctypes.data_as(_f32p), fw["t_mm"].ctypes.data_as(_f32p), fw["R_init"].ctypes.data_as(_f32p),
            fw["t_init_mm"].ctypes.data_as(_f32p), fw["minimal_sets"].ctypes.data_as(_i32p),
            fw["ok"].ctypes.data_as(_u8p), gptr["R"], gptr["t_mm"], gptr["score"], gptr["R_init"], gptr["t_init_mm"],
            out.ctypes.data_as(_f32p), lo, hi)
        if rc != 0:
            raise CoreError(f"rp_cpu_ransac_pnp_hypotheses_backward: {self.lib.rp_error_string(rc).decode()} "
                            f"(code {rc})")
        return out

    def p3p(self, pixels, coords_mm, K) -> list[tuple[np.ndarray, np.ndarray]]:
        """The minimal solver: pixels ``[3, 2]``, coords_mm ``[3, 3]``, K ``[3, 3]`` -> list of (R, t_mm) (0..4)."""
        pixels = np.ascontiguousarray(pixels, np.float32).reshape(3, 2)
        coords = np.ascontiguousarray(coords_mm, np.float32).reshape(3, 3)
        K = np.ascontiguousarray(K, np.float32).reshape(3, 3)
        R = np.zeros((4, 3, 3), np.float32)
        t = np.zeros((4, 3), np.float32)
        count = self.lib.rp_p3p(pixels.ctypes.data_as(_f32p), coords.ctypes.data_as(_f32p), K.ctypes.data_as(_f32p),
                                R.ctypes.data_as(_f32p), t.ctypes.data_as(_f32p))
        if count < 0:
            raise CoreError(f"rp_p3p: {self.lib.rp_error_string(count).decode()} (code {count})")
        return [(R[i], t[i]) for i in range(count)]
