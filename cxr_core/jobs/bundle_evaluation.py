"""Evaluate a model bundle on a dataset and write the results into the bundle.

The engine behind ``python -m training.evaluate``. On the data the bundle was
trained on, it fits calibration and thresholds on the bundle's VALIDATION
images, evaluates its TEST images (metrics with patient-bootstrap CIs,
operating points, calibration, subgroups, Grad-CAM++ localisation against the
expert boxes), and stores everything in the bundle: ``metrics.json``,
``summary.md``, and the thresholds and calibration in ``bundle.json``.

On other data (the demo set, another copy of NIH) it applies the bundle's
fitted calibration and thresholds unchanged to every image the model did not
train on, and writes the report to a separate folder.

Where the dataset folder holds the radiologists' labels of Majkowska et al.
(``extras/google2019_nih-chest-xray-labels.csv.gz``, or a file passed as
``expert_labels``), the evaluated images that have them are also scored
against the experts beside NIH's labels, and NIH's labels are audited against
the experts (``expert_reference`` and ``label_audit`` in ``metrics.json``;
:mod:`cxr_core.evaluation.expert`). That part never stops an evaluation: if
it fails, a warning says why and the two blocks are left out.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.bundle.format import Bundle, portable_path
from cxr_core.data.dataset import NIHDataset, stored_image_size
from cxr_core.data.expert_labels import find_expert_labels, read_expert_labels
from cxr_core.data.preprocessing import to_model_uint8
from cxr_core.data.splits import assert_patient_disjoint
from cxr_core.evaluation.calibration import Calibration
from cxr_core.evaluation.evaluate import _json, evaluate_predictions, localization_report, reading_report
from cxr_core.evaluation.expert import expert_markdown, expert_report
from cxr_core.evaluation.localization import best_iobb, heatmap_to_boxes, iou
from cxr_core.findings import FINDINGS
from cxr_core.serving.predictor import Predictor

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.md"
#: The raw validation and test probabilities the bundle's calibration, thresholds, triage and flags were fitted and
#: measured on (one row per film): refits and benchmarks read them instead of running the model again.
PREDICTIONS_FILE = "predictions.csv.gz"
#: Fewer validation images than this cannot support fitted thresholds.
MIN_VAL_IMAGES = 50


def _model_inputs(paths: list[str], size: int, workers: int = 2) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(lambda path: to_model_uint8(path, size), paths)))


def predict_rows(predictor: Predictor, paths: list[str], *, batch_size: int = 32, workers: int = 2,
                 progress=None) -> np.ndarray:
    """Raw (uncalibrated) probabilities (n, 14) for image files, via the one preprocessing.

    For an ensemble, every member gets its own input size and normalisation
    and ``raw`` is the sigmoid of the members' weighted mean logit: the
    calibration fitted on these values is the ensemble's, after averaging.
    """
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    outputs = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in progress(chunks) if progress else chunks:
            films = list(pool.map(lambda path: predictor.prepare(path, keep_image=False), chunk))
            outputs.append([list(a.raw_probabilities.values()) for a in predictor.analyze(films, explain=[])])
    return np.concatenate(outputs) if outputs else np.zeros((0, len(FINDINGS)))


def intensity_reference(paths: list[str], size: int, *, limit: int = 400, seed: int = 0) -> dict:
    """Per-image mean and standard deviation of training images, for the app's input check."""
    rng = np.random.default_rng(seed)
    chosen = list(rng.permutation(np.asarray(paths, dtype=object))[:limit])
    images = _model_inputs(chosen, size).astype(np.float32) / 255.0
    means, stds = images.mean(axis=(1, 2)), images.std(axis=(1, 2))
    return {
        "mean": float(means.mean()), "mean_sd": float(means.std()),
        "std": float(stds.mean()), "std_sd": float(stds.std()), "n_images": len(chosen),
    }


def localization_records(predictor: Predictor, dataset: NIHDataset, images: Iterable[str], *, progress=None) -> pd.DataFrame:
    """Best IoBB and IoU of the heatmap boxes against each expert box of ``images``."""
    rows = []
    boxed = set(dataset.boxes["image"])
    images = [i for i in images if i in boxed]
    paths = dict(zip(dataset.csv["image"], dataset.csv["path"]))
    for image in progress(images) if progress else images:
        width, height = stored_image_size(paths[image])
        truth = dataset.boxes_for(image, width=width, height=height)
        wanted = sorted(set(truth["finding"]), key=FINDINGS.index)
        analysis = predictor.analyze(paths[image], explain=wanted)
        for finding in wanted:
            predicted = heatmap_to_boxes(analysis.heatmaps[finding], out_shape=(height, width))
            for box in truth[truth["finding"] == finding].itertuples():
                gt = (box.x, box.y, box.w, box.h)
                rows.append(
                    {
                        "image": image, "finding": finding,
                        "iobb": best_iobb(predicted, gt),
                        "iou": max((iou(p, gt) for p in predicted), default=0.0),
                        "probability": analysis.probabilities[finding],
                        "n_predicted_boxes": len(predicted),
                    }
                )
    return pd.DataFrame(rows, columns=["image", "finding", "iobb", "iou", "probability", "n_predicted_boxes"])


