"""Grad-CAM++ explanations with tf-keras-vis, for all 14 findings at once.

Models built by :mod:`cxr_core.models` name their last convolutional
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

import cv2
import keras
import numpy as np
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

FEATURES_LAYER = "features"


def _layer_index(model: keras.Model, name: str) -> int:
    for i, layer in enumerate(model.layers):
        if layer.name == name:
            return i
    raise ValueError(f"the model has no layer named {name!r}; explanations need the last conv activation named so")


def split_model(model: keras.Model, *, features_layer: str = FEATURES_LAYER) -> tuple[keras.Model, keras.Model]:
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


def resize_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a [0, 1] map to ``(height, width)`` and clip to [0, 1]."""
    height, width = int(shape[0]), int(shape[1])
    resized = cv2.resize(np.asarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


class HeadGradcamPlusPlus:
    """Grad-CAM++ over cached features: all requested findings in one batch.

    Args:
        head: the head model from :func:`split_model`.
        features_layer: the name of its first (identity) layer.
    """

    def __init__(self, head: keras.Model, *, features_layer: str = FEATURES_LAYER) -> None:
        self.features_layer = features_layer
        # tf-keras-vis clones the head once and swaps the sigmoid for a linear activation.
        self._gradcam = GradcamPlusPlus(head, model_modifier=ReplaceToLinear(), clone=True)

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


def gradcam_plus_plus_per_finding(
    model: keras.Model, image: np.ndarray, finding_index: int, *, features_layer: str = FEATURES_LAYER
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
    gradcam = GradcamPlusPlus(model, model_modifier=ReplaceToLinear(), clone=True)
    cam = gradcam(
        CategoricalScore([int(finding_index)]),
        image,
        penultimate_layer=features_layer,
        seek_penultimate_conv_layer=False,
        expand_cam=False,
        normalize_cam=True,
    )
    return np.asarray(cam, dtype=np.float32)[0]
