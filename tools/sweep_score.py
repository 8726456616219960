"""Scoring the sweep's returned logits here: validation mean AUROC with patient-bootstrap bounds, and its table.

The half of ``tools.gpu_sweep`` that runs on this machine after a run (its
``score`` subcommand): it reads the JSON lines a run wrote (a worker's
``results_w*.jsonl`` or a run's merged ``results*.jsonl.gz``), scores each
returned recipe's validation logits against the cache's labels with the
harness's bootstrap, adds the seed ensemble, and writes the table between its
markers in docs/experiments.md. Nothing here needs Keras.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from cxr_core.findings import FINDINGS


def _auroc_columns(labels: np.ndarray, logits: np.ndarray, patients: np.ndarray, n_boot: int) -> dict:
    """Mean AUROC and the means of the per-finding patient-bootstrap bounds, as the harness reports them."""
    from cxr_core.evaluation.metrics import bootstrap_ci, macro_mean

    ci = bootstrap_ci(labels, logits, groups=patients, n_boot=n_boot)
    return {"val_mean_auroc": macro_mean(ci.point), "val_auroc_ci_low": macro_mean(ci.low),
            "val_auroc_ci_high": macro_mean(ci.high)}


def score(results_dir: str, cache: str, *, n_boot: int = 1000) -> list[dict]:
    """Validation mean AUROC with the harness's patient-bootstrap bounds, for every returned recipe."""
    from cxr_core.learn.cache import open_cache

    index = open_cache(cache).split_index("val").set_index("image")
    rows = []
    folder = Path(results_dir)
    # A worker's own file, or a run's files merged and gzipped for the repository.
    for path in sorted(folder.glob("results_w*.jsonl")) + sorted(folder.glob("results*.jsonl.gz")):
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for line in text.splitlines():
            row = json.loads(line)
            frame = index.loc[row["val_image"]]
            labels = frame[list(FINDINGS)].to_numpy(np.float32)
            patients = frame["patient_id"].to_numpy()
            variants = [("", "", "val_logits", "best_epoch"), ("+tta", " (6-view TTA)", "val_logits_tta", "best_epoch")]
            if "val_logits_raw" in row:  # an EMA run's own raw weights, the paired reference
                variants += [("_raw", ": the same run's raw weights", "val_logits_raw", "best_epoch_raw"),
                             ("_raw+tta", ": the same run's raw weights (6-view TTA)", "val_logits_raw_tta", "best_epoch_raw")]
            for variant, said, key, epoch_key in variants:
                logits = np.asarray(row[key], np.float32)
                rows.append({"recipe": row["recipe"] + variant, "what": row["what"] + said,
                             **_auroc_columns(labels, logits, patients, n_boot),
                             "best_epoch": row[epoch_key], "images_per_s": row["images_per_s"],
                             "minutes": (row["train_seconds"] + row["ssl_seconds"]) / 60, "parameters": row["parameters"],
                             "logits": logits, "labels": labels, "patients": patients})
    return rows


SEED_MEMBERS = ("sweep_base_s0", "sweep_base_s1", "sweep_base_s2")


def add_seed_ensemble(rows: list[dict], *, n_boot: int = 1000) -> list[dict]:
    """Append the logit mean of the baseline's seeds (with and without TTA) when all of them came back."""
    by_name = {r["recipe"]: r for r in rows}
    for variant in ("", "+tta"):
        members = [by_name.get(m + variant) for m in SEED_MEMBERS]
        if any(m is None for m in members):
            continue
        logits = np.mean([m["logits"] for m in members], axis=0)
        ref = members[0]
        rows.append({"recipe": "sweep_base_seeds3" + variant,
                     "what": "logit mean of the baseline's 3 seeds" + (" (6-view TTA)" if variant else ""),
                     **_auroc_columns(ref["labels"], logits, ref["patients"], n_boot), "best_epoch": None,
                     "images_per_s": np.mean([m["images_per_s"] for m in members]),
                     "minutes": sum(m["minutes"] for m in members), "parameters": sum(m["parameters"] for m in members)})
    return rows


def sweep_markdown(rows: list[dict], device: str, *, reference: str | None = None) -> str:
    """The sweep's table, best first, each row's gain over the same run's baseline.

    Args:
        rows: scored rows (:func:`score`).
        device: where it ran, with the Keras backend, for the table's first line.
        reference: the recipe row the gains are read against; by default the
            mean of the baseline seeds' rows.
    """
    if reference is None:
        base = [r["val_mean_auroc"] for r in rows if r["recipe"] in SEED_MEMBERS]
        reference_value, said = (float(np.mean(base)) if base else float("nan")), "mean of the seeds' rows"
    else:
        reference_value = next((r["val_mean_auroc"] for r in rows if r["recipe"] == reference), float("nan"))
        said = reference
    lines = [f"Measured on {device}; baseline = {said}, {reference_value:.3f}.", "",
             "| recipe | what | val mean AUROC (95% CI) | vs baseline | best epoch | train img/s | minutes | parameters |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["val_mean_auroc"]):
        epoch = "" if r["best_epoch"] is None else str(r["best_epoch"])
        lines.append(f"| {r['recipe']} | {r['what']} | {r['val_mean_auroc']:.3f} ({r['val_auroc_ci_low']:.3f}–"
                     f"{r['val_auroc_ci_high']:.3f}) | {r['val_mean_auroc'] - reference_value:+.3f} | {epoch} | "
                     f"{r['images_per_s']:.0f} | {r['minutes']:.1f} | {r['parameters']:,} |")
    return "\n".join(lines)


def write_sweep_table(rows: list[dict], document: str, device: str, *, table: str = "gpu-sweep",
                      reference: str | None = None) -> Path:
    """Write the table between ``<!-- {table}:start -->`` and its end marker (appended the first time)."""
    from cxr_core.experiments.harness import put_between_markers

    path = Path(document)
    path.write_text(put_between_markers(path.read_text(), f"<!-- {table}:start -->", f"<!-- {table}:end -->",
                                        sweep_markdown(rows, device, reference=reference)))
    return path
