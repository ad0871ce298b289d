"""Inference speed of the EfficientNet-Lite0 pose backbone (``[B, S, S, 3] -> [B, S/32, S/32, 1280]``) on this machine.

``python -m pose_net.backbones.bench_lite0 [--sizes 128 160 192] [--batch 32] [--seconds 10] [--jit] [--train]``

Times a compiled ``tf.function`` of the headless backbone (random initialisation: the weights do not change the
speed) on random batches, after warm-up; prints images/s per input size (median and best over timed runs) with the
1-minute load average before and after, since other jobs on a shared CPU change the figures, and images per
CPU-second of this process (with N idle cores, wall-clock throughput is at most about N times that). ``--train`` also times
one optimiser step of the unfrozen backbone (forward + backward) for fine-tuning estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def bench(size: int, batch: int, seconds: float, train: bool = False, jit: bool = False) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from pose_net.backbones.efficientnet_lite import build_lite0_backbone

    model = build_lite0_backbone(size, weights=None, freeze=not train, verbose=False)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    if train:
        opt = keras.optimizers.SGD(1e-3)

        @tf.function(jit_compile=jit)
        def step(images):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(images, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
    else:
        @tf.function(jit_compile=jit)
        def step(images):
            return model(images, training=False)

    for _ in range(2):  # trace + warm-up
        np.asarray(step(x))
    times, t_end, cpu0 = [], time.perf_counter() + seconds, time.process_time()
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        np.asarray(step(x))
        times.append(time.perf_counter() - t0)
    cpu_s = time.process_time() - cpu0
    times = np.array(times)
    return dict(size=size, batch=batch, mode="train_step" if train else "inference", xla=jit, runs=len(times),
                images_per_s_median=round(batch / float(np.median(times)), 1),
                images_per_s_best=round(batch / float(times.min()), 1),
                ms_per_batch_median=round(1000 * float(np.median(times)), 1),
                # CPU time this process got: less sensitive to other jobs than wall time on a shared machine
                images_per_cpu_s=round(batch * len(times) / cpu_s, 1),
                cpu_utilisation=round(cpu_s / float(times.sum()), 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per size (after warm-up)")
    parser.add_argument("--jit", action="store_true", help="compile with XLA (jit_compile=True)")
    parser.add_argument("--train", action="store_true", help="also time a fine-tuning step (forward + backward)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, TF {tf.__version__}, "
          f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
    results = []
    for size in args.sizes:
        for train in ([False, True] if args.train else [False]):
            load_before = _load()
            r = bench(size, args.batch, args.seconds, train, args.jit)
            r["load1_before"], r["load1_after"] = round(load_before, 2), round(_load(), 2)
            print(json.dumps(r), flush=True)
            results.append(r)
    return results


if __name__ == "__main__":
    main()
