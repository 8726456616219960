"""Serving, the model runtime: a bundle's members run on an image (Keras or LiteRT), test-time views, precision, heatmaps, and the Predictor that screens, predicts and reads one film or a batch.

It may use data, the bundle format, learn, evaluation and the input check (screening); output for people (reporting), offline jobs (jobs), the node (pacs) and the app's host sit above it.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'predictor': ('Predictor', 'Analysis', 'Inputs'),
    'members': ('Member', 'MemberRunner'),
    'explain': ('HeadGradcamPlusPlus', 'gradcam_plus_plus_per_finding', 'split_model'),
    'maps': ('resize_map', 'linear_head_cams'),
    'litert': ('ServingFormError', 'MemberServingForm', 'build_serving_form', 'find_serving_form', 'cache_root', 'litert_available'),
    'precision': ('COMPUTE_MODES', 'COMPUTE_DTYPES', 'BFLOAT16_BACKBONES', 'cpu_has_native_bfloat16', 'member_compute_dtype', 'with_bfloat16_trunk'),
})
