"""Probability calibration per finding: fit on validation, apply everywhere.

Deep networks trained with class weighting or long schedules are typically
overconfident; a clinician reading "0.97" should be able to take it as
roughly 97%. Two post-hoc maps on the logit, each fitted per finding on the
validation split by minimising negative log-likelihood:

* temperature scaling, ``p' = sigmoid(logit(p) / T)``: one parameter, keeps
  the ranking (so AUROC) unchanged and cannot overfit much;
* Platt scaling, ``p' = sigmoid(a * logit(p) + b)``: also corrects a shift in
  the base rate (e.g. prevalence differing between training and use).

Both are stored as ``slope`` and ``intercept`` on the logit (temperature:
``slope = 1/T``, ``intercept = 0``), so one :meth:`Calibration.apply` serves both.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit

from cxr_core.evaluation.checks import (
    UndefinedMetricWarning,
    _check_probabilities,
    _check_targets,
    _finding_names,
)

__all__ = [
    "CALIBRATION_METHODS",
    "Calibration",
    "fit_calibration",
    "fit_intercept_shift",
    "expected_calibration_error",
    "brier_score",
    "reliability_curve",
]

CALIBRATION_METHODS: tuple[str, ...] = ("temperature", "platt")

#: Probabilities are clipped to [EPS, 1 - EPS] before the logit: a saturated
#: 0.0 or 1.0 from float32 sigmoid would otherwise give an infinite logit.
EPS = 1e-6

# Temperatures searched: 0.05 to 20 covers any network we would ship; the
# bound also keeps a perfectly separated validation set from driving T to 0.
_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def _logit(p: np.ndarray, eps: float) -> np.ndarray:
    clipped = np.clip(p, eps, 1 - eps)
    return np.log(clipped) - np.log1p(-clipped)


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    # Binary cross-entropy on logits, written with logaddexp so large |z|
    # neither overflows nor loses precision.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """Return the slope 1/T minimising NLL of sigmoid(z / T)."""
    # Searching log T makes the scale symmetric (T=1/2 as far from 1 as T=2);
    # the NLL is convex in 1/T, hence unimodal in log T, so bounded Brent is exact.
    result = minimize_scalar(
        lambda log_t: _nll(z * np.exp(-log_t), y),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(-result.x))


def _fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return (a, b) minimising NLL of sigmoid(a z + b), with Platt's targets."""
    n_pos = y.sum()
    n_neg = y.size - n_pos
    # Platt (1999) replaces 0/1 targets with 1/(N-+2) and (N++1)/(N++2): the
    # maximum-likelihood fit otherwise diverges on separable data.
    target = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        u = a * z + b
        residual = expit(u) - target
        return _nll(u, target), np.array([np.mean(residual * z), np.mean(residual)])

    result = minimize(loss_and_grad, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


@dataclass(frozen=True, eq=False)
class Calibration:
    """A fitted per-finding calibration map on the logit.

    Attributes:
        method: ``"temperature"`` or ``"platt"``.
        findings: finding names, one per column.
        slope: shape (n_findings,); ``1/T`` for temperature scaling.
        intercept: shape (n_findings,); 0 for temperature scaling.
        fitted: bool, shape (n_findings,); False where the finding could not
            be fitted and the identity map (slope 1, intercept 0) is used.
        eps: probability clipping used before the logit.
    """

    method: str
    findings: tuple[str, ...]
    slope: np.ndarray
    intercept: np.ndarray
    fitted: np.ndarray
    eps: float = EPS

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        k = len(self.findings)
        for name in ("slope", "intercept", "fitted"):
            value = np.asarray(getattr(self, name), dtype=bool if name == "fitted" else float)
            if value.shape != (k,):
                raise ValueError(f"{name} must have shape ({k},), got {value.shape}")
            # Read-only copies: a Calibration is a value, shared by the app.
            value = value.copy()
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "findings", tuple(str(f) for f in self.findings))
        if not np.isfinite(self.slope).all() or not np.isfinite(self.intercept).all():
            raise ValueError("calibration parameters must be finite")

    @classmethod
    def identity(cls, findings: Sequence[str], *, method: str = "temperature") -> Calibration:
        """The map that leaves probabilities unchanged (T = 1)."""
        k = len(findings)
        return cls(method, tuple(findings), np.ones(k), np.zeros(k), np.zeros(k, dtype=bool))

    @property
    def temperature(self) -> np.ndarray:
        """Per-finding temperature ``T = 1/slope``, shape (n_findings,)."""
        return 1.0 / self.slope

    def apply(self, probs) -> np.ndarray:
        """Calibrate probabilities.

        Args:
            probs: uncalibrated probabilities, shape (n_samples, n_findings),
                or one image's, shape (n_findings,).

        Returns:
            calibrated probabilities with the shape of ``probs``.
        """
        return expit(self.logits(probs))

    def logits(self, probs) -> np.ndarray:
        """The calibrated logits ``slope * logit(p) + intercept`` (what :meth:`apply` passes through the sigmoid).

        Args:
            probs: uncalibrated probabilities, shape (n_samples, n_findings), or one image's, shape (n_findings,).
        """
        p = np.asarray(probs, dtype=float)
        if p.shape[-1:] != (len(self.findings),) or p.ndim not in (1, 2):
            raise ValueError(f"expected (..., {len(self.findings)}) probabilities, got shape {p.shape}")
        _check_probabilities(p, name="probs")
        return self.slope * _logit(p, self.eps) + self.intercept

    def of_finding(self, j: int) -> Calibration:
        """The map of finding ``j`` alone (one column), as fitted."""
        return Calibration(self.method, (self.findings[j],), [self.slope[j]], [self.intercept[j]], [self.fitted[j]],
                           eps=self.eps)

    def to_dict(self) -> dict:
        """JSON-safe dict (lists of floats) for the model bundle; see :meth:`from_dict`."""
        data = {
            "method": self.method,
            "findings": list(self.findings),
            "slope": [float(v) for v in self.slope],
            "intercept": [float(v) for v in self.intercept],
            "fitted": [bool(v) for v in self.fitted],
            "eps": float(self.eps),
        }
        if self.method == "temperature":
            # For people reading the bundle; from_dict uses slope.
            data["temperature"] = [float(v) for v in self.temperature]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """Rebuild a :class:`Calibration` from :meth:`to_dict` output."""
        try:
            return cls(
                method=data["method"],
                findings=tuple(data["findings"]),
                slope=np.asarray(data["slope"], dtype=float),
                intercept=np.asarray(data["intercept"], dtype=float),
                fitted=np.asarray(data.get("fitted", [True] * len(data["findings"])), dtype=bool),
                eps=float(data.get("eps", EPS)),
            )
        except KeyError as exc:
            raise ValueError(f"calibration dict lacks the key {exc.args[0]!r}") from exc


