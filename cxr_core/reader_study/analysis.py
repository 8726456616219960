"""Reader study results: did the aided read get closer to the reference labels?

Pure functions over the frame of :meth:`cxr_core.reader_study.store.ReaderStudyStore.reads_frame`
(one row per read, with ``read_<finding>``, ``ref_<finding>``, ``ai_<finding>``
and ``ai_threshold_<finding>`` columns). Nothing here touches the database.

Only **paired** cases enter the comparison: a case counts for a reader once
both the unaided and the aided read are stored, so both phases are always
measured on the same cases. A half-finished study is analysed on the cases
finished so far (``n_cases`` in every table says how many).

Each table has a ``reader`` column: every reader by name, and
:data:`~cxr_core.reader_study.store.ALL_READERS` for all reads pooled (each read
counts once, so a reader who finished more cases weighs more).

A study whose reference is the radiologists' labels (``reference="expert"``)
is analysed over the expert categories instead of the 14 findings:
:func:`cxr_core.reader_study.reference.expert_reference_frame` turns its reads
frame into ``read_``/``ref_``/``ai_`` columns per category, and every function
below runs on either frame. Each pairs the reads first
(:func:`cxr_core.reader_study.pairing.pair_reads`).

Conventions follow :mod:`cxr_core.evaluation.checks`: an undefined value (sensitivity of
a finding with no positive case, kappa where neither rater ever varies) is NaN
with one :class:`~cxr_core.evaluation.checks.UndefinedMetricWarning`, never a made-up 0.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from cxr_core.evaluation.checks import UndefinedMetricWarning
from cxr_core.evaluation.thresholds import DEFAULT_THRESHOLD
from cxr_core.reader_study.pairing import Paired, pair_reads
from cxr_core.reader_study.reference import LABEL_NOISE_CAVEAT, expert_reference_frame, study_reference

__all__ = [
    "METRICS",
    "MACRO",
    "ALL_FINDINGS",
    "phase_metrics",
    "paired_change",
    "ai_agreement",
    "reading_time",
    "reader_study_results",
    "export_csv",
]

#: Per-finding metrics compared between the unaided and the aided reads.
METRICS: tuple[str, ...] = ("sensitivity", "specificity", "f1")

#: ``finding`` value of the row averaging the 14 findings (defined ones only).
MACRO = "macro average"

#: ``finding`` value of the kappa computed over all 14 findings' calls at once.
ALL_FINDINGS = "all findings"

_AI_PHASE = "ai"
_MAX_NAMED = 12  # entries named in one warning


# --------------------------------------------------------------------------
# Counts and rates (one code path for point estimates and bootstrap)
# --------------------------------------------------------------------------
#
# A case bootstrap resample is the data with each case weighted by how many
# times it was drawn. Summing each case's confusion indicators once and then
# multiplying by the (n_boot, n_cases) weight matrix gives every resample's
# counts exactly, for both phases with the same draws (a paired bootstrap).


def _case_sums(indicator: np.ndarray, case: np.ndarray, n_cases: int) -> np.ndarray:
    """Sum (n_rows, 14) indicators per case: shape (n_cases, 14)."""
    sums = np.zeros((n_cases, indicator.shape[1]))
    np.add.at(sums, case, indicator.astype(float))
    return sums


def _confusion(weights: np.ndarray, case: np.ndarray, pred: np.ndarray, ref: np.ndarray, n_cases: int) -> dict[str, np.ndarray]:
    """Weighted tp, fp, tn, fn, each (n_weights, 14), for case weights (n_weights, n_cases)."""
    return {
        name: weights @ _case_sums(indicator, case, n_cases)
        for name, indicator in (
            ("tp", pred & ref), ("fp", pred & ~ref), ("tn", ~pred & ~ref), ("fn", ~pred & ref),
        )
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _rates(counts: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sensitivity, specificity and F1 from counts, NaN where the denominator is 0."""
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        # Written with counts, as cxr_core.evaluation.metrics.binary_report does: defined
        # (0) when positives were all missed, undefined only with no positive
        # case and no positive call.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over findings (last axis) of the defined values; NaN if none."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=-1)
    n = defined.sum(axis=-1)
    return _ratio(total, n)


