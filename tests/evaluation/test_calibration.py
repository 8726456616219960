"""Tests for cxr_core.evaluation.calibration on a named miscalibrated set and hand cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import brier_score_loss

from cxr_core.evaluation import (
    Calibration,
    UndefinedMetricWarning,
    auroc,
    brier_score,
    expected_calibration_error,
    fit_calibration,
    reliability_curve,
)
from cxr_core.findings import FINDINGS

K = len(FINDINGS)
SHARPENING = 3.0


def overconfident_x3(n: int = 6000, *, seed: int = 0):
    """The "overconfident x3" set: a model whose logits are 3x the true ones.

    True logits z ~ N(-1, 1.5) give the true probability sigmoid(z) and the
    labels; the model reports sigmoid(3 z), far too close to 0 and 1. The
    right temperature is exactly 3.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, size=(n, K))
    y = (rng.random((n, K)) < expit(z)).astype(int)
    return y, expit(SHARPENING * z)


@pytest.fixture(scope="module")
def val_set():
    return overconfident_x3(seed=0)


@pytest.fixture(scope="module")
def test_set():
    return overconfident_x3(seed=1)


def test_temperature_recovers_sharpening_and_lowers_ece(val_set, test_set):
    calibration = fit_calibration(*val_set, method="temperature")
    assert calibration.findings == FINDINGS
    np.testing.assert_allclose(calibration.temperature, SHARPENING, rtol=0.1)
    assert calibration.fitted.all()

    y_test, p_test = test_set
    before = expected_calibration_error(y_test, p_test)
    after = expected_calibration_error(y_test, calibration.apply(p_test))
    assert (before > 0.08).all()
    assert (after < before / 3).all()
    assert (brier_score(y_test, calibration.apply(p_test)) < brier_score(y_test, p_test)).all()
    # Temperature scaling is monotone: the ranking, hence AUROC, is unchanged
    # (up to ties made by clipping the few predictions below 1e-6 to 1e-6).
    np.testing.assert_allclose(auroc(y_test, calibration.apply(p_test)), auroc(y_test, p_test), atol=1e-5)


def test_platt_recovers_slope_and_lowers_ece(val_set, test_set):
    calibration = fit_calibration(*val_set, method="platt")
    np.testing.assert_allclose(calibration.slope, 1 / SHARPENING, rtol=0.1)
    np.testing.assert_allclose(calibration.intercept, 0.0, atol=0.15)
    y_test, p_test = test_set
    assert (expected_calibration_error(y_test, calibration.apply(p_test)) < expected_calibration_error(y_test, p_test) / 3).all()


def test_platt_corrects_a_base_rate_shift():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, size=(4000, 1))
    y = (rng.random(z.shape) < expit(z)).astype(int)
    shifted = expit(z + 1.5)  # says "more disease" than there is
    calibration = fit_calibration(y, shifted, method="platt", findings=["Mass"])
    assert calibration.intercept[0] == pytest.approx(-1.5, abs=0.2)
    assert calibration.slope[0] == pytest.approx(1.0, abs=0.1)


def test_round_trip_through_json(val_set):
    for method in ("temperature", "platt"):
        calibration = fit_calibration(*val_set, method=method)
        data = json.loads(json.dumps(calibration.to_dict(), allow_nan=False))
        restored = Calibration.from_dict(data)
        assert restored.method == method and restored.findings == FINDINGS
        probs = val_set[1][:50]
        np.testing.assert_allclose(restored.apply(probs), calibration.apply(probs))
    with pytest.raises(ValueError, match="slope"):
        Calibration.from_dict({"method": "temperature", "findings": ["Mass"], "intercept": [0.0]})


def test_apply_handles_one_image_and_saturated_probabilities():
    calibration = Calibration("temperature", ("Mass", "Nodule"), slope=[0.5, 1.0], intercept=[0, 0], fitted=[True, True])
    out = calibration.apply(np.array([0.0, 1.0]))
    assert out.shape == (2,) and np.isfinite(out).all()
    assert 0 < out[0] < 0.01 and out[1] > 0.99
    # T = 2 maps logit 2 to logit 1.
    assert calibration.apply(np.array([expit(2.0), 0.3]))[0] == pytest.approx(expit(1.0))
    with pytest.raises(ValueError, match="shape"):
        calibration.apply(np.zeros((3, 3)))


def test_finding_without_positives_keeps_identity():
    y, p = overconfident_x3(2000, seed=3)
    y[:, FINDINGS.index("Hernia")] = 0
    with pytest.warns(UndefinedMetricWarning, match="Hernia"):
        calibration = fit_calibration(y, p)
    hernia = FINDINGS.index("Hernia")
    assert not calibration.fitted[hernia] and calibration.temperature[hernia] == 1.0
    # Identity up to the documented clipping of probabilities to [1e-6, 1 - 1e-6].
    np.testing.assert_allclose(calibration.apply(p)[:, hernia], p[:, hernia], rtol=1e-9, atol=1e-6)


def test_ece_hand_computed():
    # 10 bins. Bin 1 [0.1, 0.2): predictions 0.1, 0.1, labels 0, 1 -> gap |0.1 - 0.5| = 0.4.
    # Bin 9 [0.9, 1.0]: 0.9, 0.9, 1.0, labels 1, 1, 1 -> gap |0.9333 - 1| = 0.0667.
    # ECE = 2/5 * 0.4 + 3/5 * 0.2/3 = 0.16 + 0.04 = 0.2.
    y = np.array([0, 1, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx([0.2])
    # Perfectly calibrated in every bin -> 0; one bin -> |mean p - mean y|.
    assert expected_calibration_error([0, 1], [0.5, 0.5]) == pytest.approx([0.0])
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx([abs(p.mean() - y.mean())])


def test_ece_bin_edges_are_exact():
    # 0.3 belongs to bin [0.3, 0.4), not [0.2, 0.3), despite float rounding.
    table = reliability_curve([[1], [0]], [[0.3], [0.7]], findings=["Mass"])
    assert table.loc[table["count"] > 0, "bin"].tolist() == [3, 7]


def test_brier_hand_computed_and_matches_sklearn():
    y = np.array([[1, 0], [0, 0], [1, 1]])
    p = np.array([[0.8, 0.1], [0.4, 0.0], [0.5, 0.7]])
    # Column 0: (0.04 + 0.16 + 0.25) / 3 = 0.15; column 1: (0.01 + 0 + 0.09) / 3.
    np.testing.assert_allclose(brier_score(y, p), [0.15, 0.1 / 3])
    assert brier_score(y, p)[0] == pytest.approx(brier_score_loss(y[:, 0], p[:, 0]))


def test_reliability_curve_counts_and_means():
    y = np.array([0, 1, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9, 1.0])
    table = reliability_curve(y, p, n_bins=10, findings=["Mass"])
    assert len(table) == 10 and table["count"].sum() == 5
    row = table.set_index("bin").loc[1]
    assert (row["count"], row["mean_predicted"], row["fraction_positive"]) == (2, pytest.approx(0.1), 0.5)
    assert table.set_index("bin").loc[9, "mean_predicted"] == pytest.approx(2.8 / 3)
    assert table.set_index("bin").loc[4, ["mean_predicted", "fraction_positive"]].isna().all()


def test_probabilities_are_validated():
    with pytest.raises(ValueError, match="probabilities"):
        brier_score([[1]], [[1.2]])
    with pytest.raises(ValueError, match="method"):
        fit_calibration([[1], [0]], [[0.6], [0.4]], method="isotonic", findings=["Mass"])
