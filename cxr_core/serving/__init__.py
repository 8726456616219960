"""Serving: the Predictor of a bundle, Grad-CAM++ explanations, overlays, reports, batch prediction, and evaluating a bundle on a dataset.

It may use data, learn and evaluation; in cxr_core only the experiment harness (cxr_core.experiments) imports it.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "predictor": ("Predictor", "Analysis", "intensity_warnings"),
    "members": ("Member", "MemberRunner"),
    "explain": ("HeadGradcamPlusPlus", "gradcam_plus_plus_per_finding", "split_model"),
    "maps": ("resize_map", "linear_head_cams"),
    "litert": ("ServingFormError", "MemberServingForm", "build_serving_form", "find_serving_form",
               "cache_root", "litert_available"),
    "overlays": ("GROUND_TRUTH_COLOR", "HEATMAP_BOX_COLOR", "blend_heatmap", "colorize_heatmap", "draw_boxes", "fit_to",
                 "gray_to_rgb", "scale_boxes", "window_level"),
    "report": ("DISCLAIMER", "REPORT_FORMAT", "findings_rows", "heatmap_boxes", "heatmap_picture", "json_report",
               "model_summary", "pdf_report"),
    "batch": ("predict_files", "predict_to_csv", "iter_predictions", "list_image_files", "stable_listing", "Listing",
              "parse_shard", "merge_shards", "ShardMergeError", "run_record_path", "errors_path", "IMAGE_COLUMN", "ERROR_COLUMN", "WARNING_COLUMN",
              "ABNORMAL_COLUMN", "TRIAGE_COLUMN", "FLAGGED_COLUMN", "write_worklist"),
    "reading": ("Reading", "ReadingPolicy", "flag_words", "triage_words", "WITHHELD_NOTE"),
    "ood": ("FeatureReference", "PPCA", "conformal_threshold", "fit_reference", "load_reference", "save_reference",
            "OOD_WARNING", "OOD_KEY"),
    "ood_fit": ("fit_ood",),
    "precision": ("COMPUTE_MODES", "COMPUTE_DTYPES", "BFLOAT16_BACKBONES", "cpu_has_native_bfloat16", "member_compute_dtype",
                  "with_bfloat16_trunk"),
    "bundle_evaluation": ("evaluate_bundle", "predict_rows", "intensity_reference", "localization_records", "read_predictions",
                          "PREDICTIONS_FILE"),
})
