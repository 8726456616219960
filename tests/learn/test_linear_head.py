"""The frozen-trunk linear head: the fit, the folded standardisation, the box loss, and the engine's linear_head mode."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from cxr_core.bundle import Bundle
from cxr_core.findings import FINDINGS
from cxr_core.learn import TrainConfig, build_model, train
from cxr_core.learn.linear_head import box_masks, fit_linear_head

MASS = FINDINGS.index("Mass")


def _head_model(channels: int) -> keras.Model:
    """A cxr-assist-shaped head over (4, 4, channels) maps: features -> pool -> dropout -> logits -> probabilities."""
    inputs = keras.Input((4, 4, channels), name="image")
    x = keras.layers.Identity(name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    x = keras.layers.Dense(len(FINDINGS), name="logits")(x)
    return keras.Model(inputs, keras.layers.Activation("sigmoid", name="probabilities")(x))


def _synthetic_maps(n: int, seed: int = 0):
    """Named synthetic feature maps (not X-ray features).

    Channel 0 lights up inside a 2 x 2 "lesion" box (top-left) of positive
    images and of half the negatives; channel 1 lights up everywhere
    OUTSIDE the box on positive images only. Pooled, channel 1 is the better
    predictor of "Mass", so a plain fit leans on it and its map falls
    outside the box; only channel 0 puts the map inside. Channels 2-3 are noise.
    """
    rng = np.random.default_rng(seed)
    y = np.zeros((n, len(FINDINGS)), np.float32)
    y[: n // 2, MASS] = 1
    maps = rng.normal(0, 0.05, (n, 4, 4, 4)).astype(np.float32) + 0.5
    positive = y[:, MASS] == 1
    decoys = np.zeros(n, bool)
    decoys[n // 2 :: 2] = True
    maps[positive | decoys, :2, :2, 0] += 3.0
    outside = np.ones((4, 4), bool)
    outside[:2, :2] = False
    maps[np.ix_(positive, np.arange(4), np.arange(4), [1])] += (outside[None, :, :, None] * 1.0)
    boxes = [[("Mass", 0.0, 0.0, 0.5, 0.5)] if p else [] for p in positive]
    return maps, y, boxes


def test_fit_separates_and_folds_the_standardisation_into_the_dense_layer():
    maps, y, _ = _synthetic_maps(80)
    model = _head_model(4)
    pooled = maps.mean(axis=(1, 2))
    fit = fit_linear_head(model, pooled, y, l2=0.01, steps=300)
    logits = pooled @ model.get_layer("logits").get_weights()[0] + model.get_layer("logits").get_weights()[1]
    # The Dense layer alone (no standardisation layer) gives the fitted logits, and they separate Mass.
    np.testing.assert_allclose(keras.Model(model.input, model.get_layer("logits").output).predict(maps, verbose=0),
                               logits, rtol=1e-4, atol=1e-4)
    assert logits[y[:, MASS] == 1, MASS].min() > logits[y[:, MASS] == 0, MASS].max()
    assert fit.steps == 300 and fit.box_loss_weight == 0 and np.isnan(fit.box_loss)


def test_box_loss_moves_the_class_activation_map_into_the_box():
    maps, y, boxes = _synthetic_maps(80)
    pooled = maps.mean(axis=(1, 2))
    boxed = [i for i, b in enumerate(boxes) if b]
    masks, has_box = box_masks([boxes[i] for i in boxed], (4, 4))
    assert masks[0, :2, :2, MASS].all() and masks[0, 2:, :, MASS].sum() == 0 and has_box[0, MASS] == 1

    def mass_inside(model):
        kernel = model.get_layer("logits").get_weights()[0][:, MASS]
        cam = np.maximum(maps[boxed] @ kernel, 0)
        return float((cam[:, :2, :2].sum(axis=(1, 2)) / (cam.sum(axis=(1, 2)) + 1e-9)).mean())

    plain, boxed_model = _head_model(4), _head_model(4)
    fit_linear_head(plain, pooled, y, l2=0.05, steps=300)
    fit = fit_linear_head(boxed_model, pooled, y, l2=0.05, steps=300, box_maps=maps[boxed], box_masks_=masks,
                          has_box=has_box, box_loss_weight=1.0)
    assert fit.boxed_images == len(boxed) and np.isfinite(fit.box_loss)
    assert mass_inside(plain) <= 0.55  # the plain fit puts half of its map outside the box
    assert mass_inside(boxed_model) > 0.95


def test_label_smoothing_and_feature_mixup_regularise_the_head():
    maps, y, _ = _synthetic_maps(80)
    pooled = maps.mean(axis=(1, 2))

    def fitted(**options):
        model = _head_model(4)
        fit = fit_linear_head(model, pooled, y, l2=0.001, steps=300, **options)
        dense = model.get_layer("logits").get_weights()
        return fit, pooled @ dense[0] + dense[1]

    _, plain = fitted()
    smooth_fit, smooth = fitted(label_smoothing=0.2)
    mix_fit, mixed = fitted(mixup_alpha=0.4, seed=3)
    assert smooth_fit.label_smoothing == 0.2 and mix_fit.mixup_alpha == 0.4
    # Smoothed targets of 0.1 / 0.9 cap the logits near +-log(9); the plain fit goes further.
    assert np.abs(smooth[:, MASS]).max() < np.abs(plain[:, MASS]).max()
    assert np.abs(smooth[:, MASS]).max() < 2.6
    assert not np.allclose(mixed, plain, atol=1e-3)  # mixup changes the fit ...
    for logits in (smooth, mixed):  # ... and neither loses the separation of Mass
        assert logits[y[:, MASS] == 1, MASS].min() > logits[y[:, MASS] == 0, MASS].max()
    again = fitted(mixup_alpha=0.4, seed=3)[1]
    np.testing.assert_allclose(again, mixed, atol=1e-5)  # deterministic for a seed
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        fit_linear_head(_head_model(4), pooled, y, label_smoothing=1.0)
    with pytest.raises(ValueError, match="implemented for train_mode"):
        TrainConfig(data="somewhere", mixup_alpha=0.2)


def test_fit_refuses_features_that_do_not_fit_the_head():
    with pytest.raises(ValueError, match="takes 4 features"):
        fit_linear_head(_head_model(4), np.zeros((5, 3)), np.zeros((5, 14)))


def test_engine_linear_head_mode_on_demo_images_with_boxes_and_a_feature_cache(demo_root, tmp_path, caplog):
    values = {"data": str(demo_root), "backbone": "small_cnn", "input_size": 64, "batch_size": 16, "verbose": 0,
              "tensorboard": False, "train_mode": "linear_head", "head_steps": 50, "box_loss_weight": 0.3,
              "explanation": "gradcam", "feature_cache_dir": str(tmp_path / "features")}
    first = Bundle.load(train(TrainConfig(out=str(tmp_path / "a"), **values)))
    history = first.training["history"]
    assert history["linear_head"]["boxed_images"] > 10  # the demo set's training split has expert boxes
    assert np.isfinite(history["best_val_mean_auroc"])
    assert json.loads((tmp_path / "a" / "bundle" / "bundle.json").read_text())["explanation"] == {"method": "gradcam"}
    cached = list((tmp_path / "features").glob("*.npz"))
    assert len(cached) == 1
    # A second recipe on the same trunk reads the features instead of running it again.
    caplog.set_level("INFO")
    second = Bundle.load(train(TrainConfig(out=str(tmp_path / "b"), **{**values, "head_l2": 1.0})))
    assert any("features read from" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "features").glob("*.npz")) == cached
    # Its wall time still counts the trunk pass that made the features (a recipe's cost from scratch).
    first_row, second_row = history["epochs"][0], second.training["history"]["epochs"][0]
    assert second_row["features_reused"] and not first_row["features_reused"]
    assert second_row["feature_seconds"] == pytest.approx(first_row["feature_seconds"], abs=0.1)
    assert second.training["history"]["seconds"] >= first_row["feature_seconds"]
    # Only the head differs: the trunk is the same frozen random-initialised network (seeded).
    for name in ("block1_conv", "block4_conv"):
        np.testing.assert_array_equal(first.model.get_layer(name).get_weights()[0], second.model.get_layer(name).get_weights()[0])
    assert not np.allclose(first.model.get_layer("logits").get_weights()[0], second.model.get_layer("logits").get_weights()[0])
    log = pd.read_csv(tmp_path / "a" / "log.csv")
    assert list(log["val_mean_auroc"].round(6)) == [round(history["best_val_mean_auroc"], 6)]


def test_box_loss_needs_the_linear_head_and_a_dataset_folder():
    with pytest.raises(ValueError, match="box_loss_weight needs"):
        TrainConfig(cache="somewhere", box_loss_weight=0.3, train_mode="linear_head")
    with pytest.raises(ValueError, match="box_loss_weight needs"):
        TrainConfig(data="somewhere", box_loss_weight=0.3)


def test_vgg16_hed_builds_for_the_linear_head_recipe():
    model = build_model("vgg16", 64, weights="hed-vgg16", features_layer=("block4_pool", "block5_conv3"))
    assert model.get_layer("logits").get_weights()[0].shape == (1024, 14)
