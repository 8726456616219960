"""Putting the metrics together: one evaluation report from predictions.

:func:`evaluate_predictions` takes the model's raw probabilities on the
validation and test splits, fits the calibration and the operating thresholds
on VALIDATION only, and measures everything on TEST with them unchanged. The
result is JSON-safe and is what ``metrics.json`` in a model bundle holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_core.evaluation.calibration import (
    Calibration,
    brier_score,
    expected_calibration_error,
    fit_calibration,
    reliability_curve,
)
from cxr_core.evaluation.clinical import flag_burden, rates
from cxr_core.evaluation.curves import pr_curve_points, roc_curve_points
from cxr_core.evaluation.flags import FindingFlags, fit_flags
from cxr_core.evaluation.localization import localization_accuracy
from cxr_core.evaluation.metrics import binary_report, bootstrap_ci, macro_mean
from cxr_core.evaluation.subgroups import age_band, subgroup_auroc
from cxr_core.evaluation.thresholds import apply_thresholds, fit_thresholds
from cxr_core.evaluation.triage import Triage, abnormal_labels, fit_triage
from cxr_core.findings import FINDINGS

#: Published anchors, for display beside ours (different data sizes and splits).
PUBLISHED_AUROC = {
    # ChestX-ray8 paper, 14-finding table (ResNet-50), NIH's official split; mean 0.745.
    "Wang et al. 2017 (ResNet-50, official NIH split)": (
        0.7003, 0.8100, 0.7585, 0.6614, 0.6933, 0.6687, 0.6580, 0.7993, 0.7032, 0.8052, 0.8330, 0.7859, 0.6835, 0.8717,
    ),
    # CheXNet paper, Table 1; its own random patient-wise split of 112k images; mean 0.841.
    "CheXNet (Rajpurkar et al. 2017, DenseNet-121, own split)": (
        0.8094, 0.9248, 0.8638, 0.7345, 0.8676, 0.7802, 0.7680, 0.8887, 0.7901, 0.8878, 0.9371, 0.8047, 0.8062, 0.9164,
    ),
}


def _json(value):
    """Floats to plain JSON numbers, NaN to None."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if value is pd.NA or value is None:
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return _json(frame.reset_index().to_dict(orient="records"))


