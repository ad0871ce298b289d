"""The Projection Loss op (C++ CPU kernel): forward against the pure-TF reference, edge cases, bad inputs, fuzz.

The gradient's usefulness is tested in test_projection_loss_gradient.py. Needs the built op (`make build-ops`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

tf = pytest.importorskip("tensorflow")

from tf_ops import projection_iou_loss, projection_iou_loss_reference, projection_loss  # noqa: E402
from tf_ops.projection_loss.python.harness import CoreError, CoreLib  # noqa: E402
from tf_ops.projection_loss.python.ops.reference import draw_points_reference  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_points(rng, b, n, height, width, spread=0.15, nonfinite=0.02):
    """Points mostly inside the image, some outside, some NaN/inf, some exactly on pixel edges."""
    lo = np.array([-spread * width, -spread * height])
    hi = np.array([(1 + spread) * width, (1 + spread) * height])
    pts = rng.uniform(lo, hi, size=(b, n, 2))
    # a quarter of the points on half-integer coordinates (pixel edges at scale 1) and on integers
    k = rng.random((b, n, 2))
    pts = np.where(k < 0.15, np.round(pts) - 0.5, pts)
    pts = np.where((k >= 0.15) & (k < 0.25), np.round(pts), pts)
    bad = rng.random((b, n)) < nonfinite
    choice = rng.integers(0, 3, size=(b, n))
    val = np.where(choice == 0, np.nan, np.where(choice == 1, np.inf, -np.inf))
    pts[..., rng.integers(0, 2)] = np.where(bad, val, pts[..., 0])
    return pts.astype(np.float32)


@pytest.mark.parametrize(
    "height,width,scale,n,m",
    [(16, 16, 1.0, 40, 40), (24, 32, 0.5, 64, 80), (30, 20, 0.37, 50, 30), (12, 10, 2.0, 30, 45),
     (480, 640, 0.05, 100, 100), (7, 9, 1.3, 5, 3)],
)
def test_forward_equals_reference_on_random_cases(height, width, scale, n, m):
    rng = np.random.default_rng(height * 1000 + width)
    b = 600
    gt = _random_points(rng, b, m, height, width)
    # pred: half near gt (overlapping silhouettes), half independent
    pred = _random_points(rng, b, n, height, width)
    near = gt[:, rng.integers(0, m, n)] + rng.normal(0, 1.0, (b, n, 2)).astype(np.float32)
    pred[: b // 2] = near[: b // 2]
    got = projection_iou_loss(pred, gt, height, width, scale).numpy()
    want = projection_iou_loss_reference(pred, gt, height, width, scale).numpy()
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0.0 and got.max() <= 1.0
    assert 0.0 < np.mean(got) < 1.0  # the cases are not all trivial


def test_op_equals_core_library_forward_and_backward():
    rng = np.random.default_rng(3)
    core = CoreLib()
    gt = _random_points(rng, 40, 200, 32, 32)
    pred = (gt + rng.normal(0, 1.5, gt.shape)).astype(np.float32)
    np.testing.assert_array_equal(projection_iou_loss(pred, gt, 32, 32, 0.5).numpy(),
                                  core.cpu_forward(pred, gt, 32, 32, 0.5))
    w = rng.uniform(0.5, 2.0, 40).astype(np.float32)
    want = core.cpu_backward(pred, gt, w, 32, 32, 0.5)
    for with_gradient in (True, False):  # fused pass (grad_unit * w) and ProjectionIouLossGrad
        x = tf.Variable(pred)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(projection_iou_loss(x, gt, 32, 32, 0.5, with_gradient=with_gradient) * w)
        got = tape.gradient(loss, x).numpy()
        if with_gradient:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        else:
            np.testing.assert_array_equal(got, want)
    fused_loss, grad_unit = core.cpu_forward_backward(pred, gt, 32, 32, 0.5)
    np.testing.assert_array_equal(fused_loss, core.cpu_forward(pred, gt, 32, 32, 0.5))
    np.testing.assert_array_equal(grad_unit, core.cpu_backward(pred, gt, 1.0, 32, 32, 0.5))
    # the batch range API: two halves equal the whole
    half = core.cpu_forward(pred, gt, 32, 32, 0.5, batch_range=(0, 20))
    assert np.all(half[20:] == 0.0)
    np.testing.assert_array_equal(half[:20], core.cpu_forward(pred, gt, 32, 32, 0.5)[:20])


def test_drawn_size_rule():
    core = CoreLib()
    for h, w, s in [(480, 640, 0.25), (480, 640, 0.37), (127, 255, 0.5), (3, 5, 0.17), (100, 100, 1.005)]:
        img = draw_points_reference(np.zeros((1, 1, 2), np.float32), h, w, s)
        assert core.drawn_size(h, w, s) == tuple(img.shape[1:]) == (int(np.floor(h * float(np.float32(s)) + 0.5)),
                                                                     int(np.floor(w * float(np.float32(s)) + 0.5)))


def _loss(pred, gt, h=10, w=10, s=1.0):
    pred = np.asarray(pred, np.float32)[None]
    gt = np.asarray(gt, np.float32)[None]
    got = float(projection_iou_loss(pred, gt, h, w, s)[0])
    assert got == float(projection_iou_loss_reference(pred, gt, h, w, s)[0])
    return got


def test_identical_gives_zero_and_disjoint_gives_one():
    pts = [[1.0, 1.0], [2.2, 3.7], [8.9, 0.1]]
    assert _loss(pts, pts) == 0.0
    assert _loss(pts, [[5.0, 5.0], [6.0, 6.0]]) == 1.0
    # same pixels, different points: still 0
    assert _loss([[1.2, 0.8]], [[0.9, 1.3]]) == 0.0
    # 1 shared pixel out of 3 -> IoU 1/3
    assert _loss([[1, 1], [2, 2]], [[1, 1], [3, 3]]) == pytest.approx(1 - 1 / 3)


def test_empty_silhouettes():
    nan = float("nan")
    assert _loss([[nan, nan]], [[nan, 1.0]]) == 0.0  # both empty: defined as 0
    assert _loss([[-5.0, 3.0]], [[20.0, 3.0]]) == 0.0  # both outside the image
    assert _loss([[nan, nan]], [[3.0, 3.0]]) == 1.0  # one empty
    assert _loss([[3.0, 3.0]], [[np.inf, 3.0]]) == 1.0


def test_points_on_the_image_border():
    # pixel c covers u in [c - 0.5, c + 0.5): -0.5 is in column 0, width - 0.5 is outside
    assert _loss([[-0.5, 0.0]], [[0.0, 0.0]]) == 0.0
    assert _loss([[-0.5000001, 0.0]], [[0.0, 0.0]]) == 1.0
    assert _loss([[9.4999990, 9.0]], [[9.0, 9.0]]) == 0.0
    assert _loss([[9.5, 9.0]], [[9.0, 9.0]]) == 1.0
    assert _loss([[3.0, 9.5]], [[3.0, 9.0]]) == 1.0
    # at scale 0.5 (5 x 5 image) u = 1.0 -> 0.5 -> column 1; u = 0.99 -> column 0
    assert _loss([[1.0, 0.0]], [[2.0, 0.0]], s=0.5) == 0.0
    assert _loss([[0.99, 0.0]], [[0.0, 0.0]], s=0.5) == 0.0
    assert _loss([[8.999, 0.0]], [[8.0, 0.0]], s=0.5) == 0.0  # 4.4995 -> column 4 (last)
    assert _loss([[9.0, 0.0]], [[8.0, 0.0]], s=0.5) == 1.0  # 4.5 -> column 5: outside


def test_nan_and_inf_coordinates_are_not_drawn():
    gt = [[2.0, 2.0], [4.0, 4.0]]
    for bad in (np.nan, np.inf, -np.inf):
        assert _loss([[2.0, 2.0], [4.0, 4.0], [bad, 1.0], [1.0, bad]], gt) == 0.0
    # huge but finite coordinates (u*scale overflows to inf) are not drawn either
    assert _loss([[2.0, 2.0], [4.0, 4.0], [3e38, 1.0]], gt, s=4.0) == 0.0


def _cube_points(n=600, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(-20, 20, (n, 3))
    face = rng.integers(0, 3, n)
    p[np.arange(n), face] = np.sign(rng.normal(size=n)) * 20
    return p.astype(np.float32)


K = np.array([[200.0, 0, 64.0], [0, 200.0, 64.0], [0, 0, 1]], np.float32)


def test_points_behind_the_camera_are_not_drawn():
    pts = _cube_points()
    eye = np.eye(3, dtype=np.float32)[None]
    t_front = np.array([[0, 0, 300.0]], np.float32)
    t_behind = np.array([[0, 0, -300.0]], np.float32)  # mirrored: would land in the image if not masked
    assert float(projection_loss(pts, eye, t_front, eye, t_front, K, 128, 128)[0]) == 0.0
    assert float(projection_loss(pts, eye, t_behind, eye, t_front, K, 128, 128)[0]) == 1.0
    assert float(projection_loss(pts, eye, t_behind, eye, t_behind, K, 128, 128)[0]) == 0.0  # both empty
    # straddling the camera plane: only the points in front are drawn, and the gradient stays finite
    t_mid = tf.Variable([[0, 0, 5.0]])
    with tf.GradientTape() as tape:
        loss = projection_loss(pts, eye, t_mid, eye, t_front, K, 128, 128)
    g = tape.gradient(loss, t_mid)
    assert np.all(np.isfinite(g.numpy()))
    uv_front = pts[pts[:, 2] + 5.0 >= 1e-3]
    manual = projection_iou_loss_reference(
        (uv_front[:, :2] / (uv_front[:, 2:] + 5.0) * 200.0 + 64.0)[None],
        (pts[:, :2] / (pts[:, 2:] + 300.0) * 200.0 + 64.0)[None], 128, 128)
    assert float(loss[0]) == pytest.approx(float(manual[0]), abs=0.02)


def test_projection_loss_batched_shapes():
    rng = np.random.default_rng(0)
    pts = _cube_points(300)
    R = np.repeat(np.eye(3, dtype=np.float32)[None], 4, 0)
    t = np.tile(np.array([[0, 0, 300.0]], np.float32), (4, 1))
    t2 = t + rng.normal(0, 5, t.shape).astype(np.float32)
    a = projection_loss(pts, R, t2, R, t, K, 128, 128, 0.5).numpy()
    b = projection_loss(np.repeat(pts[None], 4, 0), R, t2, R, t, np.repeat(K[None], 4, 0), 128, 128, 0.5).numpy()
    assert a.shape == (4,)
    np.testing.assert_array_equal(a, b)


def test_gt_gets_no_gradient_and_graph_mode_works():
    rng = np.random.default_rng(1)
    gt = tf.Variable(rng.uniform(0, 32, (2, 50, 2)).astype(np.float32))
    pred = tf.Variable(gt.numpy() + 1.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(projection_iou_loss(pred, gt, 32, 32))
    g_pred, g_gt = tape.gradient(loss, [pred, gt])
    assert g_gt is None
    assert g_pred.shape == (2, 50, 2) and np.all(np.isfinite(g_pred.numpy()))

    @tf.function(input_signature=[tf.TensorSpec([None, None, 2], tf.float32)] * 2)
    def f(p, q):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = projection_iou_loss(p, q, 32, 32, 0.5)
        return loss, tape.gradient(loss, p)

    loss_g, grad_g = f(pred, gt)
    with tf.GradientTape() as tape:
        tape.watch(pred)
        loss_e = projection_iou_loss(pred, gt, 32, 32, 0.5)
    np.testing.assert_array_equal(loss_g.numpy(), loss_e.numpy())
    np.testing.assert_array_equal(grad_g.numpy(), tape.gradient(loss_e, pred).numpy())


# ---------------------------------------------------------------------------------------------- bad inputs

GOOD = np.zeros((2, 5, 2), np.float32)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(pred_points_2d=np.zeros((5, 2), np.float32)), "pred_points_2d"),
        (dict(gt_points_2d=np.zeros((2, 5, 2, 1), np.float32)), "gt_points_2d"),
        (dict(pred_points_2d=np.zeros((2, 5, 3), np.float32)), "pred_points_2d"),
        (dict(pred_points_2d=np.zeros((2, 5, 2), np.float64)), "pred_points_2d"),
        (dict(gt_points_2d=np.zeros((2, 5, 2), np.int32)), "gt_points_2d"),
        (dict(gt_points_2d=np.zeros((3, 5, 2), np.float32)), "batch size"),
        (dict(pred_points_2d=np.zeros((2, 0, 2), np.float32)), "pred_points_2d"),
        (dict(gt_points_2d=np.zeros((2, 0, 2), np.float32)), "gt_points_2d"),
        (dict(height=0), "height"),
        (dict(width=-3), "width"),
        (dict(scale=0.0), "scale"),
        (dict(scale=-1.0), "scale"),
        (dict(scale=float("nan")), "scale"),
        (dict(height=4, scale=0.1), "height"),  # rounds to a 0-row image
        (dict(height=100000, width=100000), r"2\^24"),
    ],
)
def test_bad_inputs_raise_invalid_argument_naming_the_argument(kwargs, needle):
    args = dict(pred_points_2d=GOOD, gt_points_2d=GOOD, height=8, width=8, scale=1.0)
    args.update(kwargs)
    with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
        projection_iou_loss(**args)


def test_kernel_checks_dynamic_shapes_in_graph_mode():
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)] * 2)
    def f(p, q):
        return projection_iou_loss(p, q, 8, 8)

    with pytest.raises(tf.errors.InvalidArgumentError, match="pred_points_2d"):
        f(np.zeros((5, 2), np.float32), GOOD)
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch size"):
        f(GOOD, np.zeros((3, 5, 2), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="gt_points_2d"):
        f(GOOD, np.zeros((2, 0, 2), np.float32))


def test_raw_op_attribute_checks():
    from tf_ops.projection_loss.python.ops.projection_loss_ops import _ops

    with pytest.raises(tf.errors.InvalidArgumentError, match="height"):
        _ops.projection_iou_loss(GOOD, GOOD, height=0, width=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="scale"):
        _ops.projection_iou_loss(GOOD, GOOD, height=8, width=8, scale=-2.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="grad_loss"):
        _ops.projection_iou_loss_grad(GOOD, GOOD, np.zeros(3, np.float32), height=8, width=8)


def test_fuzz_shapes_and_values_no_crash():
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                       st.floats(-50, 50, width=32))

    @settings(max_examples=50, deadline=None, derandomize=True)
    @given(
        b=st.integers(0, 3), n=st.integers(0, 6), m=st.integers(0, 6), rank=st.sampled_from([2, 3, 3, 3, 4]),
        height=st.integers(-2, 40), width=st.integers(-2, 40),
        scale=st.sampled_from([-1.0, 0.0, 1e-3, 0.3, 1.0, 2.5, float("inf")]),
        data=st.data(),
    )
    def run(b, n, m, rank, height, width, scale, data):
        shape_p = (b, n, 2)[3 - rank:] if rank <= 3 else (b, n, 2, 1)
        pred = data.draw(hnp.arrays(np.float32, shape_p, elements=floats))
        gt = data.draw(hnp.arrays(np.float32, (b, m, 2), elements=floats))
        try:
            p = tf.Variable(pred)
            with tf.GradientTape() as tape:
                loss = projection_iou_loss(p, gt, height, width, scale)
            grad = tape.gradient(loss, p)
        except tf.errors.InvalidArgumentError:
            return
        ref = projection_iou_loss_reference(pred, gt, height, width, scale).numpy()
        np.testing.assert_array_equal(loss.numpy(), ref)
        assert np.all(np.isfinite(grad.numpy()))

    run()


# ---------------------------------------------------------------------------------------------- packaging


def test_missing_library_gives_a_clear_error(tmp_path):
    code = (
        "import pathlib, sys\n"
        "orig = pathlib.Path.is_file\n"
        "pathlib.Path.is_file = lambda self: False if self.name == '_projection_loss_ops.so' else orig(self)\n"
        "try:\n"
        "    from tf_ops import projection_iou_loss\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert "IMPORT-ERROR:" in out.stdout and "make build-ops" in out.stdout, out.stdout + out.stderr


def test_build_is_a_fast_noop_when_up_to_date():
    out = subprocess.run([sys.executable, "-m", "tf_ops.build"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "up to date" in out.stdout and "$ g++" not in out.stdout, out.stdout


@pytest.mark.parametrize("height,width,scale,n,m", [(16, 16, 1.0, 40, 40), (24, 32, 0.5, 64, 80),
                                                    (30, 20, 0.37, 50, 30), (12, 10, 2.0, 30, 45)])
def test_backward_equals_pure_tf_reference_gradient(height, width, scale, n, m):
    """The hand-written gradient, C++ kernel vs its pure-TF twin, on 500 random cases per configuration (equal up
    to the summation order of float contributions)."""
    rng = np.random.default_rng(height)
    b = 500
    gt = _random_points(rng, b, m, height, width)
    pred = _random_points(rng, b, n, height, width)
    pred[: b // 2] = (gt[:, rng.integers(0, m, n)] + rng.normal(0, 1.0, (b, n, 2)))[: b // 2]
    weights = rng.uniform(0.5, 2.0, b).astype(np.float32)
    grads = []
    for fn in (projection_iou_loss, projection_iou_loss_reference):
        x = tf.Variable(pred)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(fn(x, gt, height, width, scale) * weights)
        grads.append(tape.gradient(total, x).numpy())
    # contributions of one point may cancel: compare with an absolute tolerance relative to the gradient scale
    tol = 1e-5 * np.abs(grads[1]).max()
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=tol)
    assert np.mean(np.any(grads[0] != 0, -1)) > 0.05


def test_harness_cuda_calls_line_up_with_the_c_abi_without_a_gpu():
    """The ctypes harness's three CUDA calls reach the library with the right arguments: an empty batch needs no
    device and returns arrays of the right shapes; a non-empty one fails with the library's CUDA error, not a crash."""
    class HostBackend:  # stands in for CuPy / torch: host arrays, never touched by an empty batch
        def to_device(self, a):
            return np.ascontiguousarray(a)

        def empty(self, shape, dtype=np.float32):
            return np.zeros(shape, dtype)

        def ptr(self, a):
            return a.ctypes.data

        def stream(self):
            return None

        def sync(self):
            pass

        def to_host(self, a):
            return a

    lib, be = CoreLib(), HostBackend()
    if not lib.cuda_compiled():
        pytest.skip("library built without CUDA (no nvcc)")
    pred, gt = np.zeros((0, 5, 2), np.float32), np.zeros((0, 7, 2), np.float32)
    assert lib.cuda_forward(pred, gt, 16, 16, backend=be).shape == (0,)
    assert lib.cuda_backward(pred, gt, 1.0, 16, 16, backend=be).shape == (0, 5, 2)
    loss, grad = lib.cuda_forward_backward(pred, gt, 16, 16, backend=be)
    assert loss.shape == (0,) and grad.shape == (0, 5, 2)
    if not lib.cuda_available():
        with pytest.raises(CoreError, match="pl_cuda_forward"):
            lib.cuda_forward(np.zeros((2, 5, 2), np.float32), np.zeros((2, 7, 2), np.float32), 16, 16, backend=be)
