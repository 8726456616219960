"""The experiment harness: train recipes on one seeded split, score them on validation, one table.

A recipe is a training TOML file (:class:`cxr_core.learn.config.TrainConfig`
keys) with an ``[experiment]`` table that training ignores::

    [experiment]
    name = "vgg16_hed_ms_box"            # row name; default: the file name
    description = "what is being measured"
    kind = "train"                       # or "ensemble" (members = [...]) or "bundle" (bundle = "...")

``kind = "ensemble"`` averages the bundles of other recipes (``members``,
optional ``weights``) with :func:`cxr_core.bundle.ensemble.assemble_ensemble`;
``kind = "bundle"`` scores an existing bundle (e.g. the model shipped before)
as it is. Every row is measured on the VALIDATION split only: the test split
is read once, for the shipped model, by ``training.evaluate``. A recipe whose
bundle already exists is not trained again (``retrain=True`` forces it), so a
cut-off grid resumes where it stopped.

Columns: validation mean AUROC with the mean of the per-finding
patient-bootstrap 95% bounds, validation T(IoBB = 0.1) over the 8 boxed
findings (boxed validation images), training images/s and wall time (from
the bundle's own training history), parameters, and the config file.
"""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.findings import FINDINGS

log = logging.getLogger(__name__)

KINDS = ("train", "ensemble", "bundle")
TABLE_START = "<!-- experiments:start -->"
TABLE_END = "<!-- experiments:end -->"
COLUMNS = ("recipe", "description", "val_mean_auroc", "val_auroc_ci_low", "val_auroc_ci_high", "val_t_iobb_0.1",
           "val_boxes", "train_images_per_s", "wall_s", "parameters", "config")


@dataclass(frozen=True)
class Recipe:
    """One row of the experiment table.

    Attributes:
        name: row name (unique in a grid).
        path: the TOML file.
        kind: ``train``, ``ensemble`` or ``bundle``.
        description: what the row measures.
        members: recipe names averaged by an ``ensemble``.
        weights: their weights (default equal).
        map_weights: their weights in the averaged heatmaps (default: ``weights``).
        tta_views: their test-time views, 1 or 6 each (default 1).
        bundle: the bundle a ``bundle`` row scores.
        out: the run folder of a ``train`` recipe (its ``out`` key).
    """

    name: str
    path: Path
    kind: str = "train"
    description: str = ""
    members: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    map_weights: tuple[float, ...] = ()
    tta_views: tuple[int, ...] = ()
    bundle: str | None = None
    out: str | None = None
    extra: dict = field(default_factory=dict)


def read_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe file.

    Raises:
        ValueError: not TOML, an unknown ``kind``, an ensemble without members,
            a bundle row without ``bundle``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read recipe {path}: {exc}") from None
    table = values.get("experiment", {})
    kind = table.get("kind", "train")
    if kind not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    members = tuple(table.get("members", ()))
    if kind == "ensemble" and len(members) < 2:
        raise ValueError(f"{path}: an ensemble recipe needs members = [at least two recipe names]")
    if kind == "bundle" and not table.get("bundle"):
        raise ValueError(f"{path}: a bundle recipe needs bundle = \"<bundle folder>\"")
    return Recipe(
        name=str(table.get("name", path.stem)), path=path, kind=kind, description=str(table.get("description", "")),
        members=members, weights=tuple(float(w) for w in table.get("weights", ())),
        map_weights=tuple(float(w) for w in table.get("map_weights", ())), bundle=table.get("bundle"),
        tta_views=tuple(table.get("tta_views", ())),
        out=values.get("out", table.get("out")),
    )


def recipe_bundle(recipe: Recipe, runs: Path) -> Path:
    """Where a recipe's bundle is (or will be)."""
    if recipe.kind == "bundle":
        return Path(recipe.bundle)
    out = Path(recipe.out) if recipe.out and recipe.kind == "train" else runs / recipe.name
    return out / "bundle"


def build_recipe(recipe: Recipe, recipes: dict[str, Recipe], *, runs: Path, retrain: bool = False) -> Path:
    """Train (or assemble) a recipe's bundle unless it exists; returns the bundle folder."""
    from cxr_core.bundle.ensemble import assemble_ensemble
    from cxr_core.learn.config import TrainConfig
    from cxr_core.learn.engine import train

    target = recipe_bundle(recipe, runs)
    if recipe.kind == "bundle":
        if not (target / "bundle.json").is_file():
            raise ValueError(f"recipe {recipe.name}: {target} is not a bundle")
        return target
    if (target / "bundle.json").is_file() and not retrain:
        log.info("recipe %s: bundle exists at %s (not retrained)", recipe.name, target)
        return target
    if recipe.kind == "ensemble":
        missing = [m for m in recipe.members if m not in recipes]
        if missing:
            raise ValueError(f"recipe {recipe.name}: members {missing} are not recipes of this grid")
        sources = [build_recipe(recipes[m], recipes, runs=runs, retrain=False) for m in recipe.members]
        return assemble_ensemble(sources, target, weights=list(recipe.weights) or None, names=list(recipe.members),
                                 map_weights=list(recipe.map_weights) or None, tta_views=list(recipe.tta_views) or None,
                                 overwrite=True)
    config = TrainConfig.from_toml(recipe.path)
    return train(config)


