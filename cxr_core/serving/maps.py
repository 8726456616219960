"""Heatmap arithmetic that needs no TensorFlow: resizing a map, and Grad-CAM(++) of a linear head in closed form.

Every cxr-assist head after the ``"features"`` layer is global average
pooling, dropout (the identity at inference) and one Dense layer (the logits)
with a sigmoid after it (:func:`cxr_core.learn.models.build_model`; every
member of ``models/default``). For such a head the gradient of finding ``c``'s
logit with respect to the features is the same at every position:
``kernel[:, c] / (h * w)``. Grad-CAM and Grad-CAM++ then need no automatic
differentiation, only the features and the Dense kernel, so both runtimes
(Keras and the LiteRT serving form, :mod:`cxr_core.serving.members`) compute
their maps here. :class:`cxr_core.serving.explain.HeadGradcamPlusPlus`
(tf-keras-vis, automatic differentiation) is the oracle they are tested equal to.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cxr_core.bundle import layer_names

__all__ = ["METHODS", "check_method", "resize_map", "linear_head_cams", "linear_head_kernel", "LinearHeadCams"]

#: ``"gradcam++"`` (Chattopadhay et al. 2018, the default) or ``"gradcam"``
#: (Selvaraju et al. 2017). For a head that is global average pooling and one
#: Dense layer, Grad-CAM's weights are the Dense kernel / (h * w): it IS the
#: class activation map of Zhou et al. 2016, the map a box loss trains
#: (:mod:`cxr_core.learn.linear_head`); a bundle records which one it uses.
METHODS = ("gradcam++", "gradcam")

#: Keras' ``backend.epsilon()``: the guard in the min-max normalisation of the TensorFlow engine, kept identical.
EPSILON = 1e-7


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`; else ValueError with the choices."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def resize_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a [0, 1] map to ``(height, width)`` and clip to [0, 1]."""
    height, width = int(shape[0]), int(shape[1])
    resized = cv2.resize(np.asarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def linear_head_cams(
    features: np.ndarray, kernel: np.ndarray, finding_indices: Sequence[int], *, method: str = "gradcam++"
) -> np.ndarray:
    """Grad-CAM or Grad-CAM++ maps of a pooling + Dense head, for one image.

    The arithmetic is that of tf-keras-vis 0.8.7 (as
    :func:`cxr_core.serving.explain._compiled_gradcam` runs it), with the
    gradient written out: for Grad-CAM the channel weights are the spatial mean
    gradient; for Grad-CAM++ the alphas of Chattopadhay et al. (2018) from the
    gradient's powers (the exp(score) factor cancels, as there).

    Args:
        features: the image's ``"features"``, (1, h, w, d) or (h, w, d).
        kernel: the logits layer's Dense kernel, (d, n_findings).
        finding_indices: the output columns to map.
        method: ``"gradcam++"`` or ``"gradcam"``.

    Returns:
        float32 (len(finding_indices), h, w), each map min-max scaled to [0, 1]
        (all zeros where the finding has no positive evidence).
    """
    check_method(method)
    activations = np.asarray(features, dtype=np.float32)
    if activations.ndim == 4:
        if activations.shape[0] != 1:
            raise ValueError(f"expected the features of one image, shape (1, h, w, d); got {activations.shape}")
        activations = activations[0]
    if activations.ndim != 3:
        raise ValueError(f"expected features (h, w, d), got shape {activations.shape}")
    height, width, depth = activations.shape
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2 or kernel.shape[0] != depth:
        raise ValueError(f"the kernel must be ({depth}, n_findings) for features with {depth} channels, got {kernel.shape}")
    indices = [int(i) for i in finding_indices]
    if not indices:
        return np.zeros((0, height, width), dtype=np.float32)
    # d logit_c / d A[i, j, k] = kernel[k, c] / (h w), the same at every position (i, j): (n, 1, 1, d).
    grads = (kernel[:, indices].T / np.float32(height * width))[:, np.newaxis, np.newaxis, :]
    if method == "gradcam":
        weights = grads  # their spatial mean is themselves
    else:
        second = grads * grads
        third = second * grads
        global_sum = activations.sum(axis=(0, 1), dtype=np.float32)[np.newaxis, np.newaxis, np.newaxis, :]
        denominator = 2.0 * second + third * global_sum
        denominator = denominator + (second == 0).astype(np.float32)
        alphas = second / denominator
        # Summed over the h x w positions, where alphas do not vary.
        norm = alphas * np.float32(height * width)
        alphas = alphas / (norm + (norm == 0).astype(np.float32))
        weights = np.maximum(grads, 0.0) * alphas * np.float32(height * width)
    cams = np.maximum(np.einsum("hwd,nd->nhw", activations, weights[:, 0, 0, :]), 0.0)
    low = cams.min(axis=(1, 2), keepdims=True)
    high = cams.max(axis=(1, 2), keepdims=True)
    return ((cams - low) / (high - low + np.float32(EPSILON))).astype(np.float32)


def linear_head_kernel(model) -> np.ndarray:
    """The ``"logits"`` Dense kernel of a model whose head the closed form covers: after ``"features"``, pooling,
    dropout, a linear Dense ``"logits"`` layer and a sigmoid.

    Reads the layers of a Keras model without importing TensorFlow.

    Returns:
        float32 (d, n_findings), a copy.

    Raises:
        ValueError: the model has another head (its maps would need automatic differentiation).
    """
    names = [layer.name for layer in model.layers]
    if layer_names.FEATURES not in names or layer_names.LOGITS not in names:
        raise ValueError("the model has no 'features' and 'logits' layers")
    layers = [layer for layer in model.layers[names.index(layer_names.FEATURES) + 1:] if type(layer).__name__ != "Dropout"]
    head = [type(layer).__name__ for layer in layers]
    linear_logits = head == ["GlobalAveragePooling2D", "Dense", "Activation"] and layers[1].name == layer_names.LOGITS and \
        _activation_name(layers[1]) == "linear" and _activation_name(layers[2]) == "sigmoid"
    if not linear_logits:
        raise ValueError(f"the head after 'features' is {head}: only pooling, dropout, a linear Dense 'logits' "
                         "layer and a sigmoid have maps in closed form")
    return np.array(layers[1].get_weights()[0], dtype=np.float32)


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation))


class LinearHeadCams:
    """A member's heatmaps: ``cams(features, finding_indices)`` by :func:`linear_head_cams` with its kernel and method.

    Args:
        kernel: the logits layer's Dense kernel, (d, n_findings).
        method: ``"gradcam++"`` or ``"gradcam"``.
    """

    def __init__(self, kernel: np.ndarray, *, method: str = "gradcam++") -> None:
        self.method = check_method(method)
        self.kernel = np.asarray(kernel, dtype=np.float32)

    def __call__(self, features: np.ndarray, finding_indices: Sequence[int]) -> np.ndarray:
        """float32 (len(finding_indices), h, w) maps in [0, 1] for one image's features (1, h, w, d) or (h, w, d)."""
        return linear_head_cams(features, self.kernel, finding_indices, method=self.method)
