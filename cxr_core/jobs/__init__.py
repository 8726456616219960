"""Offline jobs that run a bundle over many films: batch prediction (``training.predict``), evaluating a
bundle on a dataset (``training.evaluate``), gathering the guided tour (``training.tour``) and fitting the
learned input check (``training.fit_ood``). Uses serving and everything below it.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'ood_fit': ('fit_ood',),
    'batch': ('predict_files', 'predict_to_csv', 'iter_predictions', 'list_image_files', 'stable_listing', 'Listing', 'parse_shard', 'merge_shards', 'ShardMergeError', 'run_record_path', 'errors_path', 'IMAGE_COLUMN', 'ERROR_COLUMN', 'WARNING_COLUMN', 'ABNORMAL_COLUMN', 'TRIAGE_COLUMN', 'FLAGGED_COLUMN', 'write_worklist'),
    'bundle_evaluation': ('evaluate_bundle', 'predict_rows', 'intensity_reference', 'localization_records', 'read_predictions', 'PREDICTIONS_FILE'),
})
