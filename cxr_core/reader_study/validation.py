"""Checks of what a reader-study page submits: names, 0/1 finding vectors, AI probabilities, confidence, reading time.

Each returns the cleaned value or raises ``ValueError`` with a message for the person at the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cxr_core.findings import FINDINGS
from cxr_core.reader_study.records import CONFIDENCE_LEVELS, MAX_NAME_LENGTH

__all__ = ["clean_name", "check_bits", "check_probabilities", "check_confidence", "check_seconds"]


def clean_name(name, *, what: str) -> str:
    """Strip and collapse whitespace; refuse empty, over-long or control-character names."""
    if not isinstance(name, str):
        raise ValueError(f"{what} name must be text, got {type(name).__name__}")
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ValueError(f"{what} name is empty: type a name (e.g. initials) before starting")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} name is {len(cleaned)} characters long; use at most {MAX_NAME_LENGTH}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in cleaned):
        raise ValueError(f"{what} name contains control characters")
    return cleaned


def _finding_vector(values, *, what: str, kind: str) -> np.ndarray:
    """``values`` as floats, one per finding in FINDINGS order; ``kind`` says what they should be, for the message."""
    try:
        array = np.asarray(list(values), dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be {len(FINDINGS)} {kind} in FINDINGS order") from exc
    if array.shape != (len(FINDINGS),):
        raise ValueError(f"{what} must have one value per finding ({len(FINDINGS)}), got {array.size}")
    return array


def check_bits(values, *, what: str) -> tuple[int, ...]:
    """A vector of 14 values that are each 0 or 1 (bools and 0.0/1.0 accepted)."""
    if isinstance(values, (str, bytes, Mapping)):
        raise ValueError(f"{what} must be {len(FINDINGS)} values of 0 or 1 in FINDINGS order, got {type(values).__name__}")
    array = _finding_vector(values, what=what, kind="values of 0 or 1")
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{what} must contain only 0 and 1 (ticked or not)")
    return tuple(int(v) for v in array)


def check_probabilities(values, *, what: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, Mapping):
        missing = [f for f in FINDINGS if f not in values]
        if missing or len(values) != len(FINDINGS):
            raise ValueError(f"{what} must have exactly the {len(FINDINGS)} findings as keys (missing {missing})")
        values = [values[f] for f in FINDINGS]
    array = _finding_vector(values, what=what, kind="numbers")
    if not np.isfinite(array).all() or (array < 0).any() or (array > 1).any():
        raise ValueError(f"{what} must be finite values in [0, 1]")
    return tuple(float(v) for v in array)


def check_confidence(confidence) -> int:
    # bool is an int subclass: True is not a confidence level.
    if isinstance(confidence, bool) or not isinstance(confidence, (int, np.integer)) or int(confidence) not in CONFIDENCE_LEVELS:
        raise ValueError(f"confidence must be a whole number from 1 (guessing) to 5 (certain), got {confidence!r}")
    return int(confidence)


def check_seconds(seconds) -> float:
    try:
        value = float(seconds)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"seconds must be a number, got {seconds!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"seconds must be a finite, non-negative reading time, got {seconds!r}")
    return value
