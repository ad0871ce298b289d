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
