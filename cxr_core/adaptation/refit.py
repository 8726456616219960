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

A hundred fit films are few: refitting two Platt parameters per finding on
them adds more noise than a mild shift removes, and a rule-out point placed on
90 abnormal films moves with the few films near its cut. So by default
(``recalibration="auto"``, ``triage="auto"``) nothing is moved that the fit
part itself does not support, judged by patient-grouped cross-validation
INSIDE the fit part (:data:`CV_FOLDS` folds; the check part plays no part):

* **calibration**, per finding: three candidates, in order of parameters: the
  shipped map kept (0), its intercept moved (1), the shipped method fitted
  anew (2). Each is scored by its out-of-fold log loss; a candidate replaces
  the simpler one chosen so far only when its out-of-fold gain exceeds one
  standard error of that gain (patients as the unit: the one-standard-error
  rule). The finding's Youden cut and flag are refitted only when its
  calibration moves; else all three stay as shipped.
* **triage**: the shipped triage (its score and rule-out point, read on the
  adapted calibrated probabilities) is kept unless a triage refitted by
  :func:`fit_triage` on the other folds misses no larger share of the held
  fold's abnormal films at its rule-out point, pooled over the folds, than the
  shipped one does on the same films, AND the Wilson 95% lower bound of
  that out-of-fold sensitivity reaches the rule-out target (0.95), the very
  requirement the rule-out point is placed by. On ~90 abnormal fit films the
  bound reaches 0.95 only when no held-out abnormal film is missed: a fit part
  that small rarely supports moving the rule-out point.

``recalibration="refit"`` / ``"intercept"`` and ``triage="refit"`` force the
earlier behaviour (every finding with enough films refitted that way; the
triage always refitted).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np

from cxr_core.adaptation.site_data import MIN_SITE_POSITIVES
from cxr_core.evaluation.calibration import Calibration, fit_calibration, fit_intercept_shift
from cxr_core.evaluation.clinical import wilson_interval
from cxr_core.evaluation.flags import FindingFlags, fit_flags
from cxr_core.evaluation.thresholds import fit_thresholds
from cxr_core.evaluation.triage import RULE_OUT_SENSITIVITY, Triage, abnormal_labels, fit_triage, patient_folds
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


def _one_finding(y: np.ndarray, p: np.ndarray, shipped: Calibration, j: int, recalibration: str) -> tuple[Calibration, float]:
    """Calibration and Youden cut of finding ``j``, fitted on its labelled fit-part films.

    ``"refit"``: the shipped method (Platt or temperature) fitted anew, the rule of NIH validation; ``"intercept"``:
    the shipped map kept and only its intercept moved (one parameter per finding, for the prevalence).
    """
    finding = FINDINGS[j]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both classes are there (checked by the caller)
        if recalibration == "intercept":
            z = shipped.of_finding(j).logits(p[:, None])[:, 0]  # the shipped calibrated logit
            calibration = Calibration("platt", (finding,), [shipped.slope[j]],
                                      [shipped.intercept[j] + fit_intercept_shift(y, z)], [True], eps=shipped.eps)
        else:
            calibration = fit_calibration(y[:, None], p[:, None], method=shipped.method, findings=(finding,))
        cut = fit_thresholds(y[:, None], calibration.apply(p[:, None]), method="youden")[0]
    return calibration, float(cut)


#: How a finding's calibration is refitted: ``"auto"`` (chosen per finding by cross-validation inside the fit part),
#: ``"refit"`` (the shipped method fitted anew) or ``"intercept"`` (the shipped map, its intercept moved).
RECALIBRATIONS = ("auto", "refit", "intercept")
#: Whether the triage is refitted: ``"auto"`` (only when cross-validation inside the fit part supports it) or ``"refit"``.
TRIAGE_REFITS = ("auto", "refit")
#: Patient-grouped folds of the cross-validation inside the fit part.
CV_FOLDS = 5
#: The candidates of ``"auto"``, fewest parameters first; ``"shipped"`` keeps the shipped map.
_CANDIDATES = ("shipped", "intercept", "refit")


def _log_loss(y: np.ndarray, c: np.ndarray, eps: float) -> np.ndarray:
    c = np.clip(c, eps, 1 - eps)
    return -(y * np.log(c) + (1 - y) * np.log1p(-c))


