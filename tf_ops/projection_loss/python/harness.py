"""ctypes harness over the framework-free core ``tf_ops/lib/libprojection_loss_core.so`` (no TensorFlow).

Runs the CPU ABI functions on numpy arrays and, when a GPU and CuPy or PyTorch are available, the CUDA ABI
functions on device copies (device pointers from CuPy or torch, the current stream passed as ``void*``).
Build the library with ``make build-ops`` or, without TensorFlow, ``python -m tf_ops.build --core-only``.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import numpy as np

from tf_ops.loading import open_core_library

LIB_PATH = Path(__file__).resolve().parents[2] / "lib" / "libprojection_loss_core.so"

_f32p = ctypes.POINTER(ctypes.c_float)
_int = ctypes.c_int
_float = ctypes.c_float
_vp = ctypes.c_void_p
_size = ctypes.c_size_t


class CoreError(RuntimeError):
    pass


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(_f32p)


def _as_points(x, name: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 3 or a.shape[2] != 2:
        raise ValueError(f"{name} must be [B, N, 2], got shape {a.shape}")
    return a


class _CupyBackend:
    name = "cupy"

    def __init__(self):
        import cupy as cp  # noqa: PLC0415

        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        self.cp = cp

    def to_device(self, a):
        return self.cp.asarray(a)

    def empty(self, shape, dtype=np.float32):
        return self.cp.empty(shape, dtype=dtype)

    def ptr(self, x):
        return x.data.ptr

    def stream(self):
        return self.cp.cuda.get_current_stream().ptr

    def to_host(self, x):
        return self.cp.asnumpy(x)

    def sync(self):
        self.cp.cuda.get_current_stream().synchronize()

    def event(self):
        return self.cp.cuda.Event()

    def record(self, ev):
        ev.record()

    def elapsed_ms(self, a, b):
        b.synchronize()
        return self.cp.cuda.get_elapsed_time(a, b)


class _TorchBackend:
    name = "torch"

    def __init__(self):
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda is not available")
        self.torch = torch

    def to_device(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).cuda()

    def empty(self, shape, dtype=np.float32):
        tdt = {np.dtype(np.float32): self.torch.float32, np.dtype(np.uint8): self.torch.uint8}[np.dtype(dtype)]
        return self.torch.empty(shape, dtype=tdt, device="cuda")

    def ptr(self, x):
        return x.data_ptr()

    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def to_host(self, x):
        return x.cpu().numpy()

    def sync(self):
        self.torch.cuda.synchronize()

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, ev):
        ev.record()

    def elapsed_ms(self, a, b):
        b.synchronize()
        return a.elapsed_time(b)


def gpu_backend():
    """A CuPy or torch backend when a CUDA device is usable, else None (reason in gpu_unavailable_reason())."""
    global _GPU_REASON
    reasons = []
    for cls in (_CupyBackend, _TorchBackend):
        try:
            return cls()
        except Exception as e:  # ImportError, no device, driver errors
            reasons.append(f"{cls.name}: {type(e).__name__}: {e}")
    _GPU_REASON = "; ".join(reasons)
    return None


_GPU_REASON = ""


def gpu_unavailable_reason() -> str:
    return _GPU_REASON


class CoreLib:
    """The core library's C ABI on numpy arrays."""

    def __init__(self, path: str | Path | None = None):
        lib = open_core_library(path, LIB_PATH.name)
        lib.pl_error_string.restype = ctypes.c_char_p
        lib.pl_error_string.argtypes = [_int]
        lib.pl_drawn_size.argtypes = [_int, _int, _float, ctypes.POINTER(_int), ctypes.POINTER(_int)]
        lib.pl_cpu_forward.argtypes = [_f32p, _f32p, _int, _int, _int, _int, _int, _float, _f32p, _int, _int]
        lib.pl_cpu_backward.argtypes = [_f32p, _f32p, _f32p, _int, _int, _int, _int, _int, _float, _f32p, _int,
                                        _int]
        lib.pl_cpu_forward_backward.argtypes = [_f32p, _f32p, _int, _int, _int, _int, _int, _float, _f32p, _f32p,
                                                _int, _int]
        lib.pl_cuda_forward_backward.argtypes = [_vp, _vp, _int, _int, _int, _int, _int, _float, _vp, _vp, _vp,
                                                 _size, _vp]
        lib.pl_cuda_available.restype = _int
        lib.pl_cuda_workspace_bytes.restype = _size
        lib.pl_cuda_workspace_bytes.argtypes = [_int, _int, _int, _float]
        lib.pl_cuda_forward.argtypes = [_vp, _vp, _int, _int, _int, _int, _int, _float, _vp, _vp, _size, _vp]
        lib.pl_cuda_backward.argtypes = [_vp, _vp, _vp, _int, _int, _int, _int, _int, _float, _vp, _vp, _size,
                                         _vp]
        self.lib = lib
        self.path = path

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise CoreError(f"{what}: {self.lib.pl_error_string(rc).decode()} (code {rc})")

    def drawn_size(self, height: int, width: int, scale: float) -> tuple[int, int]:
        h, w = _int(), _int()
        self._check(self.lib.pl_drawn_size(height, width, scale, ctypes.byref(h), ctypes.byref(w)), "drawn_size")
        return h.value, w.value

    # ---- CPU
    def cpu_forward(self, pred, gt, height: int, width: int, scale: float = 1.0, batch_range=None) -> np.ndarray:
        pred, gt = _as_points(pred, "pred"), _as_points(gt, "gt")
        b = pred.shape[0]
        loss = np.zeros(b, np.float32)
        lo, hi = batch_range if batch_range else (0, b)
        self._check(self.lib.pl_cpu_forward(_ptr(pred), _ptr(gt), b, pred.shape[1], gt.shape[1], height, width,
                                            scale, _ptr(loss), lo, hi), "pl_cpu_forward")
        return loss

    def cpu_backward(self, pred, gt, grad_loss, height: int, width: int, scale: float = 1.0) -> np.ndarray:
        pred, gt = _as_points(pred, "pred"), _as_points(gt, "gt")
        b = pred.shape[0]
        gl = np.ascontiguousarray(np.broadcast_to(np.asarray(grad_loss, np.float32), (b,)))
        grad = np.zeros_like(pred)
        self._check(self.lib.pl_cpu_backward(_ptr(pred), _ptr(gt), _ptr(gl), b, pred.shape[1], gt.shape[1],
                                             height, width, scale, _ptr(grad), 0, b), "pl_cpu_backward")
        return grad

    def cpu_forward_backward(self, pred, gt, height: int, width: int, scale: float = 1.0):
        """Fused pass: (loss [B], grad_unit [B, N, 2]) with grad_unit = dloss/dpred for upstream gradient 1."""
        pred, gt = _as_points(pred, "pred"), _as_points(gt, "gt")
        b = pred.shape[0]
        loss = np.zeros(b, np.float32)
        grad = np.zeros_like(pred)
        self._check(self.lib.pl_cpu_forward_backward(_ptr(pred), _ptr(gt), b, pred.shape[1], gt.shape[1], height,
                                                     width, scale, _ptr(loss), _ptr(grad), 0, b),
                    "pl_cpu_forward_backward")
        return loss, grad

    # ---- CUDA
    def cuda_compiled(self) -> bool:
        return self.lib.pl_cuda_workspace_bytes(1, 1, 1, 1.0) > 0

    def cuda_available(self) -> bool:
        return bool(self.lib.pl_cuda_available())

    def cuda_forward(self, pred, gt, height, width, scale=1.0, backend=None) -> np.ndarray:
        return self._cuda("forward", pred, gt, None, height, width, scale, backend)[0]

    def cuda_backward(self, pred, gt, grad_loss, height, width, scale=1.0, backend=None) -> np.ndarray:
        return self._cuda("backward", pred, gt, grad_loss, height, width, scale, backend)[1]

    def cuda_forward_backward(self, pred, gt, height, width, scale=1.0, backend=None):
        return self._cuda("forward_backward", pred, gt, None, height, width, scale, backend)

    def _cuda(self, kind, pred, gt, grad_loss, height, width, scale, backend):
        """Runs ``pl_cuda_<kind>`` on device copies of the inputs; returns (loss [B], grad [B, N, 2]) on the host,
        None for what ``kind`` does not compute."""
        be = backend or gpu_backend()
        if be is None:
            raise CoreError(f"no usable GPU backend: {gpu_unavailable_reason()}")
        pred, gt = _as_points(pred, "pred"), _as_points(gt, "gt")
        b, n, m = pred.shape[0], pred.shape[1], gt.shape[1]
        d_pred, d_gt = be.to_device(pred), be.to_device(gt)
        nbytes = self.lib.pl_cuda_workspace_bytes(b, height, width, scale)
        ws = be.empty((max(nbytes, 1),), np.uint8)
        loss = be.empty((b,)) if kind != "backward" else None
        grad = be.empty((b, n, 2)) if kind != "forward" else None
        args = [be.ptr(d_pred), be.ptr(d_gt)]
        if kind == "backward":
            gl = be.to_device(np.ascontiguousarray(np.broadcast_to(np.asarray(grad_loss, np.float32), (b,))))
            args.append(be.ptr(gl))
        args += [b, n, m, height, width, scale] + [be.ptr(x) for x in (loss, grad) if x is not None]
        self._check(getattr(self.lib, f"pl_cuda_{kind}")(*args, be.ptr(ws), nbytes, be.stream()), f"pl_cuda_{kind}")
        be.sync()
        return tuple(None if x is None else be.to_host(x) for x in (loss, grad))

    def cuda_time_us(self, pred, gt, height, width, scale=1.0, iters: int = 200, backend=None) -> dict:
        """Mean time (microseconds, CUDA events, inputs already on device) of the forward, of forward then backward
        (two passes), and of the fused forward+backward (one drawing; what the TF op runs when training)."""
        be = backend or gpu_backend()
        if be is None:
            raise CoreError(f"no usable GPU backend: {gpu_unavailable_reason()}")
        pred, gt = _as_points(pred, "pred"), _as_points(gt, "gt")
        b, n, m = pred.shape[0], pred.shape[1], gt.shape[1]
        d_pred, d_gt = be.to_device(pred), be.to_device(gt)
        gl = be.to_device(np.ones(b, np.float32))
        nbytes = self.lib.pl_cuda_workspace_bytes(b, height, width, scale)
        ws = be.empty((max(nbytes, 1),), np.uint8)
        loss, grad = be.empty((b,)), be.empty((b, n, 2))
        args = (b, n, m, height, width, scale)

        def fwd():
            self._check(self.lib.pl_cuda_forward(be.ptr(d_pred), be.ptr(d_gt), *args, be.ptr(loss), be.ptr(ws),
                                                 nbytes, be.stream()), "pl_cuda_forward")

        def bwd():
            self._check(self.lib.pl_cuda_backward(be.ptr(d_pred), be.ptr(d_gt), be.ptr(gl), *args, be.ptr(grad),
                                                  be.ptr(ws), nbytes, be.stream()), "pl_cuda_backward")

        def fused():
            self._check(self.lib.pl_cuda_forward_backward(be.ptr(d_pred), be.ptr(d_gt), *args, be.ptr(loss),
                                                          be.ptr(grad), be.ptr(ws), nbytes, be.stream()),
                        "pl_cuda_forward_backward")

        result = {}
        for label, fns in (("forward", (fwd,)), ("forward+backward", (fwd, bwd)), ("fused", (fused,))):
            for _ in range(10):
                for f in fns:
                    f()
            be.sync()
            start, stop = be.event(), be.event()
            be.record(start)
            for _ in range(iters):
                for f in fns:
                    f()
            be.record(stop)
            result[label] = be.elapsed_ms(start, stop) * 1000.0 / iters
        result["backend"] = be.name
        return result


def drawn_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Pure-Python twin of pl_drawn_size (scale rounded to float32 first)."""
    s = float(np.float32(scale))
    return int(math.floor(height * s + 0.5)), int(math.floor(width * s + 0.5))
