"""Benchmark of the RANSAC-PnP op: ``python -m tf_ops.ransac_pnp.bench`` (also run by ``make bench-ops``).

Synthetic batch: B = 32 images, N = 4096 correspondences each (20 % outliers uniform in a 640x480 image, 1.5 px
noise on the inliers, a 100-300 mm object at 300-1500 mm), 64 hypotheses, threshold 10 px. Reports ms per image
(minimum over repetitions) of the core on one thread (ctypes harness, no TensorFlow) and of the TF op with its
intra-op thread pool, with one refinement round and with the default (at most 10, stopping when the inlier set
stops growing). Options: ``--quick``, ``--json PATH``.

``--training``: the training form instead (``ransac_pnp_hypotheses``, every hypothesis refined, and its gradient):
B = 16, the same N and hypotheses, default refinement, on every inlier and on at most 1,024, 512 and 256
correspondences (``max_refine_points``; 256 is pose_net.dsac's training default); ms per batch of the forward and
of the backward (the tape's gradient of a loss of R, t_mm and score), TF op with its intra-op pool, and how far the
capped refinement's translations land from the uncapped ones (median and 90th percentile over the hypotheses).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from tf_ops.loading import min_time_ms as _time_ms

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 32
NUM_CORRESPONDENCES = 4096
NUM_HYPOTHESES = 64
OUTLIER_FRACTION = 0.2
NOISE_PX = 1.5
THRESHOLD_PX = 10.0
K_BENCH = np.array([[572.4114, 0.0, 325.2611], [0.0, 573.57043, 242.04899], [0.0, 0.0, 1.0]], np.float32)


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def problem(b: int = BATCH, n: int = NUM_CORRESPONDENCES, seed: int = 0):
    """(pixels [B, N, 2], coords_mm [B, N, 3]) float32, as described in the module docstring."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((b, n, 2), np.float32)
    coords = np.zeros((b, n, 3), np.float32)
    K = K_BENCH.astype(np.float64)
    for i in range(b):
        X = rng.uniform(-0.5, 0.5, (n, 3)) * rng.uniform(100.0, 300.0)
        z = rng.uniform(300.0, 1500.0)
        t = np.linalg.inv(K) @ np.array([rng.uniform(200, 440), rng.uniform(150, 330), 1.0]) * z
        p = (X @ _random_rotation(rng).T + t) @ K.T
        uv = p[:, :2] / p[:, 2:] + rng.normal(0.0, NOISE_PX, (n, 2))
        out = rng.random(n) < OUTLIER_FRACTION
        uv[out] = rng.uniform([0, 0], [640, 480], (int(out.sum()), 2))
        pixels[i], coords[i] = uv, X
    return pixels, coords



def bench(quick: bool = False, with_tf: bool = True) -> list[dict]:
    """Runs the cases and prints one line per row; returns the rows."""
    from tf_ops.ransac_pnp.python.harness import CoreLib

    pixels, coords = problem()
    repeats = 2 if quick else 5
    rows = []
    core = CoreLib()
    for refine in (1, 10):
        ms = _time_ms(lambda: core.ransac_pnp(pixels, coords, K_BENCH, num_hypotheses=NUM_HYPOTHESES,
                                              threshold_px=THRESHOLD_PX, max_refine_iterations=refine), repeats)
        rows.append(dict(impl="core, 1 thread (ctypes)", B=BATCH, N=NUM_CORRESPONDENCES, hypotheses=NUM_HYPOTHESES,
                         max_refine_iterations=refine, ms_per_image=ms / BATCH))
    if with_tf:
        import tensorflow as tf

        from tf_ops import ransac_pnp

        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
        pixels_t, coords_t = tf.constant(pixels), tf.constant(coords)
        for refine in (1, 10):
            def run():
                return ransac_pnp(pixels_t, coords_t, K_BENCH, num_hypotheses=NUM_HYPOTHESES,
                                  threshold_px=THRESHOLD_PX, max_refine_iterations=refine)["R"].numpy()

            ms = _time_ms(run, repeats)
            rows.append(dict(impl=f"TF op, intra-op pool ({threads} threads)", B=BATCH, N=NUM_CORRESPONDENCES,
                             hypotheses=NUM_HYPOTHESES, max_refine_iterations=refine, ms_per_image=ms / BATCH))
    ok = core.ransac_pnp(pixels, coords, K_BENCH, num_hypotheses=NUM_HYPOTHESES, threshold_px=THRESHOLD_PX)["ok"]
    for row in rows:
        print(f"  RANSAC-PnP {row['impl']:38s} B={BATCH} N={NUM_CORRESPONDENCES} {NUM_HYPOTHESES} hypotheses, "
              f"max_refine_iterations={row['max_refine_iterations']:2d}: {row['ms_per_image']:7.3f} ms/image",
              flush=True)
    print(f"  (solved {int(ok.sum())}/{BATCH} images)", flush=True)
    return rows


