"""Grad-CAM++ explanations with tf-keras-vis, for all 14 findings at once.

Models built by :mod:`cxr_core.learn.models` name their last convolutional
activation ``"features"``, and everything after it is a cheap head
(pooling -> dropout -> ``"logits"`` -> ``"probabilities"``). Grad-CAM++ only
needs the gradient of each finding's score with respect to those features,
so the fast path runs the backbone ONCE, then lets tf-keras-vis explain the
head alone over the cached activations, with all findings in one batch. The
result equals tf-keras-vis run on the whole model once per finding (tested),
at a fraction of the cost (``benchmarks/explain.py``).

Scores are logits: the sigmoid is replaced by a linear activation
(``ReplaceToLinear``), since a saturated sigmoid has vanishing gradients.
This module computes maps; drawing them is the app's business.
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
from cxr_core.serving.maps import resize_map  # noqa: F401 - public here too (TensorFlow-free in maps)

#: ``"gradcam++"`` (Chattopadhay et al. 2018, the default) or ``"gradcam"``
#: (Selvaraju et al. 2017). For a head that is global average pooling and one
#: Dense layer, Grad-CAM's weights are the Dense kernel / (h * w): it IS the
#: class activation map of Zhou et al. 2016, the map a box loss trains
#: (:mod:`cxr_core.learn.linear_head`); a bundle records which one it uses.
METHODS = ("gradcam++", "gradcam")


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
    ``GradcamPlusPlus`` in one compiled TensorFlow function, because the
    library rebuilds a Keras model on every call, which alone costs about
    twice a MobileNetV2 forward pass on a CPU.

    Args:
        head: the head model from :func:`split_model`.
        features_layer: the name of its first (identity) layer.
        engine: ``"compiled"`` or ``"tf-keras-vis"``.
        method: ``"gradcam++"`` or ``"gradcam"`` (see :data:`METHODS`).
        compiled: with the ``"compiled"`` engine, start with its traced graph
            (traced on first use); False runs the same arithmetic op by op until
            :meth:`compile` (no tracing before a first map).
    """

    def __init__(
        self, head: keras.Model, *, features_layer: str = layer_names.FEATURES, engine: str = "compiled", method: str = "gradcam++",
        compiled: bool = True,
    ) -> None:
        if engine not in {"compiled", "tf-keras-vis"}:
            raise ValueError(f"engine must be 'compiled' or 'tf-keras-vis', got {engine!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.features_layer = features_layer
        self.engine = engine
        self.method = method
        if engine == "tf-keras-vis":
            # tf-keras-vis clones the head once and swaps the sigmoid for a linear activation.
            library = GradcamPlusPlus if method == "gradcam++" else Gradcam
            self._gradcam = library(head, model_modifier=ReplaceToLinear(), clone=True)
        else:
            self._compiled = _compiled_gradcam(_linear_head(head), plus_plus=method == "gradcam++")
        self._outputs = int(head.outputs[0].shape[-1])
        self.compiled = bool(compiled)

    def compile(self, features: np.ndarray) -> None:
        """Trace the compiled engine for these features' shape (all the head's outputs at once), then use it."""
        if self.engine == "compiled":
            self._compiled(np.asarray(features, dtype=np.float32)[:1], np.arange(self._outputs, dtype=np.int32))
        self.compiled = True

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
            run = self._compiled if self.compiled else self._compiled.python_function
            return np.asarray(run(features, np.asarray(indices, dtype=np.int32)))
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
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    library = GradcamPlusPlus if method == "gradcam++" else Gradcam
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
