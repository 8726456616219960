"""Per-finding decision thresholds, fitted on the validation split only.

A threshold turns a probability into a yes/no flag for the radiologist. It is
a model parameter like any weight: fitting it on the test split would make the
reported test sensitivity/specificity optimistic. These functions take only
the data they are given, so passing validation data is the caller's whole
obligation; nothing here can see or cache another split.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxr_core.evaluation.checks import UndefinedMetricWarning, _check_targets, _column_labels

__all__ = [
    "THRESHOLD_METHODS", "DEFAULT_THRESHOLD", "fit_thresholds", "apply_thresholds", "youden_threshold",
    "threshold_at_sensitivity", "threshold_at_specificity",
]

THRESHOLD_METHODS: tuple[str, ...] = ("youden", "max_f1", "target_sensitivity")

#: Used where a threshold cannot be fitted (a finding absent from validation).
DEFAULT_THRESHOLD = 0.5


def _youden(y: np.ndarray, s: np.ndarray) -> float:
    # drop_intermediate=False: every distinct score is a candidate cut.
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # Index 0 is sklearn's "predict nothing" sentinel (+inf): never a usable cut.
    j = tpr[1:] - fpr[1:]
    # argmax takes the first maximum, i.e. the highest threshold among ties:
    # equal Youden index, fewer false alarms.
    return float(thresholds[1:][np.argmax(j)])


def youden_threshold(y_true, y_score) -> float:
    """The cut that maximises sensitivity + specificity - 1 for one binary column (ties: the highest).

    Args:
        y_true: 0/1 labels, shape (n,), with both classes.
        y_score: scores, shape (n,).
    """
    return _youden(np.asarray(y_true, dtype=bool), np.asarray(y_score, dtype=float))


def threshold_at_sensitivity(y_true, y_score, target: float) -> float:
    """The highest cut whose sensitivity (``score >= cut`` among positives) is at least ``target``.

    Args:
        y_true: 0/1 labels, shape (n,), with both classes.
        y_score: scores, shape (n,).
        target: in (0, 1].
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    return _target_sensitivity(np.asarray(y_true, dtype=bool), np.asarray(y_score, dtype=float), target)


def threshold_at_specificity(y_true, y_score, target: float) -> float:
    """The lowest cut whose specificity (``score < cut`` among negatives) is at least ``target``.

    The lowest such cut is the most sensitive one. Every cut is one of the
    scores; NaN when no score can be a cut (the highest score is a negative's
    and ``target`` allows no false positive at all).

    Args:
        y_true: 0/1 labels, shape (n,), with both classes.
        y_score: scores, shape (n,).
        target: in (0, 1).
    """
    if not 0 < target < 1:
        raise ValueError(f"target specificity must be in (0, 1), got {target}")
    fpr, _, thresholds = roc_curve(np.asarray(y_true, dtype=bool), np.asarray(y_score, dtype=float), drop_intermediate=False)
    # fpr rises as the cut falls; the last cut still within 1 - target is the lowest allowed.
    # A tiny tolerance keeps 0.95 of 20 negatives (exactly one false positive) from failing on rounding.
    index = int(np.flatnonzero(fpr <= 1 - target + 1e-12)[-1])
    return float("nan") if index == 0 else float(thresholds[index])


def _max_f1(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision 1, recall 0) point has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # Thresholds increase along the sklearn PR curve; take the highest among
    # ties for the same reason as Youden.
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


def _target_sensitivity(y: np.ndarray, s: np.ndarray, target: float) -> float:
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # The highest cut that still reaches the target sensitivity is the one
    # with the best specificity; tpr reaches 1 at the lowest score, so one exists.
    index = int(np.flatnonzero(tpr >= target)[0])
    return float(thresholds[max(index, 1)])


def fit_thresholds(
    y_true_val,
    y_score_val,
    *,
    method: str = "youden",
    target_sensitivity: float = 0.9,
) -> np.ndarray:
    """Fit one decision threshold per finding on validation data.

    Predictions are positive when ``score >= threshold``
    (:func:`apply_thresholds`); every threshold is one of the validation
    scores.

    Args:
        y_true_val: validation labels, shape (n_val, n_findings).
        y_score_val: validation scores, shape (n_val, n_findings).
        method: ``"youden"`` maximises sensitivity + specificity - 1;
            ``"max_f1"`` maximises F1; ``"target_sensitivity"`` takes the
            highest threshold whose validation sensitivity is at least
            ``target_sensitivity`` (the best specificity at that sensitivity,
            a screening operating point). Ties go to the highest threshold.
        target_sensitivity: in (0, 1]; used by ``"target_sensitivity"`` only.

    Returns:
        Thresholds, shape (n_findings,). A finding without both positives and
        negatives in validation cannot be fitted and gets
        :data:`DEFAULT_THRESHOLD` (0.5), with one
        :class:`~cxr_core.evaluation.checks.UndefinedMetricWarning` naming it.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}")
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    y, s = _check_targets(y_true_val, y_score_val, other_name="y_score_val")
    labels = _column_labels(y.shape[1])
    thresholds = np.full(y.shape[1], DEFAULT_THRESHOLD)
    unfitted = []
    for j in range(y.shape[1]):
        n_pos = int(y[:, j].sum())
        if n_pos == 0 or n_pos == y.shape[0]:
            # With one class only every cut is equally (un)justified; a fixed,
            # visible default beats an arbitrary extreme score.
            unfitted.append(labels[j])
            continue
        if method == "youden":
            thresholds[j] = _youden(y[:, j], s[:, j])
        elif method == "max_f1":
            thresholds[j] = _max_f1(y[:, j], s[:, j])
        else:
            thresholds[j] = _target_sensitivity(y[:, j], s[:, j], target_sensitivity)
    if unfitted:
        warnings.warn(
            f"no threshold could be fitted for {', '.join(unfitted)} (validation lacks positives or "
            f"negatives); using {DEFAULT_THRESHOLD}",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    return thresholds


def apply_thresholds(y_score, thresholds) -> np.ndarray:
    """Turn scores into binary predictions, positive where ``score >= threshold``.

    Args:
        y_score: scores, shape (n_samples, n_findings), or one image's
            scores, shape (n_findings,).
        thresholds: shape (n_findings,), e.g. from :func:`fit_thresholds`.

    Returns:
        int array of 0/1 with the shape of ``y_score``.
    """
    scores = np.asarray(y_score, dtype=float)
    cuts = np.asarray(thresholds, dtype=float)
    if cuts.ndim != 1 or scores.shape[-1:] != cuts.shape or scores.ndim not in (1, 2):
        raise ValueError(f"y_score of shape {scores.shape} does not match thresholds of shape {cuts.shape}")
    if np.isnan(scores).any() or np.isnan(cuts).any():
        raise ValueError("y_score and thresholds must not contain NaN")
    return (scores >= cuts).astype(int)
