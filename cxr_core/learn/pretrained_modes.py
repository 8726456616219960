"""Training modes for a pretrained trunk: the linear head, and top fine-tuning over cached activations.

``train_mode = "linear_head"`` runs the frozen trunk once over train and
val (the app's tensors, no augmentation), keeps pooled features (and the
maps of the boxed training images for the box loss) in ``feature_cache_dir``
keyed by everything they depend on, and fits the ``logits`` layer
(:mod:`cxr_core.learn.linear_head`). ``train_mode = "top_finetune"`` then
trains the layers above ``finetune_from`` with that head over that layer's
cached activations (:mod:`cxr_core.learn.top_finetune`). Both return the
model and a history shaped like full training's, so the engine saves
their bundle the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cxr_core.bundle import layer_names
from cxr_core.learn.config import TrainConfig
from cxr_core.learn.selection import mean_auroc
from cxr_core.learn.training_data import TrainingData

log = logging.getLogger(__name__)


def _boxes_of(data: TrainingData, images: list[str]) -> list[list[tuple]]:
    """Expert boxes of ``images`` as (finding, x, y, w, h) fractions of the image side."""
    dataset = data.dataset  # the files source's dataset, read once by load_training_data
    boxed = set(dataset.boxes["image"])
    # Boxes are given in the 1,024 px release space; width = height = 1 gives fractions.
    return [
        [(r.finding, r.x, r.y, r.w, r.h) for r in dataset.boxes_for(image, width=1.0, height=1.0).itertuples(index=False)]
        if image in boxed else []
        for image in images
    ]


def _feature_cache_file(config: TrainConfig, data: TrainingData) -> Path | None:
    """Where the frozen trunk's features of this run live, or None without a cache folder."""
    if not config.feature_cache_dir:
        return None
    key = {
        "model": {**config.model_args(), "dropout": None}, "weights": config.weights,
        "preprocess": config.preprocess().to_dict(),
        "train": data.table["image"].to_numpy()[data.rows("train")].tolist(),
        "val": data.table["image"].to_numpy()[data.rows("val")].tolist(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]
    return Path(config.feature_cache_dir) / f"{config.backbone}-{config.input_size}-{digest}.npz"


def _unaugmented_datasets(config: TrainConfig, data: TrainingData):
    """Train and val images through the validation pipeline (no augmentation, the app's tensors), in split order."""
    from cxr_core.learn.pipeline import dataset_from_cache, dataset_from_files

    common = {"preprocess": config.preprocess(), "batch_size": config.batch_size, "training": False}
    if data.cache is not None:
        return tuple(dataset_from_cache(data.cache, split, limit=config.limit_per_split, **common) for split in ("train", "val"))
    paths = data.table["path"].to_numpy()
    return tuple(dataset_from_files(paths[data.rows(split)], data.split_labels(split), **common) for split in ("train", "val"))


def _trunk_features(model: keras.Model, config: TrainConfig, data: TrainingData) -> dict:
    """Pooled features of train and val."""
    from cxr_core.learn.linear_head import feature_maps

    train_ds, val_ds = _unaugmented_datasets(config, data)
    return {"train": feature_maps(model, train_ds), "val": feature_maps(model, val_ds)}


def _box_features(model: keras.Model, config: TrainConfig, data: TrainingData) -> dict:
    """Feature maps and box masks of the TRAINING images that have expert boxes."""
    from cxr_core.learn.linear_head import box_masks, feature_maps
    from cxr_core.learn.pipeline import dataset_from_files

    common = {"preprocess": config.preprocess(), "batch_size": config.batch_size, "training": False}
    arrays: dict = {"box_maps": np.zeros((0,), np.float16)}
    images = data.table["image"].to_numpy()[data.rows("train")]
    boxes = _boxes_of(data, list(images))
    boxed = [i for i, b in enumerate(boxes) if b]
    if boxed:
        paths = data.table["path"].to_numpy()[data.rows("train")][boxed]
        boxed_ds = dataset_from_files(paths, data.split_labels("train")[boxed], **common)
        _, maps = feature_maps(model, boxed_ds, pooled_only=False)
        masks, has_box = box_masks([boxes[i] for i in boxed], maps.shape[1:3])
        arrays.update(box_maps=maps, box_masks=masks, has_box=has_box)
    return arrays


def train_linear_head(config: TrainConfig, data: TrainingData, out: Path, *, write: bool) -> tuple[keras.Model, dict]:
    """``train_mode = "linear_head"``: frozen trunk, features once, logits layer fitted.

    Train and validation images go through the validation pipeline (no
    augmentation: the same tensors the app makes); the fitted model is scored
    on validation with the same macro mean AUROC as full training, and one
    row is written to ``log.csv`` so runs of both modes read alike.
    """
    from cxr_core.learn.linear_head import fit_linear_head
    from cxr_core.learn.models import build_model

    started = time.perf_counter()
    model = build_model(**config.model_args(), weights=config.weights, preprocess=config.preprocess())
    cached = _feature_cache_file(config, data)
    arrays: dict = {}
    if cached is not None and cached.is_file():
        with np.load(cached) as stored:
            arrays = {k: stored[k] for k in stored.files}
        log.info("frozen-trunk features read from %s", cached)
    reused = bool(arrays)
    missing = {} if arrays else _trunk_features(model, config, data)
    if config.box_loss_weight > 0 and "box_maps" not in arrays:
        missing.update(_box_features(model, config, data))
    if missing:
        # What running the trunk cost, kept with the features so that a run
        # reusing them still reports the wall time of a run from scratch.
        missing["trunk_seconds"] = np.asarray(float(arrays.get("trunk_seconds", 0.0)) + time.perf_counter() - started)
        arrays.update(missing)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(cached.stem + ".partial.npz")
            np.savez(partial, **arrays)
            os.replace(partial, cached)  # never a half-written cache under the real name
    extracted = time.perf_counter() - started
    train_features, val_features = arrays["train"], arrays["val"]
    box_args: dict = {}
    if config.box_loss_weight > 0:
        if len(arrays.get("box_maps", ())):
            box_args = {"box_maps": arrays["box_maps"], "box_masks_": arrays["box_masks"], "has_box": arrays["has_box"]}
        else:
            log.warning("box_loss_weight is set but no training image has an expert box: fitting without boxes")
    fit = fit_linear_head(model, train_features, data.split_labels("train"), l2=config.head_l2, steps=config.head_steps,
                          box_loss_weight=config.box_loss_weight, label_smoothing=config.label_smoothing,
                          mixup_alpha=config.mixup_alpha, seed=config.seed, **box_args)
    # Score exactly as full training does: logits of the model's own head on validation.
    kernel, bias = model.get_layer(layer_names.LOGITS).get_weights()
    val_scores = val_features @ kernel + bias
    score, _ = mean_auroc(data.split_labels("val"), val_scores)
    trunk_seconds = float(arrays.get("trunk_seconds", extracted))
    # Wall time of this recipe from scratch: the trunk pass (measured when the
    # features were made, even if this run reused them) plus the head fit.
    seconds = round(trunk_seconds + (time.perf_counter() - started - extracted), 1)
    row = {"epoch": 0, "loss": fit.train_loss, "box_loss": fit.box_loss, "val_mean_auroc": score,
           "feature_seconds": round(trunk_seconds, 1), "features_reused": reused, "head_seconds": fit.seconds,
           "seconds": seconds}
    if write:
        pd.DataFrame([row]).to_csv(out / "log.csv", index=False)
    log.info("linear head: validation mean AUROC %.4f (%.0f s features, %.1f s head)", score, extracted, fit.seconds)
    history = {"epochs_run": 1, "best_epoch": 1, "best_val_mean_auroc": score if np.isfinite(score) else None,
               "stopped_early": False, "seconds": seconds, "epochs": [row],
               "linear_head": dataclasses.asdict(fit)}
    return model, history


def train_top_finetune(config: TrainConfig, data: TrainingData, out: Path, *, write: bool) -> tuple[keras.Model, dict]:
    """``train_mode = "top_finetune"``: the linear head, then the layers above ``finetune_from`` with it.

    The activations of ``finetune_from`` for train and val are computed once
    (and kept in ``feature_cache_dir`` beside the pooled features); one row
    per epoch goes to ``log.csv``, epoch 0 being the linear head alone.
    """
    from cxr_core.learn.linear_head import box_masks
    from cxr_core.learn.top_finetune import activations, finetune_top, split_model

    started = time.perf_counter()
    model, head = train_linear_head(config, data, out, write=False)
    lower, upper = split_model(model, config.finetune_from)
    pooled_cache = _feature_cache_file(config, data)
    cached = pooled_cache.with_name(f"{pooled_cache.stem}-{config.finetune_from}.npz") if pooled_cache else None
    if cached is not None and cached.is_file():
        with np.load(cached) as stored:
            arrays = {k: stored[k] for k in stored.files}
        log.info("%s activations read from %s", config.finetune_from, cached)
    else:
        lower_started = time.perf_counter()
        train_ds, val_ds = _unaugmented_datasets(config, data)
        arrays = {"train": activations(lower, train_ds), "val": activations(lower, val_ds)}
        arrays["lower_seconds"] = np.asarray(time.perf_counter() - lower_started)
        if cached is not None:
            partial = cached.with_name(cached.stem + ".partial.npz")
            np.savez(partial, **arrays)
            os.replace(partial, cached)  # never a half-written cache under the real name
    boxes = _boxes_of(data, list(data.table["image"].to_numpy()[data.rows("train")])) if config.box_loss_weight > 0 else None
    masks, has_box = box_masks(boxes, tuple(upper.outputs[0].shape[1:3])) if boxes else (None, None)
    csv_rows: list[dict] = []

    def record(row: dict) -> None:
        csv_rows.append(row)
        if write:
            pd.DataFrame(csv_rows).to_csv(out / "log.csv", index=False)  # rewritten each epoch: a cut-off run keeps its rows

    rows = finetune_top(upper, arrays["train"], data.split_labels("train").astype(np.float32), arrays["val"],
                        data.split_labels("val"), epochs=config.epochs, batch_size=config.batch_size,
                        learning_rate=config.learning_rate, weight_decay=config.weight_decay, box_masks=masks,
                        has_box=has_box, box_loss_weight=config.box_loss_weight, seed=config.seed, on_epoch=record)
    best = max(rows, key=lambda r: r["val_mean_auroc"] if np.isfinite(r["val_mean_auroc"]) else -1.0)
    # From scratch: the trunk pass of the pooled features, the head fit, the
    # pass to finetune_from (measured when its activations were made) and the epochs.
    seconds = round(float(head["seconds"]) + float(arrays["lower_seconds"]) + sum(r["seconds"] for r in rows), 1)
    log.info("top fine-tuning above %s: best validation mean AUROC %.4f at epoch %d (linear head alone %.4f); %.0f s "
             "in this run", config.finetune_from, best["val_mean_auroc"], best["epoch"], rows[0]["val_mean_auroc"],
             time.perf_counter() - started)
    history = {"epochs_run": len(rows) - 1, "best_epoch": best["epoch"],
               "best_val_mean_auroc": best["val_mean_auroc"] if np.isfinite(best["val_mean_auroc"]) else None,
               "stopped_early": False, "seconds": seconds, "epochs": rows,
               "linear_head": head["linear_head"], "finetune_from": config.finetune_from}
    return model, history
