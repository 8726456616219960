"""The triage, the finding flags and the reading policy, on named synthetic scores.

Synthetic (random) labels and scores stand in for a model's output: these
tests check the fitting and the arithmetic, not the shipped model (that is
tests/serving/test_shipped_reading.py, on the bundle's stored real predictions).
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.evaluation.clinical import flag_burden, rates, wilson_interval
from cxr_core.evaluation.evaluate import reading_report
from cxr_core.evaluation.flags import BELOW, FLAG, NOT_SET, POSSIBLE, FindingFlags, fit_flags
from cxr_core.evaluation.reading import ReadingPolicy
from cxr_core.evaluation.thresholds import threshold_at_sensitivity, threshold_at_specificity
from cxr_core.evaluation.triage import ABNORMAL, NO_FINDING_LIKELY, NOT_ASSESSED, Triage, fit_triage, noisy_or
from cxr_core.findings import FINDINGS
from cxr_core.reporting.words import flag_words, triage_words


def synthetic_split(n: int, seed: int, *, hernia_positives: int | None = None):
    """Synthetic labels (about 45% No-Finding films) and calibrated-looking scores that carry some signal."""
    rng = np.random.default_rng(seed)
    normal = rng.random(n) < 0.45
    y = (rng.random((n, 14)) < 0.12) & ~normal[:, None]
    y[~normal & ~y.any(axis=1), rng.integers(0, 13)] = True  # an abnormal film has at least one finding
    if hernia_positives is not None:
        y[:, 13] = False
        y[rng.choice(np.flatnonzero(~normal), hernia_positives, replace=False), 13] = True
    logits = -2.2 + 1.4 * y + 0.5 * (~normal)[:, None] + rng.normal(0, 0.9, (n, 14))
    return y.astype(int), 1 / (1 + np.exp(-logits)), np.repeat(np.arange(n // 2 + 1), 2)[:n]


def test_wilson_interval_matches_the_formula_and_edges():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_rates_count_a_decision():
    stats = rates([1, 1, 0, 0, 0], [1, 0, 1, 0, 0])
    assert (stats["tp"], stats["fn"], stats["fp"], stats["tn"]) == (1, 1, 1, 2)
    assert stats["sensitivity"] == 0.5 and stats["specificity"] == pytest.approx(2 / 3)
    assert stats["ppv"] == 0.5 and stats["npv"] == pytest.approx(2 / 3) and stats["decided_share"] == 0.4
    assert stats["lr_positive"] == pytest.approx(0.5 / (1 / 3))


def test_flag_burden_counts_what_a_reader_meets():
    y = np.array([[0, 0], [0, 0], [1, 0], [0, 1]])
    flagged = np.array([[1, 1], [0, 0], [1, 0], [1, 0]], dtype=bool)
    burden = flag_burden(y, flagged)
    assert burden["flags_per_no_finding_film"] == 1.0 and burden["no_finding_without_flag"] == 0.5
    assert burden["flags"] == 4 and burden["flags_right"] == 0.25
    assert burden["abnormal_with_right_flag"] == 0.5 and burden["flags_per_abnormal_film"] == 1.0


def test_cut_at_specificity_and_sensitivity_reach_their_targets():
    y, s, _ = synthetic_split(400, 0)
    for j in range(3):
        cut = threshold_at_specificity(y[:, j], s[:, j], 0.95)
        negatives = s[y[:, j] == 0, j]
        assert (negatives < cut).mean() >= 0.95
        assert cut in s[:, j]  # every cut is one of the scores
        # the lowest such cut: one score lower would break the target
        lower = s[:, j][s[:, j] < cut].max()
        assert (negatives < lower).mean() < 0.95
        cut = threshold_at_sensitivity(y[:, j], s[:, j], 0.95)
        assert (s[y[:, j] == 1, j] >= cut).mean() >= 0.95


def test_fit_flags_sets_validated_cuts_and_refuses_rare_findings():
    y, c, _ = synthetic_split(500, 1, hernia_positives=6)
    flags = fit_flags(y, c)
    assert np.isnan(flags.flag[13]) and "too few positives in validation (6" in flags.reasons[13]
    for j in range(13):
        assert flags.possible[j] <= flags.flag[j]
        assert flags.validation[j]["specificity"] >= 0.95
        assert flags.validation[j]["lift"] == pytest.approx(flags.validation[j]["ppv"] / flags.validation[j]["prevalence"])
    bands = flags.bands(c)
    assert set(bands[:, 13]) == {NOT_SET}
    assert set(np.unique(bands[:, :13])) <= {FLAG, POSSIBLE, BELOW}
    assert (flags.flagged(c) == (bands == FLAG)).all()
    again = FindingFlags.from_dict(flags.to_dict())
    assert (again.bands(c) == bands).all() and again.reasons == flags.reasons


def test_fit_triage_chooses_on_validation_and_meets_its_rule_out_target():
    y, c, groups = synthetic_split(400, 2)
    triage = fit_triage(y, c, groups=groups)
    assert triage.method in ("noisy_or", "logistic")
    assert triage.selection["chosen"] == triage.method
    assert set(triage.selection) >= {"noisy_or", "logistic"}
    p = triage.probability(c)
    abnormal = y.any(axis=1)
    assert (p[abnormal] >= triage.rule_out).mean() >= 0.95
    assert triage.balanced >= triage.rule_out
    assert triage.validation["rule_out"]["sensitivity"] >= 0.95
    assert triage.verdict(triage.rule_out) == ABNORMAL
    assert triage.verdict(np.nextafter(triage.rule_out, 0)) == NO_FINDING_LIKELY
    again = Triage.from_dict(triage.to_dict())
    assert np.allclose(again.probability(c), p)
    # the noisy-OR keeps the ranking of 1 - prod(1 - p)
    forced = fit_triage(y, c, groups=groups, method="noisy_or")
    order = np.argsort(noisy_or(c))
    assert np.all(np.diff(forced.probability(c)[order]) >= -1e-12)


def test_fit_triage_refuses_a_split_without_normal_films():
    y, c, _ = synthetic_split(100, 3)
    y[:, 0] = 1
    with pytest.raises(ValueError, match="10 abnormal and 10 No-Finding"):
        fit_triage(y, c)


def test_changing_test_labels_leaves_every_fitted_cut_unchanged():
    """Fitting reads validation only: test labels can change the measurements, never a cut."""
    y_val, c_val, g_val = synthetic_split(400, 4)
    y_test, c_test, g_test = synthetic_split(300, 5)
    kwargs = dict(c_test=c_test, test_groups=g_test, youden_thresholds=np.full(14, 0.3), y_val=y_val, c_val=c_val,
                  val_groups=g_val, n_boot=50)
    first, triage_a, flags_a = reading_report(y_test=y_test, **kwargs)
    shuffled = y_test[np.random.default_rng(0).permutation(len(y_test))]
    second, triage_b, flags_b = reading_report(y_test=shuffled, **kwargs)
    assert triage_a.to_dict() == triage_b.to_dict()
    assert np.array_equal(flags_a.flag, flags_b.flag, equal_nan=True)
    assert np.array_equal(flags_a.possible, flags_b.possible, equal_nan=True)
    assert first["triage"]["auroc"] != second["triage"]["auroc"]  # the measurement did see the test labels


def test_reading_report_measures_the_triage_on_test():
    y_val, c_val, g_val = synthetic_split(400, 6)
    y_test, c_test, g_test = synthetic_split(300, 7)
    report, triage, flags = reading_report(y_test=y_test, c_test=c_test, test_groups=g_test,
                                           youden_thresholds=np.full(14, 0.2), y_val=y_val, c_val=c_val,
                                           val_groups=g_val, n_boot=100)
    block = report["triage"]
    assert block["auroc_low"] <= block["auroc"] <= block["auroc_high"]
    assert block["at_rule_out"]["set_aside_share"] == pytest.approx(1 - block["at_rule_out"]["decided_share"])
    assert report["burden"]["youden"]["films"] == 300 and report["burden"]["flags"]["films"] == 300
    assert len(report["flags"]["per_finding"]) == 14
    # applied unchanged (apply mode): the same numbers without validation data
    again, _, _ = reading_report(y_test=y_test, c_test=c_test, test_groups=g_test, youden_thresholds=np.full(14, 0.2),
                                 triage=triage, flags=flags, n_boot=100)
    assert again["triage"]["auroc"] == block["auroc"] and again["burden"] == report["burden"]


def test_reading_policy_withholds_flags_and_falls_back_for_an_old_bundle():
    y, c, groups = synthetic_split(400, 8)
    triage, flags = fit_triage(y, c, groups=groups), fit_flags(y, c)
    meta = {"thresholds": {"values": [0.3] * 14}, "triage": triage.to_dict(), "flags": flags.to_dict()}
    policy = ReadingPolicy.from_metadata(meta)
    film = c[int(np.argmax(flags.flagged(c).sum(axis=1)))]
    reading = policy.read(film)
    assert reading.triage in (ABNORMAL, NO_FINDING_LIKELY) and reading.operating_point == "specificity"
    assert reading.flagged and all(reading.bands[f] == FLAG for f in reading.flagged)
    assert list(reading.flagged) == sorted(reading.flagged, key=lambda f: -film[FINDINGS.index(f)])
    assert "PPV" in flag_words(reading.flagged[0], FLAG, policy.cuts())
    assert "rule-out point" in triage_words(reading, policy)

    withheld = policy.read(film, withheld_because=["This image is only 100 × 100 px ..."])
    assert withheld.withheld and withheld.triage == NOT_ASSESSED and not withheld.flagged and not withheld.bands
    shown = policy.read(film, withheld_because=["..."], show_anyway=True)
    assert not shown.withheld and shown.flagged == reading.flagged and shown.withheld_because == ("...",)

    youden = policy.read(film, operating_point="youden")
    assert youden.operating_point == "youden"
    assert set(youden.flagged) == {f for f, p in zip(FINDINGS, film) if p >= 0.3}

    old = ReadingPolicy.from_metadata({"thresholds": {"values": [0.3] * 14}})
    assert old.default_operating_point == "youden"
    legacy = old.read(film)
    assert legacy.triage == NOT_ASSESSED and set(legacy.flagged) == set(youden.flagged)
    with pytest.raises(ValueError, match="training.evaluate"):
        old.read(film, operating_point="specificity")


def test_read_batch_gives_the_csv_columns():
    y, c, groups = synthetic_split(300, 9)
    policy = ReadingPolicy.from_metadata({"thresholds": {"values": [0.3] * 14},
                                          "triage": fit_triage(y, c, groups=groups).to_dict(),
                                          "flags": fit_flags(y, c).to_dict()})
    abnormal, verdicts, flagged = policy.read_batch(c[:20])
    for i in range(20):
        single = policy.read(c[i])
        assert abnormal[i] == pytest.approx(single.triage_probability)
        assert verdicts[i] == single.triage
        assert flagged[i] == "|".join(single.flagged)
