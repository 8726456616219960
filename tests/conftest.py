"""Shared test fixtures: where the demo set and the real NIH sample live."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Keep TensorFlow quiet and deterministic-ish in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    """LiteRT serving forms built by tests (and by app servers the tests start) go to a folder of this test run,
    never into the user's ~/.cache: a test sees only the forms it built itself. Here, not at import: the benchmarks
    import tests.app.test_browser (and so this module) and must use the user's cache."""
    os.environ["CXR_ASSIST_SERVING_CACHE"] = tempfile.mkdtemp(prefix="cxr-assist-serving-tests-")


def pytest_unconfigure(config):
    """The test run's serving forms go with it (about 100 MB with the shipped model's)."""
    import shutil

    folder = os.environ.get("CXR_ASSIST_SERVING_CACHE", "")
    if os.path.basename(folder).startswith("cxr-assist-serving-tests-"):
        shutil.rmtree(folder, ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_ROOT = REPO_ROOT / "data" / "demo"
SHARED_NIH = REPO_ROOT.parent / "shared" / "nih"
SHARED_DICOM = REPO_ROOT.parent / "shared" / "dicom"


@pytest.fixture(scope="session")
def demo_root() -> Path:
    """The demo set shipped with the project (always present)."""
    assert (DEMO_ROOT / "images").is_dir(), "data/demo is part of the repository and must exist"
    return DEMO_ROOT


@pytest.fixture(scope="session")
def shared_nih() -> Path:
    """The real NIH sample beside the checkout; tests using it skip when it is absent."""
    if not (SHARED_NIH / "Data_Entry_2017.csv").is_file():
        pytest.skip(f"real NIH sample not found at {SHARED_NIH} (it sits beside the checkout in CI)")
    return SHARED_NIH


@pytest.fixture(scope="session")
def shared_dicom() -> Path:
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"real DICOM files not found at {SHARED_DICOM}")
    return SHARED_DICOM
