"""Refit a bundle's operating points on a site's fit part: calibration, cuts, flags, triage.

The rules are the ones ``training.evaluate`` applies on NIH validation
(:func:`cxr_core.evaluation.calibration.fit_calibration`,
:func:`cxr_core.evaluation.thresholds.fit_thresholds`,
:func:`cxr_core.evaluation.flags.fit_flags`,
:func:`cxr_core.evaluation.triage.fit_triage`), applied to the site's fit
part, each finding on the films labelled for it. A finding with fewer than
:data:`~cxr_core.adaptation.site_data.MIN_SITE_POSITIVES` positives or
negatives there keeps the shipped calibration, Youden cut and flag (fitted on
NIH validation): a cut from a handful of films is noise. The triage needs
films labelled for all 14 findings (only they can be called "no finding") and
at least 10 abnormal and 10 No-Finding films among them; else the shipped
triage is kept and the reason recorded.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np

from cxr_core.adaptation.site_data import MIN_SITE_POSITIVES
from cxr_core.evaluation.calibration import Calibration, fit_calibration
from cxr_core.evaluation.flags import FindingFlags, fit_flags
from cxr_core.evaluation.thresholds import fit_thresholds
from cxr_core.evaluation.triage import Triage, fit_triage
from cxr_core.findings import FINDINGS

FITTED_ON = "the site's fit part"


@dataclass(frozen=True)
class OperatingPoints:
    """What turns raw probabilities into the reading: calibration, Youden cuts, flags, triage.

    Attributes:
        calibration: per-finding map of raw to calibrated probabilities.
        thresholds: (14,) Youden cuts on calibrated probabilities.
        flags: the flags at a validated specificity, or None.
        triage: the normal/abnormal triage, or None.
        sources: per finding, where its calibration and cuts come from
            (``"site"`` or ``"shipped"``) and why.
        triage_source: ``"site"`` or ``"shipped"``, with ``triage_note``.
    """

    calibration: Calibration
    thresholds: np.ndarray
    flags: FindingFlags | None
    triage: Triage | None
    sources: tuple[dict, ...] = field(default=())
    triage_source: str = "shipped"
    triage_note: str = ""

    def to_dict(self) -> dict:
        """JSON-safe: every fitted value (what the check-part test compares)."""
        return {
            "calibration": self.calibration.to_dict(),
            "thresholds": [float(t) for t in self.thresholds],
            "flags": None if self.flags is None else self.flags.to_dict(),
            "triage": None if self.triage is None else self.triage.to_dict(),
            "sources": list(self.sources), "triage_source": self.triage_source, "triage_note": self.triage_note,
        }


def shipped_operating_points(metadata: dict) -> OperatingPoints:
    """A bundle's own operating points, from its ``bundle.json`` content.

    Raises:
        ValueError: the bundle has no fitted calibration and thresholds (evaluate it first).
    """
    if not metadata.get("calibration") or not metadata.get("thresholds"):
        raise ValueError("this bundle has no fitted calibration and thresholds yet; evaluate it on its own data first "
                         "(python -m training.evaluate)")
    thresholds = metadata["thresholds"]
    thresholds = thresholds.get("values") if isinstance(thresholds, dict) else thresholds
    return OperatingPoints(
        calibration=Calibration.from_dict(metadata["calibration"]),
        thresholds=np.asarray(thresholds, dtype=float),
        flags=FindingFlags.from_dict(metadata["flags"]) if metadata.get("flags") else None,
        triage=Triage.from_dict(metadata["triage"]) if metadata.get("triage") else None,
        sources=tuple({"finding": f, "source": "shipped", "note": "fitted on NIH validation"} for f in FINDINGS),
    )


def _intercept_shift(y: np.ndarray, z: np.ndarray) -> float:
    """The offset ``b`` minimising the log-loss of ``sigmoid(z + b)``: a prevalence shift on the logit (convex, 1-D)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda b: float(np.mean(np.logaddexp(0.0, z + b) - y * (z + b))), bounds=(-10.0, 10.0),
                             method="bounded", options={"xatol": 1e-6})
    return float(result.x)


def _one_finding(y: np.ndarray, p: np.ndarray, shipped: Calibration, j: int, recalibration: str) -> tuple[Calibration, float]:
    """Calibration and Youden cut of finding ``j``, fitted on its labelled fit-part films.

    ``"refit"``: the shipped method (Platt or temperature) fitted anew, the rule of NIH validation; ``"intercept"``:
    the shipped map kept and only its intercept moved (one parameter per finding, for the prevalence).
    """
    finding = FINDINGS[j]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both classes are there (checked by the caller)
        if recalibration == "intercept":
            clipped = np.clip(p, shipped.eps, 1 - shipped.eps)
            z = shipped.slope[j] * (np.log(clipped) - np.log1p(-clipped)) + shipped.intercept[j]  # the shipped logit
            calibration = Calibration("platt", (finding,), [shipped.slope[j]],
                                      [shipped.intercept[j] + _intercept_shift(y, z)], [True], eps=shipped.eps)
        else:
            calibration = fit_calibration(y[:, None], p[:, None], method=shipped.method, findings=(finding,))
        cut = fit_thresholds(y[:, None], calibration.apply(p[:, None]), method="youden")[0]
    return calibration, float(cut)


#: How a finding's calibration is refitted: ``"refit"`` (the shipped method fitted anew) or ``"intercept"``.
RECALIBRATIONS = ("refit", "intercept")


