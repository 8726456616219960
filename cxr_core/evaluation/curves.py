"""ROC and precision-recall curves of each finding, as plain Python data ready for JSON (the evaluation report, the Performance page).

Conventions: :mod:`cxr_core.evaluation.checks`; the curves' areas are the
ones of :mod:`cxr_core.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxr_core.evaluation.checks import _check_targets, _finding_names, _warn_undefined
from cxr_core.evaluation.metrics import _weighted_auroc, _weighted_average_precision

__all__ = ["roc_curve_points", "pr_curve_points"]


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=float)]


def _json_number(value: float) -> float | None:
    # JSON has no NaN; None (null) is the honest spelling of "undefined".
    return None if not np.isfinite(value) else float(value)


def roc_curve_points(y_true, y_score, *, findings: Sequence[str] | None = None) -> list[dict]:
    """ROC curve of each finding, as plain Python data ready for JSON.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_score: scores, shape (n_samples, n_findings).
        findings: column names; defaults to FINDINGS when there are 14 columns.

    Returns:
        One dict per finding, in column order, with keys ``finding``,
        ``n_pos``, ``n_neg``, ``auc`` (float or None), and equal-length lists
        ``fpr``, ``tpr``, ``thresholds`` (predict positive when score >=
        threshold; collinear points dropped). The first point (0, 0) has
        threshold ``max(score) + 1`` rather than scikit-learn's +inf, which
        JSON cannot carry. A finding with no positives or no negatives has
        ``auc`` None and empty lists, with an :class:`UndefinedMetricWarning`.
    """
    y, s = _check_targets(y_true, y_score)
    names = _finding_names(y.shape[1], findings)
    auc_values = np.array([_weighted_auroc(y[:, j], s[:, j], np.ones((1, y.shape[0])))[0] for j in range(y.shape[1])])
    curves, undefined = [], []
    for j, name in enumerate(names):
        n_pos = int(y[:, j].sum())
        entry = {"finding": name, "n_pos": n_pos, "n_neg": int(y.shape[0] - n_pos), "auc": _json_number(auc_values[j])}
        if np.isnan(auc_values[j]):
            undefined.append(name)
            entry.update(fpr=[], tpr=[], thresholds=[])
        else:
            fpr, tpr, thresholds = roc_curve(y[:, j], s[:, j])
            thresholds = np.asarray(thresholds, dtype=float).copy()
            thresholds[~np.isfinite(thresholds)] = s[:, j].max() + 1.0
            entry.update(fpr=_floats(fpr), tpr=_floats(tpr), thresholds=_floats(thresholds))
        curves.append(entry)
    _warn_undefined("ROC curve", undefined, "no positives or no negatives")
    return curves


def pr_curve_points(y_true, y_score, *, findings: Sequence[str] | None = None) -> list[dict]:
    """Precision-recall curve of each finding, as plain Python data ready for JSON.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_score: scores, shape (n_samples, n_findings).
        findings: column names; defaults to FINDINGS when there are 14 columns.

    Returns:
        One dict per finding with keys ``finding``, ``n_pos``, ``n_neg``,
        ``average_precision`` (float or None), ``prevalence`` (the
        no-skill precision), and lists ``precision``, ``recall`` (decreasing
        recall, ending at recall 0, precision 1) and ``thresholds``, which as
        in scikit-learn is one element shorter: the final (recall 0) point has
        no threshold. A finding with no positives has None and empty lists,
        with an :class:`UndefinedMetricWarning`.
    """
    y, s = _check_targets(y_true, y_score)
    names = _finding_names(y.shape[1], findings)
    ones = np.ones((1, y.shape[0]))
    curves, undefined = [], []
    for j, name in enumerate(names):
        n_pos = int(y[:, j].sum())
        ap = _weighted_average_precision(y[:, j], s[:, j], ones)[0]
        entry = {
            "finding": name,
            "n_pos": n_pos,
            "n_neg": int(y.shape[0] - n_pos),
            "average_precision": _json_number(ap),
            "prevalence": n_pos / y.shape[0],
        }
        if n_pos == 0:
            undefined.append(name)
            entry.update(precision=[], recall=[], thresholds=[])
        else:
            precision, recall, thresholds = precision_recall_curve(y[:, j], s[:, j])
            entry.update(precision=_floats(precision), recall=_floats(recall), thresholds=_floats(thresholds))
        curves.append(entry)
    _warn_undefined("PR curve", undefined, "no positives")
    return curves
