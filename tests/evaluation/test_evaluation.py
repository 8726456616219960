"""The evaluation report: validation-only fitting, test-only measuring (named synthetic data)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from cxr_core.evaluation import PUBLISHED_AUROC, evaluate_predictions, localization_report
from cxr_core.findings import FINDINGS


def _synthetic_split(n: int, seed: int):
    """Synthetic labels drawn from known probabilities; scores overconfident by a temperature of 3."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(-1.5, 1.5, size=(n, 14))
    y = (rng.random((n, 14)) < 1 / (1 + np.exp(-true_logits))).astype(float)
    logits = 3.0 * true_logits
    meta = pd.DataFrame(
        {
            "patient_id": rng.integers(0, n // 2, size=n),
            "sex": rng.choice(["M", "F"], size=n),
            "age": rng.uniform(10, 90, size=n),
            "view": rng.choice(["PA", "AP"], size=n),
        }
    )
    return y, 1 / (1 + np.exp(-logits)), meta


def test_report_fits_on_validation_and_measures_on_test():
    y_val, p_val, _ = _synthetic_split(600, 0)
    y_test, p_test, meta = _synthetic_split(500, 1)
    report, calibration, thresholds = evaluate_predictions(
        y_val=y_val, p_val=p_val, y_test=y_test, p_test=p_test, test_meta=meta, n_boot=100
    )
    json.dumps(report)  # JSON-safe
    assert report["findings"] == list(FINDINGS)
    assert 0.65 < report["macro"]["auroc"] < 0.95
    for row in report["per_finding"]:
        assert row["auroc_low"] <= row["auroc"] <= row["auroc_high"]
        assert row["tp"] + row["fn"] == row["n_test_pos"]
    # Overconfident scores: temperature > 1 and ECE falls on test.
    assert np.median(calibration.temperature) == pytest.approx(3.0, rel=0.25)
    assert np.nanmean(report["calibration"]["ece_after"]) < np.nanmean(report["calibration"]["ece_before"])
    assert {r["attribute"] for r in report["subgroups"]} == {"sex", "age_band", "view"}

    # Changing the test data never moves the thresholds or the calibration.
    y_other, p_other, meta_other = _synthetic_split(300, 2)
    _, calibration2, thresholds2 = evaluate_predictions(
        y_val=y_val, p_val=p_val, y_test=y_other, p_test=p_other, test_meta=meta_other, n_boot=20
    )
    np.testing.assert_array_equal(thresholds, thresholds2)
    np.testing.assert_array_equal(calibration.slope, calibration2.slope)


def test_finding_without_test_positives_is_nan_not_a_crash():
    y_val, p_val, _ = _synthetic_split(400, 3)
    y_test, p_test, meta = _synthetic_split(300, 4)
    y_test[:, 13] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report, _, _ = evaluate_predictions(y_val=y_val, p_val=p_val, y_test=y_test, p_test=p_test, test_meta=meta, n_boot=20)
    assert report["per_finding"][13]["auroc"] is None
    assert report["macro"]["auroc"] is not None


def test_published_anchor_means():
    means = {name: np.mean(values) for name, values in PUBLISHED_AUROC.items()}
    assert sorted(round(m, 3) for m in means.values()) == [0.745, 0.841]


def test_localization_report():
    records = pd.DataFrame(
        [
            {"image": "a.png", "finding": "Mass", "iobb": 0.8, "iou": 0.5},
            {"image": "b.png", "finding": "Mass", "iobb": 0.2, "iou": 0.1},
            {"image": "c.png", "finding": "Cardiomegaly", "iobb": 0.0, "iou": 0.0},
        ]
    )
    report = localization_report(records)
    rows = {r["finding"]: r for r in report["accuracy"]}
    assert rows["Mass"]["T(IoBB)=0.1"] == 1.0 and rows["Mass"]["T(IoBB)=0.5"] == 0.5
    assert rows["Cardiomegaly"]["T(IoBB)=0.1"] == 0.0
    assert rows["Mass"]["mean_iou"] == pytest.approx(0.3)
    assert localization_report(records.iloc[:0])["n_boxes"] == 0


def test_fitted_calibration_and_thresholds_are_applied_unchanged():
    y_val, p_val, _ = _synthetic_split(500, 5)
    y_test, p_test, meta = _synthetic_split(300, 6)
    _, calibration, thresholds = evaluate_predictions(y_val=y_val, p_val=p_val, y_test=y_test, p_test=p_test, test_meta=meta, n_boot=20)
    report, calibration2, thresholds2 = evaluate_predictions(
        y_val=None, p_val=None, y_test=y_test, p_test=p_test, test_meta=meta, n_boot=20,
        calibration=calibration, thresholds=thresholds,
    )
    np.testing.assert_array_equal(thresholds2, thresholds)
    assert calibration2 is calibration
    assert report["counts"]["val_images"] == 0 and report["per_finding"][0]["val_sensitivity"] is None
    with pytest.raises(ValueError, match="both"):
        evaluate_predictions(y_val=None, p_val=None, y_test=y_test, p_test=p_test, test_meta=meta, calibration=calibration)