def refit_operating_points(y_fit: np.ndarray, p_fit: np.ndarray, groups_fit, *, shipped: OperatingPoints,
                           min_positives: int = MIN_SITE_POSITIVES, recalibration: str = "refit") -> OperatingPoints:
    """Refit the operating points on the site's fit part (see the module docstring).

    Args:
        y_fit: fit-part labels (n, 14): 1, 0 or NaN (unknown).
        p_fit: the model's RAW probabilities on the same films (n, 14).
        groups_fit: patient id per film (the triage's cross-validation folds).
        shipped: the bundle's own operating points, kept where the site has too few films.
        min_positives: fewer positives or negatives of a finding than this: shipped values kept.
        recalibration: ``"refit"`` (default: the shipped calibration method fitted anew on the site, as on NIH
            validation) or ``"intercept"`` (the shipped map kept, its intercept moved to the site's prevalence:
            one parameter per finding instead of two, less variance on a small fit part).

    Returns:
        the site's :class:`OperatingPoints`.
    """
    if recalibration not in RECALIBRATIONS:
        raise ValueError(f"recalibration must be one of {', '.join(RECALIBRATIONS)}, got {recalibration!r}")
    y_fit, p_fit = np.asarray(y_fit, dtype=float), np.asarray(p_fit, dtype=float)
    method = "platt" if recalibration == "intercept" else shipped.calibration.method
    slope, intercept = np.array(shipped.calibration.slope), np.array(shipped.calibration.intercept)
    fitted = np.array(shipped.calibration.fitted)
    thresholds = np.array(shipped.thresholds, dtype=float)
    sources, refitted = [], np.zeros(len(FINDINGS), dtype=bool)
    for j, finding in enumerate(FINDINGS):
        known = np.isfinite(y_fit[:, j])
        positives, negatives = int(y_fit[known, j].sum()), int(known.sum() - y_fit[known, j].sum())
        if min(positives, negatives) < min_positives:
            sources.append({"finding": finding, "source": "shipped", "positives": positives, "negatives": negatives,
                            "note": f"kept from NIH validation: {positives} positive and {negatives} negative films "
                                    f"in the fit part (at least {min_positives} of each needed)"})
            continue
        calibration, thresholds[j] = _one_finding(y_fit[known, j], p_fit[known, j], shipped.calibration, j,
                                                  recalibration)
        slope[j], intercept[j], fitted[j] = calibration.slope[0], calibration.intercept[0], True
        refitted[j] = True
        sources.append({"finding": finding, "source": "site", "positives": positives, "negatives": negatives,
                        "note": f"refitted ({recalibration}) on {int(known.sum())} fit-part films"})
    calibration = Calibration(method, FINDINGS, slope, intercept, fitted)
    c_fit = calibration.apply(np.clip(p_fit, 0.0, 1.0))
    flags = _refit_flags(y_fit, c_fit, refitted, shipped.flags)
    triage, triage_source, triage_note = _refit_triage(y_fit, c_fit, groups_fit, shipped.triage)
    return OperatingPoints(calibration=calibration, thresholds=thresholds, flags=flags, triage=triage,
                           sources=tuple(sources), triage_source=triage_source, triage_note=triage_note)


def _refit_flags(y_fit: np.ndarray, c_fit: np.ndarray, refitted: np.ndarray, shipped: FindingFlags | None):
    """The flags of the refitted findings from :func:`fit_flags` on their labelled films; the others' shipped flags."""
    if shipped is None and not refitted.any():
        return None
    flag = np.array(shipped.flag) if shipped is not None else np.full(len(FINDINGS), np.nan)
    possible = np.array(shipped.possible) if shipped is not None else np.full(len(FINDINGS), np.nan)
    reasons = list(shipped.reasons) if shipped is not None else ["no flag in the shipped bundle"] * len(FINDINGS)
    validation = list(shipped.validation) if shipped is not None else [{}] * len(FINDINGS)
    for j in np.flatnonzero(refitted):
        known = np.isfinite(y_fit[:, j])
        one = fit_flags(y_fit[known, j][:, None], c_fit[known, j][:, None], findings=(FINDINGS[j],))
        flag[j], possible[j] = one.flag[0], one.possible[0]
        reasons[j] = one.reasons[0]
        validation[j] = {**one.validation[0], "fitted_on": FITTED_ON}
    return FindingFlags(flag=flag, possible=possible, findings=FINDINGS, reasons=tuple(reasons),
                        validation=tuple(validation), fitted_on=FITTED_ON if refitted.any() else "validation")


def _refit_triage(y_fit: np.ndarray, c_fit: np.ndarray, groups_fit, shipped: Triage | None):
    complete = np.isfinite(y_fit).all(axis=1)
    if complete.sum() == 0:
        return shipped, "shipped", ("kept from NIH validation: no fit-part film is labelled for all 14 findings, so "
                                    "none is known to be a No-Finding film")
    try:
        triage = fit_triage(y_fit[complete], c_fit[complete], groups=np.asarray(groups_fit)[complete])
    except ValueError as exc:
        return shipped, "shipped", f"kept from NIH validation: {exc}"
    triage = dataclasses.replace(triage, fitted_on=FITTED_ON)
    return triage, "site", f"refitted on {int(complete.sum())} fit-part films labelled for all 14 findings"
