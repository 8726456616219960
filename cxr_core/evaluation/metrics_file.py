"""An evaluation's file (``metrics.json``, written by ``python -m training.evaluate``:
:mod:`cxr_core.jobs.bundle_evaluation` with :func:`cxr_core.evaluation.evaluate.evaluate_predictions`) as pages read it.

    metrics = read_metrics(metrics_path("models/default", metadata))
    metrics.macro.auroc, metrics.per_finding[0].auroc_low, metrics.reading.triage.at_rule_out["sensitivity"]

The file is read through :func:`cxr_core.bundle.versioned_json.read_json_object` (it carries no format tag) and its
blocks become the frozen records below, so a page names a field rather than a key. Blocks that bundles evaluated
before them lack (the reading, localisation, the expert reference) are None or empty. The rates of a point (a dict of
``sensitivity``, ``sensitivity_low``, ``ppv``, ... as :func:`cxr_core.evaluation.metrics.binary_report` writes them)
stay mappings: a page reads them by the rate's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from cxr_core.bundle.versioned_json import read_json_object

__all__ = ["METRICS_FILE", "Calibration", "Curve", "FindingFlag", "FindingMetrics", "Flags", "Metrics", "ReadingMetrics",
           "Triage", "metrics_from_document", "metrics_path", "read_metrics"]

METRICS_FILE = "metrics.json"


def _record(cls, item: Mapping, **more):
    """``cls`` from the keys of ``item`` that are its fields (None for an absent optional one)."""
    return cls(**{f.name: item.get(f.name) for f in fields(cls) if f.name not in more}, **more)


@dataclass(frozen=True)
class FindingMetrics:
    """One finding on the test split: AUROC and AUPRC with their 95% intervals, and the Youden point's counts."""

    finding: str
    n_test_pos: int
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    auprc: float | None
    auprc_low: float | None
    auprc_high: float | None
    threshold: float | None
    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None


@dataclass(frozen=True)
class Curve:
    """A ROC (``x`` false positive rate, ``y`` true positive rate) or PR curve (``x`` recall, ``y`` precision);
    ``area``: its AUC or average precision."""

    finding: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    area: float | None


@dataclass(frozen=True)
class Calibration:
    """The calibration fitted on validation and its reliability on test, per finding in ``FINDINGS`` order.

    Attributes:
        reliability_before, reliability_after: the bins (``finding``, ``count``, ``mean_predicted``,
            ``fraction_positive``) of the reliability diagram.
    """

    method: str
    fitted_on: str
    ece_before: tuple[float | None, ...]
    ece_after: tuple[float | None, ...]
    brier_before: tuple[float | None, ...]
    brier_after: tuple[float | None, ...]
    reliability_before: tuple[Mapping, ...]
    reliability_after: tuple[Mapping, ...]


@dataclass(frozen=True)
class Triage:
    """The normal/abnormal triage on test: its AUROC, its two points and the rates at each (mappings of rates)."""

    method: str
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    test_films: int
    test_abnormal_films: int
    rule_out: float
    balanced: float
    at_rule_out: Mapping
    at_balanced: Mapping
    roc: Curve


@dataclass(frozen=True)
class FindingFlag:
    """A finding's flag cut and its 'possible' cut (None where it has no flag: ``reason``), and their worth."""

    finding: str
    flag: float | None
    possible: float | None
    reason: str
    validation: Mapping
    test: Mapping


@dataclass(frozen=True)
class Flags:
    """The flags at a validated specificity."""

    target_specificity: float
    possible_specificity: float
    min_val_positives: int
    per_finding: tuple[FindingFlag, ...]


@dataclass(frozen=True)
class ReadingMetrics:
    """The reading on test: the triage (or why it is missing: ``triage_note``), the flags, and the flag burden
    (``{"flags": {...}, "youden": {...}}``, each a mapping of measures). All empty for a bundle evaluated before them."""

    triage: Triage | None
    triage_note: str | None
    flags: Flags | None
    burden: Mapping


