"""Preprocessed image cache: every image decoded and resized once, stored as uint8.

Decoding a PNG and resizing it costs more CPU than a training step's input
needs; the cache stores exactly :func:`cxr_core.data.preprocessing.to_model_uint8`
of each image, so reading it is a memcpy and the network sees the same
numbers as from the file.

Layout of a cache folder::

    manifest.json              size, count, findings order, preprocessing version,
                               source, split settings, shards (written last:
                               a folder without it is an unfinished cache)
    index.csv                  one row per record, in record order: image,
                               patient_id, split, shard, then the 14 label columns
    train-00000.tfrecord ...   TFRecord shards per split, uncompressed

Each record is a ``tf.train.Example`` with ``image`` (raw bytes, S*S uint8),
``image_name``, ``patient_id``, ``split`` and ``labels`` (14 floats).
TFRecord was chosen over .npy shards because TensorFlow reads and parses it
in C++ threads (no Python GIL), interleaves shards in parallel, and it
works unchanged on any filesystem tf.io supports.

TensorFlow is imported lazily: the decode workers never load it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.bundle.versioned_json import read_versioned_json
from cxr_core.data.preprocessing import PREPROCESSING_VERSION, to_model_uint8
from cxr_core.errors import ImageReadError
from cxr_core.findings import FINDINGS

CACHE_FORMAT = "cxr-assist-cache"
CACHE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.csv"
SPLITS = ("train", "val", "test")


class CacheError(ValueError):
    """A cache folder is missing, unfinished, or does not fit this code."""


def _init_worker() -> None:
    # Each worker is one process; OpenCV's own thread pool would oversubscribe the cores.
    import cv2

    cv2.setNumThreads(1)


def _decode_one(task: tuple[int, str, int]) -> tuple[int, bytes | None, str | None]:
    index, path, size = task
    try:
        return index, to_model_uint8(path, size).tobytes(), None
    except ImageReadError as exc:
        return index, None, f"{exc.reason}: {exc}"


def _decoded(tasks: list[tuple[int, str, int]], workers: int):
    """Yield ``(index, bytes, error)`` in task order, using ``workers`` processes."""
    if workers <= 1:
        _init_worker()
        yield from map(_decode_one, tasks)
        return
    # spawn, not fork: the parent usually has TensorFlow's threads running,
    # and forking a multithreaded process can deadlock the child. Like any
    # spawn pool, a calling script needs the ``if __name__ == "__main__":``
    # guard. An executor (not multiprocessing.Pool) so that a worker that
    # cannot start raises BrokenProcessPool instead of hanging.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        yield from pool.map(_decode_one, tasks, chunksize=8)


def _example(image: bytes, name: str, patient_id: int, split: str, labels: np.ndarray):
    import tensorflow as tf

    feature = tf.train.Feature
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": feature(bytes_list=tf.train.BytesList(value=[image])),
                "image_name": feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
                "patient_id": feature(int64_list=tf.train.Int64List(value=[int(patient_id)])),
                "split": feature(bytes_list=tf.train.BytesList(value=[split.encode()])),
                "labels": feature(float_list=tf.train.FloatList(value=labels.astype(float).tolist())),
            }
        )
    ).SerializeToString()


def write_cache(
    table: pd.DataFrame,
    labels: np.ndarray,
    splits,
    out: str | os.PathLike,
    *,
    size: int = 256,
    workers: int | None = None,
    shard_size: int = 512,
    source: dict | None = None,
    split_info: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> "Cache":
    """Decode, resize and store every image once.

    Args:
        table: one row per image with columns ``image``, ``path``, ``patient_id``.
        labels: multi-hot (n, 14), row-aligned with ``table``.
        splits: split name of each row (``train``/``val``/``test``).
        out: cache folder to create.
        size: side of the stored squares (256 lets training crop 224).
        workers: decode processes (default: CPU count, at most 8).
        shard_size: records per TFRecord file.
        source: facts about the data source, stored in the manifest.
        split_info: split strategy, seed and fractions, stored in the manifest.
        overwrite: replace an existing cache in ``out``.
        progress: show a tqdm progress bar.

    Returns:
        the opened :class:`Cache`.

    Raises:
        CacheError: ``out`` holds a cache and ``overwrite`` is False, or no image could be read.
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    from cxr_core import __version__

    out = Path(out)
    labels = np.asarray(labels, dtype=np.float32)
    splits = np.asarray(splits).astype(str)
    if labels.shape != (len(table), len(FINDINGS)) or splits.shape != (len(table),):
        raise ValueError("table, labels (n, 14) and splits (n,) must be row-aligned")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split names {unknown}; use {SPLITS}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size!r}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CacheError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)

    started = time.time()
    tasks = [(i, str(p), int(size)) for i, p in enumerate(table["path"])]
    writers: dict[str, tf.io.TFRecordWriter] = {}
    shard_of_split: dict[str, int] = {s: -1 for s in SPLITS}
    in_shard: dict[str, int] = {s: 0 for s in SPLITS}
    shards: dict[str, list[dict]] = {s: [] for s in SPLITS}
    rows: list[dict] = []
    skipped: list[dict] = []
    names = table["image"].astype(str).tolist()
    patients = table["patient_id"].astype(np.int64).tolist()
    try:
        for i, data, error in tqdm(_decoded(tasks, workers), total=len(tasks), desc=f"caching at {size}px", unit="img", disable=not progress):
            if data is None:
                skipped.append({"image": names[i], "reason": error})
                continue
            split = splits[i]
            if split not in writers or in_shard[split] >= shard_size:
                if split in writers:
                    writers[split].close()
                shard_of_split[split] += 1
                file_name = f"{split}-{shard_of_split[split]:05d}.tfrecord"
                writers[split] = tf.io.TFRecordWriter(str(out / file_name))
                shards[split].append({"file": file_name, "count": 0})
                in_shard[split] = 0
            writers[split].write(_example(data, names[i], patients[i], split, labels[i]))
            in_shard[split] += 1
            shards[split][-1]["count"] += 1
            rows.append({"image": names[i], "patient_id": patients[i], "split": split, "shard": shards[split][-1]["file"],
                         **{f: float(v) for f, v in zip(FINDINGS, labels[i])}})
    finally:
        for writer in writers.values():
            writer.close()
    if not rows:
        raise CacheError(f"none of the {len(tasks)} images could be read (first error: {skipped[0]['reason'] if skipped else 'none'})")

    index = pd.DataFrame(rows, columns=["image", "patient_id", "split", "shard", *FINDINGS])
    index.to_csv(out / INDEX_NAME, index=False)
    counts = {s: int((index["split"] == s).sum()) for s in SPLITS}
    manifest = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "size": int(size),
        "count": len(index),
        "counts": counts,
        "positives": {s: {f: int(index.loc[index["split"] == s, f].sum()) for f in FINDINGS} for s in SPLITS},
        "findings": list(FINDINGS),
        # The function's name when the cache format was defined (now cxr_core.data.preprocessing):
        # a recorded label, kept so that manifests stay as they were; only "version" is checked.
        "preprocessing": {"function": "cxr_core.preprocessing.to_model_uint8", "version": PREPROCESSING_VERSION, "dtype": "uint8"},
        "source": source or {},
        "split": split_info or {},
        "shards": shards,
        "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "workers": workers,
        "cxr_core_version": __version__,
    }
    # The manifest is written last: its presence marks a finished cache.
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return open_cache(out)


