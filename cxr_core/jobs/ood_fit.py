"""Fitting the learned not-a-chest-X-ray check of :mod:`cxr_core.screening.ood` on a bundle's own training and validation images.

    fit_ood("models/default", "../shared/nih")      # python -m training.fit_ood; writes the reference into the bundle

Runs the bundle's :class:`~cxr_core.serving.predictor.Predictor` over the
images of its recorded split (the reference member's pooled ``"features"``
and 8-bit inputs), fits the reference with
:func:`cxr_core.screening.ood.fit_reference` and stores it with
:func:`cxr_core.screening.ood.save_reference`. Kept apart from the check,
which the Predictor uses, so imports run one way: ood <- predictor <- ood_fit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cxr_core.data.dataset import NIHDataset
from cxr_core.data.preprocessing import to_model_uint8
from cxr_core.screening.ood import COMPONENTS, FALSE_ALARM, GRID, THRESHOLD_RULE, fit_reference, save_reference
from cxr_core.serving.predictor import Predictor


def reference_features(predictor, paths: Sequence[str], *, batch_size: int = 16, workers: int = 2,
                       progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~cxr_core.screening.ood.pooled` ``"features"`` (n, 2, 2, D) of the learned check's member
    (:meth:`Predictor.features`) for image files, and their 8-bit inputs (n, size, size), through the one
    preprocessing (the same numbers :meth:`~cxr_core.screening.ood.FeatureReference.check` gets at prediction)."""
    size = int(predictor.members[predictor.ood_member_index].preprocess.size)
    chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    out, inputs = [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for chunk in progress(chunks) if progress else chunks:
            images = np.stack(list(pool.map(lambda p: to_model_uint8(p, size), chunk)))
            out.append(predictor.features(images))
            inputs.append(images)
    if not out:
        return np.zeros((0, GRID, GRID, 0)), np.zeros((0, size, size), np.uint8)
    return np.concatenate(out), np.concatenate(inputs)


def fit_ood(
    bundle_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    components: int = COMPONENTS,
    false_alarm: float = FALSE_ALARM,
    max_train: int | None = 1000,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit the learned check of ``bundle_dir`` on its own data and store it in the bundle (the check: :mod:`cxr_core.screening.ood`).

    Reads the bundle's TRAINING images (the reference) and VALIDATION images
    (the thresholds) of its recorded split, nothing else.

    Args:
        data_root: the dataset the bundle was trained on (its recorded split
            names the training and validation images).
        components: principal directions kept for the pooled and the grid features.
        false_alarm: the budget on validation-like films, split evenly over
            the scores (:func:`~cxr_core.screening.ood.conformal_threshold`).
        max_train: at most this many training images (a seeded random
            choice; None: all). A few hundred fix 32 directions well.

    Returns:
        the ``"ood"`` entry written to ``bundle.json``.
    """
    started = time.time()
    bundle_dir = Path(bundle_dir)
    predictor = Predictor.from_bundle(bundle_dir)
    bundle = predictor.bundle
    if bundle.splits is None:
        raise ValueError(f"{bundle_dir} records no split: its training and validation images are unknown")
    dataset = NIHDataset(data_root)
    split = dataset.csv["image"].map(bundle.splits.set_index("image")["split"]).fillna("unseen").to_numpy()
    paths = dataset.csv["path"].to_numpy()
    train, val = paths[split == "train"], paths[split == "val"]
    if len(train) < components + 2 or len(val) < 20:
        raise ValueError(f"{data_root} holds {len(train)} of the bundle's training and {len(val)} of its validation images: "
                         "not the data it was trained on, or too few to fit the check")
    total_train = len(train)
    if max_train is not None and len(train) > max_train:
        train = np.random.default_rng(seed).choice(train, size=max_train, replace=False)
    index = predictor.ood_member_index
    name = predictor.members[index].name
    log(f"features of member {name!r} ({predictor.members[index].preprocess.size} px): "
        f"{len(train)} of {total_train} training and {len(val)} validation images")
    f_train, x_train = reference_features(predictor, list(train), batch_size=batch_size, progress=progress)
    f_val, x_val = reference_features(predictor, list(val), batch_size=batch_size, progress=progress)
    reference, fit = fit_reference(f_train, f_val, components=components, grid_components=components,
                                   false_alarm=false_alarm, member=name, train_images=x_train, val_images=x_val)
    warned = [c["unlike_training"] for c in reference.check(f_val, x_val)]
    entry = {
        "false_alarm_budget": float(false_alarm), "alpha_per_score": float(fit["alpha"]),
        "bound_per_score": {k: float(v) for k, v in fit["bounds"].items()},
        "threshold_rule": THRESHOLD_RULE,
        "fitted_on": "training split (reference), validation split (thresholds); no test image",
        "train_images": int(len(train)), "train_images_in_split": int(total_train), "val_images": int(len(val)),
        "val_warned": float(np.mean(warned)), "seed": int(seed),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record = save_reference(bundle_dir, reference, entry)
    bound = sum(fit["bounds"].values())
    log(f"thresholds: feature distance {reference.threshold:.2f}, grid distance {reference.grid_threshold:.2f}, "
        f"layout margin {reference.layout_threshold:.3f}, scale distance {reference.scale_threshold:.2f} "
        f"(budget {false_alarm:.2%}: {fit['alpha']:.2%} per score, bound {bound:.2%} in all; "
        f"{np.mean(warned):.1%} of validation warned); written to {bundle_dir / record['file']} and bundle.json "
        f"({time.time() - started:.0f} s)")
    return record
