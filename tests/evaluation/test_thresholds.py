"""Tests for cxr_core.evaluation.thresholds: hand-made operating points, validation-only fitting."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.evaluation import DEFAULT_THRESHOLD, UndefinedMetricWarning, apply_thresholds, fit_thresholds
from cxr_core.findings import FINDINGS

K = len(FINDINGS)

# Negatives 0.1 0.2 0.3 0.65, positives 0.5 0.6 0.8 0.9. Cutting at score >= t:
#   t=0.9: sens 1/4 spec 1 (J .25)   t=0.8: 2/4, 1 (J .50)
#   t=0.65: 2/4, 3/4 (J .25)         t=0.6: 3/4, 3/4 (J .50)
#   t=0.5: 4/4, 3/4 (J .75)  <- the unique Youden maximum
#   t=0.3: 4/4, 2/4 (J .50)
HAND_Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
HAND_S = np.array([0.1, 0.2, 0.3, 0.65, 0.5, 0.6, 0.8, 0.9])


def val_and_test(seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random((300, K)) < 0.25).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(size=(300, K)) + 1.5 * y)))
    return y, s


def test_youden_hand_made_case():
    assert fit_thresholds(HAND_Y, HAND_S, method="youden") == pytest.approx([0.5])


def test_max_f1_hand_made_case():
    # t=0.5 gives tp 4, fp 1, fn 0: F1 = 8/9, better than any other cut
    # (t=0.6: 3/4, t=0.8: 2/3, t=0.3: 4/5).
    assert fit_thresholds(HAND_Y, HAND_S, method="max_f1") == pytest.approx([0.5])


def test_target_sensitivity_hand_made_case():
    # Sensitivity >= 0.7 is first reached at t=0.6 (3/4); >= 0.5 already at 0.8.
    assert fit_thresholds(HAND_Y, HAND_S, method="target_sensitivity", target_sensitivity=0.7) == pytest.approx([0.6])
    assert fit_thresholds(HAND_Y, HAND_S, method="target_sensitivity", target_sensitivity=0.5) == pytest.approx([0.8])
    assert fit_thresholds(HAND_Y, HAND_S, method="target_sensitivity", target_sensitivity=1.0) == pytest.approx([0.5])


@pytest.mark.parametrize("method", ["youden", "max_f1", "target_sensitivity"])
def test_thresholds_are_validation_scores_and_meet_target(method):
    y_val, s_val = val_and_test(0)
    thresholds = fit_thresholds(y_val, s_val, method=method, target_sensitivity=0.85)
    assert thresholds.shape == (K,)
    # Every threshold is one of its own finding's validation scores.
    assert all(thresholds[j] in s_val[:, j] for j in range(K))
    if method == "target_sensitivity":
        predictions = apply_thresholds(s_val, thresholds)
        sensitivity = (predictions * y_val).sum(axis=0) / y_val.sum(axis=0)
        assert (sensitivity >= 0.85).all()


@pytest.mark.parametrize("method", ["youden", "max_f1", "target_sensitivity"])
def test_thresholds_depend_on_validation_only(method):
    y_val, s_val = val_and_test(1)
    y_test, s_test = val_and_test(2)
    y_val_copy, s_val_copy = y_val.copy(), s_val.copy()

    fitted = fit_thresholds(y_val, s_val, method=method)
    report_before = apply_thresholds(s_test, fitted)
    # Whatever happens to the test split afterwards...
    y_test[:] = 1 - y_test
    s_test[:] = np.random.default_rng(3).random(s_test.shape)
    # ...refitting on the same validation data gives the same thresholds,
    refitted = fit_thresholds(y_val, s_val, method=method)
    np.testing.assert_array_equal(refitted, fitted)
    # and fitting did not touch its inputs.
    np.testing.assert_array_equal(y_val, y_val_copy)
    np.testing.assert_array_equal(s_val, s_val_copy)
    # While different validation data does move them.
    assert not np.array_equal(fit_thresholds(*val_and_test(4), method=method), fitted)
    assert report_before.shape == s_test.shape


def test_finding_without_positives_gets_default_and_warning():
    y_val, s_val = val_and_test(5)
    hernia = FINDINGS.index("Hernia")
    y_val[:, hernia] = 0
    with pytest.warns(UndefinedMetricWarning, match="Hernia"):
        thresholds = fit_thresholds(y_val, s_val)
    assert thresholds[hernia] == DEFAULT_THRESHOLD == 0.5
    assert (np.delete(thresholds, hernia) != 0.5).all()


def test_apply_thresholds_is_inclusive_and_shape_checked():
    scores = np.array([[0.2, 0.5], [0.7, 0.49]])
    np.testing.assert_array_equal(apply_thresholds(scores, [0.2, 0.5]), [[1, 1], [1, 0]])
    np.testing.assert_array_equal(apply_thresholds(np.array([0.3, 0.6]), [0.5, 0.5]), [0, 1])
    with pytest.raises(ValueError, match="shape"):
        apply_thresholds(scores, [0.5, 0.5, 0.5])


def test_invalid_options_rejected():
    with pytest.raises(ValueError, match="method"):
        fit_thresholds(HAND_Y, HAND_S, method="median")
    with pytest.raises(ValueError, match="target_sensitivity"):
        fit_thresholds(HAND_Y, HAND_S, method="target_sensitivity", target_sensitivity=0)