@dataclass(frozen=True)
class Metrics:
    """A bundle's evaluation.

    Attributes:
        per_finding: in ``FINDINGS`` order.
        thresholds: the Youden thresholds' record (``method``, ``fitted_on``, ``values``).
        localization: ``n_boxes``, ``accuracy`` (rows per finding), ... or empty.
        expert_reference, label_audit: the blocks of :func:`cxr_core.evaluation.expert.expert_report`, or None.
        subgroups: rows ``attribute``, ``group``, ``finding``, ``n``, ``n_pos``, ``auroc``.
        published_auroc: {source: AUROC per finding}.
    """

    test_images: int
    test_patients: int
    val_images: int | None
    macro_auroc: float | None
    macro_auroc_low: float | None
    macro_auroc_high: float | None
    n_boot: int | None
    per_finding: tuple[FindingMetrics, ...]
    roc: tuple[Curve, ...]
    pr: tuple[Curve, ...]
    thresholds: Mapping
    calibration: Calibration
    reading: ReadingMetrics
    localization: Mapping
    expert_reference: Mapping | None
    label_audit: Mapping | None
    subgroups: tuple[Mapping, ...]
    published_auroc: Mapping[str, list]

    def finding(self, name: str) -> FindingMetrics | None:
        """The row of one finding, or None."""
        return next((r for r in self.per_finding if r.finding == name), None)


def metrics_path(directory: str | os.PathLike, metadata: Mapping | None = None) -> Path:
    """Where a bundle's evaluation is: the ``metrics_file`` its ``bundle.json`` names, else ``metrics.json``."""
    return Path(directory) / ((metadata or {}).get("metrics_file") or METRICS_FILE)


def _curve(item: Mapping, x: str, y: str, area: str) -> Curve:
    return Curve(item["finding"], tuple(item[x]), tuple(item[y]), item.get(area))


def _triage(item: Mapping) -> Triage:
    return _record(Triage, item, roc=_curve(item["roc"], "fpr", "tpr", "auc"))


def _flags(item: Mapping) -> Flags:
    rows = tuple(FindingFlag(r["finding"], r.get("flag"), r.get("possible"), r.get("reason") or "",
                             r.get("validation") or {}, r.get("test") or {}) for r in item["per_finding"])
    return _record(Flags, item, per_finding=rows)


def _reading(item: Mapping) -> ReadingMetrics:
    return ReadingMetrics(triage=_triage(item["triage"]) if item.get("triage") else None,
                          triage_note=item.get("triage_note"),
                          flags=_flags(item["flags"]) if item.get("flags") else None, burden=item.get("burden") or {})


def metrics_from_document(document: Mapping, where: str | os.PathLike = "metrics.json") -> Metrics:
    """The :class:`Metrics` of an evaluation's report (as :func:`cxr_core.jobs.bundle_evaluation.evaluate_bundle`
    returns and writes it).

    Raises:
        ValueError: a block or field the pages need is missing or of the wrong kind.
    """
    try:
        counts, macro, cal = document["counts"], document["macro"], document["calibration"]
        return Metrics(
            test_images=counts["test_images"], test_patients=counts["test_patients"], val_images=counts.get("val_images"),
            macro_auroc=macro["auroc"], macro_auroc_low=macro.get("auroc_low"), macro_auroc_high=macro.get("auroc_high"),
            n_boot=(document.get("bootstrap") or {}).get("n_boot"),
            per_finding=tuple(_record(FindingMetrics, r) for r in document["per_finding"]),
            roc=tuple(_curve(c, "fpr", "tpr", "auc") for c in document["roc"]),
            pr=tuple(_curve(c, "recall", "precision", "average_precision") for c in document["pr"]),
            thresholds=dict(document.get("thresholds") or {}),
            calibration=_record(Calibration, cal, **{k: tuple(cal[k]) for k in (
                "ece_before", "ece_after", "brier_before", "brier_after", "reliability_before", "reliability_after")}),
            reading=_reading(document.get("reading") or {}),
            localization=dict(document.get("localization") or {}),
            expert_reference=document.get("expert_reference") or None, label_audit=document.get("label_audit") or None,
            subgroups=tuple(document.get("subgroups") or ()), published_auroc=dict(document.get("published_auroc") or {}),
        )
    except KeyError as exc:
        raise ValueError(f"{where}: not an evaluation this cxr-assist reads (no {exc.args[0]!r})") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"{where}: not an evaluation this cxr-assist reads ({exc})") from None


def read_metrics(path: str | os.PathLike) -> Metrics:
    """The evaluation stored in ``path`` (a bundle's ``metrics.json``; see :func:`metrics_path`).

    Raises:
        ValueError: the file is missing, not JSON, or lacks a block the pages need.
    """
    return metrics_from_document(read_json_object(path, what="model evaluation"), path)
