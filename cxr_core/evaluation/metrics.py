"""Per-finding metrics for multi-label chest X-ray classification: AUROC and AUPRC, their patient-bootstrap confidence intervals, the macro mean, and the confusion counts and rates at fixed decisions.

Inputs follow the conventions of :mod:`cxr_core.evaluation.checks` (arrays
(n_samples, n_findings) in FINDINGS order, NaN with one
:class:`~cxr_core.evaluation.checks.UndefinedMetricWarning` where a metric is
undefined). Curves are in :mod:`cxr_core.evaluation.curves`, subgroups in
:mod:`cxr_core.evaluation.subgroups`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from cxr_core.evaluation.checks import (
    UndefinedMetricWarning,
    _check_targets,
    _column_labels,
    _finding_names,
    _warn_undefined,
)

__all__ = [
    "ConfidenceIntervals",
    "auroc",
    "auprc",
    "bootstrap_ci",
    "macro_mean",
    "binary_report",
]


# --------------------------------------------------------------------------
# Weighted ranking metrics (one code path for point estimates and bootstrap)
# --------------------------------------------------------------------------
#
# A bootstrap resample drawn with replacement is the original data with each
# row weighted by how many times it was drawn. Computing AUROC/AP with integer
# weights is therefore *exactly* the metric on the materialised resample, and
# lets us sort each finding's scores once and evaluate all resamples with
# cumulative sums over a (n_boot, n_rows) weight matrix.


def _tie_blocks(sorted_scores: np.ndarray) -> np.ndarray:
    """Start index of each run of equal scores in an already sorted vector."""
    return np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])


def _weighted_auroc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney U / (n_pos n_neg), ties count 1/2) for each weight row.

    Args:
        y: bool labels, shape (n,).
        s: scores, shape (n,).
        weights: non-negative weights, shape (n_boot, n).

    Returns:
        shape (n_boot,); NaN where a row has no positive or no negative weight.
    """
    order = np.argsort(s, kind="mergesort")
    starts = _tie_blocks(s[order])
    w = weights[:, order]
    ys = y[order]
    pos = np.add.reduceat(np.where(ys, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(ys, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    # Each positive beats every negative with a lower score and ties half of
    # those with an equal score: the Mann-Whitney U statistic.
    u = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
    denom = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, u / denom, np.nan)


def _weighted_average_precision(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision, as sklearn.metrics.average_precision_score, per weight row.

    AP = sum over distinct thresholds of precision(t) * (recall gained at t),
    thresholds running from the highest score down; tied scores form one
    threshold. NaN where a row has no positive weight.
    """
    order = np.argsort(-s, kind="mergesort")
    starts = _tie_blocks(s[order])
    w = weights[:, order]
    ys = y[order]
    pos = np.add.reduceat(np.where(ys, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(ys, 0.0, w), starts, axis=1)
    tp = np.cumsum(pos, axis=1)
    predicted = tp + np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Where nothing is predicted positive yet, no recall is gained either
        # (pos == 0 there), so the 0 used for precision contributes nothing.
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1.0), 0.0)
        total_pos = tp[:, -1]
        return np.where(total_pos > 0, np.sum(precision * pos, axis=1) / total_pos, np.nan)


def auroc(y_true, y_score) -> np.ndarray:
    """Area under the ROC curve for each finding.

    Rank-based (Mann-Whitney U), identical to
    ``sklearn.metrics.roc_auc_score`` per column, ties counted as 1/2.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_score: scores or probabilities, shape (n_samples, n_findings);
            only their order matters.

    Returns:
        shape (n_findings,); NaN with an :class:`UndefinedMetricWarning` for a
        finding with no positives or no negatives.
    """
    return _per_finding(_weighted_auroc, y_true, y_score, "AUROC", undefined="no positives or no negatives")


def auprc(y_true, y_score) -> np.ndarray:
    """Area under the precision-recall curve (average precision) for each finding.

    Same value as ``sklearn.metrics.average_precision_score`` per column (step
    interpolation, not the trapezoid, which is optimistic for PR curves).

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_score: scores or probabilities, shape (n_samples, n_findings).

    Returns:
        shape (n_findings,); NaN with an :class:`UndefinedMetricWarning` for a
        finding with no positives (recall is then undefined). A finding with no
        negatives has AP 1.0: precision is 1 at every threshold, so the metric
        is defined, if uninformative.
    """
    return _per_finding(_weighted_average_precision, y_true, y_score, "AUPRC", undefined="no positives")


def _per_finding(weighted_metric, y_true, y_score, metric: str, *, undefined: str) -> np.ndarray:
    """``weighted_metric`` (:func:`_weighted_auroc` or :func:`_weighted_average_precision`) of each column,
    every row weighted 1; the NaN columns named in one warning that says why (``undefined``)."""
    y, s = _check_targets(y_true, y_score)
    ones = np.ones((1, y.shape[0]))
    values = np.array([weighted_metric(y[:, j], s[:, j], ones)[0] for j in range(y.shape[1])])
    labels = _column_labels(y.shape[1])
    _warn_undefined(metric, [labels[j] for j in np.flatnonzero(np.isnan(values))], undefined, stacklevel=4)
    return values


# --------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------


class ConfidenceIntervals(NamedTuple):
    """Per-finding point estimate and percentile bootstrap interval.

    Each field has shape (n_findings,). Unpacks as ``point, low, high``.
    """

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray


_BOOTSTRAP_METRICS = {"auroc": _weighted_auroc, "auprc": _weighted_average_precision}

# Upper bound on elements of one (resamples x rows) weight block: keeps memory
# to tens of MB even for the full 25k-image NIH test set.
_BLOCK_ELEMENTS = 2_000_000


def _bootstrap_counts(groups, n_rows: int, *, n_boot: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """Draw how many times each group is taken in each resample.

    Returns ``(counts (n_boot, n_groups), row_group (n_rows,))``; the weight of
    row i in resample b is ``counts[b, row_group[i]]``.
    """
    if groups is None:
        row_group = np.arange(n_rows)
    else:
        group_values = groups.to_numpy() if isinstance(groups, pd.Series) else np.asarray(groups)
        if group_values.shape != (n_rows,):
            raise ValueError(f"groups must have shape ({n_rows},), got {group_values.shape}")
        row_group, _ = pd.factorize(group_values)
        if (row_group < 0).any():
            raise ValueError("groups contains missing values; every row needs a patient id")
    n_groups = int(row_group.max()) + 1
    rng = np.random.default_rng(seed)
    # Multinomial(n_groups, uniform) is the count vector of n_groups draws with
    # replacement: drawn up front for all resamples, so the draws depend only
    # on (seed, n_groups), not on how rows are later processed in blocks.
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return counts, row_group


def bootstrap_ci(
    y_true,
    y_score,
    *,
    groups=None,
    metric: str = "auroc",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> ConfidenceIntervals:
    """Percentile bootstrap confidence interval of a per-finding metric.

    With ``groups`` (patient ids) the bootstrap is patient-level: each resample
    draws patients with replacement and takes all of their images. Images of
    one patient are correlated (follow-up films of the same lungs), so a
    row-level bootstrap treats them as independent evidence and gives
    intervals that are too narrow.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_score: scores, shape (n_samples, n_findings).
        groups: optional patient id per row, shape (n_samples,); any hashable
            values (array or pandas Series, matched by position). ``None``
            resamples rows.
        metric: ``"auroc"`` or ``"auprc"``.
        n_boot: number of resamples.
        alpha: the interval covers ``1 - alpha`` (0.05 gives a 95% CI).
        seed: seed for ``numpy.random.default_rng``; same seed, same interval.

    Returns:
        :class:`ConfidenceIntervals` ``(point, low, high)``, each of shape
        (n_findings,). ``point`` is the metric on the full data. Resamples in
        which the metric is undefined (e.g. no positive drawn) are left out of
        the percentiles, with an :class:`UndefinedMetricWarning` saying how
        many; a finding undefined on the full data gets NaN throughout.
    """
    if metric not in _BOOTSTRAP_METRICS:
        raise ValueError(f"metric must be one of {sorted(_BOOTSTRAP_METRICS)}, got {metric!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    n_boot = int(n_boot)
    y, s = _check_targets(y_true, y_score)
    n_rows, n_findings = y.shape
    labels = _column_labels(n_findings)
    metric_fn = _BOOTSTRAP_METRICS[metric]

    point = np.array([metric_fn(y[:, j], s[:, j], np.ones((1, n_rows)))[0] for j in range(n_findings)])
    _warn_undefined(metric.upper(), [labels[j] for j in np.flatnonzero(np.isnan(point))], "on the full data")

    counts, row_group = _bootstrap_counts(groups, n_rows, n_boot=n_boot, seed=seed)
    boot = np.full((n_boot, n_findings), np.nan)
    block = max(1, _BLOCK_ELEMENTS // n_rows)
    defined = np.flatnonzero(~np.isnan(point))
    for start in range(0, n_boot, block):
        weights = counts[start : start + block][:, row_group].astype(float)
        for j in defined:
            boot[start : start + block, j] = metric_fn(y[:, j], s[:, j], weights)

    low = np.full(n_findings, np.nan)
    high = np.full(n_findings, np.nan)
    partial = []
    for j in defined:
        values = boot[:, j][~np.isnan(boot[:, j])]
        if values.size < n_boot:
            partial.append(f"{labels[j]} ({n_boot - values.size}/{n_boot})")
        if values.size:
            low[j], high[j] = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    if partial:
        # Dropping resamples without positives biases the interval (they are
        # the unlucky ones); say so rather than hide it.
        warnings.warn(
            f"{metric.upper()} was undefined in some bootstrap resamples, which were left out: "
            + ", ".join(partial),
            UndefinedMetricWarning,
            stacklevel=2,
        )
    return ConfidenceIntervals(point, low, high)


# --------------------------------------------------------------------------
# Aggregates and thresholded reports
# --------------------------------------------------------------------------


def macro_mean(values) -> float:
    """Unweighted mean over findings, ignoring NaN (undefined) findings.

    Args:
        values: per-finding metric values, shape (n_findings,).

    Returns:
        The mean of the defined values; NaN with an
        :class:`UndefinedMetricWarning` if none is defined.
    """
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0 or np.isnan(array).all():
        warnings.warn("macro mean of no defined values; reported as NaN", UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    return float(np.nanmean(array))


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def binary_report(y_true, y_pred, *, findings: Sequence[str] | None = None) -> pd.DataFrame:
    """Confusion-matrix counts and rates for each finding at fixed decisions.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_pred: binary predictions, shape (n_samples, n_findings), e.g. from
            :func:`cxr_core.evaluation.thresholds.apply_thresholds`.
        findings: row names; defaults to FINDINGS when there are 14 columns.

    Returns:
        DataFrame indexed by finding (in column order) with integer columns
        ``tp``, ``fp``, ``tn``, ``fn`` and float columns ``precision``
        (tp / (tp + fp)), ``recall`` and its clinical name ``sensitivity``
        (tp / (tp + fn)), ``specificity`` (tn / (tn + fp)) and ``f1``
        (2 tp / (2 tp + fp + fn)). A rate whose denominator is 0 is NaN, with
        one :class:`UndefinedMetricWarning` per rate.
    """
    y, p = _check_targets(y_true, y_pred, other_name="y_pred")
    if not np.isin(p, (0.0, 1.0)).all():
        raise ValueError("y_pred must contain only 0 and 1; threshold scores first (apply_thresholds)")
    names = _finding_names(y.shape[1], findings)
    p = p.astype(bool)
    tp = (y & p).sum(axis=0)
    fp = (~y & p).sum(axis=0)
    tn = (~y & ~p).sum(axis=0)
    fn = (y & ~p).sum(axis=0)
    rates = {
        "precision": (_safe_ratio(tp, tp + fp), "no predicted positives"),
        "recall": (_safe_ratio(tp, tp + fn), "no positives"),
        "specificity": (_safe_ratio(tn, tn + fp), "no negatives"),
        # F1 written with counts so it stays defined (0) when precision is
        # undefined but positives were missed, as scikit-learn does.
        "f1": (_safe_ratio(2 * tp, 2 * tp + fp + fn), "no positives and no predicted positives"),
    }
    for rate_name, (values, reason) in rates.items():
        _warn_undefined(rate_name, [names[j] for j in np.flatnonzero(np.isnan(values))], reason)
    report = pd.DataFrame(
        {
            "tp": tp.astype(int),
            "fp": fp.astype(int),
            "tn": tn.astype(int),
            "fn": fn.astype(int),
            "precision": rates["precision"][0],
            "recall": rates["recall"][0],
            "sensitivity": rates["recall"][0],
            "specificity": rates["specificity"][0],
            "f1": rates["f1"][0],
        },
        index=pd.Index(names, name="finding"),
    )
    return report


