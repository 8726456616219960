"""Which films of a dataset table a reader asked for: the Browse page's filter, as a pure function of the table.

    wanted = FilmFilter(finding="Effusion", views=("PA",), ages=(40, 70))
    table = dataset.csv[select_films(dataset.csv, dataset.labels, wanted)]
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_core.findings import FINDINGS

__all__ = ["ANY_FINDING", "NO_FINDING", "FilmFilter", "age_bounds", "select_films"]

#: ``FilmFilter.finding`` for every film, and for the films NIH labels with none of the 14 findings.
ANY_FINDING = "Any"
NO_FINDING = "No Finding"


@dataclass(frozen=True)
class FilmFilter:
    """What a reader asks for; every field left at its default lets every film through.

    Attributes:
        finding: :data:`ANY_FINDING`, :data:`NO_FINDING`, or one of ``FINDINGS`` (NIH-labelled with it).
        patient: a patient ID as typed ("" for any; surrounding spaces ignored).
        views, sexes: the allowed values of the table's ``view`` and ``sex`` columns (empty for any).
        ages: inclusive (low, high) years; None for any age, films without a recorded age included.
        images: only these image names (e.g. the films with the radiologists' labels); None for any.
    """

    finding: str = ANY_FINDING
    patient: str = ""
    views: Collection[str] = ()
    sexes: Collection[str] = ()
    ages: tuple[float, float] | None = None
    images: Collection[str] | None = None


def age_bounds(table: pd.DataFrame) -> tuple[int, int]:
    """The (low, high) of a slider over the table's ages: the youngest and oldest film, at least one year apart
    ((0, 120) when no film has an age)."""
    ages = table["age"].dropna()
    low, high = (int(ages.min()), int(ages.max())) if len(ages) else (0, 120)
    return low, max(high, low + 1)


def select_films(table: pd.DataFrame, labels: np.ndarray, wanted: FilmFilter) -> np.ndarray:
    """The rows of ``table`` that ``wanted`` lets through, as a boolean mask.

    Args:
        table: a dataset table with ``image``, ``patient_id``, ``view``, ``sex`` and ``age`` columns (``NIHDataset.csv``).
        labels: its (n, 14) 0/1 labels in ``FINDINGS`` order, row-aligned (``NIHDataset.labels``).
        wanted: the filter.

    Raises:
        ValueError: an unknown finding, or labels not row-aligned with the table.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(table), len(FINDINGS)):
        raise ValueError(f"labels must have shape ({len(table)}, {len(FINDINGS)}), got {labels.shape}")
    mask = np.ones(len(table), dtype=bool)
    if wanted.finding == NO_FINDING:
        mask &= labels.sum(axis=1) == 0
    elif wanted.finding != ANY_FINDING:
        if wanted.finding not in FINDINGS:
            raise ValueError(f"unknown finding {wanted.finding!r}: expected {ANY_FINDING!r}, {NO_FINDING!r} or one of FINDINGS")
        mask &= labels[:, FINDINGS.index(wanted.finding)] == 1
    if wanted.patient.strip():
        mask &= table["patient_id"].astype(str).to_numpy() == wanted.patient.strip()
    if wanted.views:
        mask &= table["view"].isin(list(wanted.views)).to_numpy()
    if wanted.sexes:
        mask &= table["sex"].isin(list(wanted.sexes)).to_numpy()
    if wanted.ages is not None:
        mask &= table["age"].between(*wanted.ages).to_numpy()
    if wanted.images is not None:
        mask &= table["image"].isin(list(wanted.images)).to_numpy()
    return mask
