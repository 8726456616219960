"""Normal/abnormal triage: the probability that a film has any of the 14 findings.

Per-finding discrimination on 2,400 training images is modest (mean AUROC
about 0.71), but the 14 outputs together separate films with some finding
from No-Finding films much better. That is the question triage asks ("is
anything abnormal on this film?"), the one for which such tools are deployed:
to sort a worklist, or to set aside films that are very likely normal.

:func:`fit_triage` fits, on the VALIDATION split only,

* the score: either the noisy-OR ``1 - prod(1 - p_k)`` of the 14 calibrated
  probabilities, recalibrated by a Platt map (2 parameters), or a logistic
  regression on their 14 logits (15 parameters). Both are scored by
  patient-grouped cross-validation inside the validation split; the logistic
  combination is chosen only when it beats the noisy-OR's out-of-fold AUROC
  by more than :data:`LOGISTIC_MARGIN`, because with a few hundred
  validation films 15 parameters buy variance before they buy accuracy;
* two operating points on the resulting probability: the **rule-out** point
  (below it: "no finding likely") and the **balanced** point (Youden's J).
  The rule-out point is the highest cut at which the validation sensitivity
  for abnormal films is at least 0.95 *with its sampling error accounted
  for*: the lower bound of its Wilson 95% interval must reach 0.95 (on 266
  abnormal validation films that means about 0.977 observed). A cut fitted at
  exactly 0.95 on a few hundred films misses that target on new films about
  half the time (it read 0.941 on this project's test split); a film set
  aside must be one the model very rarely misses.

A film is "abnormal" for the triage when its probability reaches the rule-out
point: a film set aside must be one the model would very rarely miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from cxr_core.evaluation.calibration import EPS, _fit_platt
from cxr_core.evaluation.checks import _check_probabilities, _check_targets
from cxr_core.evaluation.clinical import rates, wilson_interval
from cxr_core.evaluation.metrics import auroc
from cxr_core.evaluation.thresholds import threshold_at_sensitivity, youden_threshold
from cxr_core.findings import FINDINGS

__all__ = [
    "TRIAGE_METHODS", "RULE_OUT_SENSITIVITY", "LOGISTIC_MARGIN", "ABNORMAL", "NO_FINDING_LIKELY", "NOT_ASSESSED",
    "TRIAGE_VERDICTS", "Triage", "abnormal_labels", "fit_triage", "noisy_or", "patient_folds",
]

TRIAGE_METHODS: tuple[str, ...] = ("noisy_or", "logistic")
#: The sensitivity for abnormal films the rule-out point keeps (lower bound of the validation Wilson 95% interval).
RULE_OUT_SENSITIVITY = 0.95
#: Out-of-fold AUROC the logistic combination must gain over the noisy-OR to be chosen.
LOGISTIC_MARGIN = 0.01
#: The logistic combination's L2 strength (scikit-learn's C): mild, 14 inputs on a few hundred films.
LOGISTIC_C = 0.5

ABNORMAL = "abnormal"
NO_FINDING_LIKELY = "no finding likely"
NOT_ASSESSED = "not assessed"
#: Every value of a triage verdict, in the order a worklist uses them.
TRIAGE_VERDICTS: tuple[str, ...] = (ABNORMAL, NO_FINDING_LIKELY, NOT_ASSESSED)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def noisy_or(calibrated) -> np.ndarray:
    """``1 - prod_k (1 - p_k)`` per film: the chance of at least one finding if the 14 were independent.

    Args:
        calibrated: calibrated probabilities, shape (n, 14) or (14,).

    Returns:
        shape (n,) (or a 0-d array for one film).
    """
    p = np.clip(np.asarray(calibrated, dtype=float), 0.0, 1 - EPS)
    return -np.expm1(np.log1p(-p).sum(axis=-1))


def abnormal_labels(y_true) -> np.ndarray:
    """1 where a film has any of the findings, 0 for a No-Finding film; shape (n,)."""
    return np.asarray(y_true).astype(bool).any(axis=1).astype(int)


def _fit_score(method: str, y: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
    """``(intercept, weights)`` of one candidate fitted on ``(y (n,), calibrated c (n, 14))``."""
    if method == "noisy_or":
        slope, intercept = _fit_platt(_logit(noisy_or(c)), y.astype(float))
        return float(intercept), np.array([slope])
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=LOGISTIC_C, max_iter=2000).fit(_logit(c), y)
    return float(model.intercept_[0]), model.coef_[0].astype(float)


def _score(method: str, intercept: float, weights: np.ndarray, c: np.ndarray) -> np.ndarray:
    if method == "noisy_or":
        return expit(weights[0] * _logit(noisy_or(c)) + intercept)
    return expit(_logit(c) @ weights + intercept)


def _out_of_fold(method: str, y: np.ndarray, c: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    scores = np.full(len(y), np.nan)
    for held in folds:
        train = np.setdiff1d(np.arange(len(y)), held)
        intercept, weights = _fit_score(method, y[train], c[train])
        scores[held] = _score(method, intercept, weights, c[held])
    return scores


def _rule_out_cut(y: np.ndarray, p: np.ndarray, target: float) -> tuple[float, float]:
    """``(cut, observed sensitivity asked for)``: the highest cut whose validation sensitivity's Wilson 95% lower bound
    reaches ``target``; with too few abnormal films for any such bound, the cut that keeps every one of them."""
    n = int(y.sum())
    misses = 0
    while misses + 1 <= n and wilson_interval(n - misses - 1, n)[0] >= target:
        misses += 1
    needed = (n - misses) / n
    return threshold_at_sensitivity(y, p, needed), needed


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def patient_folds(groups: np.ndarray, n_folds: int, *, seed: int) -> list[np.ndarray]:
    """Row indices of folds that never split a patient, patients shuffled by ``seed``.

    Args:
        groups: patient id per row, shape (n,).
        n_folds: how many folds; fewer when there are fewer patients (one each).
        seed: the shuffle of the patients.
    """
    patients = np.unique(groups)
    n_folds = min(n_folds, len(patients))
    order = np.random.default_rng(seed).permutation(patients)
    fold_of = {p: i % n_folds for i, p in enumerate(order)}
    labels = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(labels == k) for k in range(n_folds)]


@dataclass(frozen=True)
class Triage:
    """A fitted normal/abnormal triage (see the module docstring).

    Attributes:
        method: ``"noisy_or"`` or ``"logistic"``.
        intercept: the score's intercept on the logit.
        weights: noisy-OR: ``(slope,)`` of its Platt map; logistic: one weight
            per finding on the logit of its calibrated probability.
        rule_out: the rule-out cut on the triage probability (below it: "no finding likely").
        balanced: the balanced (Youden) cut.
        findings: the 14 finding names, in the order of the inputs.
        fitted_on: where it was fitted (always the validation split).
        selection: how the method was chosen: out-of-fold AUROC and log-loss of each candidate.
        validation: validation counts, AUROC, and the rates at each point
            (:func:`cxr_core.evaluation.clinical.rates`).
    """

    method: str
    intercept: float
    weights: tuple[float, ...]
    rule_out: float
    balanced: float
    findings: tuple[str, ...] = FINDINGS
    fitted_on: str = "validation"
    selection: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in TRIAGE_METHODS:
            raise ValueError(f"triage method must be one of {TRIAGE_METHODS}, got {self.method!r}")
        expected = 1 if self.method == "noisy_or" else len(self.findings)
        if len(self.weights) != expected:
            raise ValueError(f"a {self.method} triage has {expected} weights, got {len(self.weights)}")
        values = [self.intercept, *self.weights, self.rule_out, self.balanced]
        if not all(np.isfinite(values)):
            raise ValueError("triage parameters must be finite")
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        object.__setattr__(self, "findings", tuple(self.findings))

    def probability(self, calibrated) -> np.ndarray:
        """The calibrated probability that each film has any finding.

        Args:
            calibrated: calibrated per-finding probabilities, (n, 14) or (14,).

        Returns:
            shape (n,), or a float for one film.
        """
        c = np.asarray(calibrated, dtype=float)
        one = c.ndim == 1
        c = np.atleast_2d(c)
        if c.shape[1] != len(self.findings):
            raise ValueError(f"expected {len(self.findings)} probabilities per film, got {c.shape[1]}")
        _check_probabilities(c, name="calibrated")
        p = _score(self.method, self.intercept, np.asarray(self.weights), c)
        return float(p[0]) if one else p

    def verdict(self, probability: float) -> str:
        """``"abnormal"`` at or above the rule-out cut, else ``"no finding likely"``."""
        return ABNORMAL if float(probability) >= self.rule_out else NO_FINDING_LIKELY

    def to_dict(self) -> dict:
        """JSON-safe, for ``bundle.json``; see :meth:`from_dict`."""
        return {
            "method": self.method, "intercept": float(self.intercept), "weights": list(self.weights),
            "rule_out": float(self.rule_out), "balanced": float(self.balanced), "findings": list(self.findings),
            "fitted_on": self.fitted_on, "rule_out_sensitivity_target": RULE_OUT_SENSITIVITY,
            "selection": self.selection, "validation": self.validation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Triage:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: a key is missing or a value is not usable.
        """
        try:
            return cls(method=data["method"], intercept=float(data["intercept"]), weights=tuple(data["weights"]),
                       rule_out=float(data["rule_out"]), balanced=float(data["balanced"]),
                       findings=tuple(data.get("findings", FINDINGS)), fitted_on=data.get("fitted_on", "validation"),
                       selection=dict(data.get("selection") or {}), validation=dict(data.get("validation") or {}))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the triage block of the bundle is not usable: {exc}") from exc


