"""Top-block fine-tuning over cached activations: the cut, the training loop, and the engine's top_finetune mode."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from cxr_core.bundle import Bundle
from cxr_core.findings import FINDINGS
from cxr_core.learn import TrainConfig, build_model, train
from cxr_core.learn.linear_head import box_masks
from cxr_core.learn.top_finetune import finetune_top, split_model

MASS = FINDINGS.index("Mass")


def test_split_model_composes_to_the_full_model_and_shares_its_layers():
    model = build_model("small_cnn", 64)
    lower, upper = split_model(model, "block3_relu")
    images = np.random.default_rng(0).random((3, 64, 64, 1)).astype(np.float32)
    full_logits = keras.Model(model.inputs[0], model.get_layer("logits").output)(images)
    features, logits = upper(lower(images))
    np.testing.assert_allclose(logits, full_logits, atol=1e-5)
    assert features.shape[-1] == model.get_layer("features").output.shape[-1]
    assert upper.get_layer("block4_conv") is model.get_layer("block4_conv")  # training upper trains model
    assert "block1_conv" not in {layer.name for layer in upper.layers}
    with pytest.raises(ValueError, match="no layer named 'block9'"):
        split_model(model, "block9")


def _top_model() -> keras.Model:
    """A small cxr-assist-shaped top: (4, 4, 4) activations -> conv -> features -> pool -> logits (zero head)."""
    inputs = keras.Input((4, 4, 4))
    x = keras.layers.Conv2D(8, 1, activation="relu", name="top_conv")(inputs)
    x = keras.layers.Identity(name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(len(FINDINGS), kernel_initializer="zeros", name="logits")(x)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid", name="probabilities")(x))
    return split_model(model, model.layers[0].name)[1]


def _synthetic_activations(n: int, seed: int):
    """Named synthetic activations (not X-ray features): Mass positives light channel 0 in the top-left 2 x 2 cells."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, len(FINDINGS)), np.float32)
    y[: n // 2, MASS] = 1
    y[::3, 0] = 1  # a second finding, unrelated to the activations
    x = rng.normal(0.5, 0.1, (n, 4, 4, 4)).astype(np.float32)
    x[: n // 2, :2, :2, 0] += 1.0
    boxes = [[("Mass", 0.0, 0.0, 0.5, 0.5)] if y[i, MASS] else [] for i in range(n)]
    return x, y, boxes


def test_finetune_top_learns_keeps_the_best_epoch_and_uses_the_boxes():
    x, y, boxes = _synthetic_activations(96, 0)
    val_x, val_y, _ = _synthetic_activations(48, 1)
    keras.utils.set_random_seed(0)
    upper = _top_model()
    masks, has_box = box_masks(boxes, (4, 4))
    rows = finetune_top(upper, x, y, val_x, val_y, epochs=6, batch_size=16, learning_rate=3e-2,
                        box_masks=masks, has_box=has_box, box_loss_weight=0.3)
    assert [r["epoch"] for r in rows] == list(range(7))
    assert rows[0]["val_mean_auroc"] == pytest.approx(0.5)  # the zero head scores every image alike
    best = max(rows, key=lambda r: r["val_mean_auroc"])
    assert best["val_mean_auroc"] > 0.7  # Mass is learnt (the other finding stays at chance)
    # The model is left at the best epoch's weights, not the last epoch's.
    from cxr_core.learn.selection import mean_auroc

    assert mean_auroc(val_y, upper(val_x)[1].numpy())[0] == pytest.approx(best["val_mean_auroc"], abs=1e-6)
    assert all(np.isfinite(r["box_loss"]) for r in rows[1:])
    with pytest.raises(ValueError, match="one row per training activation"):
        finetune_top(upper, x, y, val_x, val_y, epochs=1, box_masks=masks[:5], has_box=has_box, box_loss_weight=0.3)


def test_top_finetune_needs_its_layer_and_nothing_else_takes_one():
    with pytest.raises(ValueError, match="needs finetune_from"):
        TrainConfig(data="somewhere", train_mode="top_finetune")
    with pytest.raises(ValueError, match="needs finetune_from"):
        TrainConfig(data="somewhere", finetune_from="block4_pool")


def test_engine_top_finetune_mode_on_demo_images(demo_root, tmp_path):
    values = {"data": str(demo_root), "backbone": "small_cnn", "input_size": 64, "batch_size": 16, "verbose": 0,
              "tensorboard": False, "head_steps": 50, "box_loss_weight": 0.3, "explanation": "gradcam",
              "feature_cache_dir": str(tmp_path / "features")}
    head_only = Bundle.load(train(TrainConfig(out=str(tmp_path / "head"), train_mode="linear_head", **values)))
    tuned = Bundle.load(train(TrainConfig(out=str(tmp_path / "top"), train_mode="top_finetune",
                                          finetune_from="block3_relu", epochs=2, learning_rate=1e-3, **values)))
    history = tuned.training["history"]
    log = pd.read_csv(tmp_path / "top" / "log.csv")
    assert list(log["epoch"]) == [0, 1, 2]
    # Epoch 0 is the linear head alone, the same fit as the linear_head recipe on the shared features.
    assert log["val_mean_auroc"][0] == pytest.approx(head_only.training["history"]["best_val_mean_auroc"], abs=1e-6)
    assert history["best_val_mean_auroc"] == pytest.approx(log["val_mean_auroc"].max())
    assert sorted(p.name.endswith("-block3_relu.npz") for p in (tmp_path / "features").glob("*.npz")) == [False, True]
    # Below the cut the trunk is untouched; above it, it moved (when an epoch beat the head alone).
    np.testing.assert_array_equal(head_only.model.get_layer("block2_conv").get_weights()[0],
                                  tuned.model.get_layer("block2_conv").get_weights()[0])
    moved = not np.allclose(head_only.model.get_layer("block4_conv").get_weights()[0],
                            tuned.model.get_layer("block4_conv").get_weights()[0])
    assert moved == (history["best_epoch"] > 0)
