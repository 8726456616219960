"""Adaptation to a new site: a hospital's own labelled films in, local validation and a never-worse adapted bundle out.

``python -m training.adapt`` reads the site's films and labels
(:mod:`~cxr_core.adaptation.site_data`), splits them patient-wise into a fit
part and a check part, measures the shipped bundle on the check part, refits
the calibration, the cuts, the flags and the triage on the fit part
(:mod:`~cxr_core.adaptation.refit`), optionally fine-tunes the members' heads
or last block on it (:mod:`~cxr_core.adaptation.finetune`), and writes the
adapted bundle only where the check part says it is not worse
(:mod:`~cxr_core.adaptation.scores`, :mod:`~cxr_core.adaptation.adapt`).

It may use data, learn, evaluation and serving; nothing in cxr_core imports it.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "site_data": ("SiteFilms", "SiteDataError", "read_site", "split_site", "MIN_SITE_POSITIVES"),
    "refit": ("OperatingPoints", "refit_operating_points", "shipped_operating_points"),
    "scores": ("check_scores", "paired_mean_auroc_difference", "never_worse", "NON_INFERIORITY_MARGIN"),
    "finetune": ("FINE_TUNE_MODES", "LAST_BLOCK_CUTS", "fine_tune_members"),
    "adapt": ("adapt_bundle", "REPORT_FILE", "REPORT_MARKDOWN", "SITE_KEY", "read_site_report"),
})
