"""The images of a training run and their patient-wise split: :class:`TrainingData`, read by :func:`load_training_data`.

From an NIH folder (``config.data``) or a cache made by ``training.prepare``
(``config.cache``); the split is always checked patient-disjoint. Used by the
engine, the pretrained-trunk modes (:mod:`cxr_core.learn.pretrained_modes`)
and the tuner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.findings import FINDINGS
from cxr_core.learn.config import TrainConfig


@dataclass
class TrainingData:
    """The images of a run with their split, from files or from a cache.

    Attributes:
        table: one row per image: ``image``, ``patient_id``, ``split`` (and
            ``path`` for files), row-aligned with ``labels``.
        labels: multi-hot (n, 14).
        source: ``"files"`` or ``"cache"``.
        cache: the opened cache, when reading one.
        dataset: the NIH dataset (labels, boxes), when reading files.
        split_info: strategy, seed and fractions of the split.
        limit: images used per split (None: all).
        location: dataset or cache folder.
    """

    table: pd.DataFrame
    labels: np.ndarray
    source: str
    split_info: dict
    location: str
    cache: object | None = None
    limit: int | None = None
    dataset: object | None = None

    def rows(self, split: str) -> np.ndarray:
        """Row positions of ``split`` actually used (the first ``limit`` of it)."""
        rows = np.flatnonzero(self.table["split"].to_numpy() == split)
        return rows if self.limit is None else rows[: self.limit]

    def split_labels(self, split: str) -> np.ndarray:
        return self.labels[self.rows(split)]

    def splits_table(self) -> pd.DataFrame:
        """``image, patient_id, split, used`` for the bundle's splits.csv."""
        used = np.zeros(len(self.table), dtype=bool)
        for split in ("train", "val", "test"):
            used[self.rows(split)] = True
        return pd.DataFrame({"image": self.table["image"].to_numpy(), "patient_id": self.table["patient_id"].to_numpy(),
                             "split": self.table["split"].to_numpy(), "used": used})

    def summary(self) -> dict:
        """Counts of images, patients and positives per split (images actually used)."""
        out: dict = {"source": self.source, "location": self.location, "limit_per_split": self.limit,
                     "counts": {}, "patients": {}, "positives": {}}
        for split in ("train", "val", "test"):
            rows = self.rows(split)
            out["counts"][split] = int(len(rows))
            out["patients"][split] = int(pd.unique(self.table["patient_id"].to_numpy()[rows]).size)
            out["positives"][split] = {f: int(v) for f, v in zip(FINDINGS, self.labels[rows].sum(axis=0))}
        return out


def load_training_data(config: TrainConfig) -> TrainingData:
    """Read the dataset or cache named by ``config`` and its patient-wise split.

    The split is always checked with :func:`cxr_core.data.splits.assert_patient_disjoint`.

    Raises:
        ValueError: neither or both of ``data``/``cache`` given, a cache made
            with other split settings, or an empty train or val split.
    """
    from cxr_core.data.splits import assert_patient_disjoint, make_split

    if (config.data is None) == (config.cache is None):
        raise ValueError("give exactly one of data (an NIH folder) or cache (a folder made by training.prepare)")
    wanted = {"strategy": config.split_strategy, "seed": config.split_seed, "fractions": list(config.split_fractions)}
    if config.cache is not None:
        from cxr_core.learn.cache import open_cache

        cache = open_cache(config.cache)
        info = cache.split_info
        made = {"strategy": info.get("strategy"), "seed": info.get("seed"), "fractions": info.get("fractions")}
        if made["strategy"] != wanted["strategy"] or made["seed"] != wanted["seed"] or not np.allclose(made["fractions"], wanted["fractions"]):
            raise ValueError(
                f"the cache {config.cache} was split with {made}, but this run asks for {wanted}; "
                "re-run training.prepare with the same --split-* options or change the configuration"
            )
        table = cache.index[["image", "patient_id", "split"]].copy()
        labels = cache.index[list(FINDINGS)].to_numpy(dtype=np.float32)
        data = TrainingData(table, labels, "cache", {**wanted, "resolved_strategy": info.get("resolved_strategy")},
                            str(Path(config.cache).resolve()), cache=cache, limit=config.limit_per_split)
    else:
        from cxr_core.data.dataset import NIHDataset

        dataset = NIHDataset(config.data)
        splits = make_split(dataset, strategy=config.split_strategy, fractions=config.split_fractions, seed=config.split_seed)
        resolved = config.split_strategy if config.split_strategy != "auto" else ("official" if dataset.is_full_release else "patient")
        table = dataset.csv[["image", "patient_id", "path"]].copy()
        table["split"] = splits
        data = TrainingData(table, dataset.labels.astype(np.float32), "files", {**wanted, "resolved_strategy": resolved},
                            str(Path(config.data).resolve()), limit=config.limit_per_split, dataset=dataset)
    # Always, whatever produced the split: a leaked patient inflates every metric.
    assert_patient_disjoint(data.table["patient_id"].to_numpy(), data.table["split"].to_numpy())
    for split in ("train", "val"):
        if len(data.rows(split)) == 0:
            raise ValueError(f"the {split} split is empty; use more images or other split fractions")
    return data
