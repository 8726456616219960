"""The reads of a reader study, paired: each case's unaided and aided read by the same reader, side by side.

:func:`pair_reads` checks a reads frame (:meth:`cxr_core.reader_study.store.ReaderStudyStore.reads_frame`,
or its expert-category form from :func:`cxr_core.reader_study.reference.expert_reference_frame`)
and lines up the two reads of every (reader, case) that has both: what every
table of :mod:`cxr_core.reader_study.analysis` is computed on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_core.findings import FINDINGS
from cxr_core.reader_study.cases import READER_CATEGORIES
from cxr_core.reader_study.records import (
    AI_PREFIX,
    AI_THRESHOLD_PREFIX,
    ALL_READERS,
    PHASES,
    READ_PREFIX,
    REF_PREFIX,
)

__all__ = ["Paired", "pair_reads", "keyed_reads", "label_columns", "frame_labels"]


@dataclass(frozen=True)
class Paired:
    """Both reads of every (reader, case) that has both; all arrays share row order.

    ``reader`` and ``case`` index ``readers`` and the sorted case keys; the
    (n_pairs, 14) arrays are bool (reads, reference) or float (AI, NaN if none).
    """

    readers: tuple[str, ...]
    labels: tuple[str, ...]
    n_cases: int
    reader: np.ndarray
    case: np.ndarray
    ref: np.ndarray
    unaided: np.ndarray
    aided: np.ndarray
    ai_prob: np.ndarray
    ai_threshold: np.ndarray
    seconds_unaided: np.ndarray
    seconds_aided: np.ndarray

    def count(self, mask: np.ndarray) -> dict[str, int]:
        """``n_cases`` (distinct cases) and ``n_reads`` (reader-case pairs) under a row mask."""
        return {"n_cases": int(np.unique(self.case[mask]).size), "n_reads": int(mask.sum())}

    def subsets(self) -> list[tuple[str, np.ndarray]]:
        """(reader label, row mask): every reader, then all readers pooled."""
        out = [(name, self.reader == k) for k, name in enumerate(self.readers)]
        out.append((ALL_READERS, np.ones(len(self.reader), dtype=bool)))
        return out


def label_columns(prefix: str, labels: Sequence[str] = FINDINGS) -> list[str]:
    return [f"{prefix}{f}" for f in labels]


def frame_labels(frame: pd.DataFrame) -> tuple[str, ...]:
    """What the frame's ``read_``/``ref_`` columns are about: the 14 findings, or the expert categories."""
    if all(c in frame.columns for c in label_columns(READ_PREFIX)):
        return FINDINGS
    if all(c in frame.columns for c in label_columns(READ_PREFIX, READER_CATEGORIES)):
        return READER_CATEGORIES
    return FINDINGS  # pair_reads names the missing columns


def keyed_reads(frame: pd.DataFrame, needed: Sequence[str]) -> pd.DataFrame:
    """A copy of a reads frame with its keys ``_reader`` (name, else id, as text) and ``_study`` (0 when absent).

    Raises:
        ValueError: a column of ``needed``, or the reader, is missing.
    """
    missing = [c for c in needed if c not in frame.columns]
    if "reader" not in frame.columns and "reader_id" not in frame.columns:
        missing.append("reader")
    if missing:
        raise ValueError(f"not a reads frame (from ReaderStudyStore.reads_frame): missing columns {missing}")
    data = frame.copy()
    data["_reader"] = (data["reader"] if "reader" in data.columns else data["reader_id"]).astype(str)
    data["_study"] = data["study_id"] if "study_id" in data.columns else 0
    return data


def pair_reads(frame: pd.DataFrame) -> Paired:
    """Check a reads frame and line up each case's unaided and aided read.

    Raises:
        ValueError: missing columns, a read stored twice, values not 0/1, or
            no case with both reads.
    """
    labels = frame_labels(frame)
    data = keyed_reads(frame, ["position", "phase", "seconds", *label_columns(READ_PREFIX, labels), *label_columns(REF_PREFIX, labels)])
    bad_phase = sorted(set(data["phase"]) - set(PHASES))
    if bad_phase:
        raise ValueError(f"unknown phase values {bad_phase}; expected {PHASES}")
    keys = ["_study", "position", "_reader"]
    if data.duplicated([*keys, "phase"]).any():
        raise ValueError("the frame holds the same read twice (same study, case, reader and phase)")
    for prefix in (READ_PREFIX, REF_PREFIX):
        if not np.isin(data[label_columns(prefix, labels)].to_numpy(dtype=float), (0.0, 1.0)).all():
            raise ValueError(f"{prefix}<finding> columns must contain only 0 and 1")
    for prefix in (AI_PREFIX, AI_THRESHOLD_PREFIX):
        for column in label_columns(prefix, labels):
            if column not in data.columns:
                data[column] = np.nan

    unaided = data[data["phase"] == "unaided"]
    aided = data[data["phase"] == "aided"]
    pairs = unaided.merge(aided, on=keys, suffixes=("_u", "_a"), validate="one_to_one")
    if pairs.empty:
        raise ValueError("no case has both an unaided and an aided read yet; there is nothing to compare")
    pairs = pairs.sort_values(["_reader", "_study", "position"], kind="stable").reset_index(drop=True)
    readers, reader_index = np.unique(pairs["_reader"].to_numpy(dtype=str), return_inverse=True)
    case_keys = pd.MultiIndex.from_frame(pairs[["_study", "position"]])
    case_index, unique_cases = pd.factorize(case_keys, sort=True)

    def block(prefix: str, suffix: str, dtype) -> np.ndarray:
        return pairs[[f"{c}{suffix}" for c in label_columns(prefix, labels)]].to_numpy(dtype=dtype)

    ref = block(REF_PREFIX, "_u", float)
    if not np.array_equal(ref, block(REF_PREFIX, "_a", float)):
        raise ValueError("the two reads of a case carry different reference labels")
    # The AI's output does not depend on the phase; it is recorded with the aided read.
    return Paired(
        readers=tuple(str(r) for r in readers),
        labels=labels,
        n_cases=len(unique_cases),
        reader=reader_index,
        case=np.asarray(case_index),
        ref=ref.astype(bool),
        unaided=block(READ_PREFIX, "_u", float).astype(bool),
        aided=block(READ_PREFIX, "_a", float).astype(bool),
        ai_prob=block(AI_PREFIX, "_a", float),
        ai_threshold=block(AI_THRESHOLD_PREFIX, "_a", float),
        seconds_unaided=pairs["seconds_u"].to_numpy(dtype=float),
        seconds_aided=pairs["seconds_a"].to_numpy(dtype=float),
    )
