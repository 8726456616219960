"""Heatmap arithmetic that needs no TensorFlow: resizing a map, and Grad-CAM(++) of a linear head in closed form.

Every cxr-assist head after the ``"features"`` layer is global average
pooling, dropout (the identity at inference) and one Dense layer (the logits).
For such a head the gradient of finding ``c``'s logit with respect to the
features is the same at every position: ``kernel[:, c] / (h * w)``. Grad-CAM
and Grad-CAM++ then need no automatic differentiation, only the features and
the Dense kernel, so the LiteRT serving form (:mod:`cxr_core.serving.litert`)
computes the same maps as :class:`cxr_core.serving.explain.HeadGradcamPlusPlus`
without TensorFlow (tested equal to it).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["resize_map", "linear_head_cams"]

#: Keras' ``backend.epsilon()``: the guard in the min-max normalisation of the TensorFlow engine, kept identical.
EPSILON = 1e-7


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
    if method not in ("gradcam++", "gradcam"):
        raise ValueError(f"method must be 'gradcam++' or 'gradcam', got {method!r}")
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
