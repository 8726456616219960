"""What a bundle does on a site's check part, and the never-worse rule that decides whether an adapted bundle is written.

Every number here is measured on the CHECK part, against the site's labels,
which nothing is ever fitted on. Per finding, only the films labelled for it
count. The AUROC's 95% interval is a patient bootstrap
(:func:`cxr_core.evaluation.metrics.bootstrap_ci`); the mean AUROC is the
mean over findings with both classes in the check part, its interval the mean
of the per-finding bounds (as ``training.evaluate`` reports it).

The never-worse rule (:func:`never_worse`): an adapted bundle is written only
when, on the check part,

1. its mean AUROC is not below the shipped bundle's: the difference
   (adapted minus shipped) is at least 0, and the lower bound of its 95%
   interval, from a PAIRED patient bootstrap (the same patients drawn for both
   bundles in each of the resamples), is above -:data:`NON_INFERIORITY_MARGIN`:
   the check part rules out a loss larger than that margin;
2. its mean calibration error (ECE, 10 bins, mean over findings) is not higher
   than the shipped bundle's;
3. its triage sensitivity at the rule-out point (on the check films labelled
   for all 14 findings) is not lower than the shipped bundle's: a refitted
   rule-out point that sets aside abnormal films the shipped one caught is
   worse where it matters most, whatever the AUROC says.

It promises no more than the check part can show: with few films the interval
is wide, a loss up to the margin is not ruled out, and the rule says nothing
about findings the site did not label.
"""

from __future__ import annotations

import warnings

import numpy as np

from cxr_core.evaluation.calibration import expected_calibration_error
from cxr_core.evaluation.clinical import flag_burden, rates
from cxr_core.evaluation.flags import FindingFlags
from cxr_core.evaluation.metrics import _bootstrap_counts, _weighted_auroc, bootstrap_ci
from cxr_core.evaluation.triage import Triage, abnormal_labels
from cxr_core.findings import FINDINGS

#: The loss of mean AUROC the paired bootstrap's lower 95% bound must rule out.
NON_INFERIORITY_MARGIN = 0.02
#: Fewer check-part films than this behind a number: the app and the report call it a few-film number.
FEW_FILMS = 100


def _mean(values) -> float | None:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return float(values.mean()) if values.size else None


