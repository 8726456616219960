"""Self-supervised pretraining (cxr_core.learn.pretrain): its views, loss, trunk files and hand-over to training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cxr_core.data import NIHDataset
from cxr_core.learn import TrainConfig, prepare_cache, write_cache
from cxr_core.learn.engine import compile_model
from cxr_core.learn.pretrain import (
    PretrainConfig,
    image_stream,
    load_trunk,
    nt_xent,
    pretrain_simclr,
    random_gaussian_blur,
    read_record,
    view_pairs,
)

SIZE = 64


@pytest.fixture(scope="module")
def demo_cache(demo_root, tmp_path_factory):
    return prepare_cache(demo_root, tmp_path_factory.mktemp("cache") / "demo64", size=SIZE, workers=1, progress=False)


@pytest.fixture(scope="module")
def trunk(demo_cache, tmp_path_factory) -> Path:
    """One epoch of SimCLR on the demo cache (260 real films), shared by the tests below."""
    return pretrain_simclr(tiny(demo_cache, tmp_path_factory.mktemp("pretrain") / "simclr"))


def tiny(cache, out, **values) -> PretrainConfig:
    base = {"cache": str(cache.root), "out": str(out), "backbone": "mobilenetv2", "input_size": SIZE,
            "width_multiplier": 0.35, "epochs": 1, "batch_size": 16, "projection_hidden": 32, "projection_dim": 16,
            "verbose": 0}
    return PretrainConfig(**{**base, **values})


def test_blur_with_probability_zero_is_the_identity_and_one_smooths_every_image():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (4, 32, 32, 1)), tf.float32)
    seed = tf.constant([1, 2], tf.int64)
    assert random_gaussian_blur(images, seed, 0.0) is images
    blurred = random_gaussian_blur(images, seed, 1.0, sigma_range=(1.0, 2.0)).numpy()
    assert blurred.shape == images.shape
    # A normalised kernel keeps the mean; smoothing white noise lowers every image's spread.
    np.testing.assert_allclose(blurred.mean(axis=(1, 2, 3)), images.numpy().mean(axis=(1, 2, 3)), rtol=0.02)
    assert np.all(blurred.std(axis=(1, 2, 3)) < images.numpy().std(axis=(1, 2, 3)) * 0.9)


def test_blur_leaves_the_images_it_does_not_pick_untouched():
    images = tf.constant(np.random.default_rng(1).uniform(0, 255, (64, 16, 16, 1)), tf.float32)
    out = random_gaussian_blur(images, tf.constant([3, 4], tf.int64), 0.5).numpy()
    same = np.all(np.isclose(out, images.numpy(), atol=1e-3), axis=(1, 2, 3))
    assert 10 < same.sum() < 54  # about half kept, half blurred


def reference_nt_xent(z: np.ndarray, temperature: float) -> np.ndarray:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z)
    sim = z @ z.T / temperature
    losses = []
    for i in range(n):
        partner = (i + n // 2) % n
        others = [j for j in range(n) if j != i]
        losses.append(-sim[i, partner] + np.log(np.sum(np.exp(sim[i, others]))))
    return np.array(losses)


def test_nt_xent_matches_its_definition_and_rewards_matching_views():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(8, 5)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(nt_xent(z, 0.5)), reference_nt_xent(z, 0.5), rtol=1e-4)
    films = rng.normal(size=(4, 5)).astype(np.float32)
    matched = np.concatenate([films, films + 0.01 * rng.normal(size=films.shape).astype(np.float32)])
    shuffled = np.concatenate([films, films[[1, 2, 3, 0]]])
    assert float(np.mean(nt_xent(matched, 0.2))) < float(np.mean(nt_xent(shuffled, 0.2)))


def test_the_image_stream_never_reads_labels(demo_root, tmp_path):
    """Two caches of the same films with different labels give the same pretraining input."""
    demo = NIHDataset(demo_root)
    table = demo.csv.iloc[:12]
    splits = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    flipped = 1.0 - demo.labels[:12]
    one = write_cache(table, demo.labels[:12], splits, tmp_path / "one", size=32, workers=1, progress=False)
    two = write_cache(table, flipped, splits, tmp_path / "two", size=32, workers=1, progress=False)
    first = [np.asarray(x) for x in image_stream(one, ("train", "val", "test"), seed=5)[0].take(12)]
    second = [np.asarray(x) for x in image_stream(two, ("train", "val", "test"), seed=5)[0].take(12)]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
    assert image_stream(one, ("train", "val", "test"), seed=5)[1] == 12


def test_view_pairs_are_two_different_views_of_each_film(demo_cache):
    config = tiny(demo_cache, "unused")
    images, _ = image_stream(demo_cache, ("train",), seed=0)
    views, zeros = next(iter(view_pairs(images, config=config, batch_size=4, seed=0)))
    assert views.shape == (8, SIZE, SIZE, 1) and zeros.shape == (8,)
    assert not np.allclose(views[:4], views[4:])
    # Views of one film resemble each other more than views of different films.
    a, b = views[:4].numpy().reshape(4, -1), views[4:].numpy().reshape(4, -1)
    corr = np.corrcoef(np.concatenate([a, b]))[:4, 4:]
    assert np.mean(np.diag(corr)) > np.mean(corr[~np.eye(4, dtype=bool)])


def test_pretraining_writes_a_trunk_that_training_starts_from(demo_cache, trunk, tmp_path):
    out = trunk
    record = read_record(out)
    assert record["method"] == "simclr" and record["labels_used"] is False
    assert record["images"] == {s: len(demo_cache.split_index(s)) for s in ("train", "val", "test")}
    assert len(record["loss"]) == 1 and np.isfinite(record["loss"][0])
    assert not Path(record["config"]["cache"]).is_absolute() and not Path(record["config"]["out"]).is_absolute()

    config = TrainConfig(cache=str(demo_cache.root), out=str(tmp_path / "run"), backbone="mobilenetv2",
                         input_size=SIZE, width_multiplier=0.35, init_from=str(out), epochs=1, steps_per_epoch=1,
                         batch_size=8, verbose=0, tensorboard=False, limit_per_split=8)
    model = compile_model(config, np.zeros((8, 14), np.float32), 1)
    with np.load(out / "trunk.npz") as trunk:
        stem = next(layer for layer in model._flatten_layers() if layer.name == "Conv1")
        np.testing.assert_array_equal(stem.get_weights()[0], trunk["Conv1/0"])
        assert "logits/0" not in trunk.files

    from cxr_core.bundle import Bundle
    from cxr_core.learn import train

    bundle_dir = train(config)
    bundle = Bundle.load(bundle_dir)
    assert bundle.model_config["weights_init"] == "simclr"
    assert bundle.model_config["width_multiplier"] == 0.35
    assert bundle.training["pretraining"]["labels_used"] is False
    from cxr_core.experiments.harness import _training_stats

    fine_tune = bundle.training["history"]["seconds"]
    assert _training_stats(bundle)[1] == pytest.approx(fine_tune + record["seconds"])  # the harness's wall column

    from cxr_core.bundle import assemble_ensemble, load_bundle
    from tools.model_card import network_text

    ensemble = assemble_ensemble([bundle_dir, bundle_dir], tmp_path / "ens", names=["ssl_a", "ssl_b"])
    assert _training_stats(load_bundle(ensemble))[1] == pytest.approx(
        2 * fine_tune + record["seconds"])  # two members of one trunk: its pretraining counted once
    meta = json.loads((ensemble / "bundle.json").read_text())
    assert meta["members"][0]["weights_init"] == "simclr"
    assert meta["members"][0]["pretraining_seconds"] == record["seconds"]
    assert network_text(meta).count("pretrained here by SimCLR") == 2
    # The bundle moves between machines: the trunk's folder is recorded without this machine's path.
    assert not Path(json.loads((bundle_dir / "bundle.json").read_text())["training"]["config"]["init_from"]).is_absolute()


def test_a_trunk_of_another_architecture_is_refused_with_a_clear_message(demo_cache, trunk, tmp_path):
    out = trunk
    config = TrainConfig(cache=str(demo_cache.root), backbone="mobilenetv2", input_size=SIZE, width_multiplier=0.5,
                         init_from=str(out))
    with pytest.raises(ValueError, match="width_multiplier=0.35"):
        compile_model(config, np.zeros((8, 14), np.float32), 1)
    from cxr_core.learn.models import build_model

    with pytest.raises(ValueError, match="already holds a pretrained trunk"):
        pretrain_simclr(tiny(demo_cache, out))  # an hour of CPU is not overwritten by a repeated command
    with pytest.raises(ValueError, match="holds no pretrained trunk"):
        load_trunk(build_model("mobilenetv2", SIZE), tmp_path / "nothing", architecture={})


def test_config_checks():
    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(init_from="runs/pretrain/x", weights="hed-vgg16", backbone="vgg16")
    with pytest.raises(ValueError, match="width_multiplier"):
        TrainConfig(backbone="densenet121", width_multiplier=0.5)
    with pytest.raises(ValueError, match="splits"):
        PretrainConfig(splits=("train", "holdout"))
    with pytest.raises(ValueError, match="unknown pretraining keys"):
        PretrainConfig.from_toml(None, {"epoch": 3})
