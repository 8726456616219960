"""The input check: is this a frontal chest film the model can read?

The rules on size, aspect and constant images (:mod:`rules`), the intensity check against the
training films' histogram (:mod:`intensity`), and the learned check on the model's own features
(:mod:`ood`, fitted by :func:`cxr_core.jobs.ood_fit.fit_ood`). Uses data and the bundle format.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'intensity': ('intensity_warnings',),
    'check': ('model_free_warnings', 'learned_warnings'),
    'rules': ('rule_warnings', 'size_warning', 'aspect_warning', 'constant_warning', 'MIN_SHORT_SIDE', 'ASPECT_RANGE'),
    'ood': ('FeatureReference', 'PPCA', 'conformal_threshold', 'fit_reference', 'load_reference', 'save_reference', 'OOD_WARNING', 'OOD_KEY'),
})
