"""The model and NIH's labels measured against radiologists' labels (Majkowska et al., Radiology 2019).

NIH's labels were text-mined from reports; Google Health had 4,376 of the images
re-read and adjudicated by radiologists for four categories
(:data:`cxr_core.data.expert_labels.EXPERT_CATEGORIES`). This module maps the
model's 14 outputs and NIH's 14 labels onto those categories
(:data:`EXPERT_MAPPING`, justified in ``docs/build/expert_reference.md``), then

* :func:`expert_auroc` measures the model against the experts **beside** the
  model against NIH's labels on the same images (patient-bootstrap CIs, one
  seed, so both columns see the same resamples);
* :func:`label_audit` measures NIH's labels against the experts: the 2x2
  counts, sensitivity and PPV of NIH's label, specificity, raw agreement and
  Cohen's kappa;
* :func:`expert_report` does both for a set of images and returns the
  JSON-ready blocks ``expert_reference`` and ``label_audit`` of ``metrics.json``.

Conventions are those of :mod:`cxr_core.evaluation.checks`: pure functions,
keyword-only options, NaN plus one :class:`UndefinedMetricWarning` where a
number is undefined. Fracture has no model output and no NIH label by design:
its AUROCs and its audit are NaN with the reason in the row's ``note`` (and no
warning, which is kept for data that makes a number undefined).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.evaluation.checks import UndefinedMetricWarning
from cxr_core.evaluation.metrics import bootstrap_ci
from cxr_core.findings import FINDINGS

__all__ = [
    "EXPERT_MAPPING",
    "COMBINE_METHODS",
    "NO_MODEL_OUTPUT",
    "category_scores",
    "category_labels",
    "cohen_kappa",
    "label_audit",
    "expert_auroc",
    "expert_report",
    "reference_table",
    "audit_table",
    "expert_markdown",
]

#: Which of the 14 findings make each expert category. The model's probability
#: for a category combines those findings' probabilities (:func:`category_scores`);
#: NIH's label for it is their OR (:func:`category_labels`). Fracture: none
#: (ChestX-ray14 has no fracture finding). Why Atelectasis is in Airspace
#: opacity and Edema is not: ``docs/build/expert_reference.md``.
EXPERT_MAPPING: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": ("Consolidation", "Pneumonia", "Infiltration", "Atelectasis"),
    "Fracture": (),
}

#: ``max``: the largest of the findings' probabilities (a lower bound of P(any),
#: exact when the findings always co-occur); ``noisy_or``: 1 - prod(1 - p)
#: (exact when they are independent, which correlated opacities are not).
COMBINE_METHODS = ("max", "noisy_or")

#: The reason written where a category has no model output and no NIH label.
NO_MODEL_OUTPUT = "ChestX-ray14 has no fracture finding: the model has no output and NIH no label for it"


def _per_category(values, combine_block, *, name: str, findings: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    """``combine_block(values[:, the category's findings])`` per category, shape (n, len(categories)); NaN without findings."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, {len(findings)}), got shape {array.shape}")
    if len(tuple(findings)) != array.shape[1]:
        raise ValueError(f"findings has {len(tuple(findings))} names for {array.shape[1]} columns")
    where = {finding: j for j, finding in enumerate(findings)}
    out = np.full((array.shape[0], len(categories)), np.nan)
    for k, category in enumerate(categories):
        members = EXPERT_MAPPING[category]
        if members:
            out[:, k] = combine_block(array[:, [where[f] for f in members]])
    return out


def category_scores(y_prob, *, combine: str = "max", findings: Sequence[str] = FINDINGS,
                    categories: Sequence[str] = EXPERT_CATEGORIES) -> np.ndarray:
    """The model's probability per expert category, shape (n, len(categories)).

    Args:
        y_prob: probabilities, shape (n, 14), columns ``findings``.
        combine: how several findings make one category, see :data:`COMBINE_METHODS`.
        findings: the columns of ``y_prob`` (default :data:`FINDINGS`).
        categories: the categories wanted, keys of :data:`EXPERT_MAPPING`.

    Returns:
        float array; NaN columns for a category without model output (Fracture).
    """
    if combine not in COMBINE_METHODS:
        raise ValueError(f"combine must be one of {COMBINE_METHODS}, got {combine!r}")
    if combine == "max":
        return _per_category(y_prob, lambda block: block.max(axis=1), name="y_prob", findings=findings, categories=categories)
    return _per_category(y_prob, lambda block: 1.0 - np.prod(1.0 - block, axis=1), name="y_prob", findings=findings,
                         categories=categories)


def category_labels(y_true, *, findings: Sequence[str] = FINDINGS, categories: Sequence[str] = EXPERT_CATEGORIES) -> np.ndarray:
    """NIH's label per expert category: 1 where any of its findings is labelled, shape (n, len(categories)).

    Also maps a reader's ticked findings onto the categories. NaN columns for a
    category no finding maps to (Fracture).
    """
    return _per_category(y_true, lambda block: (block > 0.5).any(axis=1).astype(float), name="y_true",
                         findings=findings, categories=categories)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two binary raters: (p_observed - p_chance) / (1 - p_chance).

    NaN (with an :class:`UndefinedMetricWarning`) when chance agreement is 1,
    i.e. both raters gave one and the same label to every item.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no items to compare")
    observed = float(np.mean(a == b))
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    if chance >= 1.0:
        warnings.warn("Cohen's kappa is undefined (both raters gave every item the same label); reported as NaN",
                      UndefinedMetricWarning, stacklevel=2)
        return float("nan")
    return (observed - chance) / (1.0 - chance)


def _binary(values, *, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (n, categories), got shape {array.shape}")
    known = array[~np.isnan(array)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0, 1 or NaN (not read)")
    return array


def label_audit(nih, expert, *, categories: Sequence[str] = EXPERT_CATEGORIES) -> pd.DataFrame:
    """How well NIH's labels agree with the experts', taking the experts as the reference.

    Args:
        nih: NIH's labels per category, shape (n, k): 0, 1, or a NaN column
            where NIH has no label for the category (Fracture).
        expert: the experts' labels, shape (n, k): 0, 1, or NaN where not read.
        categories: the k column names.

    Returns:
        one row per category: ``category, n_images, expert_positives,
        nih_positives, tp, fp, fn, tn, sensitivity`` (of NIH's label: tp / expert
        positives), ``ppv`` (tp / NIH positives), ``specificity``, ``agreement``,
        ``kappa`` and ``note``. Images an expert did not read for a category are
        left out of it. Undefined ratios are NaN, with one warning naming them.
    """
    n_lab = _binary(nih, name="nih")
    e_lab = _binary(expert, name="expert")
    if n_lab.shape != e_lab.shape:
        raise ValueError(f"nih has shape {n_lab.shape} but expert has shape {e_lab.shape}")
    if len(categories) != n_lab.shape[1]:
        raise ValueError(f"categories has {len(categories)} names for {n_lab.shape[1]} columns")
    rows, undefined = [], []
    for k, category in enumerate(categories):
        read = ~np.isnan(e_lab[:, k])
        e = e_lab[read, k] > 0.5
        row = {"category": category, "n_images": int(read.sum()), "expert_positives": int(e.sum())}
        if np.isnan(n_lab[read, k]).all() or not read.any():
            by_design = read.any() and not EXPERT_MAPPING.get(category, ())
            row.update(nih_positives=None, tp=None, fp=None, fn=None, tn=None, sensitivity=np.nan, ppv=np.nan,
                       specificity=np.nan, agreement=np.nan, kappa=np.nan,
                       note=NO_MODEL_OUTPUT if by_design else "no image with both labels")
            if not by_design:  # Fracture has no NIH label by design: the note says so, no warning
                undefined.append(category)
            rows.append(row)
            continue
        if np.isnan(n_lab[read, k]).any():
            raise ValueError(f"nih has missing labels for {category} on images the experts read")
        n = n_lab[read, k] > 0.5
        tp, fp = int((n & e).sum()), int((n & ~e).sum())
        fn, tn = int((~n & e).sum()), int((~n & ~e).sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            kappa = cohen_kappa(n, e)
        row.update(nih_positives=int(n.sum()), tp=tp, fp=fp, fn=fn, tn=tn, sensitivity=_ratio(tp, tp + fn),
                   ppv=_ratio(tp, tp + fp), specificity=_ratio(tn, tn + fp), agreement=_ratio(tp + tn, len(e)),
                   kappa=kappa, note="")
        if any(np.isnan(row[m]) for m in ("sensitivity", "ppv", "specificity", "kappa")):
            undefined.append(category)
        rows.append(row)
    if undefined:
        warnings.warn(f"the label audit is partly undefined for {', '.join(undefined)} (no positives, no NIH label "
                      "or a constant label); reported as NaN", UndefinedMetricWarning, stacklevel=2)
    return pd.DataFrame(rows)


def expert_auroc(y_score, nih, expert, *, groups, categories: Sequence[str] = EXPERT_CATEGORIES,
                 n_boot: int = 1000, seed: int | None = 0) -> pd.DataFrame:
    """AUROC of the model's category scores against the experts beside against NIH, with patient-bootstrap CIs.

    Both AUROCs of a category use the same images (those the experts read for
    it) and the same bootstrap resamples (one seed), so the columns differ only
    by the reference.

    Args:
        y_score: the model's score per category, shape (n, k) (:func:`category_scores`);
            a NaN column means no model output.
        nih: NIH's labels per category, shape (n, k) (:func:`category_labels`).
        expert: the experts' labels, shape (n, k), NaN where not read.
        groups: patient id per row, for the patient-level bootstrap.
        categories: the k column names.
        n_boot, seed: see :func:`cxr_core.evaluation.metrics.bootstrap_ci`.

    Returns:
        one row per category: ``category, n_images, n_patients, expert_positives,
        nih_positives, auroc_expert, auroc_expert_low, auroc_expert_high,
        auroc_nih, auroc_nih_low, auroc_nih_high, note``.
    """
    s = np.asarray(y_score, dtype=float)
    n_lab = _binary(nih, name="nih")
    e_lab = _binary(expert, name="expert")
    groups = np.asarray(groups, dtype=object)
    if not (s.shape == n_lab.shape == e_lab.shape) or s.ndim != 2 or len(groups) != s.shape[0]:
        raise ValueError(f"y_score {s.shape}, nih {n_lab.shape}, expert {e_lab.shape} and groups ({len(groups)},) disagree")
    rows, undefined = [], []
    for k, category in enumerate(categories):
        read = ~np.isnan(e_lab[:, k])
        row = {"category": category, "n_images": int(read.sum()), "n_patients": int(len(set(groups[read]))),
               "expert_positives": int(np.nansum(e_lab[read, k])),
               "nih_positives": None if np.isnan(n_lab[read, k]).all() else int(np.nansum(n_lab[read, k]))}
        for ref in ("expert", "nih"):
            row.update({f"auroc_{ref}": np.nan, f"auroc_{ref}_low": np.nan, f"auroc_{ref}_high": np.nan})
        row["note"] = ""
        if np.isnan(s[read, k]).all():
            if EXPERT_MAPPING.get(category, ()):
                row["note"] = "no model output"
                undefined.append(category)
            else:  # by design (Fracture): the note says so, no warning
                row["note"] = NO_MODEL_OUTPUT
            rows.append(row)
            continue
        for ref, labels in (("expert", e_lab), ("nih", n_lab)):
            y = labels[read, k]
            if np.isnan(y).any() or len(np.unique(y)) < 2:
                undefined.append(f"{category} vs {ref}")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                ci = bootstrap_ci(y, s[read, k], groups=groups[read], n_boot=n_boot, seed=seed)
            row.update({f"auroc_{ref}": float(ci.point[0]), f"auroc_{ref}_low": float(ci.low[0]),
                        f"auroc_{ref}_high": float(ci.high[0])})
        rows.append(row)
    if undefined:
        warnings.warn(f"AUROC is undefined for {', '.join(undefined)} (no model output, or no positive or no negative "
                      "image); reported as NaN", UndefinedMetricWarning, stacklevel=2)
    return pd.DataFrame(rows)


_COUNTS = frozenset({"n_images", "n_patients", "expert_positives", "nih_positives", "tp", "fp", "fn", "tn"})


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN as None, counts as int (pandas turns a count column holding None into floats)."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if isinstance(value, (float, np.floating)) and not np.isfinite(value):
                value = None
            elif key in _COUNTS and value is not None:
                value = int(value)
            elif isinstance(value, np.floating):
                value = float(value)
            clean[key] = value
        out.append(clean)
    return out


def expert_report(images, y_prob, y_true, patient_ids, expert_table: pd.DataFrame, *, combine: str = "max",
                  n_boot: int = 1000, seed: int | None = 0, findings: Sequence[str] = FINDINGS) -> dict:
    """The ``expert_reference`` and ``label_audit`` blocks of ``metrics.json`` for a set of images.

    Args:
        images: image names, shape (n,).
        y_prob: the model's (calibrated) probabilities, shape (n, 14).
        y_true: NIH's labels, shape (n, 14).
        patient_ids: patient per image, shape (n,).
        expert_table: :func:`cxr_core.data.expert_labels.read_expert_labels`'s table.
        combine, n_boot, seed, findings: see :func:`category_scores` and :func:`expert_auroc`.

    Returns:
        ``{"expert_reference": {...}, "label_audit": {...}}``, JSON-ready
        (NaN as None); only the images the experts labelled are used, and the
        blocks say how many.
    """
    images = pd.Series(np.asarray(images, dtype=object)).astype(str)
    table = expert_table.set_index("image")
    has = images.isin(table.index).to_numpy()
    rows = np.flatnonzero(has)
    expert = table.loc[images[has], list(EXPERT_CATEGORIES)].to_numpy(dtype=float)
    groups = np.asarray(patient_ids, dtype=object)[rows]
    p = np.asarray(y_prob, dtype=float)[rows]
    nih = category_labels(np.asarray(y_true, dtype=float)[rows], findings=findings)
    mapping = [{"category": c, "model_findings": list(EXPERT_MAPPING[c]),
                "model_score": (combine if len(EXPERT_MAPPING[c]) > 1 else "probability") if EXPERT_MAPPING[c] else None,
                "nih_label": ("OR of " + ", ".join(EXPERT_MAPPING[c])) if EXPERT_MAPPING[c] else None}
               for c in EXPERT_CATEGORIES]
    common = {"source": expert_table.attrs.get("source_file", ""), "images_offered": int(len(images)),
              "images": int(len(rows)), "patients": int(len(set(groups)))}
    if not len(rows):
        warnings.warn("none of the images has expert labels; the expert-reference blocks are empty",
                      UndefinedMetricWarning, stacklevel=2)
        return {"expert_reference": {**common, "mapping": mapping, "per_category": []},
                "label_audit": {**common, "per_category": []}}
    scores = category_scores(p, combine=combine, findings=findings)
    reference = expert_auroc(scores, nih, expert, groups=groups, n_boot=n_boot, seed=seed)
    audit = label_audit(nih, expert)
    return {
        "expert_reference": {**common, "reference": "radiologist-adjudicated labels, Majkowska et al., Radiology 2019",
                             "combine": combine, "n_boot": int(n_boot), "mapping": mapping,
                             "per_category": _records(reference)},
        "label_audit": {**common, "reference": "the experts' labels; NIH's text-mined label is the test",
                        "per_category": _records(audit)},
    }


# --------------------------------------------------------------------------
# Display: the blocks of metrics.json as tables (the app, summary.md, the model card)
# --------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _model_output(mapping: dict) -> str:
    findings = mapping.get("model_findings") or []
    if not findings:
        return "none"
    return findings[0] if len(findings) == 1 else f"{mapping.get('model_score') or 'max'} of {', '.join(findings)}"


def reference_table(block: dict) -> pd.DataFrame:
    """The ``expert_reference`` block as a display table, one row per category (AUROCs as numbers, CIs as text)."""
    outputs = {m["category"]: _model_output(m) for m in block.get("mapping", [])}
    rows = []
    for row in block.get("per_category", []):
        rows.append({
            "category": row["category"], "model output": outputs.get(row["category"], ""), "images": row["n_images"],
            "patients": row["n_patients"], "expert positives": row["expert_positives"], "NIH positives": row["nih_positives"],
            "AUROC vs experts": row["auroc_expert"],
            "95% CI (experts)": f"{_fmt(row['auroc_expert_low'])}–{_fmt(row['auroc_expert_high'])}" if row["auroc_expert"] is not None else "",
            "AUROC vs NIH": row["auroc_nih"],
            "95% CI (NIH)": f"{_fmt(row['auroc_nih_low'])}–{_fmt(row['auroc_nih_high'])}" if row["auroc_nih"] is not None else "",
            "note": row.get("note") or "",
        })
    return pd.DataFrame(rows)


def audit_table(block: dict) -> pd.DataFrame:
    """The ``label_audit`` block as a display table, one row per category."""
    names = {"n_images": "images", "expert_positives": "expert positives", "nih_positives": "NIH positives",
             "tp": "TP", "fp": "FP", "fn": "FN", "tn": "TN", "sensitivity": "sensitivity of NIH label",
             "ppv": "PPV of NIH label", "specificity": "specificity", "agreement": "agreement", "kappa": "kappa"}
    frame = pd.DataFrame(block.get("per_category", []))
    if frame.empty:
        return frame
    return frame[["category", *names, "note"]].rename(columns=names)


def expert_markdown(metrics: dict) -> list[str]:
    """Markdown lines for the expert reference and the label audit of ``metrics``; [] when it has none."""
    ref, audit = metrics.get("expert_reference"), metrics.get("label_audit")
    if not ref or not ref.get("per_category"):
        return []
    split = ref.get("split", "test")
    lines = [
        f"Against radiologists' labels (Majkowska et al., Radiology 2019; mapping in `docs/build/expert_reference.md`): "
        f"{ref['images']} of the {ref['images_offered']} {split} images ({ref['patients']} patients) have them. "
        "AUROC of the model against the experts beside AUROC against NIH's labels on the same images "
        "(95% CI, patient bootstrap):",
        "",
        "| category | model output | expert positives | NIH positives | AUROC vs experts (95% CI) | AUROC vs NIH (95% CI) |",
        "|---|---|---:|---:|---|---|",
    ]
    for row in reference_table(ref).to_dict(orient="records"):
        nih = "—" if row["NIH positives"] is None or pd.isna(row["NIH positives"]) else int(row["NIH positives"])
        if row["AUROC vs experts"] is None or pd.isna(row["AUROC vs experts"]):
            lines.append(f"| {row['category']} | {row['model output']} | {row['expert positives']} | {nih} | {row['note'] or 'n/a'} | |")
            continue
        lines.append(f"| {row['category']} | {row['model output']} | {row['expert positives']} | {nih} "
                     f"| {_fmt(row['AUROC vs experts'])} ({row['95% CI (experts)']}) | {_fmt(row['AUROC vs NIH'])} ({row['95% CI (NIH)']}) |")
    if audit and audit.get("per_category"):
        lines += ["", "NIH's text-mined labels audited against the experts on the same images (experts as the reference):", "",
                  "| category | images | TP | FP | FN | TN | sensitivity of NIH label | PPV of NIH label | specificity | kappa |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in audit["per_category"]:
            if row.get("tp") is None:
                lines.append(f"| {row['category']} | {row['n_images']} | | | | | {row.get('note') or 'n/a'} | | | |")
                continue
            lines.append(f"| {row['category']} | {row['n_images']} | {row['tp']} | {row['fp']} | {row['fn']} | {row['tn']} "
                         f"| {_fmt(row['sensitivity'])} | {_fmt(row['ppv'])} | {_fmt(row['specificity'])} | {_fmt(row['kappa'])} |")
    return lines