def _choose_calibration(y: np.ndarray, p: np.ndarray, groups: np.ndarray, shipped: Calibration,
                        j: int) -> tuple[str, dict]:
    """``(candidate, evidence)`` for finding ``j``: the one-standard-error choice among :data:`_CANDIDATES` by
    out-of-fold log loss over patient-grouped folds of its labelled fit-part films (module docstring)."""
    folds = patient_folds(groups, CV_FOLDS, seed=0)
    kept = shipped.of_finding(j)
    loss = {name: np.zeros(len(y)) for name in _CANDIDATES}
    for held in folds:
        train = np.setdiff1d(np.arange(len(y)), held)
        for name in _CANDIDATES:
            one = kept  # the shipped map; also for a fold whose other folds lack a class
            if name != "shipped" and y[train].min() != y[train].max():
                one = _one_finding(y[train], p[train], shipped, j, name)[0]
            loss[name][held] = _log_loss(y[held], one.apply(p[held][:, None])[:, 0], shipped.eps)
    _, patient = np.unique(groups, return_inverse=True)
    chosen, steps = "shipped", []
    for name in _CANDIDATES[1:]:
        per_patient = np.bincount(patient, weights=loss[chosen] - loss[name])  # > 0: the candidate is better
        gain = float(per_patient.sum() / len(y))
        se = float(per_patient.std(ddof=1) * np.sqrt(len(per_patient)) / len(y)) if len(per_patient) > 1 else np.inf
        steps.append({"candidate": name, "against": chosen, "gain": gain, "standard_error": se})
        if gain > se:
            chosen = name
    return chosen, {"folds": len(folds), "oof_log_loss": {k: float(v.mean()) for k, v in loss.items()},
                    "steps": steps}


