"""Adapt a bundle to a site: local validation, refitted operating points, an optional fine-tune, never worse.

The engine behind ``python -m training.adapt`` (the steps are described in
``docs/use/site.md``):

1. read the site's films and labels and split them patient-wise, seeded,
   into a FIT part and a CHECK part (:mod:`~cxr_core.adaptation.site_data`);
2. run the shipped bundle once over every film (raw probabilities, the input
   check's warnings; an unreadable film stops the run, naming its row);
3. local validation: the shipped bundle on the check part, the numbers and the
   report ``training.evaluate`` writes (:mod:`~cxr_core.adaptation.scores`);
4. optionally fine-tune the members on the fit part
   (:mod:`~cxr_core.adaptation.finetune`);
5. refit the calibration, the cuts, the flags and the triage on the fit part
   where cross-validation inside the fit part supports a change, else keep the
   shipped ones (:mod:`~cxr_core.adaptation.refit`);
6. the adapted bundle on the check part, and the never-worse rule
   (:func:`~cxr_core.adaptation.scores.never_worse`): the bundle goes to
   ``OUT/bundle`` only when the rule allows.

The check part is never used to fit anything: its labels enter only the
numbers of steps 3 and 6.

``OUT`` receives ``report.json``, ``report.md`` and, when written,
``bundle/``: a normal bundle (``Predictor.from_bundle``, ``training.predict``,
the app with ``CXR_ASSIST_BUNDLE``) whose ``bundle.json`` has a ``site`` key
(the parent bundle's folder and SHA-256, the site's name, films, patients and
split) and which holds ``site_report.json`` (what the app's Model performance
page shows "at your site") and ``site_split.csv``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.adaptation.finetune import FINE_TUNE_MODES, fine_tune_members
from cxr_core.adaptation.refit import (
    FITTED_ON,
    RECALIBRATIONS,
    TRIAGE_REFITS,
    OperatingPoints,
    refit_operating_points,
    shipped_operating_points,
)
from cxr_core.adaptation.scores import (
    FEW_FILMS,
    NON_INFERIORITY_MARGIN,
    check_scores,
    never_worse,
    paired_mean_auroc_difference,
)
from cxr_core.adaptation.site_data import (
    CHECK,
    FIT,
    MIN_SITE_POSITIVES,
    SiteDataError,
    SiteFilms,
    read_site,
    split_site,
)
from cxr_core.bundle.format import Bundle, bundle_sha256, portable_path
from cxr_core.bundle.versioned_json import read_json_object
from cxr_core.errors import ImageReadError
from cxr_core.evaluation.clinical import rates
from cxr_core.evaluation.evaluate import _json, evaluate_predictions, reading_report
from cxr_core.findings import FINDINGS
from cxr_core.serving.shipped_form import SHIPPED_DIR

REPORT_FILE = "report.json"
REPORT_MARKDOWN = "report.md"
BUNDLE_DIR = "bundle"
#: The ``bundle.json`` key of an adapted bundle: the parent, the site, its split and the check-part numbers.
SITE_KEY = "site"
#: In an adapted bundle: the site report (what the app shows) and the split of the site's films.
SITE_REPORT_FILE = "site_report.json"
SITE_SPLIT_FILE = "site_split.csv"
#: The parent's files that describe the parent only (its NIH predictions and tour); not copied into an adapted bundle.
_PARENT_ONLY = ("predictions.csv.gz", "tour.json", REPORT_FILE, ".candidate")


def _screened(predictor, site: SiteFilms, *, batch_size: int = 16, workers: int = 2, progress=None):
    """One pass of the shipped bundle: raw probabilities (n, 14), the inputs ``{size: uint8 (n, S, S)}`` and the input
    check's warnings per film.

    Raises:
        SiteDataError: films that cannot be read, naming their rows.
    """
    def load(path):
        try:
            return predictor.prepare(path, keep_image=False)
        except ImageReadError as exc:
            return exc

    raw, inputs, notes, unreadable = [], {size: [] for size in predictor.input_sizes}, [], []
    chunks = [list(range(i, min(i + batch_size, len(site)))) for i in range(0, len(site), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in progress(chunks) if progress else chunks:
            loaded = list(pool.map(load, [site.paths[i] for i in chunk]))
            bad = [(i, item) for i, item in zip(chunk, loaded) if isinstance(item, Exception)]
            unreadable += [f"{site.table['row'].iloc[i]} ({site.table['image'].iloc[i]}: {exc})" for i, exc in bad]
            if bad:
                continue
            analyses = predictor.analyze(loaded, explain=[])
            raw.append([list(a.raw_probabilities.values()) for a in analyses])
            for size in predictor.input_sizes:
                inputs[size].append(np.stack([film.resized[size] for film in loaded]))
            notes += [list(a.withheld_because) for a in analyses]
    if unreadable:
        shown = "; ".join(unreadable[:8]) + (f"; and {len(unreadable) - 8} more" if len(unreadable) > 8 else "")
        raise SiteDataError(f"{len(unreadable)} image(s) could not be read: rows {shown}")
    return np.concatenate(raw), {size: np.concatenate(arrays) for size, arrays in inputs.items()}, notes


def _predict_inputs(predictor, inputs: dict[int, np.ndarray], *, batch_size: int = 32) -> np.ndarray:
    """Raw probabilities of already resized films (the adapted bundle's pass: no decoding again)."""
    from cxr_core.serving.predictor import Inputs

    films = [Inputs(resized={s: a[i] for s, a in inputs.items()}) for i in range(len(next(iter(inputs.values()))))]
    return np.array([list(a.raw_probabilities.values()) for i in range(0, len(films), batch_size)
                     for a in predictor.analyze(films[i:i + batch_size], explain=[])])


def _changed(points: OperatingPoints, records: list[dict]) -> bool:
    """Whether the adapted bundle differs from the shipped one: a refitted finding or triage, or a fine-tuned member."""
    return (any(s["source"] == "site" for s in points.sources) or points.triage_source == "site"
            or any(r["best_epoch"] > 0 for r in records))


def _local_validation(y: np.ndarray, raw: np.ndarray, groups: np.ndarray, points: OperatingPoints, *, n_boot: int,
                      fitted_on: str) -> dict | None:
    """The report ``training.evaluate`` writes in apply mode, on the check films labelled for all 14 findings."""
    complete = np.isfinite(y).all(axis=1)
    if complete.sum() < 2:
        return None
    yc, rc, gc = y[complete].astype(int), raw[complete], groups[complete]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined numbers are None in the report, as in training.evaluate
        report, calibration, thresholds = evaluate_predictions(
            y_val=None, p_val=None, y_test=yc, p_test=rc, test_meta=pd.DataFrame({"patient_id": gc}), n_boot=n_boot,
            calibration=points.calibration, thresholds=points.thresholds)
        reading, _, _ = reading_report(y_test=yc, c_test=calibration.apply(rc), test_groups=gc,
                                       youden_thresholds=thresholds, triage=points.triage, flags=points.flags,
                                       n_boot=n_boot)
    report["reading"] = reading
    report["calibration"]["fitted_on"] = report["thresholds"]["fitted_on"] = fitted_on
    report["reading"]["fitted_on"], report["reading"]["measured_on"] = fitted_on, "the site's check part"
    return _json(report)


def _operating_points_rows(points: OperatingPoints, y_fit: np.ndarray, c_fit: np.ndarray, parent: list) -> list[dict]:
    """``operating_points`` of the adapted bundle: each Youden cut with its sensitivity and specificity where it was
    fitted (the site's fit part, or the parent's NIH validation)."""
    by_finding = {row.get("finding"): row for row in parent or []}
    rows = []
    for j, (finding, source) in enumerate(zip(FINDINGS, points.sources)):
        if source["source"] != "site":
            rows.append({**by_finding.get(finding, {"finding": finding}), "threshold": float(points.thresholds[j])})
            continue
        known = np.isfinite(y_fit[:, j])
        at = rates(y_fit[known, j], c_fit[known, j] >= points.thresholds[j])
        rows.append({"finding": finding, "threshold": float(points.thresholds[j]), "val_sensitivity": at["sensitivity"],
                     "val_specificity": at["specificity"], "fitted_on": FITTED_ON})
    return rows


def _candidate(parent: Path, out: Path, tuned_bundle, records: list[dict]) -> Path:
    """A copy of the parent bundle under ``out``, with the fine-tuned members' weights (and their fine-tuning in each
    member's ``training``) when there are any."""
    candidate = out / ".candidate"
    if candidate.exists():
        shutil.rmtree(candidate)
    shutil.copytree(parent, candidate, ignore=shutil.ignore_patterns(*_PARENT_ONLY))
    if tuned_bundle is not None:
        members = ([(m.bundle, candidate / "members" / m.name) for m in tuned_bundle.members]
                   if hasattr(tuned_bundle, "members") else [(tuned_bundle, candidate)])
        for (member, folder), tuning in zip(members, records):
            float16 = member.extra.get("weights_dtype") == "float16"
            training = {**member.training, "site_fine_tune": {k: v for k, v in tuning.items() if k != "history"}}
            Bundle(model=member.model, input_size=member.input_size, preprocessing=member.preprocessing,
                   backbone=member.backbone, findings=member.findings, model_config=member.model_config,
                   data=member.data, split=member.split, splits=member.splits, code=member.code,
                   created=member.created, training=training,
                   extra={k: v for k, v in member.extra.items() if k != "weights_dtype"}).save(
                folder, float16=float16, overwrite=True)
            # The parent's shipped serving recipe describes the parent's weights: stale now (it would be refused).
            shutil.rmtree(folder / SHIPPED_DIR, ignore_errors=True)
    return candidate


def _site_record(site: SiteFilms, parts: np.ndarray, *, parent: Path, parent_sha256: str, parent_meta: dict,
                 seed: int, check_share: float, fine_tune: str, recalibration: str, triage: str, shipped: dict,
                 adapted: dict, decision: str, reason: str) -> dict:
    def count(mask):
        return {"films": int(mask.sum()), "patients": int(len(np.unique(site.patient_ids[mask])))}

    keep = ("films", "patients", "mean_auroc", "mean_auroc_low", "mean_auroc_high", "mean_ece", "triage", "flags")
    return {
        "name": site.name, "films": len(site), "patients": int(len(np.unique(site.patient_ids))),
        "label_format": site.label_format, "findings": list(site.findings),
        "split": {"seed": int(seed), "check_share": float(check_share), FIT: count(parts == FIT),
                  CHECK: count(parts == CHECK), "file": SITE_SPLIT_FILE,
                  "rule": "seeded, patient-wise, over patients only (labels play no part)"},
        "parent": {"bundle": portable_path(parent.resolve()), "sha256": parent_sha256,
                   "created": parent_meta.get("created"), "backbone": parent_meta.get("backbone")},
        "fine_tune": fine_tune, "recalibration": recalibration, "triage": triage, "decision": decision,
        "reason": reason, "check": {"shipped": {k: shipped.get(k) for k in keep}, "adapted": {k: adapted.get(k) for k in keep}},
        "few_films": FEW_FILMS, "report_file": SITE_REPORT_FILE,
        "nih_numbers": "metrics.json and summary.md are the parent bundle's, on NIH test"
                       + ("" if fine_tune == "none" else " (before this site's fine-tuning)"),
    }


def adapt_bundle(
    bundle_dir: str | os.PathLike,
    site_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fine_tune: str = "none",
    seed: int = 0,
    check_share: float = 0.5,
    site_name: str | None = None,
    n_boot: int = 1000,
    epochs: int | None = None,
    learning_rate: float | None = None,
    select_epoch: bool = True,
    min_positives: int = MIN_SITE_POSITIVES,
    recalibration: str = "auto",
    triage: str = "auto",
    screened: dict | None = None,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Adapt ``bundle_dir`` to the site (see the module docstring); returns what ``report.json`` holds.

    Args:
        bundle_dir: the shipped (parent) bundle, evaluated (it has calibration and cuts).
        site_dir: the site's images (PNG, JPEG, DICOM; any layout).
        labels_csv: the site's labels (:mod:`~cxr_core.adaptation.site_data`).
        out_dir: receives ``report.json``, ``report.md`` and, when written, ``bundle/``.
        fine_tune: ``"none"``, ``"heads"`` or ``"last-block"``.
        seed: the split's (and the fine-tuning's) seed.
        check_share: share of the films in the check part.
        site_name: recorded in the adapted bundle (default: the site folder's name).
        n_boot: patient-bootstrap resamples.
        epochs, learning_rate, select_epoch: fine-tuning options
            (:func:`~cxr_core.adaptation.finetune.fine_tune_members`).
        min_positives: a finding with fewer positive or negative fit-part films keeps the shipped calibration and cuts.
        recalibration: ``"auto"`` (per finding by cross-validation inside the fit part), ``"refit"`` or ``"intercept"``
            (:func:`~cxr_core.adaptation.refit.refit_operating_points`).
        triage: ``"auto"`` (refitted only when cross-validation inside the fit part supports it) or ``"refit"``.
        screened: a dict shared by calls on the same bundle and films (a benchmark's split seeds): the shipped
            bundle's pass over the films is kept in it and reused (``seconds["shipped_pass_reused"]`` says so).
        progress: wraps the prediction batches (e.g. ``tqdm``).
        log: one line per step.

    Raises:
        FileNotFoundError, SiteDataError: the site's data is not usable (the message names the rows);
        ValueError: the bundle is not evaluated, or an option is out of range; BundleError: not a bundle.
    """
    from cxr_core.bundle.ensemble import load_bundle
    from cxr_core.serving.predictor import Predictor

    started = time.perf_counter()
    if recalibration not in RECALIBRATIONS:
        raise ValueError(f"--recalibrate must be one of {', '.join(RECALIBRATIONS)}, got {recalibration!r}")
    if triage not in TRIAGE_REFITS:
        raise ValueError(f"--triage must be one of {', '.join(TRIAGE_REFITS)}, got {triage!r}")
    if fine_tune not in FINE_TUNE_MODES:
        raise ValueError(f"--fine-tune must be one of {', '.join(FINE_TUNE_MODES)}, got {fine_tune!r}")
    bundle_dir, out = Path(bundle_dir), Path(out_dir)
    if (out / BUNDLE_DIR).exists() and out.resolve() != bundle_dir.resolve():
        raise ValueError(f"{out / BUNDLE_DIR} already exists: give a new --out folder (an adapted bundle is never "
                         "overwritten)")
    site = read_site(site_dir, labels_csv, name=site_name)
    parts = split_site(site, check_share=check_share, seed=seed)
    fit, check = parts == FIT, parts == CHECK
    log(f"site {site.name}: {len(site)} films of {len(np.unique(site.patient_ids))} patients ({site.label_format}); "
        f"fit part {int(fit.sum())} films, check part {int(check.sum())} films (seed {seed})")
    for note in site.notes:
        log(f"note: {note}")
    predictor = Predictor.from_bundle(bundle_dir)
    shipped_points = shipped_operating_points(predictor.metadata)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    key = None if screened is None else (bundle_sha256(bundle_dir), tuple(str(path) for path in site.paths))
    reused = key is not None and key in screened
    raw, inputs, notes = screened[key] if reused else _screened(predictor, site, progress=progress)
    if screened is not None:
        screened[key] = (raw, inputs, notes)
    predict_seconds = time.perf_counter() - t0
    y, groups = site.labels, site.patient_ids

    shipped = check_scores(y[check], shipped_points.calibration.apply(raw[check]), groups[check],
                           triage=shipped_points.triage, flags=shipped_points.flags, n_boot=n_boot, seed=seed)
    warned = [site.table["image"].iloc[i] for i in np.flatnonzero(check) if notes[i]]
    local = {"shipped": _local_validation(y[check], raw[check], groups[check], shipped_points, n_boot=n_boot,
                                          fitted_on="NIH validation (the shipped bundle)"),
             "input_check": {"films_warned": len(warned), "films": warned,
                             "note": "counted in every number, as training.evaluate does"}}
    log(f"local validation (check part): shipped mean AUROC {shipped['mean_auroc']}, mean calibration error "
        f"{shipped['mean_ece']}; {len(warned)} film(s) with input-check warnings")

    tuned, records, tune_seconds, raw_adapted = None, [], 0.0, raw
    if fine_tune != "none":
        tuned = load_bundle(bundle_dir)
        t0 = time.perf_counter()
        records = fine_tune_members(tuned, {s: a[fit] for s, a in inputs.items()}, y[fit], groups[fit], mode=fine_tune,
                                    epochs=epochs, learning_rate=learning_rate, seed=seed, select_epoch=select_epoch,
                                    log=log)
        tune_seconds = time.perf_counter() - t0
    candidate = _candidate(bundle_dir, out, tuned, records)
    try:
        if tuned is not None:
            t0 = time.perf_counter()
            raw_adapted = _predict_inputs(Predictor.from_bundle(candidate), inputs)
            predict_seconds += time.perf_counter() - t0
        points = refit_operating_points(y[fit], raw_adapted[fit], groups[fit], shipped=shipped_points,
                                        min_positives=min_positives, recalibration=recalibration, triage=triage)
        c_adapted = points.calibration.apply(raw_adapted)
        adapted = check_scores(y[check], c_adapted[check], groups[check], triage=points.triage, flags=points.flags,
                               n_boot=n_boot, seed=seed)
        local["adapted"] = _local_validation(y[check], raw_adapted[check], groups[check], points, n_boot=n_boot,
                                             fitted_on=FITTED_ON)
        difference = paired_mean_auroc_difference(y[check], shipped_points.calibration.apply(raw[check]),
                                                  c_adapted[check], groups[check], n_boot=n_boot, seed=seed)
        written, reason = never_worse(shipped, adapted, difference)
        if not _changed(points, records):
            written, reason = False, ("no bundle written: it would not differ from the shipped one (no finding's "
                                      f"calibration moved: too few fit-part films of it (under {min_positives} positive "
                                      "or negative) or no support for a change by cross-validation inside the fit "
                                      "part; the triage was kept" + (", and no member's fine-tuning beat its shipped weights)"
                                                           if records else ", and no fine-tuning was asked for)"))
        decision = "written" if written else "refused"
        log(reason)
        parent_meta = predictor.metadata
        record = _site_record(site, parts, parent=bundle_dir, parent_sha256=bundle_sha256(bundle_dir),
                              parent_meta=parent_meta, seed=seed, check_share=check_share, fine_tune=fine_tune,
                              recalibration=recalibration, triage=triage, shipped=shipped, adapted=adapted,
                              decision=decision, reason=reason)
        report = _json({
            "format": "cxr-assist site adaptation 1", "site": {k: record[k] for k in ("name", "films", "patients",
                                                                                       "label_format", "findings")},
            "notes": list(site.notes),
            "split": {**record["split"], FIT: site.table["image"][fit].tolist(), CHECK: site.table["image"][check].tolist(),
                      "fit_films": int(fit.sum()), "check_films": int(check.sum())},
            "parent": record["parent"], "shipped": shipped, "adapted": adapted, "difference": difference,
            "rule": {"non_inferiority_margin": NON_INFERIORITY_MARGIN,
                     "text": "written only when, on the check part, the adapted mean AUROC minus the shipped one is at "
                             f"least 0 and the lower bound of its paired patient-bootstrap 95% interval is above "
                             f"-{NON_INFERIORITY_MARGIN}, the adapted mean calibration error is not higher, and its triage "
                             "sensitivity at the rule-out point is not lower"},
            "decision": decision, "reason": reason, "recalibration": recalibration, "triage_refit": triage,
            "local_validation": local,
            # Every value fitted on the fit part (and nothing timed): the same fit part gives the same block.
            "fitted": {**points.to_dict(), "fine_tune": [
                {"member": r["member"], "best_epoch": r["best_epoch"], "weights_sha256": r["weights_sha256"],
                 "history": [{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]]}
                for r in records]},
            "fine_tune": {"mode": fine_tune, "members": records, "seconds": round(tune_seconds, 1),
                          "films": int(fit.sum())},
            "seconds": {"predicting": round(predict_seconds, 1), "shipped_pass_reused": reused,
                        "fine_tuning": round(tune_seconds, 1),
                        "total": round(time.perf_counter() - started, 1)},
        })
        if written:
            _finish_bundle(candidate, record, report, points, y[fit], c_adapted[fit], parent_meta, site, parts, records)
            candidate.rename(out / BUNDLE_DIR)
            report["bundle"] = BUNDLE_DIR
    finally:
        if candidate.exists():
            shutil.rmtree(candidate)
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    (out / REPORT_MARKDOWN).write_text(report_markdown(report), encoding="utf-8")
    log(f"{decision}; report in {out / REPORT_FILE}" + (f", adapted bundle in {out / BUNDLE_DIR}" if written else ""))
    return report


def _finish_bundle(candidate: Path, record: dict, report: dict, points: OperatingPoints, y_fit, c_fit,
                   parent_meta: dict, site: SiteFilms, parts: np.ndarray, records: list[dict]) -> None:
    """The adapted bundle's metadata, site report, split and model card section."""
    keys = {
        "calibration": points.calibration.to_dict(),
        "thresholds": {"method": "youden", "fitted_on": FITTED_ON + " (where it had enough films; else NIH validation)",
                       "values": [float(t) for t in points.thresholds]},
        "operating_points": _operating_points_rows(points, y_fit, c_fit, parent_meta.get("operating_points")),
        "triage": None if points.triage is None else points.triage.to_dict(),
        "flags": None if points.flags is None else points.flags.to_dict(),
        "predictions_file": None, SITE_KEY: record,
    }
    if any(r["mode"] == "last-block" for r in records) and parent_meta.get("ood"):
        keys["ood"] = None  # the learned input check was fitted on the parent trunk's features, which changed
        record["input_check"] = ("the learned input check is off: it was fitted on the parent's trunk features, which "
                                 "the last-block fine-tune changed (python -m training.fit_ood refits it on NIH data)")
    Bundle.update_metadata(candidate, **keys)
    (candidate / SITE_REPORT_FILE).write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    pd.DataFrame({"image": site.table["image"], "patient_id": site.table["patient_id"], "part": parts}).to_csv(
        candidate / SITE_SPLIT_FILE, index=False)
    card = candidate / "MODEL_CARD.md"  # the parent's card, with the site section after it
    parent_card = card.read_text(encoding="utf-8").rstrip() + "\n\n" if card.is_file() else ""
    card.write_text(parent_card + site_card_section(record) + "\n", encoding="utf-8")


def read_site_report(bundle_dir: str | os.PathLike) -> dict | None:
    """The site report of an adapted bundle (``site_report.json``), or None for a bundle that has none."""
    path = Path(bundle_dir) / SITE_REPORT_FILE
    return read_json_object(path, what="site report") if path.is_file() else None


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def site_card_section(record: dict) -> str:
    """The model card's site section of an adapted bundle, from its ``bundle.json`` ``site`` record."""
    split, shipped, adapted = record["split"], record["check"]["shipped"], record["check"]["adapted"]
    few = (f" These are few-film numbers (under {record['few_films']} check films): read them as a rough guide."
           if split[CHECK]["films"] < record["few_films"] else "")
    lines = [
        f"## At {record['name']}: adapted from {record['parent']['bundle']}",
        "",
        f"This bundle is {record['parent']['bundle']} (SHA-256 {record['parent']['sha256'][:16]}…) adapted to "
        f"{record['name']}: {record['films']} films of {record['patients']} patients, split patient-wise "
        f"(seed {split['seed']}) into a fit part ({split[FIT]['films']} films, {split[FIT]['patients']} patients) and a "
        f"check part ({split[CHECK]['films']} films, {split[CHECK]['patients']} patients). {_refit_words(record)}; "
        f"fine-tuning: {record['fine_tune']}. The check part was used for "
        f"nothing but the numbers below, measured against {record['name']}'s own labels.{few}",
        "",
        "| on the check part | shipped | adapted |",
        "|---|---:|---:|",
        f"| mean AUROC (mean of per-finding 95% bounds) | {_fmt(shipped['mean_auroc'])} ({_fmt(shipped['mean_auroc_low'])}–"
        f"{_fmt(shipped['mean_auroc_high'])}) | {_fmt(adapted['mean_auroc'])} ({_fmt(adapted['mean_auroc_low'])}–"
        f"{_fmt(adapted['mean_auroc_high'])}) |",
        f"| mean calibration error (ECE) | {_fmt(shipped['mean_ece'])} | {_fmt(adapted['mean_ece'])} |",
    ]
    for key, label in (("triage", "triage sensitivity at the rule-out point"), ("flags", "flags per No-Finding film")):
        a, b = shipped.get(key) or {}, adapted.get(key) or {}
        field = "sensitivity" if key == "triage" else "flags_per_no_finding_film"
        lines.append(f"| {label} | {_fmt(a.get(field))} | {_fmt(b.get(field))} |")
    lines += ["", f"Decision, {record['reason']}.", "", f"The NIH numbers above: {record['nih_numbers']}."]
    if record.get("input_check"):
        lines += ["", record["input_check"] + "."]
    return "\n".join(lines)


def _refit_words(record: dict) -> str:
    """How the operating points were refitted on the fit part, as the run asked (``--recalibrate``, ``--triage``)."""
    how = record.get("recalibration", "auto")
    calibration = {
        "auto": "calibration, cuts and flags were refitted on the fit part for a finding with enough films of it where "
                "cross-validation inside the fit part supported a change (else kept from NIH validation)",
        "refit": "calibration, cuts and flags were refitted on the fit part for every finding with enough films of it "
                 "(else kept from NIH validation)",
        "intercept": "each finding with enough films of it had its calibration's intercept shifted and its cuts and "
                     "flags refitted on the fit part (else kept from NIH validation)",
    }[how]
    triage = ("the triage was refitted on the fit part" if record.get("triage") == "refit" else
              "the triage was refitted only where cross-validation inside the fit part supported it")
    return calibration[0].upper() + calibration[1:] + "; " + triage


def _source(source: dict) -> str:
    """``site (intercept)``, ``site (refit)``, ``shipped``: where a finding's calibration and cuts come from."""
    how = source.get("calibration")
    return source["source"] + (f" ({how})" if source["source"] == "site" and how else "")


def report_markdown(report: dict) -> str:
    """The readable report beside ``report.json``."""
    shipped, adapted, split = report["shipped"], report["adapted"], report["split"]
    site = report["site"]
    lines = [
        f"# Site adaptation: {site['name']}",
        "",
        f"{site['films']} films of {site['patients']} patients ({site['label_format']}; findings labelled: "
        f"{', '.join(site['findings'])}). Split patient-wise, seed {split['seed']}: fit part {split['fit_films']} films, "
        f"check part {split['check_films']} films. Every number below is measured on the CHECK part against the site's "
        "labels; nothing was fitted on it." + (f" With only {split['check_films']} check films these are few-film "
                                               "numbers: their intervals are wide." if split["check_films"] < FEW_FILMS else ""),
        "",
        f"**Decision, {report['reason']}.**",
        "",
        f"Rule: {report['rule']['text']}.",
        "",
        "| finding | check films | positives | AUROC shipped (95% CI) | AUROC adapted (95% CI) | ECE shipped | ECE adapted | cuts from |",
        "|---|---:|---:|---|---|---:|---:|---|",
    ]
    sources = {s["finding"]: s for s in report["fitted"]["sources"]}
    for a, b in zip(shipped["per_finding"], adapted["per_finding"]):
        lines.append(f"| {a['finding']} | {a['films']} | {a['positives']} | {_fmt(a['auroc'])} ({_fmt(a['auroc_low'])}–"
                     f"{_fmt(a['auroc_high'])}) | {_fmt(b['auroc'])} ({_fmt(b['auroc_low'])}–{_fmt(b['auroc_high'])}) | "
                     f"{_fmt(a['ece'])} | {_fmt(b['ece'])} | {_source(sources[a['finding']])} |")
    lines.append(f"| **mean** | | | **{_fmt(shipped['mean_auroc'])}** | **{_fmt(adapted['mean_auroc'])}** | "
                 f"{_fmt(shipped['mean_ece'])} | {_fmt(adapted['mean_ece'])} | |")
    d = report["difference"]
    if d["difference"] is not None:
        lines += ["", f"Paired patient bootstrap ({d['n_boot']} resamples): adapted minus shipped mean AUROC "
                      f"{d['difference']:+.3f} (95% interval {d['low']:+.3f} to {d['high']:+.3f}; below 0 in "
                      f"{d['share_below_zero']:.0%} of resamples)."]
    for name, block in (("shipped", shipped), ("adapted", adapted)):
        t, f = block.get("triage"), block.get("flags")
        if t:
            lines += ["", f"Triage ({name}), {t['films']} check films labelled for all 14 findings: sensitivity at the "
                          f"rule-out point {_fmt(t['sensitivity'])} ({_fmt(t['sensitivity_low'])}–{_fmt(t['sensitivity_high'])}),"
                          f" {_fmt(t['set_aside_share'] * 100 if t['set_aside_share'] is not None else None, 1)}% of films set aside."]
        if f:
            lines += ["", f"Flags ({name}): {_fmt(f['flags_per_no_finding_film'], 2)} per No-Finding film "
                          f"({f['no_finding_films']} No-Finding check films), {_fmt(f['flags_right'])} of flags right."]
    check = report["local_validation"]["input_check"]
    lines += ["", f"Input check: {check['films_warned']} check film(s) warned (not a frontal chest film?); "
                  f"{check['note']}."]
    lines += ["", f"Triage: {report['fitted']['triage_note'] or report['fitted']['triage_source']}."]
    if report["fine_tune"]["mode"] != "none":
        ft = report["fine_tune"]
        lines += ["", f"Fine-tuning ({ft['mode']}) on {ft['films']} fit films: {ft['seconds']:.0f} s in all."]
        lines += [f"- {r['member']}: from {r['cut']}, best epoch {r['best_epoch']} of {len(r['history']) - 1} "
                  f"({r['seconds']:.0f} s)" for r in ft["members"]]
    if report["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in report["notes"]]]
    lines += ["", f"Time: predicting {report['seconds']['predicting']:.0f} s, fine-tuning "
                  f"{report['seconds']['fine_tuning']:.0f} s, total {report['seconds']['total']:.0f} s."]
    return "\n".join(lines) + "\n"
