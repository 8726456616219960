"""The layer names of every cxr-assist model: the one place they are spelled.

Builders (:func:`cxr_core.learn.models.build_model`) create these layers; the
bundle format, the explanations (Grad-CAM++ looks up ``FEATURES``), the
bfloat16 trunk (:mod:`cxr_core.serving.precision`), the LiteRT export and the
fine-tunes of the head find them by these names, so a model that loads is a
model every part of cxr-assist can run:

* ``INPUT`` ``"image"``: float32 ``(size, size, 1)``, normalised gray;
* ``FEATURES`` ``"features"``: the last convolutional activation;
* ``POOL`` ``"pool"`` (global average), ``DROPOUT`` ``"dropout"``;
* ``LOGITS`` ``"logits"``: Dense(14), no activation;
* ``PROBABILITIES`` ``"probabilities"``: sigmoid, float32 even under mixed precision.
"""

from __future__ import annotations

from typing import Any

__all__ = ["INPUT", "FEATURES", "POOL", "DROPOUT", "LOGITS", "PROBABILITIES", "HEAD", "model_input_size",
           "model_num_outputs"]

INPUT = "image"
FEATURES = "features"
POOL = "pool"
DROPOUT = "dropout"
LOGITS = "logits"
PROBABILITIES = "probabilities"
#: The layers after ``FEATURES``, in order.
HEAD = (POOL, DROPOUT, LOGITS, PROBABILITIES)


def model_input_size(model: Any) -> int:
    """Side of the square input of a cxr-assist model (a Keras model).

    Raises:
        ValueError: the input is not ``(size, size, 1)``.
    """
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1:
        raise ValueError(f"expected a (size, size, 1) gray input, got {tuple(shape)}")
    return int(shape[1])


def model_num_outputs(model: Any) -> int:
    """Number of output columns (14 for every cxr-assist model)."""
    return int(model.outputs[0].shape[-1])
