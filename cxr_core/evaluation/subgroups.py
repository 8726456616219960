"""AUROC within subgroups (sex, age band, view ...), and the age bands.

Conventions: :mod:`cxr_core.evaluation.checks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_core.evaluation.checks import _check_targets, _finding_names, _warn_undefined
from cxr_core.evaluation.metrics import _weighted_auroc

__all__ = ["subgroup_auroc", "age_band"]


AGE_BAND_EDGES: tuple[int, ...] = (20, 40, 60, 80)

#: Ages above this are treated as missing: NIH Data_Entry_2017 holds a few
#: impossible ages (e.g. 414), which are entry errors, not very old patients.
MAX_PLAUSIBLE_AGE = 120


def age_band(ages, *, edges: Sequence[int] = AGE_BAND_EDGES, max_age: float = MAX_PLAUSIBLE_AGE) -> pd.Series:
    """Map ages in years to ordered bands such as ``"0-19"``, ..., ``"80+"``.

    Args:
        ages: ages in years, shape (n,); array, list or pandas Series.
        edges: lower bounds of every band after the first, increasing; the
            default gives ``"0-19", "20-39", "40-59", "60-79", "80+"``.
        max_age: ages above it (and negative or missing ages) map to NaN.

    Returns:
        pandas Series of ordered categorical dtype with the bands as
        categories (so group-bys list them youngest first); the index of a
        Series input is kept.
    """
    edges = [int(e) for e in edges]
    if any(b <= a for a, b in zip(edges, edges[1:])) or (edges and edges[0] <= 0):
        raise ValueError(f"edges must be positive and increasing, got {edges}")
    index = ages.index if isinstance(ages, pd.Series) else None
    values = pd.to_numeric(pd.Series(np.asarray(ages, dtype=object).ravel(), index=index), errors="coerce")
    values = values.where((values >= 0) & (values <= max_age))
    lowers = [0, *edges]
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(lowers, edges)] + [f"{lowers[-1]}+"]
    bands = pd.cut(values, bins=[*lowers, np.inf], right=False, labels=labels, ordered=True)
    return bands


def subgroup_auroc(
    y_true,
    y_score,
    groups,
    *,
    findings: Sequence[str] | None = None,
) -> pd.DataFrame:
    """AUROC of each finding within each subgroup (sex, age band, view, ...).

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_score: scores, shape (n_samples, n_findings).
        groups: group name per row, shape (n_samples,); array or pandas
            Series, matched by position. Rows with a missing group are left
            out. A categorical's category order is kept (e.g. from
            :func:`age_band`); other groups are sorted.
        findings: names; defaults to FINDINGS when there are 14 columns.

    Returns:
        Long DataFrame with columns ``group``, ``finding``, ``n`` (images in
        the group), ``n_pos`` and ``auroc``; NaN AUROC with one
        :class:`UndefinedMetricWarning` where a group has no positives or no
        negatives for a finding (common for rare findings in small groups).
    """
    y, s = _check_targets(y_true, y_score)
    names = _finding_names(y.shape[1], findings)
    group_series = groups.reset_index(drop=True) if isinstance(groups, pd.Series) else pd.Series(np.asarray(groups))
    if len(group_series) != y.shape[0]:
        raise ValueError(f"groups has {len(group_series)} values for {y.shape[0]} samples")
    if isinstance(group_series.dtype, pd.CategoricalDtype):
        present = set(group_series.dropna().unique())
        levels = [c for c in group_series.cat.categories if c in present]
    else:
        levels = sorted(group_series.dropna().unique(), key=lambda v: (str(type(v)), v))
    group_array = group_series.to_numpy()
    rows, undefined = [], []
    for level in levels:
        mask = (group_array == level) & group_series.notna().to_numpy()
        yg, sg = y[mask], s[mask]
        ones = np.ones((1, yg.shape[0]))
        for j, name in enumerate(names):
            value = _weighted_auroc(yg[:, j], sg[:, j], ones)[0]
            if np.isnan(value):
                undefined.append(f"{name} in {level}")
            rows.append({"group": level, "finding": name, "n": int(mask.sum()), "n_pos": int(yg[:, j].sum()), "auroc": value})
    _warn_undefined("subgroup AUROC", undefined, "no positives or no negatives in the group")
    return pd.DataFrame(rows, columns=["group", "finding", "n", "n_pos", "auroc"])
