"""The shipped bundle gives the same probabilities it gave when they were stored.

``tests/fixtures/default_probs.json`` holds the calibrated probabilities of
``models/default`` on five demo images, written before ``cxr_core`` was
reorganised into subpackages. Any change to loading the bundle, the one
preprocessing, the model or the calibration shows up here. Rewrite the file
only for a deliberate change of the shipped model:

    python -m tests.serving.test_default_probs --write
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import DEMO_ROOT, REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "default"
STORED = REPO_ROOT / "tests" / "fixtures" / "default_probs.json"
IMAGES = ("00000007_000.png", "00004461_003.png", "00011702_085.png", "00020440_000.png", "00030634_000.png")


def _predict_all() -> dict[str, dict[str, float]]:
    from cxr_core.serving import Predictor

    predictor = Predictor.from_bundle(SHIPPED)
    return {name: predictor.predict(DEMO_ROOT / "images" / name) for name in IMAGES}


def test_shipped_bundle_gives_the_stored_probabilities():
    stored = json.loads(STORED.read_text())
    assert sorted(stored) == sorted(IMAGES)
    got = _predict_all()
    for name in IMAGES:
        assert list(got[name]) == list(stored[name]), name  # same findings, same order
        for finding, value in stored[name].items():
            assert got[name][finding] == pytest.approx(value, abs=1e-6), (name, finding)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    STORED.parent.mkdir(parents=True, exist_ok=True)
    STORED.write_text(json.dumps(_predict_all(), indent=1) + "\n")
    print(f"wrote {STORED}")
