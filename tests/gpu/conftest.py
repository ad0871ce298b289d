"""GPU tests of the Projection Loss CUDA core through the ctypes harness (no TensorFlow needed).

Skipped, with the reason, when there is no CUDA device or neither CuPy nor torch.cuda is usable. When nvcc is
present and the core library is missing or was built without CUDA, it is built first (`tf_ops.build --core-only`).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def gpu_core():
    from tf_ops.projection_loss.python.harness import LIB_PATH, CoreLib, gpu_backend, gpu_unavailable_reason

    backend = gpu_backend()
    if backend is None:
        pytest.skip(f"no usable GPU for the CUDA core: {gpu_unavailable_reason()}")
    needs_build = not LIB_PATH.is_file() or not CoreLib().cuda_compiled()
    if needs_build:
        if not (shutil.which("nvcc") or os.environ.get("NVCC") or Path("/usr/local/cuda/bin/nvcc").is_file()):
            pytest.skip(f"{LIB_PATH} has no CUDA code and nvcc is not available to build it")
        out = subprocess.run([sys.executable, "-m", "tf_ops.build", "--core-only"], cwd=REPO, capture_output=True,
                             text=True)
        if out.returncode != 0:
            pytest.fail(f"building the CUDA core failed:\n{out.stdout}\n{out.stderr}")
    core = CoreLib()
    if not core.cuda_available():
        pytest.skip("libprojection_loss_core.so sees no CUDA device (pl_cuda_available() == 0)")
    return core, backend
