"""Evaluation maths: per-finding metrics with patient-level bootstrap CIs, operating thresholds, calibration, localisation scoring, the comparison with radiologists' labels (expert), the evaluation of a set of predictions, and the reading of one film (triage and flags at an operating point).

Works on arrays and tables; it never loads a model (applying a bundle to data is cxr_core.jobs.bundle_evaluation).
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "checks": ("UndefinedMetricWarning",),
    "metrics": ("ConfidenceIntervals", "auroc", "auprc", "bootstrap_ci", "macro_mean", "binary_report"),
    "curves": ("roc_curve_points", "pr_curve_points"),
    "subgroups": ("subgroup_auroc", "age_band"),
    "thresholds": ("THRESHOLD_METHODS", "DEFAULT_THRESHOLD", "fit_thresholds", "apply_thresholds"),
    "calibration": ("CALIBRATION_METHODS", "Calibration", "fit_calibration", "fit_intercept_shift",
                    "expected_calibration_error", "brier_score", "reliability_curve"),
    "localization": ("IOBB_THRESHOLDS", "heatmap_to_boxes", "iou", "iobb", "best_iobb", "localization_accuracy"),
    "expert": ("EXPERT_MAPPING", "COMBINE_METHODS", "category_scores", "category_labels", "cohen_kappa", "label_audit",
               "expert_auroc", "expert_report", "reference_table", "audit_table", "expert_markdown"),
    "evaluate": ("evaluate_predictions", "localization_report", "PUBLISHED_AUROC"),
    "reading": ("Reading", "ReadingPolicy"),
})