def refit_operating_points(y_fit: np.ndarray, p_fit: np.ndarray, groups_fit, *, shipped: OperatingPoints,
                           min_positives: int = MIN_SITE_POSITIVES, recalibration: str = "auto",
                           triage: str = "auto") -> OperatingPoints:
    """Refit the operating points on the site's fit part (see the module docstring).

    Args:
        y_fit: fit-part labels (n, 14): 1, 0 or NaN (unknown).
        p_fit: the model's RAW probabilities on the same films (n, 14).
        groups_fit: patient id per film (the cross-validation folds).
        shipped: the bundle's own operating points, kept where the site has too few films.
        min_positives: fewer positives or negatives of a finding than this: shipped values kept.
        recalibration: ``"auto"`` (default: per finding, the shipped map, an intercept shift or a full refit, by
            cross-validation inside the fit part), ``"refit"`` (every finding with enough films: the shipped method
            fitted anew, the rule of NIH validation) or ``"intercept"`` (every such finding: the shipped map kept,
            its intercept moved to the site's prevalence).
        triage: ``"auto"`` (default: refitted only when cross-validation inside the fit part supports it) or
            ``"refit"`` (refitted whenever the fit part has the films).

    Returns:
        the site's :class:`OperatingPoints`.
    """
    if recalibration not in RECALIBRATIONS:
        raise ValueError(f"recalibration must be one of {', '.join(RECALIBRATIONS)}, got {recalibration!r}")
    if triage not in TRIAGE_REFITS:
        raise ValueError(f"triage must be one of {', '.join(TRIAGE_REFITS)}, got {triage!r}")
    y_fit, p_fit = np.asarray(y_fit, dtype=float), np.asarray(p_fit, dtype=float)
    groups_fit = np.asarray(groups_fit)
    slope, intercept = np.array(shipped.calibration.slope), np.array(shipped.calibration.intercept)
    fitted = np.array(shipped.calibration.fitted)
    thresholds = np.array(shipped.thresholds, dtype=float)
    sources, refitted, chosen = [], np.zeros(len(FINDINGS), dtype=bool), []
    for j, finding in enumerate(FINDINGS):
        known = np.isfinite(y_fit[:, j])
        positives, negatives = int(y_fit[known, j].sum()), int(known.sum() - y_fit[known, j].sum())
        counts = {"finding": finding, "positives": positives, "negatives": negatives}
        if min(positives, negatives) < min_positives:
            sources.append({**counts, "source": "shipped", "calibration": "shipped",
                            "note": f"kept from NIH validation: {positives} positive and {negatives} negative films "
                                    f"in the fit part (at least {min_positives} of each needed)"})
            continue
        how, evidence = recalibration, None
        if recalibration == "auto":
            how, evidence = _choose_calibration(y_fit[known, j], p_fit[known, j], groups_fit[known],
                                                shipped.calibration, j)
        if how == "shipped":
            sources.append({**counts, "source": "shipped", "calibration": "shipped", "cross_validation": evidence,
                            "note": f"kept from NIH validation: on {int(known.sum())} fit-part films neither an "
                                    "intercept shift nor a refit beat the shipped calibration's out-of-fold log loss "
                                    "by more than one standard error"})
            continue
        calibration, thresholds[j] = _one_finding(y_fit[known, j], p_fit[known, j], shipped.calibration, j, how)
        slope[j], intercept[j], fitted[j] = calibration.slope[0], calibration.intercept[0], True
        refitted[j] = True
        chosen.append(how)
        sources.append({**counts, "source": "site", "calibration": how, "cross_validation": evidence,
                        "note": f"refitted ({'intercept shift' if how == 'intercept' else how}"
                                f"{', chosen by cross-validation' if evidence else ''}) on {int(known.sum())} "
                                "fit-part films"})
    method = "platt" if "intercept" in chosen else shipped.calibration.method
    calibration = Calibration(method, FINDINGS, slope, intercept, fitted)
    c_fit = calibration.apply(np.clip(p_fit, 0.0, 1.0))
    flags = _refit_flags(y_fit, c_fit, refitted, shipped.flags)
    site_triage, triage_source, triage_note = _refit_triage(y_fit, c_fit, groups_fit, shipped.triage, triage)
    return OperatingPoints(calibration=calibration, thresholds=thresholds, flags=flags, triage=site_triage,
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


def _refit_triage(y_fit: np.ndarray, c_fit: np.ndarray, groups_fit: np.ndarray, shipped: Triage | None,
                  how: str = "auto") -> tuple[Triage | None, str, str]:
    """``(triage, source, note)``: the triage refitted on the complete fit films, or the shipped one (module
    docstring: with ``how="auto"`` the refit must miss no larger share of abnormal fit films out of fold)."""
    complete = np.isfinite(y_fit).all(axis=1)
    if complete.sum() == 0:
        return shipped, "shipped", ("kept from NIH validation: no fit-part film is labelled for all 14 findings, so "
                                    "none is known to be a No-Finding film")
    y, c, groups = y_fit[complete], c_fit[complete], groups_fit[complete]
    try:
        triage = fit_triage(y, c, groups=groups)
    except ValueError as exc:
        return shipped, "shipped", f"kept from NIH validation: {exc}"
    triage = dataclasses.replace(triage, fitted_on=FITTED_ON)
    films = f"{int(complete.sum())} fit-part films labelled for all 14 findings"
    if how == "refit" or shipped is None:
        return triage, "site", f"refitted on {films}"
    abnormal = abnormal_labels(y).astype(bool)
    kept = np.zeros(len(y), dtype=bool)  # out of fold: the refitted triage calls the held film abnormal
    for held in patient_folds(groups, CV_FOLDS, seed=0):
        train = np.setdiff1d(np.arange(len(y)), held)
        try:
            one = fit_triage(y[train], c[train], groups=groups[train])
        except ValueError as exc:
            return shipped, "shipped", (f"kept from NIH validation: the refit cannot be cross-validated inside the fit "
                                        f"part: on the other folds of one fold, {exc}")
        kept[held] = one.probability(c[held]) >= one.rule_out
    shipped_kept = shipped.probability(c) >= shipped.rule_out
    refit_sens, shipped_sens = kept[abnormal].mean(), shipped_kept[abnormal].mean()
    words = (f"on {films}, out of fold ({CV_FOLDS} patient-grouped folds), a refitted triage's rule-out point kept "
             f"{int(kept[abnormal].sum())} of {int(abnormal.sum())} abnormal films (sensitivity {refit_sens:.3f}, "
             f"{1 - kept.mean():.1%} of films set aside), the shipped one {int(shipped_kept[abnormal].sum())} "
             f"(sensitivity {shipped_sens:.3f}, {1 - shipped_kept.mean():.1%} set aside)")
    low = wilson_interval(int(kept[abnormal].sum()), int(abnormal.sum()))[0]
    if refit_sens < shipped_sens:
        return shipped, "shipped", f"kept from NIH validation: {words}; the refit's is lower"
    if low < RULE_OUT_SENSITIVITY:
        return shipped, "shipped", (f"kept from NIH validation: {words}; the refit's out-of-fold sensitivity has a Wilson "
                                    f"95% lower bound of {low:.3f}, under the rule-out target {RULE_OUT_SENSITIVITY}: "
                                    "these films do not place a rule-out point that reaches it")
    return triage, "site", f"refitted: {words}; Wilson 95% lower bound {low:.3f}"