def evaluate_predictions(
    *,
    y_val: np.ndarray | None,
    p_val: np.ndarray | None,
    y_test: np.ndarray,
    p_test: np.ndarray,
    test_meta: pd.DataFrame,
    threshold_method: str = "youden",
    target_sensitivity: float = 0.9,
    calibration_method: str = "temperature",
    n_boot: int = 1000,
    seed: int = 0,
    findings: Sequence[str] = FINDINGS,
    calibration: Calibration | None = None,
    thresholds: Sequence[float] | None = None,
) -> tuple[dict, Calibration, np.ndarray]:
    """Calibrate and threshold on validation, measure on test.

    Args:
        y_val, p_val: validation labels and raw model probabilities, (n_val, k).
        y_test, p_test: test labels and raw model probabilities, (n_test, k).
        test_meta: test rows with ``patient_id`` (bootstrap groups) and, when
            present, ``sex``, ``age`` and ``view`` (subgroups), row-aligned.
        threshold_method: ``"youden"``, ``"max_f1"`` or ``"target_sensitivity"``.
        target_sensitivity: used by ``"target_sensitivity"``.
        calibration_method: ``"temperature"`` or ``"platt"``.
        n_boot: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.
        findings: column names.
        calibration, thresholds: already fitted ones to apply unchanged (both
            or neither); then ``y_val``/``p_val`` may be ``None``.

    Returns:
        ``(report, calibration, thresholds)``: the JSON-safe report, the
        calibration fitted on validation, and the per-finding thresholds on
        calibrated probabilities, shape (k,).
    """
    findings = tuple(findings)
    if (calibration is None) != (thresholds is None):
        raise ValueError("pass both a fitted calibration and thresholds, or neither")
    fitted_here = calibration is None
    if fitted_here:
        calibration = fit_calibration(y_val, p_val, method=calibration_method, findings=findings)
        thresholds = fit_thresholds(
            y_val, calibration.apply(p_val), method=threshold_method, target_sensitivity=target_sensitivity
        )
    thresholds = np.asarray(thresholds, dtype=float)
    c_test = calibration.apply(p_test)
    has_val = y_val is not None and p_val is not None and len(y_val) > 0
    c_val = calibration.apply(p_val) if has_val else None

    groups = test_meta["patient_id"].to_numpy()
    auc = bootstrap_ci(y_test, c_test, groups=groups, metric="auroc", n_boot=n_boot, seed=seed)
    prc = bootstrap_ci(y_test, c_test, groups=groups, metric="auprc", n_boot=n_boot, seed=seed)
    operating = binary_report(y_test, apply_thresholds(c_test, thresholds), findings=findings)
    val_operating = binary_report(y_val, apply_thresholds(c_val, thresholds), findings=findings) if has_val else None

    per_finding = []
    for i, name in enumerate(findings):
        row = operating.loc[name]
        per_finding.append(
            {
                "finding": name,
                "n_test_pos": int(y_test[:, i].sum()),
                "n_val_pos": int(y_val[:, i].sum()) if has_val else None,
                "auroc": auc.point[i], "auroc_low": auc.low[i], "auroc_high": auc.high[i],
                "auprc": prc.point[i], "auprc_low": prc.low[i], "auprc_high": prc.high[i],
                "prevalence": float(y_test[:, i].mean()) if len(y_test) else float("nan"),
                "threshold": thresholds[i],
                "tp": int(row.tp), "fp": int(row.fp), "tn": int(row.tn), "fn": int(row.fn),
                "precision": row.precision, "recall": row.recall, "specificity": row.specificity, "f1": row.f1,
                "val_sensitivity": val_operating.loc[name].sensitivity if has_val else None,
                "val_specificity": val_operating.loc[name].specificity if has_val else None,
            }
        )

    subgroups = []
    meta = test_meta.reset_index(drop=True)
    for column, values in (
        ("sex", meta.get("sex")),
        ("age_band", age_band(meta["age"]) if "age" in meta else None),
        ("view", meta.get("view")),
    ):
        if values is None:
            continue
        table = subgroup_auroc(y_test, c_test, pd.Series(values).reset_index(drop=True), findings=findings)
        table.insert(0, "attribute", column)
        subgroups.extend(_records(table.set_index("attribute")))

    report = {
        "findings": list(findings),
        "counts": {
            "val_images": int(len(y_val)) if has_val else 0,
            "test_images": int(len(y_test)),
            "test_patients": int(len(np.unique(groups))),
        },
        "macro": {
            "auroc": macro_mean(auc.point),
            "auroc_low": macro_mean(auc.low),
            "auroc_high": macro_mean(auc.high),
            "auprc": macro_mean(prc.point),
            "f1": macro_mean(operating["f1"].to_numpy()),
        },
        "per_finding": per_finding,
        "thresholds": {
            "method": threshold_method if fitted_here else "fitted earlier",
            "fitted_on": "validation" if fitted_here else "the bundle's validation split",
            "values": thresholds,
        },
        "calibration": {
            "method": calibration.method,
            "fitted_on": "validation" if fitted_here else "the bundle's validation split",
            "parameters": calibration.to_dict(),
            "ece_before": expected_calibration_error(y_test, p_test),
            "ece_after": expected_calibration_error(y_test, c_test),
            "brier_before": brier_score(y_test, p_test),
            "brier_after": brier_score(y_test, c_test),
            "reliability_before": _records(reliability_curve(y_test, p_test, findings=findings).set_index("finding")),
            "reliability_after": _records(reliability_curve(y_test, c_test, findings=findings).set_index("finding")),
        },
        "roc": roc_curve_points(y_test, c_test, findings=findings),
        "pr": pr_curve_points(y_test, c_test, findings=findings),
        "subgroups": subgroups,
        "bootstrap": {"n_boot": n_boot, "level": "patient", "alpha": 0.05, "seed": seed},
        "published_auroc": {name: list(values) for name, values in PUBLISHED_AUROC.items()},
    }
    return _json(report), calibration, np.asarray(thresholds, dtype=float)


