"""The intensity check: an image whose brightness and contrast are far from the training films'.

The bundle records the per-image mean and standard deviation over its training films
(``intensity_reference`` in ``bundle.json``, measured by :func:`cxr_core.jobs.bundle_evaluation.intensity_reference`);
an image more than four of their spreads away is warned about (inverted, cropped, a photograph ...).
"""

from __future__ import annotations

import numpy as np

__all__ = ["intensity_warnings"]


def intensity_warnings(model_input_uint8: np.ndarray, reference: dict | None) -> list[str]:
    """Warn when an image's intensity statistics are far from the training images'.

    Args:
        model_input_uint8: the resized 8-bit image, (size, size).
        reference: ``{"mean": m, "std": s, "mean_sd": ..., "std_sd": ...}`` of
            per-image mean and standard deviation over the training images (in
            [0, 1] units), as recorded in the bundle; ``None`` skips the check.
    """
    if not reference:
        return []
    x = model_input_uint8.astype(np.float32) / 255.0
    notes = []
    z_mean = (float(x.mean()) - reference["mean"]) / max(reference.get("mean_sd", 0.05), 1e-3)
    z_std = (float(x.std()) - reference["std"]) / max(reference.get("std_sd", 0.03), 1e-3)
    if abs(z_mean) > 4 or abs(z_std) > 4:
        notes.append(
            "This image's brightness and contrast are very unlike the chest X-rays the model was trained on "
            "(it may be inverted, cropped, a photo, or not a frontal chest film). Read the results with care."
        )
    return notes