TRAINING_BATCH = 16
# max_refine_points of the training rows: every inlier, and pose_net.dsac.DEFAULT_MAX_REFINE_POINTS.
TRAINING_REFINE_POINTS = (0, 1024, 512, 256)


def bench_training(quick: bool = False) -> list[dict]:
    """The training form's forward and backward through TF (see the module docstring); prints and returns rows."""
    import tensorflow as tf

    from tf_ops import ransac_pnp_hypotheses

    pixels, coords = problem(TRAINING_BATCH)
    rng = np.random.default_rng(1)
    shape = (TRAINING_BATCH, NUM_HYPOTHESES)
    w_R = tf.constant(rng.normal(size=shape + (3, 3)).astype(np.float32))
    w_t = tf.constant(rng.normal(size=shape + (3,)).astype(np.float32))
    w_s = tf.constant(rng.normal(size=shape).astype(np.float32))
    x = tf.Variable(coords)
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    rows, uncapped_t = [], None
    for refine_points in TRAINING_REFINE_POINTS:
        forward_ms, backward_ms = [], []
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            with tf.GradientTape() as tape:
                res = ransac_pnp_hypotheses(pixels, x, K_BENCH, num_hypotheses=NUM_HYPOTHESES,
                                            threshold_px=THRESHOLD_PX, max_refine_points=refine_points)
                loss = (tf.reduce_sum(w_R * res["R"]) + tf.reduce_sum(w_t * res["t_mm"])
                        + tf.reduce_sum(w_s * res["score"]))
            loss.numpy()
            t1 = time.perf_counter()
            tape.gradient(loss, x).numpy()
            t2 = time.perf_counter()
            forward_ms.append((t1 - t0) * 1000.0)
            backward_ms.append((t2 - t1) * 1000.0)
        ok = res["ok"].numpy()
        t = res["t_mm"].numpy()
        if uncapped_t is None:
            uncapped_t = t
        shift = np.linalg.norm(t - uncapped_t, axis=-1)[ok]
        row = dict(impl=f"TF op, intra-op pool ({threads} threads)", B=TRAINING_BATCH, N=NUM_CORRESPONDENCES,
                   hypotheses=NUM_HYPOTHESES, max_refine_points=refine_points, forward_ms=min(forward_ms),
                   backward_ms=min(backward_ms), ok=float(np.mean(ok)),
                   t_shift_median_mm=float(np.median(shift)), t_shift_p90_mm=float(np.percentile(shift, 90)),
                   load_average=os.getloadavg()[0])
        cap = f"refined on <= {refine_points} points" if refine_points else "refined on every inlier"
        shifted = (f", translations {row['t_shift_median_mm']:.1f} mm (90th pct. {row['t_shift_p90_mm']:.1f}) from "
                   "the uncapped ones" if refine_points else "")
        print(f"  RANSAC-PnP training form {row['impl']}: B={TRAINING_BATCH} N={NUM_CORRESPONDENCES} "
              f"{NUM_HYPOTHESES} hypotheses, {cap}: forward {row['forward_ms']:.0f} ms, backward "
              f"{row['backward_ms']:.0f} ms per batch (min of {len(forward_ms)}; load average "
              f"{row['load_average']:.1f}){shifted}", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="RANSAC-PnP op benchmark")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-tf", action="store_true", help="only the core through the ctypes harness")
    ap.add_argument("--training", action="store_true",
                    help="the training form (ransac_pnp_hypotheses) forward and backward instead")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    rows = bench_training(args.quick) if args.training else bench(args.quick, with_tf=not args.no_tf)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpus=os.cpu_count(), rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
