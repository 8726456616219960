"""The never-worse rule and its paired patient bootstrap (cxr_core.adaptation.scores), on named synthetic scores.

Synthetic, and named so: labels drawn at random and scores built from them,
to know the answer (equal bundles, a bundle that lost a finding, a refit that
keeps the ranking).
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.adaptation import NON_INFERIORITY_MARGIN, check_scores, never_worse, paired_mean_auroc_difference
from cxr_core.findings import FINDINGS


def _synthetic(n: int = 300, seed: int = 0):
    """Synthetic labels (n, 14), informative scores, and 3 films per patient."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(FINDINGS))) < 0.2).astype(float)
    scores = np.clip(0.3 * y + rng.normal(0.35, 0.15, y.shape), 0.001, 0.999)
    return y, scores, np.repeat(np.arange(n // 3), 3)


def test_the_same_scores_differ_by_exactly_nothing():
    y, s, groups = _synthetic()
    d = paired_mean_auroc_difference(y, s, s, groups, n_boot=200)
    assert d["difference"] == 0 and d["low"] == 0 and d["high"] == 0 and d["share_below_zero"] == 0
    assert d["findings"] == list(FINDINGS)


def test_a_monotone_refit_keeps_the_auroc_and_a_lost_finding_shows_in_the_paired_interval():
    y, s, groups = _synthetic()
    refit = s ** 2  # same ranking in every finding
    assert paired_mean_auroc_difference(y, s, refit, groups, n_boot=200)["difference"] == 0
    worse = s.copy()
    worse[:, 0] = 1 - worse[:, 0]  # Atelectasis ranked backwards: its AUROC becomes 1 - AUROC
    d = paired_mean_auroc_difference(y, s, worse, groups, n_boot=200)
    assert d["difference"] < -0.02 and d["high"] < 0 and d["share_below_zero"] == 1.0


def test_unknown_labels_leave_a_film_out_of_that_finding_only():
    y, s, groups = _synthetic()
    y[:100, 2] = np.nan
    scores = check_scores(y, s, groups, triage=None, flags=None, n_boot=50)
    rows = {r["finding"]: r for r in scores["per_finding"]}
    assert rows["Effusion"]["films"] == 200 and rows["Atelectasis"]["films"] == 300
    assert scores["complete_films"] == 200 and scores["patients"] == 100


@pytest.mark.parametrize("before, after, written", [(0.95, 0.95, True), (0.95, 0.96, True), (0.954, 0.920, False),
                                                    (None, 0.9, True)])
def test_the_rule_guards_the_triage_rule_out_sensitivity(before, after, written):
    shipped = {"mean_auroc": 0.70, "mean_ece": 0.06, "triage": None if before is None else {"sensitivity": before}}
    adapted = {"mean_auroc": 0.70, "mean_ece": 0.05, "triage": {"sensitivity": after, "abnormal_films": 88}}
    ok, reason = never_worse(shipped, adapted, {"difference": 0.0, "low": 0.0, "high": 0.0})
    assert ok == written
    assert ("misses more abnormal check films" in reason) == (not written)


@pytest.mark.parametrize("difference, low, ece, written, words", [
    (0.0, 0.0, 0.05, True, "written: not worse"),
    (0.01, -0.015, 0.06, True, "written: not worse"),
    (-0.001, -0.01, 0.05, False, "mean AUROC is below"),
    (0.005, -NON_INFERIORITY_MARGIN - 0.001, 0.05, False, "cannot rule out a loss"),
    (0.01, 0.0, 0.061, False, "calibration error is higher"),
])
def test_the_rule(difference, low, ece, written, words):
    shipped = {"mean_auroc": 0.70, "mean_ece": 0.06}
    adapted = {"mean_auroc": 0.70 + difference, "mean_ece": ece}
    ok, reason = never_worse(shipped, adapted, {"difference": difference, "low": low, "high": difference + 0.02})
    assert ok == written and words in reason


def test_intercept_recalibration_keeps_the_shipped_slope_and_moves_to_the_site_prevalence():
    """Named synthetic: a shipped map, and site films whose prevalence of every finding is far above what it says."""
    from cxr_core.adaptation.refit import refit_operating_points, shipped_operating_points
    from cxr_core.evaluation.calibration import Calibration

    y, s, groups = _synthetic(600)
    y[:300] = np.maximum(y[:300], (np.random.default_rng(5).random((300, 14)) < 0.5))  # the site: more positives
    shipped = shipped_operating_points({"calibration": Calibration("platt", FINDINGS, np.full(14, 1.3), np.full(14, -0.2),
                                                                   np.ones(14, bool)).to_dict(), "thresholds": [0.5] * 14})
    site = refit_operating_points(y, s, groups, shipped=shipped, recalibration="intercept")
    np.testing.assert_allclose(site.calibration.slope, 1.3)
    assert (site.calibration.intercept > -0.2).all()  # moved up, towards the site's higher prevalence
    mean_after = site.calibration.apply(s).mean(axis=0)
    np.testing.assert_allclose(mean_after, y.mean(axis=0), atol=0.03)  # calibrated in the large on the fit films
    with pytest.raises(ValueError, match="recalibration must be one of"):
        refit_operating_points(y, s, groups, shipped=shipped, recalibration="isotonic")


def _site_and_shipped(n: int = 150, seed: int = 3, shift=None):
    """Named synthetic: films whose labels are drawn from the shipped calibrated probability itself (a site the shipped
    calibration fits), or with ``shift`` added to one finding's logit (a site where that finding is more common)."""
    from cxr_core.adaptation.refit import shipped_operating_points
    from cxr_core.evaluation.calibration import Calibration
    from cxr_core.evaluation.triage import fit_triage

    rng = np.random.default_rng(seed)
    raw = rng.beta(0.8, 8.0, (n, len(FINDINGS)))
    logit = np.log(raw) - np.log1p(-raw) + (0.0 if shift is None else shift)
    y = (rng.random(raw.shape) < 1 / (1 + np.exp(-logit))).astype(float)
    nih = rng.beta(0.8, 8.0, (400, len(FINDINGS)))  # "NIH validation", where the shipped triage was fitted
    triage = fit_triage((rng.random(nih.shape) < nih).astype(float), nih)
    shipped = shipped_operating_points({
        "calibration": Calibration("platt", FINDINGS, np.ones(14), np.zeros(14), np.ones(14, bool)).to_dict(),
        "thresholds": [0.3] * 14, "triage": triage.to_dict()})
    return y, raw, np.repeat(np.arange(n), 1), shipped


def test_auto_keeps_the_shipped_calibration_where_the_site_agrees_with_it():
    from cxr_core.adaptation.refit import refit_operating_points

    y, raw, groups, shipped = _site_and_shipped()
    site = refit_operating_points(y, raw, groups, shipped=shipped)  # recalibration="auto", triage="auto"
    kept = [s for s in site.sources if s["source"] == "shipped"]
    assert len(kept) >= 12, [s["note"] for s in site.sources if s["source"] == "site"]
    for s in kept:
        j = FINDINGS.index(s["finding"])
        assert site.calibration.slope[j] == 1 and site.calibration.intercept[j] == 0 and site.thresholds[j] == 0.3
        if s.get("cross_validation"):  # judged, not just too few films: out-of-fold log loss of the three candidates
            assert set(s["cross_validation"]["oof_log_loss"]) == {"shipped", "intercept", "refit"}


def test_auto_moves_a_finding_whose_prevalence_the_site_shifts():
    from cxr_core.adaptation.refit import refit_operating_points

    shift = np.zeros(14)
    shift[2] = 1.5  # Effusion: far more common at this site than the shipped calibration says
    y, raw, groups, shipped = _site_and_shipped(shift=shift)
    site = refit_operating_points(y, raw, groups, shipped=shipped)
    effusion = site.sources[2]
    assert effusion["source"] == "site" and effusion["calibration"] in ("intercept", "refit"), effusion["note"]
    assert site.calibration.intercept[2] > 0.8  # moved towards the shift
    assert abs(site.calibration.apply(raw)[:, 2].mean() - y[:, 2].mean()) < 0.03


def test_auto_keeps_the_shipped_triage_unless_the_fit_part_supports_a_refit():
    from cxr_core.adaptation.refit import refit_operating_points

    y, raw, groups, shipped = _site_and_shipped(n=120)
    auto = refit_operating_points(y, raw, groups, shipped=shipped)
    assert auto.triage_source == "shipped" and auto.triage == shipped.triage
    assert "out of fold" in auto.triage_note and "abnormal films" in auto.triage_note
    forced = refit_operating_points(y, raw, groups, shipped=shipped, triage="refit")
    assert forced.triage_source == "site" and forced.triage.fitted_on == "the site's fit part"
    with pytest.raises(ValueError, match="triage must be one of"):
        refit_operating_points(y, raw, groups, shipped=shipped, triage="always")
