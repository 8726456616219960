"""A tiny evaluated model bundle for the app tests, built once per test process.

Built by :func:`build_tiny_bundle` (an untrained small_cnn at 64 px over a
patient-wise demo split; ``tests/test_inference.py`` uses it too), then evaluated with
``evaluate_bundle(bundle, demo_root, n_boot=50)`` so it has thresholds,
calibration, operating points and ``metrics.json`` like a shipped bundle.
The app tests check plumbing, not accuracy.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.conftest import REPO_ROOT

SHIPPED_BUNDLE = REPO_ROOT / "models" / "default"
_built: dict[str, Path] = {}
_lock = threading.Lock()


def build_tiny_bundle(directory: Path, demo_root: Path) -> Path:
    """Save an untrained small_cnn bundle (64 px) over a 40/30/30 patient-wise demo split."""
    import keras
    import pandas as pd

    from cxr_core.data import NIHDataset, PreprocessConfig, make_split
    from cxr_core.learn import Bundle, build_model

    keras.utils.set_random_seed(0)
    dataset = NIHDataset(demo_root)
    splits = make_split(dataset, strategy="patient", fractions=(0.4, 0.3, 0.3), seed=0)
    bundle = Bundle(
        model=build_model("small_cnn", 64, small_cnn_width=8), input_size=64, preprocessing=PreprocessConfig(size=64),
        backbone="small_cnn",
        splits=pd.DataFrame({"image": dataset.image_names, "patient_id": dataset.patient_ids, "split": splits}),
    )
    return bundle.save(directory)


def tiny_app_bundle(tmp_path_factory, demo_root: Path) -> Path:
    """The tiny evaluated bundle (one per process, however many test modules ask)."""
    with _lock:
        if "tiny" not in _built:
            from cxr_core.serving import evaluate_bundle

            path = build_tiny_bundle(tmp_path_factory.mktemp("app_bundle") / "tiny", demo_root)
            evaluate_bundle(path, demo_root, n_boot=50, log=lambda line: None)
            _built["tiny"] = path
        return _built["tiny"]


def shipped_bundle_or_skip():
    import pytest

    if not (SHIPPED_BUNDLE / "bundle.json").is_file():
        pytest.skip(f"the shipped model is not in {SHIPPED_BUNDLE} yet (it lands after training)")
    return SHIPPED_BUNDLE
