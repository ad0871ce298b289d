"""The Bazel-built ops (build/bazel/_projection_loss_ops.so and _ransac_pnp_ops.so, `make bazel-build-ops`).

Proves that the Projection Loss .so Bazel builds loads with tf.load_op_library and gives the same loss and gradient as
the g++-built op (tf_ops/lib/_projection_loss_ops.so, `make build-ops`) and the pure-TF reference, on random inputs;
and that the RANSAC-PnP .so loads and solves a small synthetic batch like the g++ build.

Which .so is tested:
  * bazel on PATH (and SYNTHPOSE_TEST_BAZEL_BUILD != "0"): when the .so is missing or older than a source, BUILD or
    third_party/ file, the test runs tf_ops/bazel_build.sh first (~1-1.5 min cold on 2 cores, docs/building.md);
  * otherwise an existing build/bazel/_projection_loss_ops.so (or $SYNTHPOSE_BAZEL_SO) is used as it is;
  * otherwise the test is skipped: run `make bazel-build-ops`.

Two libraries that register the same op names cannot be loaded into one process, so each library runs in its own
subprocess and the results come back as .npz files. The pure-TF reference (forward only: it has no gradient) loads
no op library, so it runs in the Bazel subprocess (which checks that importing it mapped no _projection_loss_ops).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BAZEL_SO = Path(os.environ.get("SYNTHPOSE_BAZEL_SO", REPO_ROOT / "build" / "bazel" / "_projection_loss_ops.so"))
GXX_SO = REPO_ROOT / "tf_ops" / "lib" / "_projection_loss_ops.so"
BAZEL_RANSAC_SO = BAZEL_SO.parent / "_ransac_pnp_ops.so"
GXX_RANSAC_SO = REPO_ROOT / "tf_ops" / "lib" / "_ransac_pnp_ops.so"
BUILD_SCRIPT = REPO_ROOT / "tf_ops" / "bazel_build.sh"
SUBPROCESS_TIMEOUT_S = 300
BUILD_TIMEOUT_S = 600

# Cases: (height, width, scale, batch, n_pred, n_gt).
CASES = [
    (48, 64, 1.0, 3, 200, 150),
    (37, 53, 0.5, 2, 120, 90),
    (30, 40, 1.75, 2, 64, 300),
]

_WORKER = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
so, inputs, out, with_ref = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
data = np.load(inputs)
n_cases = int(data["n_cases"])
import tensorflow as tf
res = {}
if with_ref:
    # The reference is pure TF: importing it must not load any op library (else the Bazel .so could not be
    # loaded next, TF refuses a second registration of the same op names).
    from tf_ops.projection_loss.python.ops.reference import projection_iou_loss_reference
    with open("/proc/self/maps") as f:
        assert "_projection_loss_ops" not in f.read(), "importing the reference loaded an op library"
lib = tf.load_op_library(so)
for i in range(n_cases):
    pred = tf.constant(data[f"pred{i}"])
    gt = tf.constant(data[f"gt{i}"])
    gl = tf.constant(data[f"gl{i}"])
    h, w, s = int(data[f"h{i}"]), int(data[f"w{i}"]), float(data[f"s{i}"])
    res[f"loss{i}"] = lib.projection_iou_loss(pred, gt, height=h, width=w, scale=s).numpy()
    res[f"grad{i}"] = lib.projection_iou_loss_grad(pred, gt, gl, height=h, width=w, scale=s).numpy()
    if with_ref:
        res[f"ref_loss{i}"] = projection_iou_loss_reference(pred, gt, h, w, scale=s).numpy()
np.savez(out, **res)
print("worker ok:", so)
"""


def _have_bazel() -> bool:
    return shutil.which(os.environ.get("BAZEL", "bazel")) is not None


def _bazel_inputs() -> list[Path]:
    """Files the Bazel build depends on (sources, BUILD/WORKSPACE/.bzl, the build script)."""
    files = []
    for pkg in (REPO_ROOT / "tf_ops" / "projection_loss", REPO_ROOT / "tf_ops" / "ransac_pnp"):
        files += [p for d in (pkg / "core", pkg / "cc") for p in d.rglob("*") if p.suffix in (".h", ".cc")]
        files.append(pkg / "BUILD")
    files += [REPO_ROOT / "BUILD", REPO_ROOT / "WORKSPACE", REPO_ROOT / ".bazelrc", BUILD_SCRIPT]
    files += [p for p in (REPO_ROOT / "third_party").rglob("*") if p.is_file()]
    return [p for p in files if p.is_file()]


def _is_stale(so: Path) -> bool:
    if not so.is_file():
        return True
    built = so.stat().st_mtime
    return any(p.stat().st_mtime > built for p in _bazel_inputs())