def _warn(what: str, labels: Sequence[str], reason: str) -> None:
    if labels:
        shown = ", ".join(labels[:_MAX_NAMED]) + (f" and {len(labels) - _MAX_NAMED} more" if len(labels) > _MAX_NAMED else "")
        warnings.warn(f"{what} is undefined for {shown} ({reason}); reported as NaN", UndefinedMetricWarning, stacklevel=3)


_REASONS = {
    "sensitivity": "no positive case",
    "specificity": "no negative case",
    "f1": "no positive case and no positive call",
}


# --------------------------------------------------------------------------
# Public tables
# --------------------------------------------------------------------------


def _ai_calls(paired: Paired, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(AI calls (n_pairs, 14) bool, rows with AI probabilities (n_pairs,) bool).

    Args:
        thresholds: None (each read's recorded thresholds, else
            DEFAULT_THRESHOLD), a scalar, or shape (14,) in FINDINGS order.
    """
    has_ai = ~np.isnan(paired.ai_prob).any(axis=1)
    if thresholds is None:
        cuts = np.where(np.isnan(paired.ai_threshold), DEFAULT_THRESHOLD, paired.ai_threshold)
    else:
        cuts = np.asarray(thresholds, dtype=float)
        n = len(paired.labels)
        if cuts.ndim > 1 or (cuts.ndim == 1 and cuts.shape != (n,)) or np.isnan(cuts).any():
            raise ValueError(f"thresholds must be one number or {n} numbers in the order of the frame's labels, got shape {cuts.shape}")
        cuts = np.broadcast_to(cuts, paired.ai_prob.shape)
    with np.errstate(invalid="ignore"):
        calls = np.where(has_ai[:, None], paired.ai_prob >= cuts, False)
    return calls.astype(bool), has_ai


def phase_metrics(frame: pd.DataFrame, *, thresholds=None) -> pd.DataFrame:
    """Sensitivity, specificity and F1 per finding, unaided vs aided, per reader and pooled.

    Args:
        frame: reads frame (see module docstring); only paired cases count.
        thresholds: how the AI's probabilities become calls for the ``"ai"``
            rows (the AI alone, for context): None uses the thresholds
            recorded with each aided read (0.5 where none was), or give one
            number or 14 in FINDINGS order.

    Returns:
        Long DataFrame with columns ``reader, phase, finding, n_cases,
        n_reads, n_pos, tp, fp, tn, fn, sensitivity, specificity, f1``
        (``n_cases`` distinct cases, ``n_reads`` reads: more than ``n_cases``
        for pooled rows; ``n_pos`` and the counts are over reads). ``phase`` is
        ``"unaided"``, ``"aided"`` and, where AI probabilities were recorded,
        ``"ai"``. ``finding`` runs over FINDINGS, then :data:`MACRO` (the mean
        of the defined per-finding values; counts left empty).
    """
    paired = pair_reads(frame)
    ai_calls, has_ai = _ai_calls(paired, thresholds)
    rows, undefined = [], {m: [] for m in METRICS}
    for reader, mask in paired.subsets():
        phases = [("unaided", paired.unaided, mask), ("aided", paired.aided, mask)]
        if (mask & has_ai).any():
            phases.append((_AI_PHASE, ai_calls, mask & has_ai))
        for phase, pred, rows_mask in phases:
            ones = np.ones((1, paired.n_cases))
            counts = _confusion(ones, paired.case[rows_mask], pred[rows_mask], paired.ref[rows_mask], paired.n_cases)
            rates = _rates(counts)
            sizes = paired.count(rows_mask)
            for j, finding in enumerate(paired.labels):
                row = {"reader": reader, "phase": phase, "finding": finding, **sizes,
                       "n_pos": int(counts["tp"][0, j] + counts["fn"][0, j])}
                row.update({k: int(counts[k][0, j]) for k in ("tp", "fp", "tn", "fn")})
                for metric in METRICS:
                    value = float(rates[metric][0, j])
                    row[metric] = value
                    if np.isnan(value):
                        undefined[metric].append(f"{finding} ({reader}, {phase})")
                rows.append(row)
            macro = {"reader": reader, "phase": phase, "finding": MACRO, **sizes}
            macro.update({metric: float(_macro(rates[metric])[0]) for metric in METRICS})
            rows.append(macro)
    for metric in METRICS:
        _warn(metric, undefined[metric], _REASONS[metric])
    table = pd.DataFrame(rows, columns=["reader", "phase", "finding", "n_cases", "n_reads", "n_pos", "tp", "fp", "tn", "fn", *METRICS])
    for column in ("n_pos", "tp", "fp", "tn", "fn"):
        table[column] = table[column].astype("Int64")  # empty on MACRO rows
    return table


def paired_change(
    frame: pd.DataFrame,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> pd.DataFrame:
    """Aided minus unaided, per finding and metric, with a paired case bootstrap CI.

    Each resample draws CASES with replacement and keeps both reads of every
    drawn case (every reader's), so the two phases are always compared on the
    same cases, as the readers were. That pairing is what makes the interval
    narrower than two independent intervals would suggest: most of the
    case-to-case variation cancels in the difference. Per-reader rows use the
    same draws, restricted to that reader's reads.

    Args:
        frame: reads frame; only paired cases count.
        n_boot: number of resamples.
        alpha: the interval covers ``1 - alpha`` (percentile bootstrap).
        seed: seed for ``numpy.random.default_rng``; same seed, same intervals.

    Returns:
        Long DataFrame with columns ``reader, finding, metric, n_cases,
        n_reads, unaided, aided, change, ci_low, ci_high``; ``finding`` runs over
        FINDINGS then :data:`MACRO` (both phases averaged over the findings
        defined in both, so it can differ from phase_metrics' macro rows when
        a finding is undefined in one phase only), ``metric`` over :data:`METRICS`.
        Resamples in which a metric is undefined (e.g. no positive case drawn)
        are left out of that interval, with an UndefinedMetricWarning saying
        how many; NaN throughout where the metric is undefined on the data.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(n_boot, bool) or int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    n_boot = int(n_boot)
    paired = pair_reads(frame)
    rng = np.random.default_rng(seed)
    # Multinomial counts = how often each case is drawn in n_cases draws;
    # drawn once for all readers and both phases.
    draws = rng.multinomial(paired.n_cases, np.full(paired.n_cases, 1.0 / paired.n_cases), size=n_boot).astype(float)
    ones = np.ones((1, paired.n_cases))
    rows, undefined, partial = [], [], []
    for reader, mask in paired.subsets():
        case, ref = paired.case[mask], paired.ref[mask]
        point, boot = {}, {}
        for phase, pred in (("unaided", paired.unaided[mask]), ("aided", paired.aided[mask])):
            point[phase] = _rates(_confusion(ones, case, pred, ref, paired.n_cases))
            boot[phase] = _rates(_confusion(draws, case, pred, ref, paired.n_cases))
        for metric in METRICS:
            u_point, a_point = point["unaided"][metric][0], point["aided"][metric][0]
            delta_boot = boot["aided"][metric] - boot["unaided"][metric]  # (n_boot, 14)
            columns = [
                (finding, u_point[j], a_point[j], delta_boot[:, j]) for j, finding in enumerate(paired.labels)
            ]
            # Macro: both phases averaged over the same findings (those
            # defined in both), so the change compares like with like.
            u_boot, a_boot = boot["unaided"][metric], boot["aided"][metric]
            both = ~np.isnan(u_point) & ~np.isnan(a_point)
            both_boot = ~np.isnan(u_boot) & ~np.isnan(a_boot)
            columns.append((
                MACRO,
                _macro(np.where(both, u_point, np.nan)),
                _macro(np.where(both, a_point, np.nan)),
                _macro(np.where(both_boot, a_boot - u_boot, np.nan)),
            ))
            for finding, u_value, a_value, deltas in columns:
                change = float(a_value - u_value)
                low = high = np.nan
                if np.isnan(change):
                    undefined.append(f"{finding} {metric} ({reader})")
                else:
                    defined = deltas[~np.isnan(deltas)]
                    if defined.size < n_boot:
                        partial.append(f"{finding} {metric} ({reader}): {n_boot - defined.size}/{n_boot}")
                    if defined.size:
                        low, high = (float(v) for v in np.quantile(defined, [alpha / 2, 1 - alpha / 2]))
                rows.append({
                    "reader": reader, "finding": finding, "metric": metric, **paired.count(mask),
                    "unaided": float(u_value), "aided": float(a_value), "change": change,
                    "ci_low": low, "ci_high": high,
                })
    _warn("the aided - unaided change", undefined, "the metric is undefined on these cases")
    if partial:
        # Dropping the resamples without positives biases the interval (they
        # are the unlucky ones); say so rather than hide it.
        shown = "; ".join(partial[:_MAX_NAMED]) + (f"; and {len(partial) - _MAX_NAMED} more" if len(partial) > _MAX_NAMED else "")
        warnings.warn(
            f"a metric was undefined in some bootstrap resamples, which were left out: {shown}",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    return pd.DataFrame(rows, columns=["reader", "finding", "metric", "n_cases", "n_reads", "unaided", "aided", "change", "ci_low", "ci_high"])


def kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two 0/1 raters; NaN where undefined (both raters constant and equal, or no items)."""
    if a.size == 0:
        return float("nan")
    pa, pb = a.mean(), b.mean()
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected >= 1.0:
        return float("nan")
    return float(cohen_kappa_score(a.astype(int), b.astype(int), labels=[0, 1]))


def ai_agreement(frame: pd.DataFrame, *, thresholds=None) -> pd.DataFrame:
    """Cohen's kappa between each reader's ticks and the AI's calls, unaided and aided.

    Unaided agreement says how often readers already agreed with the AI on
    their own; a rise in the aided read shows how far they moved toward it
    (whether that helped is what :func:`paired_change` measures). A high
    aided kappa with no gain in accuracy is a warning sign of automation bias.

    Args:
        frame: reads frame; paired cases with recorded AI probabilities count.
        thresholds: None uses the thresholds recorded with each aided read
            (0.5 where none was); or one number, or 14 in FINDINGS order.

    Returns:
        Long DataFrame with columns ``reader, phase, finding, n_cases,
        n_reads, reader_positive, ai_positive, kappa``; ``finding`` runs over FINDINGS
        then :data:`ALL_FINDINGS` (all 14 findings' calls together). NaN
        kappa, with an UndefinedMetricWarning, where neither the reader nor
        the AI ever varies (both all-yes or both all-no: agreement by chance
        is 1 and kappa is 0/0), or where no AI probabilities were recorded.
    """
    paired = pair_reads(frame)
    ai_calls, has_ai = _ai_calls(paired, thresholds)
    rows, undefined = [], []
    if not has_ai.any():
        warnings.warn("no aided read recorded AI probabilities; agreement with the AI is NaN", UndefinedMetricWarning, stacklevel=2)
    for reader, mask in paired.subsets():
        mask = mask & has_ai
        for phase, pred in (("unaided", paired.unaided), ("aided", paired.aided)):
            reads, calls = pred[mask], ai_calls[mask]
            columns = [(f, reads[:, j], calls[:, j]) for j, f in enumerate(paired.labels)]
            columns.append((ALL_FINDINGS, reads.ravel(), calls.ravel()))
            for finding, a, b in columns:
                value = kappa(a, b)
                if np.isnan(value) and a.size:
                    undefined.append(f"{finding} ({reader}, {phase})")
                rows.append({
                    "reader": reader, "phase": phase, "finding": finding, **paired.count(mask),
                    "reader_positive": int(a.sum()), "ai_positive": int(b.sum()), "kappa": value,
                })
    _warn("Cohen's kappa with the AI", undefined, "reader and AI both gave the same single answer throughout")
    return pd.DataFrame(rows, columns=["reader", "phase", "finding", "n_cases", "n_reads", "reader_positive", "ai_positive", "kappa"])


def reading_time(frame: pd.DataFrame) -> pd.DataFrame:
    """Median seconds per case, unaided and aided, per reader and pooled.

    Args:
        frame: reads frame; only paired cases count, so both medians are over
            the same cases.

    Returns:
        DataFrame with columns ``reader, n_cases, n_reads, median_seconds_unaided,
        median_seconds_aided, median_seconds_total`` (total = unaided +
        aided of a case; the median of sums, not the sum of medians).
    """
    paired = pair_reads(frame)
    rows = []
    for reader, mask in paired.subsets():
        unaided, aided = paired.seconds_unaided[mask], paired.seconds_aided[mask]
        rows.append({
            "reader": reader,
            **paired.count(mask),
            "median_seconds_unaided": float(np.median(unaided)),
            "median_seconds_aided": float(np.median(aided)),
            "median_seconds_total": float(np.median(unaided + aided)),
        })
    return pd.DataFrame(rows)


def reader_study_results(
    frame: pd.DataFrame,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int | None = 0,
    thresholds=None,
    reference: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Every results table at once, for the results page and for export.

    Args:
        frame: reads frame from ``ReaderStudyStore.reads_frame(study_id)``.
        n_boot, alpha, seed: see :func:`paired_change`.
        thresholds: see :func:`ai_agreement` (for an expert reference the AI's
            calls are already made, see :func:`~cxr_core.reader_study.reference.expert_reference_frame`).
        reference: ``"nih"`` (the 14 findings against NIH's labels) or
            ``"expert"`` (the categories against the radiologists' labels, via
            :func:`~cxr_core.reader_study.reference.expert_reference_frame`); None takes the study's own
            (the frame's ``reference`` column, else ``"nih"``).

    Returns:
        ``{"metrics": phase_metrics, "change": paired_change, "agreement":
        ai_agreement, "time": reading_time}``; ``finding`` holds the
        categories for an expert reference. Show :func:`~cxr_core.reader_study.reference.reference_caveat`
        with them.
    """
    if study_reference(frame, reference) == "expert":
        frame = expert_reference_frame(frame)
    return {
        "metrics": phase_metrics(frame, thresholds=thresholds),
        "change": paired_change(frame, n_boot=n_boot, alpha=alpha, seed=seed),
        "agreement": ai_agreement(frame, thresholds=thresholds),
        "time": reading_time(frame),
    }


def export_csv(frame_or_results: pd.DataFrame | Mapping[str, pd.DataFrame], path: str | os.PathLike, *,
               caveat: str = LABEL_NOISE_CAVEAT) -> list[Path]:
    """Write a table, or every table of :func:`reader_study_results`, as CSV.

    Args:
        frame_or_results: a DataFrame (written to ``path``), or a mapping
            ``{name: DataFrame}`` (written as ``path/<name>.csv``, with
            ``path/README.txt`` holding the caveat, so it travels with the numbers).
        path: a file for one table, a folder for several; parents are created.
        caveat: the README's caveat; ``reference_caveat(study.reference)``.

    Returns:
        the files written. NaN (undefined) is written as an empty cell.
    """
    path = Path(path)
    if isinstance(frame_or_results, pd.DataFrame):
        path.parent.mkdir(parents=True, exist_ok=True)
        frame_or_results.to_csv(path, index=False)
        return [path]
    if not isinstance(frame_or_results, Mapping) or not all(isinstance(v, pd.DataFrame) for v in frame_or_results.values()):
        raise TypeError("export_csv takes a DataFrame or a mapping of names to DataFrames")
    path.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in frame_or_results.items():
        if not str(name) or any(ch in str(name) for ch in "/\\") or str(name).startswith("."):
            raise ValueError(f"table name {name!r} cannot be a file name")
        target = path / f"{name}.csv"
        table.to_csv(target, index=False)
        written.append(target)
    readme = path / "README.txt"
    readme.write_text(
        "cxr-assist reader study results (one CSV per table; empty cell = undefined).\n\n"
        + caveat + "\n",
        encoding="utf-8",
    )
    return [*written, readme]
