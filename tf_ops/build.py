"""Builds the custom ops: ``python -m tf_ops.build`` (what ``make build-ops`` runs).

Each op (:data:`OPS`) has a framework-free core library and a TensorFlow op library. Outputs (git-ignored):

* ``tf_ops/lib/libprojection_loss_core.so``: the Projection Loss core (CPU, plus CUDA when ``nvcc`` is found), no
  TensorFlow; used by the ctypes harness (``tf_ops/projection_loss/python/harness.py``) and the GPU tests.
* ``tf_ops/lib/_projection_loss_ops.so``: the Projection Loss TensorFlow op (g++ with ``tf.sysconfig`` flags). When
  ``nvcc`` is found, the GPU kernel (``GOOGLE_CUDA``) is compiled in and the CUDA core is linked with the static CUDA
  runtime; if that fails the op is rebuilt CPU-only and the reason is printed.
* ``tf_ops/lib/libransac_pnp_core.so``: the RANSAC-PnP core (CPU only), no TensorFlow; used by its ctypes harness
  (``tf_ops/ransac_pnp/python/harness.py``).
* ``tf_ops/lib/_ransac_pnp_ops.so``: the RANSAC-PnP TensorFlow op (CPU kernel).

Rebuilds only what changed (a stamp of the sources and commands per output, under ``build/<op>``).
Options: ``--op NAME`` (one op only; default all), ``--core-only`` (no TensorFlow needed, e.g. on the GPU test
machine), ``--no-cuda``, ``--force``.
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB_DIR = ROOT / "tf_ops" / "lib"


@dataclass(frozen=True)
class OpSpec:
    """Sources and outputs of one op. ``core_files`` are every source and header the core depends on (hashed for
    the stamps, in this order); ``core_sources`` the ones compiled; ``cuda_source`` the optional CUDA core."""

    name: str  # folder under tf_ops/, and the stem of the outputs
    title: str  # for messages
    core_files: tuple[Path, ...]
    core_sources: tuple[Path, ...]
    tf_sources: tuple[Path, ...]  # op registration and kernels
    cuda_source: Path | None = None
    cuda_define: str | None = None  # defined when the core is compiled with CUDA
    extra_flags: tuple[str, ...] = field(default=())  # added to every g++ command of this op

    @property
    def core_so(self) -> Path:
        return LIB_DIR / f"lib{self.name}_core.so"

    @property
    def ops_so(self) -> Path:
        return LIB_DIR / f"_{self.name}_ops.so"

    @property
    def build_dir(self) -> Path:
        return ROOT / "build" / self.name

    def core_object(self, src: Path, variant: str) -> Path:
        """Object of a core source for the core library (variant "cpu" or "cuda"). A single-source core keeps the
        name core_<variant>.o (the Projection Loss' stamps predate multi-source cores)."""
        stem = "core" if len(self.core_sources) == 1 else src.stem
        return self.build_dir / f"{stem}_{variant}.o"


def _projection_loss() -> OpSpec:
    pkg = ROOT / "tf_ops" / "projection_loss"
    core_h, core_cc, core_cu = (pkg / "core" / f"projection_loss_core.{ext}" for ext in ("h", "cc", "cu"))
    return OpSpec(name="projection_loss", title="Projection Loss", core_files=(core_h, core_cc, core_cu),
                  core_sources=(core_cc,), cuda_source=core_cu, cuda_define="PL_WITH_CUDA",
                  tf_sources=(pkg / "cc" / "ops" / "projection_loss_ops.cc",
                              pkg / "cc" / "kernels" / "projection_loss_kernels.cc"))


def _ransac_pnp() -> OpSpec:
    core = ROOT / "tf_ops" / "ransac_pnp" / "core"
    sources = tuple(core / f"{stem}.cc"
                    for stem in ("ransac_pnp_core", "p3p", "sampling", "scoring", "refinement", "derivatives"))
    headers = (core / "ransac_pnp_core.h", core / "ransac_pnp_internal.h")
    pkg = core.parent
    # -fno-math-errno -fno-trapping-math: lets g++ vectorize the scoring loop; no result changes (see the header).
    return OpSpec(name="ransac_pnp", title="RANSAC-PnP", core_files=headers + sources, core_sources=sources,
                  tf_sources=(pkg / "cc" / "ops" / "ransac_pnp_ops.cc", pkg / "cc" / "kernels" / "ransac_pnp_kernels.cc"),
                  extra_flags=("-fno-math-errno", "-fno-trapping-math", f"-I{ROOT}"))


OPS: dict[str, OpSpec] = {spec.name: spec for spec in (_projection_loss(), _ransac_pnp())}

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


def up_to_date(spec: OpSpec, out: Path, key: str) -> bool:
    stamp = spec.build_dir / (out.name + ".stamp")
    return out.is_file() and stamp.is_file() and stamp.read_text().strip() == key


def write_stamp(spec: OpSpec, out: Path, key: str) -> None:
    (spec.build_dir / (out.name + ".stamp")).write_text(key + "\n")


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


def build_core(spec: OpSpec, nvcc: str | None, cxx: str, force: bool) -> None:
    spec.build_dir.mkdir(parents=True, exist_ok=True)
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    nvcc = nvcc if spec.cuda_source else None
    variant = "cuda" if nvcc else "cpu"
    core_objs = [spec.core_object(src, variant) for src in spec.core_sources]
    cmds = [[cxx, "-std=c++17", *COMMON_FLAGS, *spec.extra_flags, *([f"-D{spec.cuda_define}"] if nvcc else []),
             "-c", str(src), "-o", str(obj)] for src, obj in zip(spec.core_sources, core_objs)]
    link: list[str]
    if nvcc:
        gencode = []
        for arch in CUDA_ARCHS:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        gencode += ["-gencode", f"arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]
        cmds.append([nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", *gencode, "-c", str(spec.cuda_source),
                     "-o", str(spec.build_dir / "core_cu.o")])
        link = [nvcc, "-shared", "-Xcompiler", "-fPIC", "-cudart", "static", *map(str, core_objs),
                str(spec.build_dir / "core_cu.o"), "-o", str(spec.core_so)]
    else:
        link = [cxx, "-shared", "-fPIC", *map(str, core_objs), "-o", str(spec.core_so)]
    key = digest(list(spec.core_files), cmds + [link])
    what = "CPU + CUDA" if nvcc else ("CPU only: no nvcc" if spec.cuda_source else "CPU only")
    if not force and up_to_date(spec, spec.core_so, key):
        log(f"{spec.core_so.relative_to(ROOT)} is up to date ({'CPU + CUDA' if nvcc else 'CPU only'})")
        return
    log(f"building {spec.core_so.relative_to(ROOT)} ({'CPU + CUDA with ' + nvcc if nvcc else what})")
    run_all(cmds, f"compiling the {spec.title} core")
    run_all([link], f"linking {spec.core_so.name}")
    write_stamp(spec, spec.core_so, key)


def tf_flags() -> tuple[list[str], list[str]]:
    try:
        import tensorflow as tf  # noqa: PLC0415 (heavy import, only when building the TF op)
    except ImportError as e:  # pragma: no cover
        raise BuildError(f"TensorFlow is not importable ({e}); run `make setup` or use --core-only") from e
    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def build_tf_op(spec: OpSpec, nvcc: str | None, cxx: str, force: bool) -> None:
    cflags, lflags = tf_flags()
    cflags = [f for f in cflags if not f.startswith("--std=") and not f.startswith("-std=")]
    base = [cxx, "-std=c++17", *COMMON_FLAGS, *spec.extra_flags, *cflags, f"-I{ROOT}"]
    variants = []
    if nvcc and spec.cuda_source:
        try:
            home = cuda_home(nvcc)
            libdir = cuda_lib_dir(home)
            variants.append(("cuda", ["-DGOOGLE_CUDA=1", f"-D{spec.cuda_define}", f"-I{home / 'include'}"],
                             [str(spec.build_dir / "core_cu.o"), f"-L{libdir}", "-lcudart_static", "-ldl", "-lrt",
                              "-lpthread"]))
        except BuildError as e:
            log(f"GPU kernel disabled: {e}")
    variants.append(("cpu", [], []))
    last_error: BuildError | None = None
    for name, extra_c, extra_l in variants:
        objs = {src: spec.build_dir / f"{src.stem}_{name}.o" for src in (*spec.tf_sources, *spec.core_sources)}
        cmds = [[*base, *extra_c, "-c", str(src), "-o", str(obj)] for src, obj in objs.items()]
        link = [cxx, "-shared", "-fPIC", *map(str, objs.values()), *extra_l, *lflags, "-o", str(spec.ops_so)]
        key = digest([*spec.core_files, *spec.tf_sources], cmds + [link])
        if not force and up_to_date(spec, spec.ops_so, key):
            log(f"{spec.ops_so.relative_to(ROOT)} is up to date ({name} kernels)")
            return
        log(f"building {spec.ops_so.relative_to(ROOT)} with {'CPU + GPU' if name == 'cuda' else 'CPU'} kernels")
        try:
            run_all(cmds, f"compiling the {spec.title} TF op ({name})")
            run_all([link], f"linking {spec.ops_so.name} ({name})")
        except BuildError as e:
            last_error = e
            if name == "cuda":
                log("GPU kernel build against the TensorFlow wheel failed; falling back to a CPU-only op "
                    f"(the CUDA core is still in {spec.core_so.name}). Reason:\n" + str(e)[-2000:])
                continue
            raise
        write_stamp(spec, spec.ops_so, key)
        return
    if last_error:  # pragma: no cover
        raise last_error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=sorted(OPS), action="append",
                    help="build this op only (repeatable; default: all of them)")
    ap.add_argument("--core-only", action="store_true", help="build only the core libraries lib*_core.so (no TF)")
    ap.add_argument("--no-cuda", action="store_true", help="do not compile CUDA even when nvcc is present")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        log(f"error: C++ compiler {cxx!r} not found (install g++ or set CXX)")
        return 1
    nvcc = None if args.no_cuda else find_nvcc()
    try:
        for name in args.op or list(OPS):
            build_core(OPS[name], nvcc, cxx, args.force)
            if not args.core_only:
                build_tf_op(OPS[name], nvcc, cxx, args.force)
    except BuildError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
