"""Grad-CAM(++): tf-keras-vis on the whole model is the oracle; the head-only engines and the runtime's closed form
(both backends, :mod:`cxr_core.serving.maps`) equal it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cxr_core.serving import HeadGradcamPlusPlus, gradcam_plus_plus_per_finding, resize_map, split_model


def _tiny_classifier(size: int = 48) -> keras.Model:
    """A small randomly initialised CNN with the cxr-assist layer-name contract."""
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    x = keras.layers.Dense(14, name="logits")(x)
    outputs = keras.layers.Activation("sigmoid", name="probabilities")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model_and_image():
    keras.utils.set_random_seed(7)
    model = _tiny_classifier()
    # Synthetic input: a bright square on noise (named synthetic, not an X-ray).
    image = np.random.default_rng(7).normal(0, 0.3, size=(48, 48, 1)).astype(np.float32)
    image[10:24, 26:40] += 2.0
    return model, image


def test_split_model_reproduces_the_classifier(model_and_image):
    model, image = model_and_image
    backbone, head = split_model(model)
    features, probabilities = backbone(image[None])
    assert features.shape == (1, 12, 12, 16)
    np.testing.assert_allclose(head(features).numpy(), model(image[None]).numpy(), atol=1e-6)
    np.testing.assert_allclose(probabilities.numpy(), model(image[None]).numpy(), atol=1e-6)


@pytest.mark.parametrize("engine", ["compiled", "tf-keras-vis"])
def test_fast_path_equals_tf_keras_vis_per_finding(model_and_image, engine):
    model, image = model_and_image
    backbone, head = split_model(model)
    features, _ = backbone(image[None])
    maps = HeadGradcamPlusPlus(head, engine=engine)(features.numpy(), range(14))
    assert maps.shape == (14, 12, 12) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    informative = 0
    for i in range(14):
        reference = gradcam_plus_plus_per_finding(model, image, i)
        np.testing.assert_allclose(maps[i], reference, atol=1e-4, err_msg=f"finding {i}")
        informative += reference.max() > 0.5
    assert informative >= 7  # the comparison is between real maps, not empty ones


def test_subset_of_findings_and_bad_input(model_and_image):
    model, image = model_and_image
    backbone, head = split_model(model)
    features, _ = backbone(image[None])
    explainer = HeadGradcamPlusPlus(head)
    full = explainer(features.numpy(), range(14))
    subset = explainer(features.numpy()[0], [13, 2])
    np.testing.assert_allclose(subset, full[[13, 2]], atol=1e-6)
    assert explainer(features.numpy(), []).shape == (0, 12, 12)
    with pytest.raises(ValueError, match="one image"):
        explainer(np.repeat(features.numpy(), 2, axis=0), [0])
    with pytest.raises(ValueError, match="engine"):
        HeadGradcamPlusPlus(head, engine="fast")


def test_split_model_needs_the_named_features_layer():
    inputs = keras.Input((16, 16, 1))
    outputs = keras.layers.Dense(14)(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="features"):
        split_model(keras.Model(inputs, outputs))


def test_resize_map():
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    big = resize_map(cam, (40, 30))
    assert big.shape == (40, 30) and big.max() <= 1 and big[0, 0] > big[-1, -1]


@pytest.mark.parametrize("engine", ["compiled", "tf-keras-vis"])
def test_plain_gradcam_equals_tf_keras_vis_and_is_the_class_activation_map(model_and_image, engine):
    """method="gradcam": tf-keras-vis Gradcam; for a GAP + Dense head it equals CAM (kernel-weighted features)."""
    model, image = model_and_image
    backbone, head = split_model(model)
    features, _ = backbone(image[None])
    maps = HeadGradcamPlusPlus(head, engine=engine, method="gradcam")(features.numpy(), range(14))
    kernel = model.get_layer("logits").get_weights()[0]
    informative = 0
    for i in range(14):
        reference = gradcam_plus_plus_per_finding(model, image, i, method="gradcam")
        np.testing.assert_allclose(maps[i], reference, atol=1e-4, err_msg=f"finding {i}")
        cam = np.maximum(features.numpy()[0] @ kernel[:, i], 0)
        if cam.max() > cam.min():
            np.testing.assert_allclose(maps[i], (cam - cam.min()) / (cam.max() - cam.min()), atol=1e-3)
            informative += 1
    assert informative >= 7
    plus_plus = HeadGradcamPlusPlus(head)(features.numpy(), range(14))
    assert not np.allclose(plus_plus, maps, atol=1e-3)  # the two methods really differ
    with pytest.raises(ValueError, match="method"):
        HeadGradcamPlusPlus(head, method="lime")


@pytest.mark.parametrize("method", ["gradcam++", "gradcam"])
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_the_keras_runner_maps_in_closed_form_equal_tf_keras_vis(model_and_image, method, compute_dtype):
    """The runtime never runs tf-keras-vis: a Keras member's runner maps its features in closed form, and those maps
    are tf-keras-vis's on the whole model (float32), or on the runner's own float32 features (a bfloat16 trunk)."""
    from cxr_core.data import PreprocessConfig
    from cxr_core.findings import FINDINGS
    from cxr_core.serving.maps import LinearHeadCams
    from cxr_core.serving.members import Member, runner_for

    model, image = model_and_image
    member = Member(model=model, preprocess=PreprocessConfig(size=48), explanation=method, compute_dtype=compute_dtype)
    runner = runner_for(member, FINDINGS)
    assert isinstance(runner.explainer, LinearHeadCams)
    features, logits, probabilities = runner.features_and_scores(image[None])
    assert features.dtype == np.float32 and features.shape == (1, 12, 12, 16)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)))
    maps = runner.explainer(features, range(14))
    if compute_dtype == "float32":
        np.testing.assert_allclose(probabilities, model(image[None]).numpy(), atol=1e-6)
        for i in range(14):
            np.testing.assert_allclose(maps[i], gradcam_plus_plus_per_finding(model, image, i, method=method),
                                       atol=1e-4, err_msg=f"finding {i}")
    else:
        _, head = split_model(model)
        np.testing.assert_allclose(maps, HeadGradcamPlusPlus(head, method=method)(features, range(14)), atol=2e-5)


def test_an_eager_keras_runner_gives_the_compiled_numbers(model_and_image):
    from cxr_core.data import PreprocessConfig
    from cxr_core.findings import FINDINGS
    from cxr_core.serving.members import Member, runner_for

    model, image = model_and_image
    member = Member(model=model, preprocess=PreprocessConfig(size=48), tta_views=6)
    eager, compiled = runner_for(member, FINDINGS, compiled=False), runner_for(member, FINDINGS)
    assert not eager.compiled and compiled.compiled
    before = eager.features_and_scores(image[None])
    eager.compile(image[None])
    assert eager.compiled
    for a, b, c in zip(before, eager.features_and_scores(image[None]), compiled.features_and_scores(image[None])):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(compiled.scores(image[None])[1], before[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(compiled.features(image[None]), before[0], rtol=1e-5, atol=1e-6)


def test_a_head_the_closed_form_does_not_cover_is_refused_with_the_members_name():
    from cxr_core.data import PreprocessConfig
    from cxr_core.findings import FINDINGS
    from cxr_core.serving.members import Member, runner_for

    inputs = keras.Input((48, 48, 1), name="image")
    features = keras.layers.Activation("relu", name="features")(keras.layers.Conv2D(8, 3, strides=4)(inputs))
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.GlobalAveragePooling2D(name="pool")(features))
    logits = keras.layers.Dense(14, name="logits")(hidden)
    two_layers = keras.Model(inputs, keras.layers.Activation("sigmoid", name="probabilities")(logits))
    with pytest.raises(ValueError, match="odd: the head after 'features' is .*linear Dense 'logits'"):
        runner_for(Member(model=two_layers, preprocess=PreprocessConfig(size=48), name="odd"), FINDINGS)