def fit_calibration(
    y_true,
    y_prob,
    *,
    method: str = "temperature",
    findings: Sequence[str] | None = None,
) -> Calibration:
    """Fit a per-finding calibration map on validation data.

    Args:
        y_true: validation labels, shape (n_val, n_findings).
        y_prob: validation probabilities, shape (n_val, n_findings).
        method: ``"temperature"`` (one parameter per finding, ranking kept)
            or ``"platt"`` (slope and intercept per finding).
        findings: names; defaults to FINDINGS when there are 14 columns.

    Returns:
        :class:`Calibration`. A finding without both positives and negatives
        cannot be fitted (the likelihood has no finite optimum) and keeps the
        identity map, with an :class:`~cxr_core.evaluation.checks.UndefinedMetricWarning`.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    y, p = _check_targets(y_true, y_prob, other_name="y_prob")
    _check_probabilities(p)
    names = _finding_names(y.shape[1], findings)
    k = y.shape[1]
    slope, intercept, fitted = np.ones(k), np.zeros(k), np.zeros(k, dtype=bool)
    for j in range(k):
        yj = y[:, j].astype(float)
        if yj.min() == yj.max():
            continue
        z = _logit(p[:, j], EPS)
        if method == "temperature":
            slope[j] = _fit_temperature(z, yj)
        else:
            slope[j], intercept[j] = _fit_platt(z, yj)
        fitted[j] = True
    if not fitted.all():
        warnings.warn(
            "calibration left as identity for "
            + ", ".join(n for n, f in zip(names, fitted) if not f)
            + " (validation lacks positives or negatives)",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    return Calibration(method, names, slope, intercept, fitted)


def fit_intercept_shift(y_true, logits) -> float:
    """The offset ``b`` minimising the log loss of ``sigmoid(logits + b)``: calibrated logits moved to another
    prevalence (one parameter; the log loss is convex in ``b``, so bounded Brent finds it).

    Args:
        y_true: labels 0/1, shape (n,).
        logits: calibrated logits of one finding, shape (n,) (:meth:`Calibration.logits`).
    """
    y, z = np.asarray(y_true, dtype=float), np.asarray(logits, dtype=float)
    result = minimize_scalar(lambda b: _nll(z + b, y), bounds=(-10.0, 10.0), method="bounded",
                             options={"xatol": 1e-6})
    return float(result.x)


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Equal-width bins [i/n, (i+1)/n), the last one closed at 1.0; floor of
    # p * n_bins rather than searchsorted on linspace edges, whose float
    # rounding (0.30000000000000004) would put p = 0.3 in the wrong bin.
    return np.minimum(np.floor(p * n_bins).astype(int), n_bins - 1)


def _check_n_bins(n_bins: int) -> int:
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    return int(n_bins)


def expected_calibration_error(y_true, y_prob, *, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error of each finding.

    ``ECE = sum_b (n_b / n) * |mean predicted in b - fraction positive in b|``
    over ``n_bins`` equal-width probability bins.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_prob: probabilities, shape (n_samples, n_findings).
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        shape (n_findings,), in [0, 1]. Defined even for a finding with no
        positives (it then measures how far predictions are from 0).
    """
    n_bins = _check_n_bins(n_bins)
    y, p = _check_targets(y_true, y_prob, other_name="y_prob")
    _check_probabilities(p)
    n, k = y.shape
    ece = np.zeros(k)
    for j in range(k):
        bins = _bin_index(p[:, j], n_bins)
        sum_pred = np.bincount(bins, weights=p[:, j], minlength=n_bins)
        sum_true = np.bincount(bins, weights=y[:, j].astype(float), minlength=n_bins)
        # |sum_pred - sum_true| / n equals (n_b / n) * |mean gap| and needs no
        # division by empty-bin counts.
        ece[j] = np.abs(sum_pred - sum_true).sum() / n
    return ece


