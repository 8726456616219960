"""Agreement on the normal/abnormal decision: each reader against the NIH labels and the AI's triage.

The AI's first answer on a film is its triage verdict ("abnormal" or "no
finding likely", :mod:`cxr_core.evaluation.triage`). A reader's answer to the
same question is read off their ticks: a film is **abnormal** for a reader
when they ticked any finding, normal when they ticked none (the form's "none =
No Finding"). This module says how often each reader's decision agrees with

* the **NIH labels** (a film is abnormal when it has any of the 14 labels);
* the **AI triage verdict** shown with the aided read of the case: the verdict
  recorded with the read (``ai_triage``, schema version 3), or, for a read
  stored before it was recorded, the verdict derived from the stored
  probabilities with a given triage (the bundle's current one: the page says
  how many were derived). A case the AI did not assess, or one with neither,
  is left out of the comparison with the AI.

Both phases are compared on the same cases (only cases with both reads of a
reader count, as in :mod:`cxr_core.reader_study.analysis`), as percent
agreement and Cohen's kappa (scikit-learn). The AI's own verdict against the
NIH labels is given too (reader ``"AI triage"``), for context.

Not against the radiologists' labels (Majkowska et al. 2019): they re-read
four categories (pneumothorax, nodule or mass, airspace opacity, fracture),
not whether a film is normal, so "none of the four" is not a normal film.
Pure functions of the reads frame; nothing here touches the database.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from cxr_core.evaluation.checks import UndefinedMetricWarning
from cxr_core.evaluation.triage import ABNORMAL, NO_FINDING_LIKELY, Triage
from cxr_core.findings import FINDINGS
from cxr_core.reader_study.analysis import kappa
from cxr_core.reader_study.pairing import keyed_reads
from cxr_core.reader_study.records import AI_PREFIX, ALL_READERS, READ_PREFIX, REF_PREFIX

__all__ = ["NIH_LABELS", "AI_TRIAGE", "AI_READER", "triage_verdicts", "triage_agreement"]

#: ``against`` value: the NIH labels (abnormal = any of the 14 findings).
NIH_LABELS = "NIH labels"
#: ``against`` value: the AI's triage verdict shown with the aided read.
AI_TRIAGE = "AI triage"
#: ``reader`` value of the rows comparing the AI's verdict with the NIH labels.
AI_READER = "AI triage"

COLUMNS = ["reader", "phase", "against", "n_cases", "n_reads", "reader_abnormal", "other_abnormal", "agreement", "kappa",
           "ai_verdicts_derived"]


def triage_verdicts(frame: pd.DataFrame, triage: Triage | None = None) -> tuple[pd.Series, pd.Series]:
    """The AI's triage verdict of each read: the recorded one, else derived from its stored probabilities.

    Args:
        frame: reads frame (``ai_<finding>`` and, from schema version 3, ``ai_triage``).
        triage: the triage used where no verdict was recorded; None leaves those reads without one.

    Returns:
        ``(verdict, derived)``: per row, ``"abnormal"``, ``"no finding likely"``,
        ``"not assessed"`` or None; and whether it was derived (not recorded).
    """
    recorded = frame["ai_triage"] if "ai_triage" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    verdict = recorded.where(recorded.notna(), None).astype(object)
    derived = pd.Series(False, index=frame.index)
    columns = [f"{AI_PREFIX}{f}" for f in FINDINGS]
    if triage is not None and all(c in frame.columns for c in columns):
        probabilities = frame[columns].to_numpy(dtype=float)
        missing = verdict.isna().to_numpy() & ~np.isnan(probabilities).any(axis=1)
        if missing.any():
            p = np.atleast_1d(triage.probability(probabilities[missing]))
            verdict[missing] = [triage.verdict(v) for v in p]
            derived[missing] = True
    return verdict, derived


def _row(reader: str, phase: str, against: str, cases: np.ndarray, a: np.ndarray, b: np.ndarray, derived: int) -> dict:
    return {
        "reader": reader, "phase": phase, "against": against, "n_cases": int(np.unique(cases).size), "n_reads": int(a.size),
        "reader_abnormal": float(a.mean()) if a.size else float("nan"),
        "other_abnormal": float(b.mean()) if b.size else float("nan"),
        "agreement": float((a == b).mean()) if a.size else float("nan"),
        "kappa": kappa(a, b), "ai_verdicts_derived": int(derived),
    }


def triage_agreement(frame: pd.DataFrame, *, triage: Triage | None = None) -> pd.DataFrame:
    """Percent agreement and Cohen's kappa on normal/abnormal, per reader and phase, against NIH and the AI.

    Args:
        frame: reads frame from ``ReaderStudyStore.reads_frame`` (the 14
            findings' ``read_``/``ref_`` columns; an expert-reference study's
            frame too: its NIH labels are stored with every case).
        triage: the triage that derives the AI verdict of reads stored without
            one (see :func:`triage_verdicts`); None compares only recorded verdicts.

    Returns:
        Long DataFrame with columns ``reader`` (each reader, :data:`ALL_READERS`
        pooled, then :data:`AI_READER`), ``phase`` (``"unaided"``,
        ``"aided"``; ``"—"`` for the AI's row), ``against``
        (:data:`NIH_LABELS` or :data:`AI_TRIAGE`), ``n_cases``, ``n_reads``,
        ``reader_abnormal`` (share of the reader's films called abnormal),
        ``other_abnormal`` (share abnormal by what it is compared with),
        ``agreement`` (share of films with the same decision), ``kappa`` and
        ``ai_verdicts_derived`` (AI verdicts in the comparison that were
        derived, not recorded). NaN kappa (with an UndefinedMetricWarning)
        where both sides never vary; empty when no case has both reads.

    Raises:
        ValueError: the frame lacks a reader, phase, position or finding column.
    """
    data = keyed_reads(frame, ["position", "phase", *(f"{p}{f}" for p in (READ_PREFIX, REF_PREFIX) for f in FINDINGS)])
    data["_abnormal"] = data[[f"{READ_PREFIX}{f}" for f in FINDINGS]].to_numpy(dtype=float).any(axis=1)
    data["_nih"] = data[[f"{REF_PREFIX}{f}" for f in FINDINGS]].to_numpy(dtype=float).any(axis=1)
    data["_ai"], data["_derived"] = triage_verdicts(data, triage)
    keys = ["_study", "position", "_reader"]
    unaided = data[data["phase"] == "unaided"][[*keys, "_abnormal", "_nih"]]
    aided = data[data["phase"] == "aided"][[*keys, "_abnormal", "_ai", "_derived"]]
    pairs = unaided.merge(aided, on=keys, suffixes=("_u", "_a"))
    if pairs.empty:
        return pd.DataFrame(columns=COLUMNS)
    pairs = pairs.sort_values(["_reader", "_study", "position"], kind="stable").reset_index(drop=True)
    cases = pd.factorize(pd.MultiIndex.from_frame(pairs[["_study", "position"]]), sort=True)[0]
    nih = pairs["_nih"].to_numpy(dtype=bool)
    ai = pairs["_ai"].to_numpy(dtype=object)
    has_ai = np.isin(ai, [ABNORMAL, NO_FINDING_LIKELY])
    ai_abnormal = ai == ABNORMAL
    derived = pairs["_derived"].to_numpy(dtype=bool)

    subsets = [(name, (pairs["_reader"] == name).to_numpy()) for name in dict.fromkeys(pairs["_reader"])]
    subsets.append((ALL_READERS, np.ones(len(pairs), dtype=bool)))
    rows = []
    for reader, mask in subsets:
        for phase in ("unaided", "aided"):
            decided = pairs[f"_abnormal_{phase[0]}"].to_numpy(dtype=bool)
            rows.append(_row(reader, phase, NIH_LABELS, cases[mask], decided[mask], nih[mask], 0))
            both = mask & has_ai
            rows.append(_row(reader, phase, AI_TRIAGE, cases[both], decided[both], ai_abnormal[both], derived[both].sum()))
    # The AI against NIH once per case (its verdict does not depend on the reader).
    first = ~pd.Series(cases).duplicated().to_numpy() & has_ai
    rows.append(_row(AI_READER, "—", NIH_LABELS, cases[first], ai_abnormal[first], nih[first], derived[first].sum()))
    table = pd.DataFrame(rows, columns=COLUMNS)
    undefined = [f"{r.reader} ({r.phase}) vs {r.against}" for r in table.itertuples() if r.n_reads and np.isnan(r.kappa)]
    if undefined:
        warnings.warn(f"Cohen's kappa on normal/abnormal is undefined for {', '.join(undefined[:12])}: both sides gave the same "
                      "single answer throughout", UndefinedMetricWarning, stacklevel=2)
    return table
