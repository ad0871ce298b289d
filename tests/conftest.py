"""Shared test fixtures. Real data lives in ../shared/data beside the repo; tests that need it skip without it."""
import os
from pathlib import Path

import pytest

from pose_core import shared_data_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder (../shared/data); skips the test with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set SYNTHPOSE_SHARED_DATA to point at it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def builtin_models(tmp_path_factory) -> Path:
    """The three built-in objects in BOP form, written once per test session into a temporary folder."""
    from pose_core.objects import write_builtin_models

    return write_builtin_models(tmp_path_factory.mktemp("builtin_models"))


TINY_INPUT = 64  # the side of the tiny dataset's images, and the network input of the tests that train on it


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """96 renderings of the built-in toy at 64x64, in 3 shards (the last is the validation split); read-only for
    the tests that share it (copy it to change it)."""
    from render.testing import run_generate

    out = tmp_path_factory.mktemp("tiny") / "toy"
    proc = run_generate(out, mesh="toy", num_images=96, num_shards=3, seed=3, image_size=TINY_INPUT, workers=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def core():
    """The RANSAC-PnP core through its ctypes harness, no TensorFlow (skips when the core is not built)."""
    from tf_ops.ransac_pnp.python import harness

    try:
        return harness.CoreLib()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")