def brier_score(y_true, y_prob) -> np.ndarray:
    """Brier score (mean squared error of the probability) of each finding.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_prob: probabilities, shape (n_samples, n_findings).

    Returns:
        shape (n_findings,), in [0, 1]; lower is better.
    """
    y, p = _check_targets(y_true, y_prob, other_name="y_prob")
    _check_probabilities(p)
    return np.mean((p - y) ** 2, axis=0)


def reliability_curve(
    y_true,
    y_prob,
    *,
    n_bins: int = 10,
    findings: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Reliability diagram data: predicted vs observed frequency per bin.

    Args:
        y_true: binary labels, shape (n_samples, n_findings).
        y_prob: probabilities, shape (n_samples, n_findings).
        n_bins: number of equal-width bins on [0, 1].
        findings: names; defaults to FINDINGS when there are 14 columns.

    Returns:
        Long DataFrame with ``n_findings * n_bins`` rows and columns
        ``finding``, ``bin`` (0-based), ``bin_lower``, ``bin_upper``,
        ``count``, ``mean_predicted`` and ``fraction_positive``. Empty bins
        are kept (count 0, NaN means) so every finding has the same bins;
        plotting libraries skip the NaN points.
    """
    n_bins = _check_n_bins(n_bins)
    y, p = _check_targets(y_true, y_prob, other_name="y_prob")
    _check_probabilities(p)
    names = _finding_names(y.shape[1], findings)
    frames = []
    for j, name in enumerate(names):
        bins = _bin_index(p[:, j], n_bins)
        count = np.bincount(bins, minlength=n_bins)
        sum_pred = np.bincount(bins, weights=p[:, j], minlength=n_bins)
        sum_true = np.bincount(bins, weights=y[:, j].astype(float), minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_pred = np.where(count > 0, sum_pred / np.maximum(count, 1), np.nan)
            frac_pos = np.where(count > 0, sum_true / np.maximum(count, 1), np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "finding": name,
                    "bin": np.arange(n_bins),
                    "bin_lower": np.arange(n_bins) / n_bins,
                    "bin_upper": np.arange(1, n_bins + 1) / n_bins,
                    "count": count.astype(int),
                    "mean_predicted": mean_pred,
                    "fraction_positive": frac_pos,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
