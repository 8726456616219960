"""What a radiologist sees, measured: rates at an operating point and the burden of flags.

Pure functions of labels and decisions (no model, no files), shared by the
triage (:mod:`cxr_core.evaluation.triage`), the finding flags
(:mod:`cxr_core.evaluation.flags`), the evaluation report and
``benchmarks/clinical_output.py``:

* :func:`rates` gives sensitivity, specificity, PPV and NPV of one yes/no
  decision with Wilson 95% intervals: an interval, because on a validation
  split of a few hundred films a PPV of 0.30 may be 0.15 or 0.45;
* :func:`flag_burden` gives what a reader meets on a worklist: flags per
  No-Finding film, the share of No-Finding films without any, the share of
  flags that are right, abnormal films with at least one right flag.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["wilson_interval", "rates", "flag_burden"]


def wilson_interval(successes: int, total: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); ``(nan, nan)`` when ``total`` is 0.

    Wilson rather than the normal approximation: it stays inside [0, 1] and
    is honest for small counts (5 of 7 flags right), which validation splits
    of a few hundred films are full of.

    Args:
        successes: count, 0 <= successes <= total.
        total: number of trials.
        z: the normal quantile of the interval's level.
    """
    successes, total = int(successes), int(total)
    if total < 0 or not 0 <= successes <= max(total, 0):
        raise ValueError(f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return float("nan"), float("nan")
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def rates(y_true, decided) -> dict:
    """Counts and rates of one yes/no decision against binary labels.

    Args:
        y_true: 0/1 labels, shape (n,).
        decided: bool, shape (n,): the decision is "yes" (flagged, abnormal).

    Returns:
        ``n``, ``positives``, ``tp``, ``fp``, ``tn``, ``fn``, ``prevalence``,
        ``sensitivity``, ``specificity``, ``ppv``, ``npv`` (NaN where the
        denominator is 0) each rate with ``*_low``/``*_high`` (Wilson 95%),
        ``decided_share`` (share of films decided "yes") and
        ``lr_positive`` (sensitivity / (1 - specificity); NaN at specificity 1).
    """
    y = np.asarray(y_true).astype(bool).ravel()
    d = np.asarray(decided).astype(bool).ravel()
    if y.shape != d.shape:
        raise ValueError(f"y_true has {y.size} rows but decided has {d.size}")
    tp, fp = int((y & d).sum()), int((~y & d).sum())
    tn, fn = int((~y & ~d).sum()), int((y & ~d).sum())
    out = {"n": int(y.size), "positives": int(y.sum()), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
           "prevalence": _ratio(int(y.sum()), int(y.size)), "decided_share": _ratio(int(d.sum()), int(y.size))}
    for name, hit, total in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp),
                             ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
        out[name] = _ratio(hit, total)
        out[f"{name}_low"], out[f"{name}_high"] = wilson_interval(hit, total)
    specificity = out["specificity"]
    out["lr_positive"] = out["sensitivity"] / (1 - specificity) if specificity == specificity and specificity < 1 else float("nan")
    return out


def flag_burden(y_true, flagged) -> dict:
    """What the flags of a set of films amount to for the person reading them.

    Args:
        y_true: 0/1 labels, shape (n_films, n_findings); a film with no 1 is a
            No-Finding film.
        flagged: bool, same shape: the finding is flagged on the film.

    Returns:
        ``films``, ``no_finding_films``, ``abnormal_films``,
        ``flags_per_no_finding_film``, ``flags_per_abnormal_film``,
        ``no_finding_without_flag`` (share of No-Finding films with none),
        ``flags``, ``flags_right`` (share of all flags whose finding the film
        has), ``abnormal_with_right_flag`` (share of abnormal films with at
        least one flag on a finding they have). NaN where a group is empty.
    """
    y = np.asarray(y_true).astype(bool)
    f = np.asarray(flagged).astype(bool)
    if y.ndim != 2 or y.shape != f.shape:
        raise ValueError(f"y_true {y.shape} and flagged {f.shape} must be the same (n_films, n_findings)")
    normal = ~y.any(axis=1)
    per_film = f.sum(axis=1)
    right = (f & y).sum(axis=1)
    n_normal, n_abnormal = int(normal.sum()), int((~normal).sum())
    return {
        "films": int(len(y)),
        "no_finding_films": n_normal,
        "abnormal_films": n_abnormal,
        "flags_per_no_finding_film": float(per_film[normal].mean()) if n_normal else float("nan"),
        "flags_per_abnormal_film": float(per_film[~normal].mean()) if n_abnormal else float("nan"),
        "no_finding_without_flag": float((per_film[normal] == 0).mean()) if n_normal else float("nan"),
        "flags": int(per_film.sum()),
        "flags_right": _ratio(int(right.sum()), int(per_film.sum())),
        "abnormal_with_right_flag": float((right[~normal] > 0).mean()) if n_abnormal else float("nan"),
    }