def _number(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def check_scores(y: np.ndarray, c: np.ndarray, groups, *, triage: Triage | None, flags: FindingFlags | None,
                 n_boot: int = 1000, seed: int = 0) -> dict:
    """A bundle's numbers on the check part.

    Args:
        y: check-part labels (n, 14): 1, 0 or NaN (unknown).
        c: the bundle's CALIBRATED probabilities on the same films (n, 14).
        groups: patient id per film.
        triage, flags: the bundle's (the shipped ones, or the refitted ones).
        n_boot, seed: the patient bootstrap.

    Returns:
        ``films``, ``patients``, ``mean_auroc`` with ``mean_auroc_low`` /
        ``_high``, ``mean_ece``, ``per_finding`` (films, positives, AUROC with
        its interval, ECE), ``triage`` (films labelled for all 14 findings:
        sensitivity, specificity and films set aside at the rule-out point) and
        ``flags`` (flags per No-Finding film ...), None where not measurable.
    """
    y, c, groups = np.asarray(y, dtype=float), np.asarray(c, dtype=float), np.asarray(groups)
    rows = []
    for j, finding in enumerate(FINDINGS):
        known = np.isfinite(y[:, j])
        yk = y[known, j]
        row = {"finding": finding, "films": int(known.sum()), "positives": int(yk.sum()) if known.any() else 0,
               "auroc": None, "auroc_low": None, "auroc_high": None, "ece": None}
        if known.any():
            row["ece"] = float(expected_calibration_error(yk[:, None], c[known, j][:, None])[0])
        if 0 < yk.sum() < len(yk):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resamples without a positive are left out, as in training.evaluate
                ci = bootstrap_ci(yk[:, None], c[known, j][:, None], groups=groups[known], n_boot=n_boot, seed=seed)
            row.update(auroc=_number(ci.point[0]), auroc_low=_number(ci.low[0]), auroc_high=_number(ci.high[0]))
        rows.append(row)
    complete = np.isfinite(y).all(axis=1)
    report = {
        "films": int(len(y)), "patients": int(len(np.unique(groups))),
        "mean_auroc": _mean(r["auroc"] for r in rows), "mean_auroc_low": _mean(r["auroc_low"] for r in rows),
        "mean_auroc_high": _mean(r["auroc_high"] for r in rows),
        "mean_ece": _mean(r["ece"] for r in rows), "per_finding": rows,
        "complete_films": int(complete.sum()), "triage": None, "flags": None,
    }
    if complete.any():
        yc = y[complete].astype(int)
        if triage is not None:
            abnormal = abnormal_labels(yc)
            at_rule_out = rates(abnormal, np.atleast_1d(triage.probability(c[complete])) >= triage.rule_out)
            report["triage"] = {"rule_out": triage.rule_out, "films": int(complete.sum()),
                                "abnormal_films": int(abnormal.sum()), "sensitivity": _number(at_rule_out["sensitivity"]),
                                "sensitivity_low": _number(at_rule_out["sensitivity_low"]),
                                "sensitivity_high": _number(at_rule_out["sensitivity_high"]),
                                "specificity": _number(at_rule_out["specificity"]),
                                "set_aside_share": _number(1 - at_rule_out["decided_share"])}
        if flags is not None:
            burden = flag_burden(yc, flags.flagged(c[complete]))
            report["flags"] = {key: _number(value) if isinstance(value, float) else value for key, value in burden.items()}
    return report


def paired_mean_auroc_difference(y: np.ndarray, c_shipped: np.ndarray, c_adapted: np.ndarray, groups, *,
                                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Mean AUROC of the adapted minus the shipped bundle, with a PAIRED patient-bootstrap interval.

    Each resample draws patients with replacement once and scores both
    bundles on the films drawn, so the interval is of the difference itself
    (much narrower than two separate intervals). Per finding only the films
    labelled for it count; a resample's mean is over the findings defined in it.

    Returns:
        ``difference`` (on the whole check part), ``low``, ``high`` (the
        ``1 - alpha`` percentile interval), ``share_below_zero`` (of the
        resamples), ``n_boot``, ``findings`` (the findings in the mean).
    """
    y, groups = np.asarray(y, dtype=float), np.asarray(groups)
    counts, row_group = _bootstrap_counts(groups, len(y), n_boot=n_boot, seed=seed)
    weights = counts[:, row_group].astype(float)
    whole = np.ones((1, len(y)))
    points, boots, used = [], [], []
    for j, finding in enumerate(FINDINGS):
        known = np.isfinite(y[:, j])
        yk = y[known, j].astype(bool)
        if not 0 < yk.sum() < len(yk):
            continue
        pair = [_weighted_auroc(yk, np.asarray(c)[known, j], np.concatenate([whole[:, known], weights[:, known]]))
                for c in (c_shipped, c_adapted)]
        points.append(pair[1][0] - pair[0][0])
        boots.append(pair[1][1:] - pair[0][1:])
        used.append(finding)
    if not used:
        return {"difference": None, "low": None, "high": None, "share_below_zero": None, "n_boot": int(n_boot),
                "findings": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no finding is defined is NaN
        per_resample = np.nanmean(np.vstack(boots), axis=0)
    per_resample = per_resample[np.isfinite(per_resample)]
    low, high = np.quantile(per_resample, [alpha / 2, 1 - alpha / 2])
    return {"difference": float(np.mean(points)), "low": float(low), "high": float(high),
            "share_below_zero": float((per_resample < 0).mean()), "n_boot": int(n_boot), "findings": used}


def never_worse(shipped: dict, adapted: dict, difference: dict, *, margin: float = NON_INFERIORITY_MARGIN) -> tuple[bool, str]:
    """The never-worse rule (module docstring): ``(written, reason)``.

    Args:
        shipped, adapted: :func:`check_scores` of the two bundles on the check part.
        difference: :func:`paired_mean_auroc_difference` of the two.
        margin: the loss of mean AUROC the paired interval must rule out.
    """
    if difference["difference"] is None or shipped["mean_ece"] is None:
        return False, "the check part has no finding with both positive and negative films: nothing can be compared"
    d, low = difference["difference"], difference["low"]
    words = (f"mean AUROC {adapted['mean_auroc']:.3f} against {shipped['mean_auroc']:.3f} shipped (difference "
             f"{d:+.3f}, paired patient bootstrap 95% interval {low:+.3f} to {difference['high']:+.3f}); mean calibration "
             f"error {adapted['mean_ece']:.3f} against {shipped['mean_ece']:.3f}")
    if d < -1e-9:  # below, beyond rounding (a refit alone leaves the ranking, so the AUROC, unchanged)
        return False, f"refused: the adapted bundle's mean AUROC is below the shipped one's on the check part: {words}"
    if low < -margin:
        return False, (f"refused: the check part cannot rule out a loss of mean AUROC larger than {margin}: {words}; "
                       "more check films would narrow the interval")
    if adapted["mean_ece"] > shipped["mean_ece"]:
        return False, f"refused: the adapted bundle's calibration error is higher on the check part: {words}"
    before, after = (shipped.get("triage") or {}).get("sensitivity"), (adapted.get("triage") or {}).get("sensitivity")
    if before is not None and after is not None:
        triage = (f"; triage sensitivity at the rule-out point {after:.3f} against {before:.3f} on "
                  f"{adapted['triage']['abnormal_films']} abnormal check films")
        if after < before:
            return False, (f"refused: the adapted triage's rule-out point misses more abnormal check films than the "
                           f"shipped one: {words}{triage}")
        words += triage
    return True, f"written: not worse on the check part: {words}"
