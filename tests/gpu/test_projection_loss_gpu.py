"""CUDA core of the Projection Loss vs the CPU core, through the ctypes harness (no TensorFlow).

Forward must be identical, backward within 1e-5, on 1000+ random problems; plus a timing smoke test.
"""

from __future__ import annotations

import numpy as np
import pytest

from tf_ops.projection_loss.python.harness import CoreError


def _problems(rng, b, n, m, height, width, nonfinite=0.02):
    gt = rng.uniform([-0.1 * width, -0.1 * height], [1.1 * width, 1.1 * height], (b, m, 2))
    k = rng.random((b, m, 2))
    gt = np.where(k < 0.1, np.round(gt) - 0.5, gt)  # pixel edges
    pred = gt[:, rng.integers(0, m, n)] + rng.normal(0, 0.04 * max(height, width), (b, n, 2))
    pred[: b // 4] = rng.uniform(0, [width, height], (b // 4, n, 2))
    bad = rng.random((b, n)) < nonfinite
    pred[..., 0] = np.where(bad, np.nan, pred[..., 0])
    pred[..., 1] = np.where(rng.random((b, n)) < nonfinite, np.inf, pred[..., 1])
    return pred.astype(np.float32), gt.astype(np.float32)


@pytest.mark.parametrize(
    "height,width,scale,n,m",
    [(32, 32, 1.0, 200, 200), (64, 48, 0.5, 300, 250), (128, 128, 0.37, 400, 400), (24, 20, 2.0, 150, 90)],
)
def test_cuda_matches_cpu_on_random_problems(gpu_core, height, width, scale, n, m):
    core, backend = gpu_core
    rng = np.random.default_rng(height + width)
    pred, gt = _problems(rng, 300, n, m, height, width)
    grad_loss = rng.uniform(0.5, 2.0, 300).astype(np.float32)
    np.testing.assert_array_equal(core.cuda_forward(pred, gt, height, width, scale, backend),
                                  core.cpu_forward(pred, gt, height, width, scale))
    g_gpu = core.cuda_backward(pred, gt, grad_loss, height, width, scale, backend)
    g_cpu = core.cpu_backward(pred, gt, grad_loss, height, width, scale)
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=0, atol=1e-5)
    assert np.any(g_cpu != 0)
    # the same points get gradient (ownership rules identical)
    np.testing.assert_array_equal(np.any(g_gpu != 0, -1), np.any(g_cpu != 0, -1))
    # fused forward + unit backward
    loss_f, unit_f = core.cuda_forward_backward(pred, gt, height, width, scale, backend)
    loss_c, unit_c = core.cpu_forward_backward(pred, gt, height, width, scale)
    np.testing.assert_array_equal(loss_f, loss_c)
    np.testing.assert_allclose(unit_f, unit_c, rtol=0, atol=1e-5)


def test_cuda_edge_cases(gpu_core):
    core, backend = gpu_core
    nan = np.nan
    pred = np.array([[[1, 1], [2, 2]], [[nan, nan], [nan, 0]], [[1, 1], [2, 2]], [[-0.5, 0], [9.5, 0]]], np.float32)
    gt = np.array([[[1, 1], [2, 2]], [[nan, nan], [nan, nan]], [[5, 5], [6, 6]], [[0, 0], [9, 0]]], np.float32)
    want = core.cpu_forward(pred, gt, 10, 10, 1.0)
    np.testing.assert_array_equal(want, [0.0, 0.0, 1.0, 0.5])
    np.testing.assert_array_equal(core.cuda_forward(pred, gt, 10, 10, 1.0, backend), want)
    np.testing.assert_allclose(core.cuda_backward(pred, gt, 1.0, 10, 10, 1.0, backend),
                               core.cpu_backward(pred, gt, 1.0, 10, 10, 1.0), atol=1e-5, rtol=0)


def test_cuda_rejects_bad_arguments(gpu_core):
    core, backend = gpu_core
    pts = np.zeros((2, 3, 2), np.float32)
    with pytest.raises(CoreError, match="invalid argument"):
        core.cuda_forward(pts, pts, 0, 10, 1.0, backend)
    with pytest.raises(CoreError, match="invalid argument"):
        core.cuda_forward(pts, pts, 10, 10, -1.0, backend)
    with pytest.raises(CoreError, match="too large"):
        core.cuda_forward(pts, pts, 100000, 100000, 1.0, backend)


def test_cuda_timing_smoke(gpu_core):
    """B=32, N=4096, 128x128: forward+backward; the goal is < 100 us (reported by `make bench-ops`)."""
    core, backend = gpu_core
    rng = np.random.default_rng(0)
    pred, gt = _problems(rng, 32, 4096, 4096, 128, 128, nonfinite=0.0)
    t = core.cuda_time_us(pred, gt, 128, 128, 1.0, iters=100, backend=backend)
    print(f"CUDA ({backend.name}) B=32 N=4096 128x128: forward {t['forward']:.1f} us, "
          f"forward then backward {t['forward+backward']:.1f} us, fused {t['fused']:.1f} us")
    assert t["fused"] < 2000.0
