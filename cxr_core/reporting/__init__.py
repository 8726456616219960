"""Output for people: the words a clinician reads (:mod:`words`), overlays, the PDF and JSON reports,
the guided tour's file and its handout. Uses serving's Analysis and the evaluation maths.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'words': ('BAND_LABELS', 'WITHHELD_NOTE', 'flag_words', 'triage_words'),
    'tour_file': ('resolve_image',),
    'report': ('DISCLAIMER', 'REPORT_FORMAT', 'findings_rows', 'heatmap_boxes', 'heatmap_picture', 'json_report', 'model_summary', 'pdf_report'),
    'overlays': ('GROUND_TRUTH_COLOR', 'HEATMAP_BOX_COLOR', 'blend_heatmap', 'colorize_heatmap', 'draw_boxes', 'fit_to', 'gray_to_rgb', 'scale_boxes', 'window_level'),
})