def reading_report(
    *,
    y_test: np.ndarray,
    c_test: np.ndarray,
    test_groups,
    youden_thresholds: Sequence[float],
    y_val: np.ndarray | None = None,
    c_val: np.ndarray | None = None,
    val_groups=None,
    triage: Triage | None = None,
    flags: FindingFlags | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict, Triage | None, FindingFlags | None]:
    """The triage and the finding flags: fitted on validation (unless given), measured on test.

    Args:
        y_test, c_test: test labels and CALIBRATED probabilities, (n_test, 14).
        test_groups: patient id per test film (the AUROC's bootstrap groups).
        youden_thresholds: the per-finding Youden cuts: the baseline row.
        y_val, c_val, val_groups: validation labels, calibrated probabilities
            and patients, to fit the triage and flags (when not given).
        triage, flags: already fitted ones, applied unchanged (apply mode).
        n_boot, seed: the triage AUROC's patient bootstrap.

    Returns:
        ``(report, triage, flags)``: ``report`` has ``triage`` (test AUROC
        with 95% CI, and at the rule-out and balanced points sensitivity,
        specificity, PPV, NPV with Wilson 95% intervals and the share of films
        set aside), ``flags`` (per finding: cuts, validation worth and test
        rates) and ``burden`` (flags per No-Finding film ... for the new flags
        and the Youden baseline, :func:`cxr_core.evaluation.clinical.flag_burden`).
        A part that cannot be fitted (too few validation films) is None with a ``note``.
    """
    report: dict = {"fitted_on": "validation", "measured_on": "test"}
    has_val = y_val is not None and c_val is not None and len(y_val) > 0
    if triage is None and has_val:
        try:
            triage = fit_triage(y_val, c_val, groups=val_groups)
        except ValueError as exc:
            report["triage_note"] = str(exc)
    if flags is None and has_val:
        flags = fit_flags(y_val, c_val)
    y_abnormal = abnormal_labels(y_test)
    if triage is not None:
        p = np.atleast_1d(triage.probability(c_test))
        ci = bootstrap_ci(y_abnormal, p, groups=test_groups, metric="auroc", n_boot=n_boot, seed=seed)
        block = {
            "method": triage.method, "selection": triage.selection, "rule_out": triage.rule_out,
            "balanced": triage.balanced, "validation": triage.validation,
            "test_films": int(len(y_abnormal)), "test_abnormal_films": int(y_abnormal.sum()),
            "auroc": float(ci.point[0]), "auroc_low": float(ci.low[0]), "auroc_high": float(ci.high[0]),
            "at_rule_out": rates(y_abnormal, p >= triage.rule_out),
            "at_balanced": rates(y_abnormal, p >= triage.balanced),
            "roc": roc_curve_points(y_abnormal[:, None], p[:, None], findings=("abnormal",))[0],
        }
        block["at_rule_out"]["set_aside_share"] = 1 - block["at_rule_out"]["decided_share"]
        report["triage"] = block
    else:
        report["triage"] = None
    baseline = apply_thresholds(c_test, youden_thresholds).astype(bool)
    report["burden"] = {"youden": flag_burden(y_test, baseline)}
    if flags is not None:
        flagged = flags.flagged(c_test)
        report["burden"]["flags"] = flag_burden(y_test, flagged)
        report["flags"] = {
            "target_specificity": flags.target_specificity, "possible_specificity": flags.possible_specificity,
            "min_val_positives": flags.min_val_positives,
            "per_finding": [
                {"finding": f, "flag": flags.flag[i], "possible": flags.possible[i], "reason": flags.reasons[i],
                 "validation": flags.validation[i],
                 "test": rates(y_test[:, i], flagged[:, i]) if np.isfinite(flags.flag[i]) else None}
                for i, f in enumerate(flags.findings)
            ],
        }
    else:
        report["flags"] = None
    return _json(report), triage, flags


def localization_report(records: pd.DataFrame) -> dict:
    """T(IoBB) accuracy and mean IoU/IoBB per finding from per-box records.

    Args:
        records: one row per ground-truth box with ``finding``, ``iobb`` and ``iou``.
    """
    if len(records) == 0:
        return {"n_boxes": 0, "accuracy": [], "per_box": []}
    accuracy = localization_accuracy(records)
    means = records.groupby("finding")[["iou", "iobb"]].mean()
    accuracy = accuracy.join(means.rename(columns={"iou": "mean_iou", "iobb": "mean_iobb"}))
    return _json(
        {
            "n_boxes": int(len(records)),
            "accuracy": _records(accuracy.rename_axis("finding")),
            "per_box": records.to_dict(orient="records"),
        }
    )
