"""Finding flags a radiologist can weigh: operating points at a validated specificity.

Youden's J maximises sensitivity + specificity per finding. On 14 findings
with modest discrimination that puts most cuts at a specificity of 0.5-0.8,
and a No-Finding film collects two or three POSITIVE marks, four in five of
them wrong. A mark is only useful to a reader if it is rare on normal films
and says how much it is worth. So each finding gets, fitted on the
VALIDATION split only:

* a **flag** at the lowest cut whose validation specificity is at least
  :data:`FLAG_SPECIFICITY` (0.95): on 20 films without the finding, about one
  is flagged;
* a lower **possible** band at specificity :data:`POSSIBLE_SPECIFICITY` (0.80),
  shown muted, never counted as a flag;
* what a flag is worth, from validation: its PPV and NPV at the split's
  prevalence with Wilson 95% intervals, its positive likelihood ratio and its
  **lift** (PPV / prevalence: "flagged films had this finding 3x as often as
  films overall");
* no flag at all where validation has fewer than :data:`MIN_VAL_POSITIVES`
  positives of the finding (Hernia has 6): a cut and a PPV from a handful of
  films would be noise presented as a measurement. The finding keeps its
  calibrated probability and says why it has no flag.

The earlier Youden cuts stay available as the ``"youden"`` operating point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxr_core.evaluation.checks import _check_probabilities, _check_targets
from cxr_core.evaluation.clinical import rates
from cxr_core.evaluation.thresholds import threshold_at_specificity
from cxr_core.findings import FINDINGS

__all__ = [
    "FLAG_SPECIFICITY", "POSSIBLE_SPECIFICITY", "MIN_VAL_POSITIVES", "FLAG", "POSSIBLE", "BELOW", "NOT_SET",
    "BANDS", "OPERATING_POINTS", "FindingFlags", "fit_flags", "flag_outcomes", "youden_flags",
]

FLAG_SPECIFICITY = 0.95
POSSIBLE_SPECIFICITY = 0.80
#: Fewer validation positives than this: no flag (and no PPV) for the finding.
MIN_VAL_POSITIVES = 10

FLAG = "flag"
POSSIBLE = "possible"
BELOW = "below"
NOT_SET = "no flag set"
#: Every band a finding can be in, strongest first.
BANDS: tuple[str, ...] = (FLAG, POSSIBLE, BELOW, NOT_SET)
#: ``"specificity"``: flags at a validated specificity (default); ``"youden"``: the earlier Youden's J cuts.
OPERATING_POINTS: tuple[str, ...] = ("specificity", "youden")


@dataclass(frozen=True)
class FindingFlags:
    """Per-finding flag and "possible" cuts on calibrated probabilities, with what each is worth.

    Attributes:
        flag: shape (14,), the flag cut per finding; NaN where none is set.
        possible: shape (14,), the "possible" cut; NaN where none is set.
        findings: the finding names.
        operating_point: ``"specificity"`` or ``"youden"``.
        target_specificity, possible_specificity: the validation targets (None for Youden).
        min_val_positives: fewer validation positives than this: no cut.
        reasons: per finding, why it has no flag ("" where it has one).
        validation: per finding, the flag's validation rates
            (:func:`cxr_core.evaluation.clinical.rates`) plus ``lift``; {} where none is set.
        fitted_on: always ``"validation"``.
    """

    flag: np.ndarray
    possible: np.ndarray
    findings: tuple[str, ...] = FINDINGS
    operating_point: str = "specificity"
    target_specificity: float | None = FLAG_SPECIFICITY
    possible_specificity: float | None = POSSIBLE_SPECIFICITY
    min_val_positives: int = MIN_VAL_POSITIVES
    reasons: tuple[str, ...] = ()
    validation: tuple[dict, ...] = ()
    fitted_on: str = "validation"

    def __post_init__(self) -> None:
        k = len(self.findings)
        for name in ("flag", "possible"):
            value = np.asarray(getattr(self, name), dtype=float).copy()
            if value.shape != (k,):
                raise ValueError(f"{name} must have shape ({k},), got {value.shape}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if self.operating_point not in OPERATING_POINTS:
            raise ValueError(f"operating_point must be one of {OPERATING_POINTS}, got {self.operating_point!r}")
        object.__setattr__(self, "findings", tuple(self.findings))
        object.__setattr__(self, "reasons", tuple(self.reasons) or ("",) * k)
        object.__setattr__(self, "validation", tuple(dict(v) for v in self.validation) or ({},) * k)
        if len(self.reasons) != k or len(self.validation) != k:
            raise ValueError(f"reasons and validation need one entry per finding ({k})")

    def bands(self, calibrated) -> np.ndarray:
        """The band of each finding: ``"flag"``, ``"possible"``, ``"below"`` or ``"no flag set"``.

        Args:
            calibrated: calibrated probabilities, (n, 14) or (14,).

        Returns:
            str array of the same shape.
        """
        c = np.asarray(calibrated, dtype=float)
        if c.shape[-1:] != (len(self.findings),) or c.ndim not in (1, 2):
            raise ValueError(f"expected (..., {len(self.findings)}) probabilities, got shape {c.shape}")
        _check_probabilities(c, name="calibrated")
        with np.errstate(invalid="ignore"):  # NaN cuts compare False: handled by NOT_SET below
            out = np.where(c >= self.flag, FLAG, np.where(c >= self.possible, POSSIBLE, BELOW)).astype(object)
        out[..., np.isnan(self.flag)] = NOT_SET
        return out

    def flagged(self, calibrated) -> np.ndarray:
        """bool, the shape of ``calibrated``: the finding is flagged."""
        return self.bands(calibrated) == FLAG

    def to_dict(self) -> dict:
        """JSON-safe, for ``bundle.json`` (NaN cuts as null); see :meth:`from_dict`."""
        def number(v):
            return None if not np.isfinite(v) else float(v)

        return {
            "operating_point": self.operating_point, "fitted_on": self.fitted_on,
            "target_specificity": self.target_specificity, "possible_specificity": self.possible_specificity,
            "min_val_positives": self.min_val_positives,
            "findings": [
                {"finding": f, "flag": number(self.flag[i]), "possible": number(self.possible[i]),
                 "reason": self.reasons[i], "validation": self.validation[i]}
                for i, f in enumerate(self.findings)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> FindingFlags:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: a key is missing or a value is not usable.
        """
        try:
            rows = list(data["findings"])
            return cls(
                flag=np.array([np.nan if r["flag"] is None else r["flag"] for r in rows], dtype=float),
                possible=np.array([np.nan if r["possible"] is None else r["possible"] for r in rows], dtype=float),
                findings=tuple(r["finding"] for r in rows), operating_point=data.get("operating_point", "specificity"),
                target_specificity=data.get("target_specificity"), possible_specificity=data.get("possible_specificity"),
                min_val_positives=int(data.get("min_val_positives", MIN_VAL_POSITIVES)),
                reasons=tuple(r.get("reason", "") for r in rows), validation=tuple(r.get("validation") or {} for r in rows),
                fitted_on=data.get("fitted_on", "validation"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the flags block of the bundle is not usable: {exc}") from exc


def _worth(y: np.ndarray, c: np.ndarray, cut: float) -> dict:
    stats = rates(y, c >= cut)
    stats["lift"] = stats["ppv"] / stats["prevalence"] if stats["prevalence"] else float("nan")
    return stats


def fit_flags(
    y_val,
    calibrated_val,
    *,
    target_specificity: float = FLAG_SPECIFICITY,
    possible_specificity: float = POSSIBLE_SPECIFICITY,
    min_val_positives: int = MIN_VAL_POSITIVES,
    findings: Sequence[str] = FINDINGS,
) -> FindingFlags:
    """Fit each finding's flag and "possible" cuts on validation films.

    Args:
        y_val: validation labels, shape (n, 14).
        calibrated_val: calibrated probabilities on the same films, (n, 14).
        target_specificity: the flag's validation specificity, in (0, 1).
        possible_specificity: the "possible" band's, below ``target_specificity``.
        min_val_positives: a finding with fewer validation positives gets no cut.
        findings: column names.
    """
    if not 0 < possible_specificity < target_specificity < 1:
        raise ValueError(f"need 0 < possible_specificity < target_specificity < 1, got {possible_specificity} and "
                         f"{target_specificity}")
    y, c = _check_targets(y_val, calibrated_val, other_name="calibrated_val")
    _check_probabilities(c, name="calibrated_val")
    k = y.shape[1]
    flag, possible = np.full(k, np.nan), np.full(k, np.nan)
    reasons, validation = [""] * k, [{}] * k
    for j in range(k):
        n_pos, n_neg = int(y[:, j].sum()), int((~y[:, j]).sum())
        if n_pos < min_val_positives or n_neg == 0:
            reasons[j] = (f"too few positives in validation ({n_pos}; at least {min_val_positives} needed) to set "
                          "and check a flag")
            continue
        cut = threshold_at_specificity(y[:, j], c[:, j], target_specificity)
        if not np.isfinite(cut):
            reasons[j] = f"no cut reaches specificity {target_specificity} on validation"
            continue
        flag[j] = cut
        possible[j] = min(threshold_at_specificity(y[:, j], c[:, j], possible_specificity), cut)
        validation[j] = _worth(y[:, j], c[:, j], cut)
    return FindingFlags(flag=flag, possible=possible, findings=tuple(findings), target_specificity=target_specificity,
                        possible_specificity=possible_specificity, min_val_positives=min_val_positives,
                        reasons=tuple(reasons), validation=tuple(validation))


def youden_flags(thresholds, *, validation: Sequence[dict] = (), findings: Sequence[str] = FINDINGS) -> FindingFlags:
    """The earlier design as flags: one cut per finding (Youden's J), no "possible" band.

    Args:
        thresholds: the bundle's Youden cuts, shape (14,).
        validation: per finding, what its cut had on validation (e.g. the
            bundle's ``operating_points``' sensitivity and specificity); none by default.
        findings: column names.
    """
    cuts = np.asarray(thresholds, dtype=float)
    return FindingFlags(flag=cuts, possible=cuts, findings=tuple(findings), operating_point="youden",
                        target_specificity=None, possible_specificity=None, min_val_positives=0,
                        validation=tuple(validation))


def flag_outcomes(labels, flagged) -> np.ndarray:
    """Each finding's flag against its label: ``"TP"`` flagged and labelled, ``"FP"`` flagged only, ``"FN"`` labelled
    only (possible, below, or no flag set), ``"TN"`` neither.

    Args:
        labels, flagged: boolean arrays of the same shape (one film's findings, or films x findings).
    """
    y, f = np.asarray(labels, dtype=bool), np.asarray(flagged, dtype=bool)
    if y.shape != f.shape:
        raise ValueError(f"labels and flags must have the same shape, got {y.shape} and {f.shape}")
    return np.select([y & f, ~y & f, y & ~f], ["TP", "FP", "FN"], "TN")
