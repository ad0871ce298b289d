"""Finding and loading the built libraries of the ops in ``tf_ops/lib`` (one place for both ops), with the
errors that tell a user to run ``make build-ops``, and the timing rule of the benchmarks."""

from __future__ import annotations

import time
from pathlib import Path

LIB_DIR = Path(__file__).resolve().parent / "lib"


def load_tf_op_library(so_name: str, op_title: str):
    """``tf.load_op_library`` of ``tf_ops/lib/<so_name>``; ImportError naming the file and ``make build-ops``
    when it is missing or cannot be loaded (a stale or foreign build)."""
    import tensorflow as tf

    path = LIB_DIR / so_name
    if not path.is_file():
        raise ImportError(f"The {op_title} op is not built ({path} is missing): run `make build-ops` "
                          "(or `python -m tf_ops.build`) first.")
    try:
        return tf.load_op_library(str(path))
    except (tf.errors.NotFoundError, OSError) as e:
        raise ImportError(f"Could not load the {op_title} op from {path} ({e}); rebuild it with `make build-ops`.") from e


def open_core_library(path: str | Path | None, default_name: str):
    """``ctypes.CDLL`` of a framework-free core (``tf_ops/lib/<default_name>`` unless ``path``);
    FileNotFoundError naming the build command when it is missing."""
    import ctypes

    path = Path(path) if path else LIB_DIR / default_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make build-ops` (or `python -m tf_ops.build "
                                "--core-only` where TensorFlow is not installed)")
    return ctypes.CDLL(str(path))


def min_time_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Minimum wall time over ``repeats`` calls of ``fn`` (ms), after ``warmup`` calls: robust to other processes on
    a small shared machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(min(times) * 1000.0)
