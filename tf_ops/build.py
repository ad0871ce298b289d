"""Builds the Projection Loss op: ``python -m tf_ops.build`` (what ``make build-ops`` runs).

Outputs (git-ignored):

* ``tf_ops/lib/libprojection_loss_core.so``: the framework-free core (CPU, plus CUDA when ``nvcc`` is found), no
  TensorFlow; used by the ctypes harness (``tf_ops/projection_loss/python/harness.py``) and the GPU tests.
* ``tf_ops/lib/_projection_loss_ops.so``: the TensorFlow op (g++ with ``tf.sysconfig`` flags). When ``nvcc`` is
  found, the GPU kernel (``GOOGLE_CUDA``) is compiled in and the CUDA core is linked with the static CUDA runtime;
  if that fails the op is rebuilt CPU-only and the reason is printed.

Rebuilds only what changed (a stamp of the sources and commands per output, under ``build/projection_loss``).
Options: ``--core-only`` (no TensorFlow needed, e.g. on the GPU test machine), ``--no-cuda``, ``--force``.
Environment: ``NVCC`` (path of nvcc), ``SYNTHPOSE_OPS_CUDA=0`` (same as ``--no-cuda``), ``CXX`` (default g++).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "tf_ops" / "projection_loss"
CORE_DIR = PKG / "core"
CORE_H = CORE_DIR / "projection_loss_core.h"
CORE_CC = CORE_DIR / "projection_loss_core.cc"
CORE_CU = CORE_DIR / "projection_loss_core.cu"
OPS_CC = PKG / "cc" / "ops" / "projection_loss_ops.cc"
KERNELS_CC = PKG / "cc" / "kernels" / "projection_loss_kernels.cc"
LIB_DIR = ROOT / "tf_ops" / "lib"
CORE_SO = LIB_DIR / "libprojection_loss_core.so"
OPS_SO = LIB_DIR / "_projection_loss_ops.so"
BUILD_DIR = ROOT / "build" / "projection_loss"

CUDA_ARCHS = ("80", "90")  # sm_80 (A100), sm_90 (H100/H200), plus compute_90 PTX for newer GPUs
COMMON_FLAGS = ["-O3", "-fPIC", "-ffp-contract=off", "-Wall", "-Wno-deprecated-declarations"]


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[tf_ops.build] {msg}", flush=True)


def find_nvcc() -> str | None:
    if os.environ.get("SYNTHPOSE_OPS_CUDA", "1") == "0":
        return None
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def cuda_home(nvcc: str) -> Path:
    """The CUDA toolkit root of ``nvcc`` (resolves symlinks such as /usr/local/bin/nvcc)."""
    real = Path(nvcc).resolve()
    for cand in (real.parent.parent, Path("/usr/local/cuda")):
        if (cand / "include" / "cuda_runtime.h").is_file():
            return cand
    raise BuildError(f"found nvcc at {nvcc} but no CUDA headers (include/cuda_runtime.h) next to it")


def cuda_lib_dir(home: Path) -> Path:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
        if (home / sub / "libcudart_static.a").is_file():
            return home / sub
    raise BuildError(f"no libcudart_static.a under {home}")


def digest(files: list[Path], cmds: list[list[str]]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    h.update(json.dumps(cmds).encode())
    return h.hexdigest()


def up_to_date(out: Path, key: str) -> bool:
    stamp = BUILD_DIR / (out.name + ".stamp")
    return out.is_file() and stamp.is_file() and stamp.read_text().strip() == key


def write_stamp(out: Path, key: str) -> None:
    (BUILD_DIR / (out.name + ".stamp")).write_text(key + "\n")


def run_all(cmds: list[list[str]], what: str) -> None:
    """Runs independent compile commands in parallel (2 at a time); raises BuildError with the compiler output."""
    pending = list(cmds)
    running: list[tuple[list[str], subprocess.Popen]] = []
    failures = []
    while pending or running:
        while pending and len(running) < max(1, min(2, os.cpu_count() or 1)):
            cmd = pending.pop(0)
            log("  $ " + " ".join(cmd))
            running.append((cmd, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  text=True)))
        cmd, proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append((cmd, out))
    if failures:
        text = "\n".join(f"$ {' '.join(c)}\n{o[-4000:]}" for c, o in failures)
        raise BuildError(f"{what} failed:\n{text}")


def build_core(nvcc: str | None, cxx: str, force: bool) -> None:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    core_o = BUILD_DIR / ("core_cuda.o" if nvcc else "core_cpu.o")
    cmds = [[cxx, "-std=c++17", *COMMON_FLAGS, *(["-DPL_WITH_CUDA"] if nvcc else []),
             "-c", str(CORE_CC), "-o", str(core_o)]]
    link: list[str]
    if nvcc:
        gencode = []
        for arch in CUDA_ARCHS:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        gencode += ["-gencode", f"arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]
        cmds.append([nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", *gencode, "-c", str(CORE_CU),
                     "-o", str(BUILD_DIR / "core_cu.o")])
        link = [nvcc, "-shared", "-Xcompiler", "-fPIC", "-cudart", "static", str(core_o),
                str(BUILD_DIR / "core_cu.o"), "-o", str(CORE_SO)]
    else:
        link = [cxx, "-shared", "-fPIC", str(core_o), "-o", str(CORE_SO)]
    key = digest([CORE_H, CORE_CC, CORE_CU], cmds + [link])
    if not force and up_to_date(CORE_SO, key):
        log(f"{CORE_SO.relative_to(ROOT)} is up to date ({'CPU + CUDA' if nvcc else 'CPU only'})")
        return
    log(f"building {CORE_SO.relative_to(ROOT)} ({'CPU + CUDA with ' + nvcc if nvcc else 'CPU only: no nvcc'})")
    run_all(cmds, "compiling the Projection Loss core")
    run_all([link], "linking libprojection_loss_core.so")
    write_stamp(CORE_SO, key)


def tf_flags() -> tuple[list[str], list[str]]:
    try:
        import tensorflow as tf  # noqa: PLC0415 (heavy import, only when building the TF op)
    except ImportError as e:  # pragma: no cover
        raise BuildError(f"TensorFlow is not importable ({e}); run `make setup` or use --core-only") from e
    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def build_tf_op(nvcc: str | None, cxx: str, force: bool) -> None:
    cflags, lflags = tf_flags()
    cflags = [f for f in cflags if not f.startswith("--std=") and not f.startswith("-std=")]
    base = [cxx, "-std=c++17", *COMMON_FLAGS, *cflags, f"-I{ROOT}"]
    variants = []
    if nvcc:
        try:
            home = cuda_home(nvcc)
            libdir = cuda_lib_dir(home)
            variants.append(("cuda", ["-DGOOGLE_CUDA=1", "-DPL_WITH_CUDA", f"-I{home / 'include'}"],
                             [str(BUILD_DIR / "core_cu.o"), f"-L{libdir}", "-lcudart_static", "-ldl", "-lrt",
                              "-lpthread"]))
        except BuildError as e:
            log(f"GPU kernel disabled: {e}")
    variants.append(("cpu", [], []))
    last_error: BuildError | None = None
    for name, extra_c, extra_l in variants:
        objs = {src: BUILD_DIR / f"{src.stem}_{name}.o" for src in (OPS_CC, KERNELS_CC, CORE_CC)}
        cmds = [[*base, *extra_c, "-c", str(src), "-o", str(obj)] for src, obj in objs.items()]
        link = [cxx, "-shared", "-fPIC", *map(str, objs.values()), *extra_l, *lflags, "-o", str(OPS_SO)]
        key = digest([CORE_H, CORE_CC, CORE_CU, OPS_CC, KERNELS_CC], cmds + [link])
        if not force and up_to_date(OPS_SO, key):
            log(f"{OPS_SO.relative_to(ROOT)} is up to date ({name} kernels)")
            return
        log(f"building {OPS_SO.relative_to(ROOT)} with {'CPU + GPU' if name == 'cuda' else 'CPU'} kernels")
        try:
            run_all(cmds, f"compiling the TF op ({name})")
            run_all([link], f"linking _projection_loss_ops.so ({name})")
        except BuildError as e:
            last_error = e
            if name == "cuda":
                log("GPU kernel build against the TensorFlow wheel failed; falling back to a CPU-only op "
                    "(the CUDA core is still in libprojection_loss_core.so). Reason:\n" + str(e)[-2000:])
                continue
            raise
        write_stamp(OPS_SO, key)
        return
    if last_error:  # pragma: no cover
        raise last_error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--core-only", action="store_true", help="build only libprojection_loss_core.so (no TF)")
    ap.add_argument("--no-cuda", action="store_true", help="do not compile CUDA even when nvcc is present")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        log(f"error: C++ compiler {cxx!r} not found (install g++ or set CXX)")
        return 1
    nvcc = None if args.no_cuda else find_nvcc()
    try:
        build_core(nvcc, cxx, args.force)
        if not args.core_only:
            build_tf_op(nvcc, cxx, args.force)
    except BuildError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