def prepare_cache(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 256,
    split_strategy: str = "auto",
    split_seed: int = 0,
    fractions=(0.7, 0.1, 0.2),
    workers: int | None = None,
    shard_size: int = 512,
    overwrite: bool = False,
    progress: bool = True,
) -> "Cache":
    """Read an NIH dataset folder, split it patient-wise, and cache it.

    Args:
        data_root: NIH folder (official, Kaggle or resized layout).
        out: cache folder to create.
        size: stored side in pixels.
        split_strategy, split_seed, fractions: as :func:`cxr_core.data.splits.make_split`.
        workers, shard_size, overwrite, progress: as :func:`write_cache`.
    """
    from cxr_core.data.dataset import NIHDataset
    from cxr_core.data.splits import assert_patient_disjoint, make_split

    dataset = NIHDataset(data_root)
    splits = make_split(dataset, strategy=split_strategy, fractions=tuple(fractions), seed=split_seed)
    assert_patient_disjoint(dataset.patient_ids, splits)
    resolved = "official" if split_strategy == "auto" and dataset.is_full_release else (
        "patient" if split_strategy == "auto" else split_strategy)
    return write_cache(
        dataset.csv, dataset.labels, splits, out, size=size, workers=workers, shard_size=shard_size,
        overwrite=overwrite, progress=progress,
        source={"root": str(Path(data_root).resolve()), "csv_file": dataset.csv_file.name,
                "images": len(dataset), "label_format": dataset.source_format},
        split_info={"strategy": split_strategy, "resolved_strategy": resolved, "seed": int(split_seed),
                    "fractions": [float(f) for f in fractions]},
    )