@pytest.fixture(scope="module")
def bazel_so() -> Path:
    # Build (incrementally) only when the .so is missing or older than one of its inputs: even a no-op Bazel run
    # costs 20-50 s on 2 cores (JVM start, analysis), too much to pay on every test run.
    may_build = (_have_bazel() and os.environ.get("SYNTHPOSE_TEST_BAZEL_BUILD", "1") != "0"
                 and "SYNTHPOSE_BAZEL_SO" not in os.environ)
    if may_build and (_is_stale(BAZEL_SO) or _is_stale(BAZEL_RANSAC_SO)):
        try:
            proc = subprocess.run(["bash", str(BUILD_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tf_ops/bazel_build.sh took more than {BUILD_TIMEOUT_S} s")
        if proc.returncode != 0:
            pytest.fail("tf_ops/bazel_build.sh failed:\n" + (proc.stdout + proc.stderr)[-6000:])
    if not BAZEL_SO.is_file():
        why = "bazel is not installed" if not _have_bazel() else "the build was not run here"
        pytest.skip(f"{BAZEL_SO} is absent and {why}: run `make bazel-build-ops` "
                    "(installs Debian's bazel-bootstrap when needed), then rerun")
    return BAZEL_SO


def _inputs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(20261122)
    arrays: dict[str, np.ndarray] = {"n_cases": np.array(len(CASES))}
    for i, (h, w, s, b, n, m) in enumerate(CASES):
        # Camera pixels, a margin outside the image so that some points are not drawn.
        def pts(k):
            return np.stack([rng.uniform(-4.0, w + 4.0, size=(b, k)), rng.uniform(-4.0, h + 4.0, size=(b, k))],
                            axis=-1).astype(np.float32)

        pred, gt = pts(n), pts(m)
        # Make the prediction overlap the ground truth in the first batch element (IoU > 0).
        k = min(n, m)
        pred[0, :k] = gt[0, :k] + rng.normal(0.0, 0.8, size=(k, 2)).astype(np.float32)
        arrays.update({f"pred{i}": pred, f"gt{i}": gt, f"gl{i}": rng.uniform(0.5, 2.0, size=(b,)).astype(np.float32),
                       f"h{i}": np.array(h), f"w{i}": np.array(w), f"s{i}": np.array(s, dtype=np.float32)})
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    return path


def _run_worker(so: Path, inputs: Path, out: Path, with_ref: bool) -> dict[str, np.ndarray]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run([sys.executable, "-c", _WORKER, str(so), str(inputs), str(out), "1" if with_ref else "0"],
                              cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker for {so} took more than {SUBPROCESS_TIMEOUT_S} s")
    assert proc.returncode == 0, f"worker for {so} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_bazel_op_matches_reference_and_gxx_op(bazel_so: Path, tmp_path: Path):
    inputs = _inputs(tmp_path)
    got = _run_worker(bazel_so, inputs, tmp_path / "bazel.npz", with_ref=True)

    for i, (h, w, s, b, n, m) in enumerate(CASES):
        loss, grad = got[f"loss{i}"], got[f"grad{i}"]
        assert loss.shape == (b,) and grad.shape == (b, n, 2), (i, loss.shape, grad.shape)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
        assert np.all((loss >= 0.0) & (loss <= 1.0)), loss
        assert loss[0] < 1.0, f"case {i}: the overlapping batch element should have some intersection, loss {loss[0]}"
        np.testing.assert_allclose(loss, got[f"ref_loss{i}"], rtol=0, atol=1e-6,
                                   err_msg=f"loss vs pure-TF reference, case {i}")
    # The reference has no gradient (binary images); the gradient is compared with the g++ build below.
    # At least one case has a nonzero gradient, or that comparison proves little.
    assert any(np.abs(got[f"grad{i}"]).max() > 0 for i in range(len(CASES)))

    if not GXX_SO.is_file():
        pytest.skip(f"{GXX_SO} is absent (make build-ops): compared with the reference only")
    gxx = _run_worker(GXX_SO, inputs, tmp_path / "gxx.npz", with_ref=False)
    for i in range(len(CASES)):
        # Same sources and -ffp-contract=off: the two builds agree to the last bit in practice; a hair of slack
        # keeps the test independent of vectorisation choices between -O levels.
        np.testing.assert_allclose(got[f"loss{i}"], gxx[f"loss{i}"], rtol=0, atol=1e-7,
                                   err_msg=f"loss, Bazel vs g++ build, case {i}")
        np.testing.assert_allclose(got[f"grad{i}"], gxx[f"grad{i}"], rtol=1e-6, atol=1e-7,
                                   err_msg=f"gradient, Bazel vs g++ build, case {i}")


def test_bazel_so_loads_alone(bazel_so: Path):
    """The Bazel .so loads by itself and registers both ops (with their attrs)."""
    code = (
        "import sys, tensorflow as tf\n"
        "lib = tf.load_op_library(sys.argv[1])\n"
        "assert hasattr(lib, 'projection_iou_loss') and hasattr(lib, 'projection_iou_loss_grad'), dir(lib)\n"
        "from tensorflow.python.framework import op_def_registry\n"
        "op = op_def_registry.get('ProjectionIouLoss')\n"
        "assert sorted(a.name for a in op.attr) == ['height', 'scale', 'width'], op\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code, str(bazel_so)], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]


_RANSAC_WORKER = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
so, inputs, out = sys.argv[1:4]
d = np.load(inputs)
lib = tf.load_op_library(so)
R, t, inliers, score, ok = lib.ransac_pnp(d["pixels"], d["coords"], d["K"], d["weights"], d["valid"],
                                          num_hypotheses=16, threshold_px=8.0, seed=3, max_refine_iterations=5)
np.savez(out, R=R.numpy(), t=t.numpy(), inliers=inliers.numpy(), score=score.numpy(), ok=ok.numpy())
print("worker ok:", so)
"""


def _ransac_inputs(tmp_path: Path) -> Path:
    """4 items, 200 correspondences (30 % outliers) of random poses of a 200 mm cube at ~600 mm; item 3 padded."""
    rng = np.random.default_rng(7)
    b, n = 4, 200
    K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]], np.float32)
    coords = rng.uniform(-100.0, 100.0, (b, n, 3))
    pixels = np.zeros((b, n, 2))
    for i in range(b):
        angle = rng.normal(size=3)
        theta = np.linalg.norm(angle)
        k = np.array([[0, -angle[2], angle[1]], [angle[2], 0, -angle[0]], [-angle[1], angle[0], 0]]) / theta
        R = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k
        cam = coords[i] @ R.T + [rng.uniform(-50, 50), rng.uniform(-50, 50), rng.uniform(500, 700)]
        p = cam @ K.T
        pixels[i] = p[:, :2] / p[:, 2:] + rng.normal(0.0, 1.0, (n, 2))
    outlier = rng.random((b, n)) < 0.3
    pixels[outlier] = rng.uniform([0, 0], [640, 480], (int(outlier.sum()), 2))
    valid = np.ones((b, n), bool)
    valid[3, 150:] = False
    path = tmp_path / "ransac_inputs.npz"
    np.savez(path, pixels=pixels.astype(np.float32), coords=coords.astype(np.float32), K=np.tile(K, (b, 1, 1)),
             weights=np.ones((b, n), np.float32), valid=valid)
    return path


def _run_ransac_worker(so: Path, inputs: Path, out: Path) -> dict[str, np.ndarray]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, "-c", _RANSAC_WORKER, str(so), str(inputs), str(out)], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"RANSAC-PnP worker for {so} took more than {SUBPROCESS_TIMEOUT_S} s")
    assert proc.returncode == 0, f"RANSAC-PnP worker for {so} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_bazel_ransac_pnp_op_loads_and_matches_gxx_op(bazel_so: Path, tmp_path: Path):
    if not BAZEL_RANSAC_SO.is_file():
        pytest.skip(f"{BAZEL_RANSAC_SO} is absent: run `make bazel-build-ops`")
    inputs = _ransac_inputs(tmp_path)
    got = _run_ransac_worker(BAZEL_RANSAC_SO, inputs, tmp_path / "bazel_ransac.npz")
    assert got["ok"].all(), got["ok"]
    np.testing.assert_allclose(got["R"] @ np.swapaxes(got["R"], 1, 2), np.broadcast_to(np.eye(3), (4, 3, 3)),
                               atol=1e-5)
    assert not got["inliers"][3, 150:].any()
    if not GXX_RANSAC_SO.is_file():
        pytest.skip(f"{GXX_RANSAC_SO} is absent (make build-ops): checked the Bazel build alone")
    gxx = _run_ransac_worker(GXX_RANSAC_SO, inputs, tmp_path / "gxx_ransac.npz")
    # Same sources and flags: the same minimal sets and (to float rounding) the same poses.
    np.testing.assert_array_equal(got["ok"], gxx["ok"])
    np.testing.assert_allclose(got["R"], gxx["R"], atol=1e-5)
    np.testing.assert_allclose(got["t"], gxx["t"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got["score"], gxx["score"], rtol=1e-5)
