"""Tests for cxr_core.evaluation.metrics, .curves and .subgroups: values checked against scikit-learn and by hand."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_core.evaluation import (
    UndefinedMetricWarning,
    age_band,
    auprc,
    auroc,
    binary_report,
    bootstrap_ci,
    macro_mean,
    pr_curve_points,
    roc_curve_points,
    subgroup_auroc,
)
from cxr_core.findings import FINDINGS

K = len(FINDINGS)


def synthetic_scores(n: int, *, seed: int = 0, prevalence: float = 0.2, signal: float = 1.0):
    """Labels and informative, tie-rich scores for all 14 findings."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, K)) < prevalence).astype(int)
    # Rounding to 2 decimals creates ties, which the rank code must handle.
    s = np.round(1 / (1 + np.exp(-(rng.normal(size=(n, K)) + signal * y))), 2)
    return y, s


def clustered_patients(n_patients: int, images_per_patient: int, *, seed: int = 0):
    """Patients whose images all share one label and nearly one score per finding."""
    rng = np.random.default_rng(seed)
    y_patient = (rng.random((n_patients, K)) < 0.3).astype(int)
    s_patient = rng.normal(size=(n_patients, K)) + y_patient
    y = np.repeat(y_patient, images_per_patient, axis=0)
    s = np.repeat(s_patient, images_per_patient, axis=0) + 0.01 * rng.normal(size=(n_patients * images_per_patient, K))
    groups = np.repeat([f"p{i:04d}" for i in range(n_patients)], images_per_patient)
    return y, s, groups


# ---------------------------------------------------------------- AUROC / AUPRC


def test_auroc_matches_sklearn_per_finding_with_ties():
    y, s = synthetic_scores(500)
    expected = [roc_auc_score(y[:, j], s[:, j]) for j in range(K)]
    np.testing.assert_allclose(auroc(y, s), expected, atol=1e-12)


def test_auroc_hand_computed_four_samples():
    # Pairs (pos, neg): (0.8, 0.1) win, (0.8, 0.4) win, (0.35, 0.1) win,
    # (0.35, 0.4) loss -> 3/4. Second column: positives 0.5, 0.9 against
    # negatives 0.2, 0.5: three wins and one tie counted 1/2 -> 3.5/4.
    y = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    s = np.array([[0.1, 0.2], [0.4, 0.5], [0.35, 0.5], [0.8, 0.9]])
    np.testing.assert_allclose(auroc(y, s), [0.75, 0.875])
    assert auroc(y[:, 0], s[:, 0]).shape == (1,)


def test_auroc_nan_and_warning_for_column_without_positives():
    y, s = synthetic_scores(200)
    y[:, FINDINGS.index("Hernia")] = 0
    with pytest.warns(UndefinedMetricWarning, match="Hernia"):
        values = auroc(y, s)
    assert values.shape == (K,)
    assert np.isnan(values[FINDINGS.index("Hernia")])
    assert np.isfinite(np.delete(values, FINDINGS.index("Hernia"))).all()


def test_auroc_nan_for_column_without_negatives():
    y = np.array([[1, 0], [1, 1], [1, 0]])
    s = np.array([[0.2, 0.1], [0.9, 0.8], [0.5, 0.3]])
    with pytest.warns(UndefinedMetricWarning, match="column 0"):
        values = auroc(y, s)
    assert np.isnan(values[0]) and values[1] == 1.0


def test_auprc_matches_sklearn_and_is_nan_without_positives():
    y, s = synthetic_scores(400, seed=3)
    expected = [average_precision_score(y[:, j], s[:, j]) for j in range(K)]
    np.testing.assert_allclose(auprc(y, s), expected, atol=1e-12)
    y[:, 0] = 0
    with pytest.warns(UndefinedMetricWarning, match="Atelectasis"):
        assert np.isnan(auprc(y, s)[0])


def test_auprc_hand_computed():
    # Ranked: 0.9 (pos) P=1 R=1/2; 0.6 (neg); 0.3 (pos) P=2/3 R=1 -> AP = 1/2 + 1/2 * 2/3.
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.6, 0.3, 0.1])
    np.testing.assert_allclose(auprc(y, s), [0.5 + 1 / 3])


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="shape"):
        auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 and 1"):
        auroc(np.array([[0.5], [1.0]]), np.array([[0.1], [0.2]]))
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([[0], [1]]), np.array([[np.nan], [0.2]]))


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_point_and_is_reproducible():
    y, s = synthetic_scores(700, seed=1)
    groups = np.repeat(np.arange(350), 2)
    ci = bootstrap_ci(y, s, groups=groups, n_boot=300, seed=7)
    point, low, high = ci
    np.testing.assert_allclose(point, auroc(y, s))
    assert point.shape == low.shape == high.shape == (K,)
    assert (low <= point).all() and (point <= high).all()
    assert (high - low > 0).all()
    again = bootstrap_ci(y, s, groups=groups, n_boot=300, seed=7)
    np.testing.assert_array_equal(again.low, low)
    np.testing.assert_array_equal(again.high, high)