def _summary_markdown(report: dict, title: str) -> str:
    lines = [f"# {title}", ""]
    counts = report["counts"]
    macro = report["macro"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines += [
        f"Test: {counts['test_images']} images of {counts['test_patients']} patients; "
        f"validation: {counts['val_images']} images. Mean AUROC over findings with positives: "
        f"**{fmt(macro['auroc'])}** (mean of per-finding 95% CI bounds {fmt(macro['auroc_low'])}–{fmt(macro['auroc_high'])}).",
        "",
        "| finding | test positives | AUROC (95% CI) | AUPRC | threshold | sensitivity | specificity | PPV | F1 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["per_finding"]:
        lines.append(
            f"| {row['finding']} | {row['n_test_pos']} | {fmt(row['auroc'])} ({fmt(row['auroc_low'])}–{fmt(row['auroc_high'])}) "
            f"| {fmt(row['auprc'])} | {fmt(row['threshold'])} | {fmt(row['recall'])} | {fmt(row['specificity'])} "
            f"| {fmt(row['precision'])} | {fmt(row['f1'])} |"
        )
    cal = report["calibration"]
    ece_b = np.nanmean([v for v in cal["ece_before"] if v is not None])
    ece_a = np.nanmean([v for v in cal["ece_after"] if v is not None])
    lines += ["", f"Calibration ({cal['method']} scaling fitted on {cal['fitted_on']}): mean ECE {ece_b:.3f} before, {ece_a:.3f} after."]
    loc = report.get("localization", {})
    if loc.get("n_boxes"):
        lines += ["", f"Localisation: boxes drawn from the heatmaps the app shows (each member's own method, Grad-CAM or "
                  f"Grad-CAM++, weighted as the bundle says) against {loc['n_boxes']} expert boxes, T(IoBB) accuracy:", ""]
        keys = [k for k in loc["accuracy"][0] if k.startswith("T(IoBB)")]
        lines += ["| finding | boxes | " + " | ".join(keys) + " | mean IoU |", "|---|---:|" + "---:|" * (len(keys) + 1)]
        for row in loc["accuracy"]:
            lines.append(f"| {row['finding']} | {row['n_boxes']} | " + " | ".join(fmt(row[k]) for k in keys) + f" | {fmt(row['mean_iou'])} |")
    expert = expert_markdown(report)
    if expert:
        lines += ["", *expert]
    return "\n".join(lines) + "\n"


def _expert_blocks(expert_labels, data_root, images, p_raw, calibration, y_true, patient_ids, *, scope: str,
                   n_boot: int, log) -> dict:
    """``expert_reference`` and ``label_audit`` for the evaluated images, or ``{}`` (never raises)."""
    if expert_labels is False:
        return {}
    path = find_expert_labels(data_root) if expert_labels in (None, True) else Path(expert_labels)
    if path is None:
        return {}
    try:
        table = read_expert_labels(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined numbers are NaN/None with a note in the blocks
            blocks = expert_report(images, calibration.apply(p_raw), y_true, patient_ids, table, n_boot=n_boot)
        for block in blocks.values():
            block["split"] = scope
        blocks["expert_reference"]["probabilities"] = "calibrated"
        log(f"expert reference: {blocks['expert_reference']['images']} of the {len(images)} {scope} images "
            f"have the radiologists' labels ({path.name})")
        return blocks
    except Exception as exc:  # noqa: BLE001 - an optional extra must never break the evaluation
        warnings.warn(f"expert-reference evaluation skipped ({path}): {type(exc).__name__}: {exc}", RuntimeWarning,
                      stacklevel=3)
        log(f"expert reference skipped: {exc}")
        return {}


def _write_predictions(path: Path, names, split, val_rows, p_val, test_rows, p_test, dataset: NIHDataset) -> None:
    """The raw probabilities of the validation and test films with their labels and patients (``PREDICTIONS_FILE``)."""
    rows = np.concatenate([val_rows, test_rows])
    table = pd.DataFrame(np.concatenate([p_val, p_test]), columns=list(FINDINGS)).round(6)
    table.insert(0, "image", names.to_numpy()[rows])
    table.insert(1, "split", split[rows])
    table.insert(2, "patient_id", dataset.patient_ids[rows])
    labels = pd.DataFrame(dataset.labels[rows].astype(int), columns=[f"label_{f}" for f in FINDINGS])
    pd.concat([table, labels], axis=1).to_csv(path, index=False)


def read_predictions(bundle_dir: str | os.PathLike) -> pd.DataFrame:
    """A bundle's stored validation and test predictions (``PREDICTIONS_FILE``).

    Returns:
        one row per film: ``image``, ``split`` ("val" or "test"),
        ``patient_id``, the 14 raw probabilities (FINDINGS columns) and the
        NIH labels (``label_<finding>``).

    Raises:
        FileNotFoundError: the bundle was evaluated before the file existed
            (run ``python -m training.evaluate`` on its own data).
    """
    path = Path(bundle_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: evaluate the bundle on its own data first "
                                "(python -m training.evaluate --bundle ... --data ...)")
    return pd.read_csv(path)


def evaluate_bundle(
    bundle_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    n_boot: int = 1000,
    threshold_method: str = "youden",
    calibration_method: str = "temperature",
    localization: bool = True,
    expert_labels: str | os.PathLike | bool | None = None,
    fit_ood: bool = False,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate ``bundle_dir`` on the dataset at ``data_root`` (see module docstring).

    Args:
        bundle_dir: the model bundle folder.
        data_root: a dataset folder in any NIH layout.
        out_dir: where the report goes; default: the bundle itself when the data
            is the bundle's own (fit mode), else required.
        n_boot: bootstrap resamples for the confidence intervals.
        threshold_method: see :func:`cxr_core.evaluation.thresholds.fit_thresholds`.
        calibration_method: ``"temperature"`` or ``"platt"``.
        localization: also score the heatmaps' boxes against the expert boxes.
        expert_labels: the radiologists' label file; None looks for it under
            ``data_root`` (:func:`cxr_core.data.expert_labels.find_expert_labels`),
            False skips the expert reference. A given path must exist.
        fit_ood: also fit the learned not-a-chest-X-ray check into the bundle
            (:func:`cxr_core.jobs.ood_fit.fit_ood`; fit mode on the bundle itself only).
        progress: wraps iterables with a progress bar (e.g. ``tqdm``).
        log: receives one line per step.

    Returns:
        the report written to ``metrics.json``.
    """
    started = time.time()
    if expert_labels not in (None, False, True) and not Path(expert_labels).is_file():
        raise FileNotFoundError(f"expert label file not found: {expert_labels}")
    bundle_dir = Path(bundle_dir)
    predictor = Predictor.from_bundle(bundle_dir)
    bundle = predictor.bundle
    dataset = NIHDataset(data_root)
    names = dataset.csv["image"]
    split_table = bundle.splits.set_index("image")["split"] if bundle.splits is not None else pd.Series(dtype=str)
    split = names.map(split_table).fillna("unseen").to_numpy()
    assert_patient_disjoint(dataset.patient_ids[split != "unseen"], split[split != "unseen"])
    fit_mode = (split == "val").sum() >= MIN_VAL_IMAGES and (split == "test").sum() > 0
    if fit_mode:
        out = Path(out_dir) if out_dir else bundle_dir
        evaluated = split == "test"
        log(f"fit mode: calibration and thresholds from {int((split == 'val').sum())} validation images; "
            f"test on {int(evaluated.sum())} images")
    else:
        if out_dir is None:
            raise ValueError(
                f"{data_root} is not this bundle's training data (it has {int((split == 'val').sum())} of its validation images); "
                "pass an output folder (--out) so the bundle's own metrics are not replaced"
            )
        if not bundle.get("calibration") or not bundle.get("thresholds"):
            raise ValueError("this bundle has no fitted calibration and thresholds yet; evaluate it on its own data first")
        out = Path(out_dir)
        evaluated = np.isin(split, ["test", "unseen"])
        log(f"apply mode: the bundle's calibration and thresholds on {int(evaluated.sum())} images it did not train on")
    out.mkdir(parents=True, exist_ok=True)

    paths = dataset.csv["path"].to_numpy()
    test_rows = np.flatnonzero(evaluated)
    p_test = predict_rows(predictor, list(paths[test_rows]), progress=progress)
    y_test = dataset.labels[test_rows]
    meta = dataset.csv.iloc[test_rows][["patient_id", "sex", "age", "view"]].reset_index(drop=True)
    if fit_mode:
        val_rows = np.flatnonzero(split == "val")
        p_val, y_val = predict_rows(predictor, list(paths[val_rows]), progress=progress), dataset.labels[val_rows]
        report, calibration, thresholds = evaluate_predictions(
            y_val=y_val, p_val=p_val, y_test=y_test, p_test=p_test, test_meta=meta, n_boot=n_boot,
            threshold_method=threshold_method, calibration_method=calibration_method,
        )
    else:
        report, calibration, thresholds = evaluate_predictions(
            y_val=None, p_val=None, y_test=y_test, p_test=p_test, test_meta=meta, n_boot=n_boot,
            calibration=Calibration.from_dict(bundle.get("calibration")), thresholds=predictor.thresholds,
        )

    c_test = calibration.apply(p_test)
    if fit_mode:
        reading, triage, flags = reading_report(
            y_test=y_test, c_test=c_test, test_groups=meta["patient_id"].to_numpy(), youden_thresholds=thresholds,
            y_val=y_val, c_val=calibration.apply(p_val), val_groups=dataset.patient_ids[val_rows], n_boot=n_boot)
    else:
        reading, triage, flags = reading_report(
            y_test=y_test, c_test=c_test, test_groups=meta["patient_id"].to_numpy(), youden_thresholds=thresholds,
            triage=predictor.policy.triage, flags=predictor.policy.flags, n_boot=n_boot)
    report["reading"] = reading
    if triage is not None:
        log(f"triage ({triage.method}): test AUROC {reading['triage']['auroc']:.3f}, rule-out sensitivity "
            f"{reading['triage']['at_rule_out']['sensitivity']:.3f}, {reading['triage']['at_rule_out']['set_aside_share']:.0%} set aside")
    if flags is not None:
        burden, youden = reading["burden"]["flags"], reading["burden"]["youden"]
        log(f"flags: {burden['flags_per_no_finding_film']:.2f} per No-Finding film, {burden['no_finding_without_flag']:.0%} of "
            f"them without any, {_share(burden['flags_right'])} of flags right (Youden: "
            f"{youden['flags_per_no_finding_film']:.2f}, {_share(youden['flags_right'])})")

    if fit_mode:
        # The Predictor used for localisation must use the new calibration.
        predictor.calibration, predictor.thresholds = calibration, thresholds
    if localization:
        records = localization_records(predictor, dataset, names.iloc[test_rows], progress=progress)
        report["localization"] = localization_report(records)
    expert_blocks = _expert_blocks(
        expert_labels, data_root, names.iloc[test_rows].to_numpy(), p_test, calibration, y_test,
        meta["patient_id"].to_numpy(), scope="test" if fit_mode else "test and unseen", n_boot=n_boot, log=log,
    )
    report.update(expert_blocks)
    report["data"] = {
        "root": portable_path(data_root), "label_file": dataset.csv_file.name, "mode": "fit" if fit_mode else "apply",
        "images_evaluated": int(len(test_rows)),
    }
    report["seconds"] = round(time.time() - started, 1)
    (out / METRICS_FILE).write_text(json.dumps(_json(report), indent=1, allow_nan=False), encoding="utf-8")
    title = f"Evaluation of {bundle_dir.name} on {Path(data_root).name}"
    (out / SUMMARY_FILE).write_text(_summary_markdown(report, title), encoding="utf-8")
    if fit_mode and out == bundle_dir:
        train_paths = list(paths[split == "train"])
        Bundle.update_metadata(
            bundle_dir,
            thresholds={"method": threshold_method, "fitted_on": "validation", "values": _json(thresholds)},
            calibration=calibration.to_dict(),
            operating_points=[
                {"finding": r["finding"], "threshold": r["threshold"], "val_sensitivity": r["val_sensitivity"],
                 "val_specificity": r["val_specificity"], "test_sensitivity": r["recall"], "test_specificity": r["specificity"]}
                for r in report["per_finding"]
            ],
            test_summary={"mean_auroc": report["macro"]["auroc"], "test_images": report["counts"]["test_images"],
                          "test_patients": report["counts"]["test_patients"]},
            intensity_reference=intensity_reference(train_paths, predictor.reference_size) if train_paths else None,
            metrics_file=METRICS_FILE,
            triage=None if triage is None else triage.to_dict(),
            flags=None if flags is None else flags.to_dict(),
            predictions_file=PREDICTIONS_FILE,
        )
        _write_predictions(out / PREDICTIONS_FILE, names, split, val_rows, p_val, test_rows, p_test, dataset)
        if fit_ood:
            from cxr_core.jobs.ood_fit import fit_ood as fit_reference

            fit_reference(bundle_dir, data_root, progress=progress, log=log)
    log(f"mean AUROC {report['macro']['auroc']:.3f}; report in {out / METRICS_FILE} ({report['seconds']} s)")
    return report


def _share(value: float | None) -> str:
    """A share as a percentage; "no flags" where it is undefined (no flag fired on the test films)."""
    return "no flags" if value is None or value != value else f"{value:.0%}"  # None or NaN