def fit_triage(
    y_val,
    calibrated_val,
    *,
    groups: Sequence | None = None,
    method: str = "auto",
    rule_out_sensitivity: float = RULE_OUT_SENSITIVITY,
    n_folds: int = 5,
    seed: int = 0,
    findings: Sequence[str] = FINDINGS,
) -> Triage:
    """Fit the triage score and its two operating points on validation films.

    Args:
        y_val: validation labels, shape (n, 14); a film with no 1 is a No-Finding film.
        calibrated_val: the model's calibrated probabilities on the same films, (n, 14).
        groups: patient id per film, shape (n,), for the cross-validation folds
            (default: every film its own patient).
        method: ``"auto"`` (choose by cross-validation, see the module
            docstring), ``"noisy_or"`` or ``"logistic"``.
        rule_out_sensitivity: the sensitivity the rule-out point must keep, in (0, 1): the lower
            bound of its validation Wilson 95% interval must reach it.
        n_folds: cross-validation folds (patient-grouped) for the choice.
        seed: fold assignment seed.
        findings: column names.

    Raises:
        ValueError: fewer than 10 abnormal or 10 No-Finding films (no usable
            cut), or an unknown method.
    """
    if not 0 < rule_out_sensitivity < 1:
        raise ValueError(f"rule_out_sensitivity must be in (0, 1), got {rule_out_sensitivity}")
    if method not in ("auto", *TRIAGE_METHODS):
        raise ValueError(f"method must be 'auto' or one of {TRIAGE_METHODS}, got {method!r}")
    y_all, c = _check_targets(y_val, calibrated_val, other_name="calibrated_val")
    _check_probabilities(c, name="calibrated_val")
    y = abnormal_labels(y_all)
    n_abnormal, n_normal = int(y.sum()), int(len(y) - y.sum())
    if min(n_abnormal, n_normal) < 10:
        raise ValueError(f"a triage needs at least 10 abnormal and 10 No-Finding validation films, got {n_abnormal} "
                         f"and {n_normal}")
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    folds = patient_folds(groups, n_folds, seed=seed)
    selection = {"n_folds": len(folds), "criterion": f"out-of-fold AUROC; logistic only if > noisy-OR + {LOGISTIC_MARGIN}"}
    for candidate in TRIAGE_METHODS:
        oof = _out_of_fold(candidate, y, c, folds)
        selection[candidate] = {"oof_auroc": float(auroc(y, oof)[0]), "oof_log_loss": _log_loss(y, oof)}
    if method == "auto":
        gain = selection["logistic"]["oof_auroc"] - selection["noisy_or"]["oof_auroc"]
        method = "logistic" if gain > LOGISTIC_MARGIN else "noisy_or"
    selection["chosen"] = method
    intercept, weights = _fit_score(method, y, c)
    p = _score(method, intercept, weights, c)
    rule_out, needed = _rule_out_cut(y, p, rule_out_sensitivity)
    balanced = max(youden_threshold(y, p), rule_out)  # the balanced point never sits below the rule-out point
    validation = {
        "films": int(len(y)), "abnormal_films": n_abnormal, "no_finding_films": n_normal,
        "rule_out_rule": f"Wilson 95% lower bound of sensitivity >= {rule_out_sensitivity}",
        "rule_out_sensitivity_needed": needed,
        "auroc": float(auroc(y, p)[0]),
        "rule_out": rates(y, p >= rule_out), "balanced": rates(y, p >= balanced),
    }
    return Triage(method=method, intercept=intercept, weights=tuple(weights), rule_out=rule_out, balanced=balanced,
                  findings=tuple(findings), selection=selection, validation=validation)
