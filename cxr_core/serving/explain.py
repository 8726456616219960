"""Grad-CAM(++) by automatic differentiation with tf-keras-vis: the oracle the closed-form maps are tested against.

The runtime computes its maps in closed form (:mod:`cxr_core.serving.maps`),
for both backends: every cxr-assist head after ``"features"`` is pooling,
dropout, a linear Dense ``"logits"`` layer and a sigmoid, whose gradient needs
no automatic differentiation. This module is what that closed form is checked
against (``tests/serving/test_explain.py``, ``tests/serving/test_litert.py``, the Predictor's
maps in ``tests/bundle/test_ensemble_bundle.py`` and ``tests/experiments/test_experiment.py``),
and what ``benchmarks/explain.py`` times as the naive loop; the runtime never
imports it.

:func:`gradcam_plus_plus_per_finding` runs tf-keras-vis on the whole model,
one finding at a time. :class:`HeadGradcamPlusPlus` explains the head alone
over one image's cached features (:func:`split_model`), all findings in one
batch: with tf-keras-vis itself, or (``engine="compiled"``) its arithmetic
in one TensorFlow function with the gradient taken by TensorFlow (tested
equal to tf-keras-vis per finding).

Scores are logits: the sigmoid is replaced by a linear activation
(``ReplaceToLinear``), since a saturated sigmoid has vanishing gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from cxr_core.bundle import layer_names
from cxr_core.serving.maps import check_method


def _layer_index(model: keras.Model, name: str) -> int:
    for i, layer in enumerate(model.layers):
        if layer.name == name:
            return i
    raise ValueError(f"the model has no layer named {name!r}; explanations need the last conv activation named so")


def split_model(model: keras.Model, *, features_layer: str = layer_names.FEATURES) -> tuple[keras.Model, keras.Model]:
    """Split a classifier into a backbone and a head at ``features_layer``.

    Args:
        model: a Functional model whose layers after ``features_layer`` form a
            single chain (pooling, dropout, dense, activation).
        features_layer: name of the last convolutional activation.

    Returns:
        ``(backbone, head)``: ``backbone(image) -> [features, probabilities]``
        and ``head(features) -> probabilities``. The head starts with an
        identity layer named ``features_layer`` so Grad-CAM++ can target it,
        and shares its weights with ``model``.
    """
    index = _layer_index(model, features_layer)
    features = model.layers[index].output
    backbone = keras.Model(model.inputs[0], [features, model.outputs[0]], name="backbone_and_probabilities")
    head_input = keras.Input(shape=tuple(features.shape[1:]), name="cached_features")
    x = keras.layers.Identity(name=features_layer)(head_input)
    for layer in model.layers[index + 1 :]:
        if isinstance(layer, keras.layers.InputLayer):
            raise ValueError("the head after the features layer must be a single chain of layers")
        x = layer(x)
    head = keras.Model(head_input, x, name="head")
    return backbone, head


class HeadGradcamPlusPlus:
    """Grad-CAM++ over cached features: all requested findings in one batch.

    Two engines give the same maps (tested against tf-keras-vis on the whole
    model): ``"tf-keras-vis"`` runs the library on the head; ``"compiled"``
    (the default) runs the same arithmetic as tf-keras-vis 0.8.7's
    ``GradcamPlusPlus`` in one compiled TensorFlow function (the library
    rebuilds a Keras model on every call), without its exp(score) factor,
    which cancels and overflows for confident findings.

    Args:
        head: the head model from :func:`split_model`.
        features_layer: the name of its first (identity) layer.
        engine: ``"compiled"`` or ``"tf-keras-vis"``.
        method: ``"gradcam++"`` or ``"gradcam"`` (:data:`cxr_core.serving.maps.METHODS`).
    """

    def __init__(
        self, head: keras.Model, *, features_layer: str = layer_names.FEATURES, engine: str = "compiled", method: str = "gradcam++",
    ) -> None:
        if engine not in {"compiled", "tf-keras-vis"}:
            raise ValueError(f"engine must be 'compiled' or 'tf-keras-vis', got {engine!r}")
        self.features_layer = features_layer
        self.engine = engine
        self.method = check_method(method)
        if engine == "tf-keras-vis":
            # tf-keras-vis clones the head once and swaps the sigmoid for a linear activation.
            library = GradcamPlusPlus if method == "gradcam++" else Gradcam
            self._gradcam = library(head, model_modifier=ReplaceToLinear(), clone=True)
        else:
            self._compiled = _compiled_gradcam(_linear_head(head), plus_plus=method == "gradcam++")

    def __call__(self, features: np.ndarray, finding_indices: Sequence[int]) -> np.ndarray:
        """Maps for one image's features.

        Args:
            features: array (1, h, w, c) or (h, w, c) from the backbone.
            finding_indices: output columns to explain.

        Returns:
            float32 array (len(finding_indices), h, w), each map in [0, 1]
            (all zeros where the finding has no positive evidence).
        """
        features = np.asarray(features, dtype=np.float32)
        if features.ndim == 3:
            features = features[np.newaxis]
        if features.ndim != 4 or features.shape[0] != 1:
            raise ValueError(f"expected the features of one image, shape (1, h, w, c); got {features.shape}")
        indices = [int(i) for i in finding_indices]
        if not indices:
            return np.zeros((0,) + features.shape[1:3], dtype=np.float32)
        if self.engine == "compiled":
            return np.asarray(self._compiled(features, np.asarray(indices, dtype=np.int32)))
        batch = np.repeat(features, len(indices), axis=0)
        cams = self._gradcam(
            CategoricalScore(indices),
            batch,
            penultimate_layer=self.features_layer,
            seek_penultimate_conv_layer=False,
            expand_cam=False,
            normalize_cam=True,
        )
        return np.asarray(cams, dtype=np.float32)


def _linear_head(head: keras.Model) -> keras.Model:
    """The head up to its logits: what ReplaceToLinear makes of it."""
    layers = [layer for layer in head.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not isinstance(layers[-1], keras.layers.Activation):
        return head
    inputs = keras.Input(shape=tuple(head.inputs[0].shape[1:]))
    x = inputs
    for layer in layers[:-1]:  # shared layers: same weights as the model
        x = layer(x)
    return keras.Model(inputs, x, name="head_logits")


def _compiled_gradcam(linear_head: keras.Model, *, plus_plus: bool = True):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def explain(features, indices):
        activations = tf.repeat(features, tf.shape(indices)[0], axis=0)
        with tf.GradientTape() as tape:
            tape.watch(activations)
            logits = linear_head(activations, training=False)
            scores = tf.gather(logits, indices, axis=1, batch_dims=0)
            scores = tf.linalg.diag_part(scores)
        grads = tape.gradient(scores, activations)
        if not plus_plus:
            # tf-keras-vis 0.8.7 Gradcam: channel weights are the spatial mean gradient.
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
            low = tf.reduce_min(cam, axis=(1, 2), keepdims=True)
            high = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
            return (cam - low) / (high - low + keras.backend.epsilon())
        # tf-keras-vis multiplies every derivative by exp(score); the factor
        # cancels in the alphas and in the final min-max normalisation, and
        # dropping it avoids overflow for confident findings (exp(90) = inf).
        second = grads * grads
        third = second * grads
        global_sum = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        denominator = 2.0 * second + third * global_sum
        denominator += tf.cast(tf.equal(second, 0.0), denominator.dtype)
        alphas = second / denominator
        norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
        alphas /= norm + tf.cast(tf.equal(norm, 0.0), norm.dtype)
        weights = tf.reduce_sum(tf.nn.relu(grads) * alphas, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
        low = tf.reduce_min(cam, axis=(1, 2), keepdims=True)
        high = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return (cam - low) / (high - low + keras.backend.epsilon())

    return explain


def gradcam_plus_plus_per_finding(
    model: keras.Model, image: np.ndarray, finding_index: int, *, features_layer: str = layer_names.FEATURES,
    method: str = "gradcam++",
) -> np.ndarray:
    """The reference (slow) path: tf-keras-vis on the whole model for one finding.

    Args:
        model: the full classifier.
        image: one preprocessed image (h, w, 1) or (1, h, w, 1).
        finding_index: output column to explain.

    Returns:
        float32 map (h', w') at the features' resolution, in [0, 1].
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[np.newaxis]
    library = GradcamPlusPlus if check_method(method) == "gradcam++" else Gradcam
    gradcam = library(model, model_modifier=ReplaceToLinear(), clone=True)
    cam = gradcam(
        CategoricalScore([int(finding_index)]),
        image,
        penultimate_layer=features_layer,
        seek_penultimate_conv_layer=False,
        expand_cam=False,
        normalize_cam=True,
    )
    return np.asarray(cam, dtype=np.float32)[0]
