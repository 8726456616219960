"""The conventions every evaluation function shares, and the input checks that enforce them.

Conventions (of :mod:`~cxr_core.evaluation.metrics`, :mod:`~cxr_core.evaluation.curves`, :mod:`~cxr_core.evaluation.subgroups`,
:mod:`~cxr_core.evaluation.thresholds`, :mod:`~cxr_core.evaluation.calibration`, :mod:`~cxr_core.evaluation.flags`
and :mod:`~cxr_core.evaluation.triage`):

* ``y_true`` is a binary array of shape ``(n_samples, n_findings)``; ``y_score``
  / ``y_prob`` / ``y_pred`` has the same shape. Columns follow
  :data:`cxr_core.findings.FINDINGS`. A 1-D array is treated as one column.
* Functions are pure: inputs are never modified, no global state is read.
* Options are keyword-only.
* Where a metric is mathematically undefined for a finding (AUROC with no
  positives or no negatives, precision with no predicted positives, ...) the
  value is NaN and one :class:`UndefinedMetricWarning` names the findings
  concerned. NaN, not 0 or 0.5, because a made-up number would silently drag a
  macro average and look like a measurement in a report.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from cxr_core.findings import FINDINGS

__all__ = ["UndefinedMetricWarning"]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for some findings and was reported as NaN.

    Our own class (not scikit-learn's) so callers can filter or escalate
    cxr-assist warnings without touching scikit-learn's.
    """


def _as_2d(values, *, name: str, dtype=float) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (n_samples, n_findings), got shape {array.shape}")
    return array


def _check_targets(y_true, y_other, *, other_name: str = "y_score") -> tuple[np.ndarray, np.ndarray]:
    """Validate a binary label matrix and a same-shaped score matrix.

    Returns ``(y_true as bool (n, k), y_other as float (n, k))``.
    """
    y = _as_2d(y_true, name="y_true")
    s = _as_2d(y_other, name=other_name)
    if y.shape != s.shape:
        raise ValueError(f"y_true has shape {y.shape} but {other_name} has shape {s.shape}")
    if y.shape[0] == 0:
        raise ValueError("y_true is empty: at least one sample is needed")
    # NaN labels would silently count as negatives below; refuse them instead.
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must contain only 0 and 1 (no NaN, no uncertain labels)")
    if not np.isfinite(s).all():
        raise ValueError(f"{other_name} contains NaN or infinite values")
    return y.astype(bool), s


def _check_probabilities(y_prob: np.ndarray, *, name: str = "y_prob") -> None:
    if (y_prob < 0).any() or (y_prob > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1]")


def _finding_names(n_columns: int, findings: Sequence[str] | None) -> tuple[str, ...]:
    """Names for the columns: ``findings`` if given, else FINDINGS for 14 columns.

    Any other column count without names is an error rather than a guess,
    because a mislabelled metrics table is worse than no table.
    """
    if findings is not None:
        names = tuple(str(f) for f in findings)
        if len(names) != n_columns:
            raise ValueError(f"findings has {len(names)} names for {n_columns} columns")
        return names
    if n_columns == len(FINDINGS):
        return FINDINGS
    raise ValueError(
        f"got {n_columns} columns, not the {len(FINDINGS)} FINDINGS; pass findings=<names> to label them"
    )


def _column_labels(n_columns: int) -> tuple[str, ...]:
    """Labels for warning messages only, where no names were asked for."""
    if n_columns == len(FINDINGS):
        return FINDINGS
    return tuple(f"column {j}" for j in range(n_columns))


def _warn_undefined(what: str, labels: Sequence[str], reason: str, *, stacklevel: int = 3) -> None:
    # One warning per call listing every finding, rather than one per finding,
    # so a 14-finding report does not bury the console.
    if labels:
        warnings.warn(
            f"{what} is undefined for {', '.join(labels)} ({reason}); reported as NaN",
            UndefinedMetricWarning,
            stacklevel=stacklevel,
        )