@dataclass(frozen=True)
class Cache:
    """An opened cache folder (see the module docstring).

    Attributes:
        root: the folder.
        manifest: the parsed ``manifest.json``.
        index: ``index.csv`` as a DataFrame, in record order.
    """

    root: Path
    manifest: dict
    index: pd.DataFrame

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def split_info(self) -> dict:
        return dict(self.manifest.get("split", {}))

    def split_index(self, split: str) -> pd.DataFrame:
        """Rows of ``split`` in record order (the evaluation order)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use {SPLITS}")
        return self.index[self.index["split"] == split].reset_index(drop=True)

    def labels(self, split: str) -> np.ndarray:
        return self.split_index(split)[list(FINDINGS)].to_numpy(dtype=np.float32)

    def files(self, split: str) -> list[str]:
        return [str(self.root / shard["file"]) for shard in self.manifest["shards"].get(split, [])]

    def records(self, split: str, *, shuffle_files: bool = False, seed: int = 0, files: list[str] | None = None):
        """Serialized records of ``split``: in index order, or shards shuffled and interleaved.

        Args:
            split: split name.
            shuffle_files: shuffle shard order each epoch and read shards in parallel.
            seed: shard shuffle seed.
            files: read only these shard files of the split (one worker's part, see
                :func:`cxr_core.learn.pipeline.cache_shard`); default all.
        """
        import tensorflow as tf

        files = self.files(split) if files is None else list(files)
        if not files:
            raise CacheError(f"the cache at {self.root} has no {split!r} images")
        if not shuffle_files:
            return tf.data.TFRecordDataset(files, buffer_size=8 << 20)
        names = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        return names.interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
            cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )

    def parse(self, serialized):
        """One serialized record -> (uint8 image (S, S, 1), float32 labels (14,))."""
        import tensorflow as tf

        parsed = tf.io.parse_single_example(
            serialized,
            {"image": tf.io.FixedLenFeature([], tf.string), "labels": tf.io.FixedLenFeature([len(FINDINGS)], tf.float32)},
        )
        return self._image(parsed["image"]), parsed["labels"]

    def parse_image(self, serialized):
        """One serialized record -> uint8 image (S, S, 1), its labels not parsed (self-supervised use)."""
        import tensorflow as tf

        parsed = tf.io.parse_single_example(serialized, {"image": tf.io.FixedLenFeature([], tf.string)})
        return self._image(parsed["image"])

    def _image(self, raw):
        import tensorflow as tf

        return tf.reshape(tf.io.decode_raw(raw, tf.uint8), (self.size, self.size, 1))

    def read_split(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """All images of ``split`` as uint8 (n, S, S), labels (n, 14) and names (for checks, small caches)."""
        import tensorflow as tf

        images, labels, names = [], [], []
        spec = {"image": tf.io.FixedLenFeature([], tf.string), "image_name": tf.io.FixedLenFeature([], tf.string),
                "labels": tf.io.FixedLenFeature([len(FINDINGS)], tf.float32)}
        for record in self.records(split):
            parsed = tf.io.parse_single_example(record, spec)
            images.append(np.frombuffer(parsed["image"].numpy(), np.uint8).reshape(self.size, self.size))
            labels.append(parsed["labels"].numpy())
            names.append(parsed["image_name"].numpy().decode())
        return np.stack(images), np.stack(labels), names


def open_cache(root: str | os.PathLike) -> Cache:
    """Open and check a cache folder.

    Raises:
        CacheError: no manifest (missing or unfinished cache), another format
            version, another findings order or preprocessing version, or
            missing shard files.
    """
    root = Path(root)
    manifest_file = root / MANIFEST_NAME
    if not manifest_file.is_file():
        raise CacheError(f"{root} is not a finished cache (no {MANIFEST_NAME}); run python -m training.prepare")
    manifest = read_versioned_json(manifest_file, format=CACHE_FORMAT, versions=(CACHE_FORMAT_VERSION,), error=CacheError)
    if tuple(manifest.get("findings", ())) != FINDINGS:
        raise CacheError(f"{root}: the cache's findings order differs from cxr_core.findings.FINDINGS; rebuild it")
    version = manifest.get("preprocessing", {}).get("version")
    if version != PREPROCESSING_VERSION:
        raise CacheError(f"{root}: cached with preprocessing version {version}, this code is version {PREPROCESSING_VERSION}; rebuild it")
    missing = [s["file"] for shards in manifest["shards"].values() for s in shards if not (root / s["file"]).is_file()]
    if missing:
        raise CacheError(f"{root}: shard files missing: {', '.join(missing[:3])}")
    index = pd.read_csv(root / INDEX_NAME, dtype={"image": str, "split": str, "shard": str})
    if len(index) != manifest["count"]:
        raise CacheError(f"{root}: index.csv has {len(index)} rows, the manifest says {manifest['count']}")
    return Cache(root=root, manifest=manifest, index=index)
