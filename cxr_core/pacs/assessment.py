"""What the node says about one film: the numbers its DICOM results carry.

An :class:`Assessment` is the bridge between the :class:`~cxr_core.serving.predictor.Predictor`'s
:class:`~cxr_core.evaluation.reading.Reading` and the DICOM objects built from it (:mod:`cxr_core.pacs.results`),
so the objects never see the model and the model never sees DICOM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cxr_core.evaluation.triage import NOT_ASSESSED, TRIAGE_VERDICTS
from cxr_core.findings import FINDINGS


@dataclass(frozen=True)
class Assessment:
    """One film's results, as the Structured Report states them.

    Attributes:
        triage: exactly one of ``"abnormal"``, ``"no finding likely"``, ``"not assessed"``.
        triage_probability: calibrated probability of any of the 14 findings; None when not assessed.
        probabilities: {finding: calibrated probability} for the 14 findings in FINDINGS order; empty when not
            assessed (the output is withheld, as on the Analyze page and in ``training.predict``'s triage).
        flagged: the findings flagged at the bundle's operating point, most probable first.
        operating_point: the flags' operating point (``"specificity"`` or ``"youden"``).
        reason: why the film is not assessed (the input check's warnings, or why it could not be read); None
            when assessed.
        notes: decoding's notes that do not withhold the output (e.g. a colour file converted).
    """

    triage: str
    triage_probability: float | None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    flagged: tuple[str, ...] = ()
    operating_point: str = "specificity"
    reason: str | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.triage not in TRIAGE_VERDICTS:
            raise ValueError(f"triage must be one of {TRIAGE_VERDICTS}, got {self.triage!r}")
        if self.assessed:
            if tuple(self.probabilities) != FINDINGS:
                raise ValueError("an assessed film needs the 14 findings' probabilities in FINDINGS order")
            if self.triage_probability is None or not math.isfinite(self.triage_probability):
                raise ValueError("an assessed film needs a finite triage probability")
            unknown = set(self.flagged) - set(FINDINGS)
            if unknown:
                raise ValueError(f"unknown flagged findings: {sorted(unknown)}")
        elif not self.reason:
            raise ValueError("a film that is not assessed needs the reason")

    @property
    def assessed(self) -> bool:
        """The model's output is given (triage ``abnormal`` or ``no finding likely``)."""
        return self.triage != NOT_ASSESSED

    @classmethod
    def not_assessed(cls, reason: str, *, operating_point: str = "specificity") -> Assessment:
        """A film whose output is withheld or that could not be read, with the reason."""
        return cls(triage=NOT_ASSESSED, triage_probability=None, operating_point=operating_point, reason=reason)
