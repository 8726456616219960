"""The reference standard a reader study is measured against: NIH's labels or the radiologists' (Majkowska et al. 2019).

The caveat shown beside each (:func:`reference_caveat`), the reads frame
re-expressed in the expert categories for a study whose reference is the
radiologists' labels (:func:`expert_reference_frame`), and which reference a
frame's study uses (:func:`study_reference`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.evaluation.expert import category_labels
from cxr_core.evaluation.thresholds import DEFAULT_THRESHOLD
from cxr_core.findings import FINDINGS
from cxr_core.reader_study.cases import READER_CATEGORIES
from cxr_core.reader_study.pairing import label_columns
from cxr_core.reader_study.records import (
    AI_PREFIX,
    AI_THRESHOLD_PREFIX,
    EXPERT_PREFIX,
    READ_PREFIX,
    REF_PREFIX,
    REFERENCES,
)

__all__ = ["LABEL_NOISE_CAVEAT", "EXPERT_REFERENCE_NOTE", "reference_caveat", "expert_reference_frame", "study_reference"]

#: Shown beside every reader-study result.
LABEL_NOISE_CAVEAT = (
    "The reference labels are the NIH ChestX-ray14 labels, which were text-mined "
    "from radiology reports by natural-language processing, not assigned by "
    "radiologists reading these images; independent re-reads found many of them "
    "wrong, some findings far more than others. They are a noisy reference, not "
    "ground truth: a reader who disagrees with a label may be right. Read every "
    "sensitivity, specificity and F1 here as agreement with the NIH labels, and "
    "a change between unaided and aided reads as a change in that agreement."
)

#: Shown beside the results of a study whose reference is the radiologists' labels.
EXPERT_REFERENCE_NOTE = (
    "The reference labels are radiologists' labels: Google Health's adjudicated "
    "re-reads of these NIH images (Majkowska et al., Radiology 2019), for three "
    "categories a reader's answers can be scored on: Pneumothorax, Nodule or mass "
    "(a tick of Nodule or Mass), Airspace opacity (a tick of Consolidation, "
    "Pneumonia, Infiltration or Atelectasis). Other ticked findings are not scored. "
    "The study's cases were chosen among the images the radiologists labelled. "
    "Adjudicated reads are a better reference than the text-mined NIH labels, not "
    "ground truth."
)


def reference_caveat(reference: str) -> str:
    """The caveat to show beside results measured against ``reference`` ("nih" or "expert")."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    return EXPERT_REFERENCE_NOTE if reference == "expert" else LABEL_NOISE_CAVEAT


def expert_reference_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The reads frame re-expressed in the expert categories, against the radiologists' labels.

    For each category of :data:`~cxr_core.reader_study.cases.READER_CATEGORIES`:
    ``read_<category>`` is 1 when the reader ticked any of its findings
    (:data:`cxr_core.evaluation.expert.EXPERT_MAPPING`; Nodule or Mass, ...),
    ``ref_<category>`` the radiologists' label (``expert_<category>``), and
    ``ai_<category>`` the AI's **call** (1 when any of its findings was at or
    above the threshold recorded with the read, 0.5 where none was) with
    ``ai_threshold_<category>`` 0.5, so the analysis turns it into the same
    call. The 14 finding columns are dropped; every function of
    :mod:`cxr_core.reader_study.analysis` then runs over the categories.

    Raises:
        ValueError: a case without the radiologists' labels (the study's
            reference is not ``"expert"``).
    """
    expert = [f"{EXPERT_PREFIX}{c}" for c in READER_CATEGORIES]
    missing = [c for c in expert if c not in frame.columns]
    if missing or frame[expert].isna().any().any():
        raise ValueError("these reads' cases do not all have the radiologists' labels; "
                         "an expert reference needs a study created with reference='expert'")
    wanted = [EXPERT_CATEGORIES.index(c) for c in READER_CATEGORIES]
    finding_columns = {f"{p}{f}" for p in (READ_PREFIX, REF_PREFIX, AI_PREFIX, AI_THRESHOLD_PREFIX) for f in FINDINGS}
    out = frame[[c for c in frame.columns if c not in finding_columns]].copy()
    reads = category_labels(frame[label_columns(READ_PREFIX)].to_numpy(dtype=float))[:, wanted]
    probabilities = frame.reindex(columns=label_columns(AI_PREFIX)).to_numpy(dtype=float)
    cuts = frame.reindex(columns=label_columns(AI_THRESHOLD_PREFIX)).to_numpy(dtype=float)
    has_ai = ~np.isnan(probabilities).any(axis=1)
    with np.errstate(invalid="ignore"):
        calls = probabilities >= np.where(np.isnan(cuts), DEFAULT_THRESHOLD, cuts)
    ai = np.where(has_ai[:, None], category_labels(calls.astype(float))[:, wanted], np.nan)
    for k, category in enumerate(READER_CATEGORIES):
        out[f"{READ_PREFIX}{category}"] = reads[:, k].astype(int)
        out[f"{REF_PREFIX}{category}"] = frame[f"{EXPERT_PREFIX}{category}"].astype(int).to_numpy()
        out[f"{AI_PREFIX}{category}"] = ai[:, k]
        out[f"{AI_THRESHOLD_PREFIX}{category}"] = np.where(has_ai, 0.5, np.nan)
    return out


def study_reference(frame: pd.DataFrame, reference: str | None) -> str:
    if reference is None:
        stored = set(frame["reference"].dropna()) if "reference" in frame.columns else set()
        if len(stored) > 1:
            raise ValueError(f"the frame mixes studies with different references {sorted(stored)}; analyse one study at a time")
        reference = stored.pop() if stored else "nih"
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    return reference