def test_bootstrap_ci_narrows_with_more_data():
    small = bootstrap_ci(*synthetic_scores(200, seed=2), n_boot=300)
    large = bootstrap_ci(*synthetic_scores(3200, seed=2), n_boot=300)
    width_small = small.high - small.low
    width_large = large.high - large.low
    # 16x the data: width should shrink about 4x; ask for 2x on every finding.
    assert (width_large < width_small / 2).all()


def test_bootstrap_resample_equals_sklearn_on_materialised_resample():
    # The weighted implementation must give exactly the metric of the
    # resample drawn explicitly: check one resample of patients by hand.
    y, s, groups = clustered_patients(40, 3, seed=4)
    from cxr_core.evaluation.metrics import _bootstrap_counts, _weighted_auroc, _weighted_average_precision

    counts, row_group = _bootstrap_counts(groups, len(groups), n_boot=5, seed=11)
    weights = counts[:, row_group].astype(float)
    rows = np.repeat(np.arange(len(groups)), weights[0].astype(int))
    for j in (0, 5, 13):
        if y[rows, j].min() == y[rows, j].max():
            continue
        assert _weighted_auroc(y[:, j].astype(bool), s[:, j], weights)[0] == pytest.approx(
            roc_auc_score(y[rows, j], s[rows, j])
        )
        assert _weighted_average_precision(y[:, j].astype(bool), s[:, j], weights)[0] == pytest.approx(
            average_precision_score(y[rows, j], s[rows, j])
        )


def test_bootstrap_draws_whole_patients():
    from cxr_core.evaluation.metrics import _bootstrap_counts

    groups = np.array(["a", "a", "b", "c", "c", "c", "d"])
    counts, row_group = _bootstrap_counts(groups, len(groups), n_boot=200, seed=0)
    weights = counts[:, row_group]
    # Every image of a patient is taken the same number of times...
    assert (weights[:, 0] == weights[:, 1]).all()
    assert (weights[:, 3] == weights[:, 4]).all() and (weights[:, 4] == weights[:, 5]).all()
    # ...and each resample draws as many patients as there are.
    assert (counts.sum(axis=1) == 4).all()


def test_patient_bootstrap_ignores_duplicated_images_but_row_bootstrap_does_not():
    y, s, groups = clustered_patients(60, 2, seed=5)
    # The same patients, each with every image filmed twice as often.
    y2, s2, groups2 = np.repeat(y, 2, axis=0), np.repeat(s, 2, axis=0), np.repeat(groups, 2)

    by_patient = bootstrap_ci(y, s, groups=groups, n_boot=300, seed=3)
    by_patient_dup = bootstrap_ci(y2, s2, groups=groups2, n_boot=300, seed=3)
    # Same patients drawn, every weight doubled: identical intervals.
    np.testing.assert_allclose(by_patient_dup.low, by_patient.low)
    np.testing.assert_allclose(by_patient_dup.high, by_patient.high)

    by_row = bootstrap_ci(y, s, n_boot=300, seed=3)
    by_row_dup = bootstrap_ci(y2, s2, n_boot=300, seed=3)
    # Row resampling mistakes the copies for new evidence and narrows.
    width_row, width_row_dup = by_row.high - by_row.low, by_row_dup.high - by_row_dup.low
    assert np.median(width_row_dup / width_row) < 0.85
    # And on clustered data the patient interval is the wider, honest one.
    width_patient = by_patient_dup.high - by_patient_dup.low
    assert np.median(width_patient / width_row_dup) > 1.2


def test_bootstrap_auprc_and_undefined_findings():
    y, s = synthetic_scores(300, seed=6)
    y[:, 13] = 0  # Hernia absent
    y[:3, 12], y[3:, 12] = 1, 0  # Pleural thickening: 3 positives, often none drawn
    with pytest.warns(UndefinedMetricWarning) as record:
        ci = bootstrap_ci(y, s, metric="auprc", n_boot=200)
    messages = " ".join(str(w.message) for w in record)
    assert "Hernia" in messages and "Pleural_Thickening" in messages
    assert np.isnan([ci.point[13], ci.low[13], ci.high[13]]).all()
    assert np.isfinite(ci.low[:13]).all()
    np.testing.assert_allclose(ci.point[:13], auprc(y[:, :13], s[:, :13]))
    with pytest.raises(ValueError, match="metric"):
        bootstrap_ci(y, s, metric="accuracy")


def test_bootstrap_is_fast_enough():
    y, s = synthetic_scores(700, seed=8)
    groups = np.arange(700) // 3
    start = time.perf_counter()
    bootstrap_ci(y, s, groups=groups, n_boot=1000)
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------- curves


