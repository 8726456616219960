"""The validation score that picks checkpoints, epochs and recipes during training.

One definition for every training mode (full training, the linear head, top
fine-tuning), so that their ``val_mean_auroc`` columns compare: the macro
AUROC over the findings that have both positives and negatives in the split.
The reported, bootstrapped evaluation lives in :mod:`cxr_core.evaluation.metrics`.
"""

from __future__ import annotations

import numpy as np


def mean_auroc(y_true, y_score) -> tuple[float, np.ndarray]:
    """Macro AUROC over the findings that have both positives and negatives.

    Args:
        y_true: binary (n, k).
        y_score: scores (n, k).

    Returns:
        ``(mean, per_finding)``; a finding without both classes is NaN and
        left out of the mean; the mean is NaN when no finding qualifies.
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    per = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        column = y_true[:, k] > 0.5
        if 0 < column.sum() < len(column):
            per[k] = roc_auc_score(column, y_score[:, k])
    scored = per[np.isfinite(per)]
    return (float(scored.mean()) if scored.size else float("nan")), per