def _training_stats(bundle) -> tuple[float, float]:
    """(training images per second, wall seconds) from a loaded bundle's training history (summed over members).

    A member started from a self-supervised trunk adds its pretraining's
    seconds to the wall time (what the row costs from scratch), once per
    trunk however many members share it, and not to the images per second
    of its supervised training.
    """
    records = [m.bundle for m in bundle.members] if hasattr(bundle, "members") else [bundle]
    images = seconds = 0.0
    trunks: dict[str, float] = {}  # members fine-tuned from one trunk share its pretraining: counted once
    for record in records:
        history = (record.training or {}).get("history") or {}
        seconds += float(history.get("seconds") or 0.0)
        pretrained = (record.training or {}).get("pretraining") or {}
        trunks[json.dumps(pretrained, sort_keys=True)] = float(pretrained.get("seconds") or 0.0)
        images += float((record.data or {}).get("counts", {}).get("train") or 0) * float(history.get("epochs_run") or 0)
    return (images / seconds if seconds else float("nan")), seconds + sum(trunks.values())


def validate_bundle(bundle: str | os.PathLike, data_root: str | os.PathLike, *, n_boot: int = 1000) -> dict:
    """Score a bundle on its own VALIDATION split.

    Returns:
        a dict with ``val_mean_auroc`` (mean over findings with positives),
        ``val_auroc_ci_low``/``high`` (means of the per-finding patient-bootstrap
        95% bounds), ``val_t_iobb_0.1`` (mean over the boxed findings present)
        and ``val_boxes``, ``parameters``, ``train_images_per_s``, ``wall_s``.
    """
    from cxr_core.data.dataset import NIHDataset
    from cxr_core.evaluation.localization import localization_accuracy
    from cxr_core.evaluation.metrics import bootstrap_ci, macro_mean
    from cxr_core.jobs.bundle_evaluation import localization_records, predict_rows
    from cxr_core.serving.predictor import Predictor

    predictor = Predictor.from_bundle(bundle)
    dataset = NIHDataset(data_root)
    splits = predictor.bundle.splits
    val_names = set(splits.loc[splits["split"] == "val", "image"])
    rows = dataset.csv["image"].isin(val_names).to_numpy()
    if not rows.any():
        raise ValueError(f"none of the bundle's validation images are in {data_root}")
    paths = dataset.csv.loc[rows, "path"].tolist()
    raw = predict_rows(predictor, paths)
    labels = dataset.labels[rows]
    ci = bootstrap_ci(labels, raw, groups=dataset.csv.loc[rows, "patient_id"].to_numpy(), n_boot=n_boot)
    records = localization_records(predictor, dataset, dataset.csv.loc[rows, "image"].tolist())
    table = localization_accuracy(records) if len(records) else pd.DataFrame()
    images_per_s, wall = _training_stats(predictor.bundle)
    return {
        "val_mean_auroc": macro_mean(ci.point),
        "val_auroc_ci_low": macro_mean(ci.low),
        "val_auroc_ci_high": macro_mean(ci.high),
        "val_t_iobb_0.1": float(table["T(IoBB)=0.1"].mean()) if len(table) else float("nan"),
        "val_boxes": int(len(records)),
        "val_t_iobb_per_finding": {f: float(v) for f, v in table["T(IoBB)=0.1"].items()} if len(table) else {},
        "val_auroc_per_finding": dict(zip(FINDINGS, map(float, ci.point))),
        "parameters": int(sum(m.model.count_params() for m in predictor.members)),
        "train_images_per_s": images_per_s,
        "wall_s": wall,
    }


