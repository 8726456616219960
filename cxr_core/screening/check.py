"""The input check of one film, put together: which warnings withhold its reading.

    checks = model_free_warnings(decoded, small_uint8, metadata.get("intensity_reference"))
    checks += learned_warnings(reference.check(features, small)[0])   # the model's own features

The simple rules (:mod:`.rules`) and the intensity check (:mod:`.intensity`) need no model; the learned check
(:mod:`.ood`) reads the reference member's features from the forward pass. Any of their warnings withholds the
reading by default; decoding's notes (a colour file converted, a damaged orientation tag) do not.
"""

from __future__ import annotations

import numpy as np

from cxr_core.data.decoding import DecodedImage
from cxr_core.screening.intensity import intensity_warnings
from cxr_core.screening.ood import OOD_WARNING
from cxr_core.screening.rules import constant_warning, rule_warnings

__all__ = ["model_free_warnings", "learned_warnings"]


def model_free_warnings(decoded: DecodedImage, small_uint8: np.ndarray | None = None,
                        intensity_reference: dict | None = None) -> list[str]:
    """The input check's warnings that need no model: the simple rules (size, shape, near-constant) and the intensity check.

    Args:
        decoded: the decoded film.
        small_uint8: the film resized to the model's size (8-bit), for the intensity check; None skips it.
        intensity_reference: the bundle's ``intensity_reference``; None skips the intensity check.
    """
    notes = rule_warnings(decoded.pixels, decoded.original_shape)
    if small_uint8 is not None and constant_warning(decoded.pixels) is None:  # a blank image is already warned
        notes += intensity_warnings(small_uint8, intensity_reference)
    return notes


def learned_warnings(check: dict | None) -> list[str]:
    """The learned check's warning for one film's numbers (:meth:`.ood.FeatureReference.check`; none without a reference)."""
    return [OOD_WARNING] if check and check.get("unlike_training") else []
