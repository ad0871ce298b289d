"""Benchmark of the custom ops: ``python -m tf_ops.bench`` (``make bench-ops``).

RANSAC-PnP: ms per image at B=32, N=4096, 64 hypotheses (tf_ops/ransac_pnp/bench.py), core on one thread and TF op
with its thread pool. Projection Loss:

Prints, in one run, forward and forward+backward wall time (minimum over repetitions, tf.function, default TF
threading) of the C++ CPU op and of the pure-TF reference (scatter-based forward, dense-gather backward with
the same rule) at B=32, N=4096 points, 128x128 and 480x640 (scale 1); the CPU op at training sizes (N=1000 and
4096, scale 0.5); and the CUDA core through the ctypes harness with CUDA events when a GPU (and CuPy or torch)
is present. The op's forward+backward is its training path: one fused pass (loss and unit gradient) plus the
multiplication by the upstream gradient.
Options: ``--quick`` (fewer repetitions), ``--json PATH`` (write the figures), ``--gpu-only`` (the CUDA core only),
``--skip-ransac-pnp`` / ``--ransac-pnp-only``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess

import numpy as np

from tf_ops.loading import min_time_ms as _time_ms

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def _problem(b: int, n: int, height: int, width: int, seed: int = 0):
    """gt: points filling an ellipse; pred: the same shifted by a few pixels (a typical training situation)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-1, 1, (b, 4 * n, 2))
    gt = np.zeros((b, n, 2), np.float32)
    for i in range(b):
        q = p[i][(p[i] ** 2).sum(1) < 1][:n]
        gt[i] = q * [0.3 * width, 0.25 * height] + [0.5 * width, 0.5 * height]
    pred = gt + rng.normal(0, 0.03 * min(height, width), (b, 1, 2)).astype(np.float32)
    return pred.astype(np.float32), gt



def bench_tf(quick: bool) -> list[dict]:
    import tensorflow as tf

    from tf_ops import projection_iou_loss, projection_iou_loss_reference

    rows = []

    def make(loss_fn, height, width, scale):
        @tf.function
        def fwd_bwd(pred, gt):
            with tf.GradientTape() as tape:
                tape.watch(pred)
                loss = loss_fn(pred, gt, height, width, scale)
                total = tf.reduce_sum(loss)
            g = tape.gradient(total, pred)
            return loss, (tf.zeros_like(pred) if g is None else g)

        @tf.function
        def fwd(pred, gt):
            if loss_fn is projection_iou_loss:  # forward only: skip the fused gradient
                return loss_fn(pred, gt, height, width, scale, with_gradient=False)
            return loss_fn(pred, gt, height, width, scale)

        return fwd, fwd_bwd

    cases = [(32, 4096, 128, 128, 1.0), (32, 4096, 480, 640, 1.0)]
    for b, n, h, w, s in cases:
        pred, gt = _problem(b, n, h, w)
        pred_t, gt_t = tf.constant(pred), tf.constant(gt)
        for label, fn in (("CPU op", projection_iou_loss), ("pure-TF reference", projection_iou_loss_reference)):
            fwd, fwd_bwd = make(fn, h, w, s)
            reps = (5 if quick else 40) if label == "CPU op" else (2 if quick else 6)
            row = dict(impl=label, B=b, N=n, image=f"{h}x{w}", scale=s,
                       forward_ms=_time_ms(lambda: fwd(pred_t, gt_t)[0].numpy(), reps),
                       forward_backward_ms=_time_ms(lambda: fwd_bwd(pred_t, gt_t)[1].numpy(), reps))
            rows.append(row)
            print(f"  {label:18s} B={b} N={n} {h}x{w} scale={s}: forward {row['forward_ms']:9.3f} ms, "
                  f"forward+backward {row['forward_backward_ms']:9.3f} ms", flush=True)
        op, ref = rows[-2], rows[-1]
        speedup = ref["forward_backward_ms"] / op["forward_backward_ms"]
        op["speedup_vs_reference"] = speedup
        print(f"  -> CPU op is {speedup:.0f}x faster than the reference (forward+backward)", flush=True)
    # training sizes
    for n in (1000, 4096):
        pred, gt = _problem(32, n, 128, 128, seed=1)
        fwd, fwd_bwd = make(projection_iou_loss, 128, 128, 0.5)
        pred_t, gt_t = tf.constant(pred), tf.constant(gt)
        row = dict(impl="CPU op", B=32, N=n, image="128x128", scale=0.5,
                   forward_ms=_time_ms(lambda: fwd(pred_t, gt_t).numpy(), 5 if quick else 30),
                   forward_backward_ms=_time_ms(lambda: fwd_bwd(pred_t, gt_t)[1].numpy(), 5 if quick else 30))
        rows.append(row)
        print(f"  {'CPU op':18s} B=32 N={n} 128x128 scale=0.5: forward {row['forward_ms']:9.3f} ms, "
              f"forward+backward {row['forward_backward_ms']:9.3f} ms", flush=True)
    return rows


def bench_gpu(quick: bool) -> list[dict]:
    from tf_ops.projection_loss.python.harness import CoreLib, gpu_backend, gpu_unavailable_reason

    core = CoreLib()
    if not core.cuda_compiled():
        print("  GPU: skipped (libprojection_loss_core.so was built without nvcc)")
        return []
    backend = gpu_backend()
    if backend is None or not core.cuda_available():
        print(f"  GPU: skipped (no usable CUDA device: {gpu_unavailable_reason() or 'pl_cuda_available() == 0'})")
        return []
    rows = []
    for b, n, h, w in ((32, 4096, 128, 128), (32, 4096, 480, 640)):
        pred, gt = _problem(b, n, h, w)
        t = core.cuda_time_us(pred, gt, h, w, 1.0, iters=50 if quick else 500, backend=backend)
        rows.append(dict(impl=f"CUDA core ({backend.name})", B=b, N=n, image=f"{h}x{w}", scale=1.0,
                         forward_us=t["forward"], forward_backward_us=t["forward+backward"]))
        rows[-1]["fused_us"] = t["fused"]
        print(f"  CUDA core ({backend.name}) B={b} N={n} {h}x{w}: forward {t['forward']:8.1f} us, "
              f"forward then backward {t['forward+backward']:8.1f} us, fused forward+backward "
              f"{t['fused']:8.1f} us", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Custom ops benchmark (Projection Loss, RANSAC-PnP)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-ransac-pnp", action="store_true", help="leave out the RANSAC-PnP figures")
    ap.add_argument("--ransac-pnp-only", action="store_true", help="only the RANSAC-PnP figures")
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA core (no TensorFlow needed)")
    args = ap.parse_args(argv)
    rows = []
    if not args.gpu_only and not args.skip_ransac_pnp:
        from tf_ops.ransac_pnp.bench import bench as bench_ransac_pnp

        print(f"RANSAC-PnP benchmark on {_cpu_model()} ({os.cpu_count()} logical CPUs)")
        rows += bench_ransac_pnp(args.quick)
        if args.ransac_pnp_only:
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(dict(cpu=_cpu_model(), cpus=os.cpu_count(), rows=rows), f, indent=2)
            return 0
    print(f"Projection Loss benchmark on {_cpu_model()} ({os.cpu_count()} logical CPUs)")
    if not args.gpu_only:
        import tensorflow as tf

        print(f"TensorFlow {tf.__version__}, intra-op threads: default")
        rows += bench_tf(args.quick)
    rows += bench_gpu(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=_cpu_model(), cpus=os.cpu_count(), rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
