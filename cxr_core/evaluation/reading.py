"""What a radiologist is shown for one film, the same on every page, report and CSV.

    policy = ReadingPolicy.from_metadata(predictor.metadata)
    reading = policy.read(probabilities, withheld_because=analysis.withheld_because)
    reading.triage        # "abnormal", "no finding likely" or "not assessed"
    reading.bands         # {finding: "flag" | "possible" | "below" | "no flag set"}
    reading.flagged       # the flagged findings, most probable first

One object turns calibrated probabilities into the words a reader meets, so
the Analyze page, the PDF and JSON reports, Browse, the reader study's AI
panel and ``training.predict`` cannot drift apart (the sentences they
show are :mod:`cxr_core.reporting.words`):

* the **triage** verdict first (:mod:`cxr_core.evaluation.triage`);
* each finding's **band** at the chosen operating point
  (:mod:`cxr_core.evaluation.flags`): ``"specificity"`` (default: flags at a
  validated specificity of 0.95, a "possible" band below) or ``"youden"``
  (the earlier per-finding Youden cuts, kept as an option);
* nothing at all where the input check warned: an image that may not be a
  frontal chest film is **withheld** (triage "not assessed", no flags), unless
  the reader asks to see the model's output anyway.

A bundle evaluated before triage and flags existed has neither: its reading
falls back to the Youden cuts (``operating_point`` says so) and its triage is
"not assessed" until ``python -m training.evaluate`` fits them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr_core.evaluation.flags import FLAG, OPERATING_POINTS, POSSIBLE, FindingFlags, youden_flags
from cxr_core.evaluation.triage import NOT_ASSESSED, Triage
from cxr_core.findings import FINDINGS

__all__ = ["Reading", "ReadingPolicy"]

@dataclass(frozen=True)
class Reading:
    """One film as a reader sees it.

    Attributes:
        triage: ``"abnormal"``, ``"no finding likely"`` or ``"not assessed"``.
        triage_probability: calibrated probability of any finding; None when
            not assessed or the bundle has no triage.
        above_balanced: the probability reaches the balanced point too (None when not assessed).
        bands: {finding: band} in FINDINGS order; every band ``"below"`` ... see
            :data:`cxr_core.evaluation.flags.BANDS`; empty when withheld.
        flagged: the flagged findings, most probable first (empty when withheld).
        possible: the findings in the "possible" band, most probable first.
        operating_point: ``"specificity"`` or ``"youden"``.
        withheld: the output is withheld (the input check warned and the reader did not ask to see it).
        withheld_because: the input check's warnings (also when shown anyway).
    """

    triage: str
    triage_probability: float | None
    above_balanced: bool | None
    bands: dict[str, str]
    flagged: tuple[str, ...]
    possible: tuple[str, ...]
    operating_point: str
    withheld: bool = False
    withheld_because: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ReadingPolicy:
    """The bundle's triage and flags, and the Youden cuts as the alternative operating point.

    Attributes:
        triage: the fitted triage, or None (a bundle evaluated before it existed).
        flags: flags at a validated specificity, or None (likewise).
        youden: the Youden cuts as flags (always there: the bundle's thresholds).
    """

    triage: Triage | None
    flags: FindingFlags | None
    youden: FindingFlags

    @classmethod
    def from_metadata(cls, metadata: Mapping | None, thresholds: Sequence[float] | None = None) -> ReadingPolicy:
        """From a bundle's metadata (``bundle.json``): its ``triage``, ``flags`` and ``thresholds``.

        Args:
            metadata: the bundle's metadata.
            thresholds: the Youden cuts (default: the metadata's; 0.5 each when it has none).
        """
        meta = dict(metadata or {})
        if thresholds is None:
            block = meta.get("thresholds")
            thresholds = block.get("values") if isinstance(block, Mapping) else block
        cuts = np.full(len(FINDINGS), 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
        points = {p.get("finding"): p for p in meta.get("operating_points") or [] if isinstance(p, Mapping)}
        youden = youden_flags(cuts, validation=[{"sensitivity": points.get(f, {}).get("val_sensitivity"),
                                                 "specificity": points.get(f, {}).get("val_specificity")}
                                                for f in FINDINGS])
        triage = Triage.from_dict(meta["triage"]) if meta.get("triage") else None
        flags = FindingFlags.from_dict(meta["flags"]) if meta.get("flags") else None
        return cls(triage=triage, flags=flags, youden=youden)

    @property
    def default_operating_point(self) -> str:
        """``"specificity"`` where the bundle has fitted flags, else ``"youden"``."""
        return "specificity" if self.flags is not None else "youden"

    def cuts(self, operating_point: str | None = None) -> FindingFlags:
        """The flags of an operating point (None: the default).

        Raises:
            ValueError: an unknown operating point, or ``"specificity"`` on a bundle without fitted flags.
        """
        point = operating_point or self.default_operating_point
        if point not in OPERATING_POINTS:
            raise ValueError(f"operating point must be one of {OPERATING_POINTS}, got {point!r}")
        if point == "specificity":
            if self.flags is None:
                raise ValueError("this bundle has no flags at a validated specificity yet; run "
                                 "python -m training.evaluate on its own data to fit them (or use the Youden point)")
            return self.flags
        return self.youden

    def read(
        self,
        probabilities: Mapping[str, float] | Sequence[float],
        *,
        withheld_because: Sequence[str] = (),
        show_anyway: bool = False,
        operating_point: str | None = None,
    ) -> Reading:
        """The reading of one film.

        Args:
            probabilities: calibrated probabilities, {finding: p} or 14 values in FINDINGS order.
            withheld_because: the input check's warnings; any withholds the output.
            show_anyway: the reader asked to see the output although the check warned.
            operating_point: ``"specificity"`` or ``"youden"`` (None: the default).
        """
        if isinstance(probabilities, Mapping):
            values = np.array([float(probabilities[f]) for f in FINDINGS])
        else:
            values = np.asarray(probabilities, dtype=float)
        cuts = self.cuts(operating_point)
        reasons = tuple(withheld_because)
        if reasons and not show_anyway:
            return Reading(triage=NOT_ASSESSED, triage_probability=None, above_balanced=None, bands={}, flagged=(),
                           possible=(), operating_point=cuts.operating_point, withheld=True, withheld_because=reasons)
        bands = dict(zip(FINDINGS, cuts.bands(values).tolist()))
        order = sorted(FINDINGS, key=lambda f: -values[FINDINGS.index(f)])
        if self.triage is None:
            triage, probability, above = NOT_ASSESSED, None, None
        else:
            probability = float(self.triage.probability(values))
            triage, above = self.triage.verdict(probability), probability >= self.triage.balanced
        return Reading(triage=triage, triage_probability=probability, above_balanced=above, bands=bands,
                       flagged=tuple(f for f in order if bands[f] == FLAG),
                       possible=tuple(f for f in order if bands[f] == POSSIBLE),
                       operating_point=cuts.operating_point, withheld=False, withheld_because=reasons)

    def read_batch(self, calibrated: np.ndarray, *, operating_point: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
        """Triage probabilities, verdicts and flagged findings of many assessed films (the CSV's columns).

        Args:
            calibrated: (n, 14) calibrated probabilities.
            operating_point: as :meth:`read`.

        Returns:
            ``(abnormal (n,) with NaN when the bundle has no triage, triage verdicts,
            flagged findings joined by "|" most probable first)``.
        """
        c = np.atleast_2d(np.asarray(calibrated, dtype=float))
        if len(c) == 0:
            return np.zeros(0), [], []
        flagged = self.cuts(operating_point).flagged(c)
        joined = []
        for row, marks in zip(c, flagged):
            order = np.argsort(-row, kind="stable")
            joined.append("|".join(FINDINGS[j] for j in order if marks[j]))
        if self.triage is None:
            return np.full(len(c), np.nan), [NOT_ASSESSED] * len(c), joined
        probability = np.atleast_1d(self.triage.probability(c))
        return probability, [self.triage.verdict(p) for p in probability], joined
