"""Input pipeline and cache: shapes, dtypes, equality with the one preprocessing, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxr_core.data import PREPROCESSING_VERSION, NIHDataset, PreprocessConfig, assert_patient_disjoint, preprocess, to_model_uint8
from cxr_core.findings import FINDINGS
from cxr_core.learn import (
    AugmentConfig,
    CacheError,
    dataset_from_cache,
    dataset_from_files,
    open_cache,
    prepare_cache,
    write_cache,
)

SIZE = 64


@pytest.fixture(scope="module")
def demo(demo_root):
    return NIHDataset(demo_root)


@pytest.fixture(scope="module")
def demo_cache(demo_root, tmp_path_factory):
    return prepare_cache(demo_root, tmp_path_factory.mktemp("cache") / "demo64", size=SIZE, workers=1, shard_size=64, progress=False)


def collect(dataset):
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_cache_round_trip_equals_to_model_uint8(demo, demo_cache):
    paths = dict(zip(demo.csv["image"], demo.csv["path"]))
    images, labels, names = demo_cache.read_split("val")
    assert images.dtype == np.uint8 and images.shape == (len(names), SIZE, SIZE)
    assert names == demo_cache.split_index("val")["image"].tolist()
    for name, image in zip(names, images):
        np.testing.assert_array_equal(image, to_model_uint8(paths[name], SIZE))
    order = {n: i for i, n in enumerate(demo.csv["image"])}
    np.testing.assert_array_equal(labels, demo.labels[[order[n] for n in names]])


def test_cache_manifest_and_index_describe_the_cache(demo_root, demo, demo_cache):
    manifest = demo_cache.manifest
    assert manifest["size"] == SIZE and manifest["count"] == len(demo) == 260
    assert manifest["findings"] == list(FINDINGS)
    assert manifest["preprocessing"]["version"] == PREPROCESSING_VERSION
    assert manifest["source"]["root"] == str(demo_root.resolve())
    assert manifest["split"] == {"strategy": "auto", "resolved_strategy": "patient", "seed": 0, "fractions": [0.7, 0.1, 0.2]}
    assert sum(manifest["counts"].values()) == 260 and manifest["counts"]["train"] > manifest["counts"]["test"] > 0
    index = demo_cache.index
    assert list(index.columns[:4]) == ["image", "patient_id", "split", "shard"]
    assert_patient_disjoint(index["patient_id"], index["split"])
    assert manifest["positives"]["train"]["Effusion"] == int(index.loc[index["split"] == "train", "Effusion"].sum())


def test_parallel_workers_write_the_same_bytes(demo, tmp_path):
    table = demo.csv.iloc[:12]
    splits = ["train"] * 8 + ["val"] * 4
    one = write_cache(table, demo.labels[:12], splits, tmp_path / "one", size=48, workers=1, progress=False)
    two = write_cache(table, demo.labels[:12], splits, tmp_path / "two", size=48, workers=2, progress=False)
    for split in ("train", "val"):
        np.testing.assert_array_equal(one.read_split(split)[0], two.read_split(split)[0])
    assert two.manifest["workers"] == 2


def test_cache_refuses_unfinished_foreign_or_overwritten_folders(demo, demo_cache, tmp_path):
    with pytest.raises(CacheError, match="not a finished cache"):
        open_cache(tmp_path)
    with pytest.raises(CacheError, match="not empty"):
        write_cache(demo.csv.iloc[:2], demo.labels[:2], ["train", "val"], demo_cache.root, size=48, workers=1, progress=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in demo_cache.root.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["findings"] = list(reversed(FINDINGS))
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="findings order"):
        open_cache(copy)


def test_evaluation_on_files_and_on_cache_equals_the_one_preprocessing(demo, demo_cache):
    config = PreprocessConfig(SIZE)
    val = demo_cache.split_index("val")
    paths = dict(zip(demo.csv["image"], demo.csv["path"]))
    expected = np.stack([preprocess(paths[n], config) for n in val["image"]])

    from_cache, cache_labels = collect(dataset_from_cache(demo_cache, "val", preprocess=config, batch_size=7))
    from_files, file_labels = collect(
        dataset_from_files([paths[n] for n in val["image"]], demo_cache.labels("val"), preprocess=config, batch_size=7)
    )
    assert from_cache.dtype == np.float32 and from_cache.shape == (len(val), SIZE, SIZE, 1)
    assert cache_labels.shape == (len(val), 14)
    np.testing.assert_array_equal(from_cache, expected)
    np.testing.assert_array_equal(from_files, expected)
    np.testing.assert_array_equal(cache_labels, file_labels)


def test_cache_larger_than_the_model_is_resized_for_evaluation(demo, demo_cache):
    config = PreprocessConfig(48)
    images, _ = collect(dataset_from_cache(demo_cache, "val", preprocess=config, batch_size=8))
    assert images.shape[1:] == (48, 48, 1)
    pixels = images * config.std + config.mean
    np.testing.assert_allclose(pixels * 255, np.round(pixels * 255), atol=1e-3)  # on the 8-bit grid
    paths = dict(zip(demo.csv["image"], demo.csv["path"]))
    direct = np.stack([preprocess(paths[n], config) for n in demo_cache.split_index("val")["image"]])
    # Two resizes (source -> 64 -> 48) are close to one (source -> 48), not identical.
    assert np.abs(images - direct).mean() * config.std * 255 < 3.0


def test_augmentation_off_is_deterministic_and_equals_evaluation(demo_cache):
    config = PreprocessConfig(SIZE)
    off = AugmentConfig(strength=0.0)
    assert not off.enabled
    first, _ = collect(dataset_from_cache(demo_cache, "train", preprocess=config, training=True, augment=off, shuffle=False, batch_size=16))
    second, _ = collect(dataset_from_cache(demo_cache, "train", preprocess=config, training=True, augment=off, shuffle=False, batch_size=16))
    evaluation, _ = collect(dataset_from_cache(demo_cache, "train", preprocess=config, training=False, batch_size=16))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, evaluation)


def test_augmentation_on_is_seeded_changes_images_and_keeps_the_range(demo_cache):
    config = PreprocessConfig(48)

    def first_batch(seed):
        ds = dataset_from_cache(demo_cache, "train", preprocess=config, training=True, batch_size=8, seed=seed, shuffle=False)
        return next(iter(ds))[0].numpy()

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.05
    evaluation = next(iter(dataset_from_cache(demo_cache, "train", preprocess=config, batch_size=8)))[0].numpy()
    assert np.abs(a - evaluation).mean() > 0.05
    low, high = (0 - config.mean) / config.std, (1 - config.mean) / config.std
    assert a.min() >= low - 1e-6 and a.max() <= high + 1e-6 and a.shape == (8, 48, 48, 1)


def _half_bright_images(folder, count=16, size=96):
    """Named synthetic set "half-bright images": left half white (230), right half dark (20)."""
    folder.mkdir()
    paths = []
    for i in range(count):
        pixels = np.full((size, size), 20, dtype=np.uint8)
        pixels[:, : size // 2] = 230
        path = folder / f"half_{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def test_horizontal_flip_is_off_by_default_and_an_option(tmp_path):
    assert AugmentConfig().horizontal_flip is False
    paths = _half_bright_images(tmp_path / "half")
    config = PreprocessConfig(64)

    def left_minus_right(augment):
        ds = dataset_from_files(paths, preprocess=config, training=True, augment=augment, batch_size=16, seed=3)
        images = next(iter(ds)).numpy()[..., 0]
        return images[:, :, :32].mean(axis=(1, 2)) - images[:, :, 32:].mean(axis=(1, 2))

    assert np.all(left_minus_right(AugmentConfig()) > 1.0)  # crops, rotation, contrast: left stays bright
    flipped = left_minus_right(AugmentConfig(horizontal_flip=True))
    assert np.sum(flipped < -1.0) >= 3 and np.sum(flipped > 1.0) >= 3


def test_file_pipeline_without_labels_yields_images_only(demo):
    config = PreprocessConfig(SIZE)
    batch = next(iter(dataset_from_files(demo.csv["path"][:5], preprocess=config, batch_size=5)))
    assert batch.shape == (5, SIZE, SIZE, 1) and batch.dtype.name == "float32"
    with pytest.raises(ValueError, match="labels must have shape"):
        dataset_from_files(demo.csv["path"][:5], np.zeros((4, 14)), preprocess=config)


@pytest.mark.parametrize("kwargs", [{"strength": -0.1}, {"strength": 3.0}, {"crop_area": 0.95}, {"rotation": -1.0}])
def test_augment_config_validates(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_write_cache_checks_alignment(demo, tmp_path):
    with pytest.raises(ValueError, match="row-aligned"):
        write_cache(demo.csv.iloc[:3], demo.labels[:2], ["train"] * 3, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        write_cache(demo.csv.iloc[:2], demo.labels[:2], ["train", "holdout"], tmp_path / "y", progress=False)