def test_roc_and_pr_curve_points_are_json_ready():
    y, s = synthetic_scores(150, seed=9)
    y[:, 2] = 0
    with pytest.warns(UndefinedMetricWarning, match="Effusion"):
        roc = roc_curve_points(y, s)
    with pytest.warns(UndefinedMetricWarning, match="Effusion"):
        pr = pr_curve_points(y, s)
    json.dumps(roc, allow_nan=False)
    json.dumps(pr, allow_nan=False)
    assert [c["finding"] for c in roc] == list(FINDINGS)
    first = roc[0]
    assert len(first["fpr"]) == len(first["tpr"]) == len(first["thresholds"])
    assert (first["fpr"][0], first["tpr"][0]) == (0.0, 0.0) and (first["fpr"][-1], first["tpr"][-1]) == (1.0, 1.0)
    assert first["auc"] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    # Trapezoid area under the returned points is the AUROC.
    assert np.trapezoid(first["tpr"], first["fpr"]) == pytest.approx(first["auc"])
    assert roc[2]["auc"] is None and roc[2]["fpr"] == []
    assert len(pr[0]["thresholds"]) == len(pr[0]["precision"]) - 1
    assert pr[0]["average_precision"] == pytest.approx(average_precision_score(y[:, 0], s[:, 0]))
    assert pr[2]["average_precision"] is None


def test_curves_need_names_for_non_14_columns():
    y = np.array([[0], [1], [0], [1]])
    s = np.array([[0.1], [0.9], [0.4], [0.3]])
    with pytest.raises(ValueError, match="findings"):
        roc_curve_points(y, s)
    assert roc_curve_points(y, s, findings=["Mass"])[0]["finding"] == "Mass"


# ---------------------------------------------------------------- aggregates


def test_macro_mean_ignores_nan_and_warns_when_all_nan():
    assert macro_mean([0.8, np.nan, 0.6]) == pytest.approx(0.7)
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(macro_mean([np.nan, np.nan]))


def test_binary_report_hand_computed_confusion_matrix():
    # Column 0: tp=2 fp=1 tn=3 fn=1; column 1: no positives, nothing predicted.
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 0], [0, 0]])
    p = np.array([[1, 0], [1, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
    with pytest.warns(UndefinedMetricWarning) as record:
        report = binary_report(y, p, findings=["Mass", "Hernia"])
    assert all("Hernia" in str(w.message) for w in record)
    mass = report.loc["Mass"]
    assert (mass.tp, mass.fp, mass.tn, mass.fn) == (2, 1, 3, 1)
    assert mass.precision == pytest.approx(2 / 3)
    assert mass.recall == pytest.approx(2 / 3) and mass.sensitivity == mass.recall
    assert mass.specificity == pytest.approx(3 / 4)
    assert mass.f1 == pytest.approx(2 / 3)
    hernia = report.loc["Hernia"]
    assert (hernia.tp, hernia.fp, hernia.tn, hernia.fn) == (0, 0, 7, 0)
    assert np.isnan([hernia.precision, hernia.recall, hernia.f1]).all()
    assert hernia.specificity == 1.0


def test_binary_report_rejects_scores():
    with pytest.raises(ValueError, match="apply_thresholds"):
        binary_report(np.array([[0], [1]]), np.array([[0.2], [0.7]]), findings=["Mass"])


# ---------------------------------------------------------------- subgroups


def test_age_band_maps_edges_and_rejects_impossible_ages():
    ages = pd.Series([0, 19, 19.5, 20, 39, 40, 59, 60, 79, 80, 95, 414, -1, None], index=range(100, 114))
    bands = age_band(ages)
    assert list(bands.index) == list(ages.index)
    expected = ["0-19", "0-19", "0-19", "20-39", "20-39", "40-59", "40-59", "60-79", "60-79", "80+", "80+"]
    assert list(bands.iloc[:11]) == expected
    assert bands.iloc[11:].isna().all()
    assert list(bands.cat.categories) == ["0-19", "20-39", "40-59", "60-79", "80+"]
    assert bands.cat.ordered


def test_subgroup_auroc_per_group_and_finding():
    y, s = synthetic_scores(400, seed=10)
    sex = np.where(np.arange(400) % 2 == 0, "M", "F")
    y[sex == "F", 13] = 0  # no Hernia among women in this sample
    with pytest.warns(UndefinedMetricWarning, match="Hernia in F"):
        table = subgroup_auroc(y, s, sex)
    assert list(table.columns) == ["group", "finding", "n", "n_pos", "auroc"]
    assert len(table) == 2 * K
    assert list(table["group"].unique()) == ["F", "M"]
    row = table[(table.group == "M") & (table.finding == "Mass")].iloc[0]
    male = sex == "M"
    assert row.n == male.sum() and row.n_pos == y[male, 4].sum()
    assert row.auroc == pytest.approx(roc_auc_score(y[male, 4], s[male, 4]))
    assert np.isnan(table[(table.group == "F") & (table.finding == "Hernia")].auroc.iloc[0])


def test_subgroup_auroc_keeps_age_band_order_and_drops_missing():
    y, s = synthetic_scores(300, seed=11, prevalence=0.4)
    ages = pd.Series(np.r_[np.full(100, 70), np.full(100, 25), np.full(99, 45), 500])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        table = subgroup_auroc(y, s, age_band(ages))
    assert list(table["group"].unique()) == ["20-39", "40-59", "60-79"]
    assert table.groupby("group", observed=True)["n"].first().to_dict() == {"20-39": 100, "40-59": 99, "60-79": 100}
