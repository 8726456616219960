"""Data layer: the NIH tables, boxes and cleaning (dataset), the radiologists' labels of Majkowska et al. 2019 (expert_labels), patient-wise splits, image decoding (imageio, with dicom for DICOM files and decoding for what both share), and the ONE preprocessing (the not-a-chest-film rules are cxr_core.screening).

Imports nothing above it: no learning, evaluation, serving or reader-study code.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'dataset': ('NIHDataset', 'CleaningReport', 'read_data_entry', 'read_bbox_list', 'read_split_list', 'labels_from_strings', 'clean_entries', 'scale_boxes', 'index_images', 'stored_image_size', 'find_metadata_file', 'IMAGE_SUFFIXES', 'NIH_RELEASE_SIDE', 'MAX_PLAUSIBLE_AGE'),
    'expert_labels': ('EXPERT_CATEGORIES', 'EXPERT_LABELS_FILE', 'find_expert_labels', 'read_expert_labels'),
    'splits': ('make_split', 'official_split', 'patient_split', 'assert_patient_disjoint', 'PatientLeakError', 'SPLIT_NAMES'),
    'decoding': ('DecodedImage', 'MAX_PIXELS'),
    'imageio': ('decode_image', 'ImageSource', 'MAX_FILE_BYTES'),
    'preprocessing': ('PreprocessConfig', 'preprocess', 'preprocess_pixels', 'resize_to_model', 'to_model_uint8', 'normalize', 'PREPROCESSING_VERSION'),
})
