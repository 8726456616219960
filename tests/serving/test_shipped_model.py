"""The shipped model: it loads, predicts, and its documented numbers are its own."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cxr_core.data import NIHDataset
from cxr_core.findings import FINDINGS
from tests.conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "default"


@pytest.fixture(scope="module")
def predictor():
    from cxr_core.serving import Predictor

    return Predictor.from_bundle(SHIPPED)


@pytest.fixture(scope="module")
def metrics():
    return json.loads((SHIPPED / "metrics.json").read_text())


def test_bundle_carries_its_metadata(predictor, metrics):
    meta = predictor.metadata
    assert meta["findings"] == list(FINDINGS)
    # Each member of the shipped ensemble carries its own input size and preprocessing.
    assert [m["input_size"] for m in meta["members"]] == [m.preprocess.size for m in predictor.members]
    assert [m["explanation"]["method"] for m in meta["members"]] == [m.explanation for m in predictor.members]
    assert len(meta["thresholds"]["values"]) == 14 and meta["thresholds"]["fitted_on"] == "validation"
    assert meta["calibration"]["method"] == "platt"  # see MODEL_CARD.md for why
    assert meta["test_summary"]["mean_auroc"] == pytest.approx(metrics["macro"]["auroc"])
    assert sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()) < 60 * 2**20  # the size budget


def test_demo_images_are_test_patients_of_the_shipped_model(predictor, demo_root):
    names = NIHDataset(demo_root).image_names
    assert {predictor.split_of(n) for n in names} == {"test"}


def test_shipped_model_reads_real_images(predictor, demo_root):
    ds = NIHDataset(demo_root)
    positives = ds.labels[:, FINDINGS.index("Cardiomegaly")] == 1
    paths = ds.csv["path"].to_numpy()
    scores = [predictor.predict(p)["Cardiomegaly"] for p in paths[positives][:8]]
    scores_neg = [predictor.predict(p)["Cardiomegaly"] for p in paths[ds.labels.sum(axis=1) == 0][:8]]
    assert all(0 <= s <= 1 for s in scores + scores_neg)
    assert np.std(scores + scores_neg) > 1e-3  # not a constant output


def test_the_served_form_gives_the_evaluated_numbers(predictor, demo_root):
    """What the app runs (LiteRT, no TensorFlow) is the model that was evaluated (Keras, float32), film by film:
    probabilities, maps, the input check's scores, the reading. Real demo films, one with an expert box."""
    from cxr_core.serving import Predictor
    from tests.app_bundle import shipped_with_serving_form

    served = Predictor.from_bundle(shipped_with_serving_form(), runtime="litert")
    assert served.runtime == "litert" and predictor.runtime == "keras"
    ds = NIHDataset(demo_root)
    films = [ds.csv.loc[ds.csv.image == ds.boxes["image"].iloc[0], "path"].item(), *ds.csv["path"].iloc[:2]]
    for film in films:
        a, b = served.analyze(film), predictor.analyze(film)
        np.testing.assert_allclose(list(a.raw_probabilities.values()), list(b.raw_probabilities.values()), atol=1e-5)
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
        assert max(float(np.abs(a.heatmaps[f] - b.heatmaps[f]).max()) for f in FINDINGS) < 1e-4
        assert a.input_check["feature_distance"] == pytest.approx(b.input_check["feature_distance"], rel=1e-4)
        assert a.reading.triage_probability == pytest.approx(b.reading.triage_probability, abs=1e-5)
        assert a.reading == dataclasses.replace(b.reading, triage_probability=a.reading.triage_probability)
        assert a.withheld_because == b.withheld_because


def test_readme_and_model_card_numbers_come_from_metrics_json(metrics):
    from tools.model_card import END, HEADLINE_END, HEADLINE_START, START, headline_block, results_block

    def between(path, start, end):
        text = path.read_text(encoding="utf-8")
        assert start in text and end in text, f"{path.name} lacks the markers of its generated block"
        return text.split(start, 1)[1].split(end, 1)[0].strip()

    meta = json.loads((SHIPPED / "bundle.json").read_text())
    block = results_block(metrics, meta)
    # The full block in docs/evidence/results.md and the card; the headline table in the README.
    assert between(REPO_ROOT / "docs" / "evidence" / "results.md", START, END) == block.strip()
    assert block.strip() in (SHIPPED / "MODEL_CARD.md").read_text()
    headline = between(REPO_ROOT / "README.md", HEADLINE_START, HEADLINE_END)
    assert headline == headline_block(metrics).strip()
    assert f"**{metrics['macro']['auroc']:.3f}** ({metrics['macro']['auroc_low']:.3f}–{metrics['macro']['auroc_high']:.3f})" in headline


def test_predict_command_with_the_shipped_model(tmp_path, demo_root):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((demo_root / "images").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "preds.csv"
    result = subprocess.run(
        [sys.executable, "-m", "training.predict", "--images", str(folder), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 3 and list(table.columns) == ["Image Index", *FINDINGS, "abnormal", "triage", "flagged", "warning",
                                                        "error"]
    # Real NIH films pass the input check: each gets a triage verdict and a probability, never "not assessed".
    assert set(table["triage"]) <= {"abnormal", "no finding likely"} and table["abnormal"].astype(float).between(0, 1).all()