def run_grid(
    paths: list[str | os.PathLike],
    *,
    data_root: str | os.PathLike,
    runs: str | os.PathLike = "runs/exp",
    results: str | os.PathLike | None = None,
    retrain: bool = False,
    only: list[str] | None = None,
) -> pd.DataFrame:
    """Build and score every recipe; append each row to ``results`` (CSV) as soon as it is measured.

    Args:
        paths: recipe files.
        data_root: the NIH folder holding the validation images.
        runs: folder of ensemble bundles (train recipes use their own ``out``).
        results: CSV of rows (default ``<runs>/results.csv``); a recipe already
            in it is skipped unless ``retrain``.
        retrain: train and score again.
        only: recipe names to run (default all).

    Returns:
        the results table (all rows so far, in file order).
    """
    runs = Path(runs)
    results = Path(results) if results else runs / "results.csv"
    recipes: dict[str, Recipe] = {}
    for path in sorted(Path(p) for p in paths):
        recipe = read_recipe(path)
        if recipe.name in recipes:
            raise ValueError(f"two recipes are named {recipe.name!r}: {recipes[recipe.name].path} and {path}")
        recipes[recipe.name] = recipe
    done = pd.read_csv(results) if results.is_file() else pd.DataFrame(columns=list(COLUMNS))
    for recipe in recipes.values():
        if only and recipe.name not in only:
            continue
        if recipe.name in set(done["recipe"]) and not retrain:
            log.info("recipe %s already measured", recipe.name)
            continue
        started = time.perf_counter()
        bundle = build_recipe(recipe, recipes, runs=runs, retrain=retrain)
        scores = validate_bundle(bundle, data_root)
        row = {"recipe": recipe.name, "description": recipe.description, **scores,
               "config": recipe.path.as_posix(), "measured_s": round(time.perf_counter() - started, 1)}
        for key in ("val_t_iobb_per_finding", "val_auroc_per_finding"):
            row[key] = json.dumps(row[key])
        # Re-read before writing: another harness process may have added rows
        # since this one started (recipes are measured for an hour or more).
        if results.is_file():
            done = pd.read_csv(results)
        done = pd.concat([done[done["recipe"] != recipe.name], pd.DataFrame([row])], ignore_index=True)
        results.parent.mkdir(parents=True, exist_ok=True)
        partial = results.with_name(f"{results.name}.{os.getpid()}.partial")
        done.to_csv(partial, index=False)
        os.replace(partial, results)
        log.info("recipe %s: val mean AUROC %.4f, T(IoBB=0.1) %.3f", recipe.name, row["val_mean_auroc"], row["val_t_iobb_0.1"])
    return done


def _fmt(value, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if not np.isfinite(value) else f"{value:.{digits}f}"


def results_markdown(results: pd.DataFrame) -> str:
    """The experiment table as Markdown, best validation mean AUROC first."""
    lines = [
        "| recipe | what | val mean AUROC (95% CI) | val T(IoBB)=0.1 (boxes) | train img/s | wall | parameters | config |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for _, row in results.sort_values("val_mean_auroc", ascending=False).iterrows():
        wall = float(row.get("wall_s") or 0)
        lines.append(
            f"| {row['recipe']} | {row['description']} | {_fmt(row['val_mean_auroc'])} "
            f"({_fmt(row['val_auroc_ci_low'])}–{_fmt(row['val_auroc_ci_high'])}) | {_fmt(row['val_t_iobb_0.1'])} "
            f"({int(row['val_boxes'])}) | {_fmt(row['train_images_per_s'], 1)} | {wall / 60:.1f} min | "
            f"{int(row['parameters']):,} | `{row['config']}` |"
        )
    return "\n".join(lines)


def put_between_markers(text: str, start: str, end: str, block: str) -> str:
    """``text`` with ``block`` between its ``start`` and ``end`` markers (both appended first if either is missing).

    Everything outside the markers is kept as it is: the tables of
    ``docs/evidence/experiments.md`` are regenerated, the prose around them is not.
    """
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def _table_rows(text: str) -> dict[str, str]:
    """The rows of the table between the markers of ``text``, by recipe name (first cell)."""
    if TABLE_START not in text or TABLE_END not in text:
        return {}
    block = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]  # [0] is the header
    return {line.split("|")[1].strip(): line for line in rows}


def _row_auroc(line: str) -> float:
    try:
        return float(line.split("|")[3].split()[0])
    except (IndexError, ValueError):
        return float("nan")


def write_table(results: pd.DataFrame, document: str | os.PathLike) -> Path:
    """Put the table between the markers of ``document`` (created with them if missing).

    Rows of ``results`` replace the document's rows of the same recipes; the
    document's other rows stay. ``results.csv`` lives in the run folder, which
    is not committed: a harness run on another machine, or after the runs
    were cleared, adds its rows to the measured record instead of erasing it.
    """
    document = Path(document)
    text = document.read_text(encoding="utf-8") if document.is_file() else f"# Experiments\n\n{TABLE_START}\n{TABLE_END}\n"
    fresh = results_markdown(results).splitlines()
    header, rows = fresh[:2], fresh[2:]
    kept = {name: line for name, line in _table_rows(text).items() if name not in set(results["recipe"].astype(str))}
    rows = sorted(rows + list(kept.values()), key=lambda line: -np.nan_to_num(_row_auroc(line), nan=-1.0))
    document.parent.mkdir(parents=True, exist_ok=True)
    document.write_text(put_between_markers(text, TABLE_START, TABLE_END, "\n".join(header + rows)), encoding="utf-8")
    return document
