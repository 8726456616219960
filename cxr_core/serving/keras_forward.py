"""The Keras backend of a member: a normalised batch -> the ``"features"`` and the logits, compiled once per shape.

The runner (:class:`cxr_core.serving.members.MemberRunner`) does the rest,
the same for both backends: the test-time views, the sigmoid and the
heatmaps. :class:`cxr_core.serving.litert.LiteModel` is the other backend,
the member's LiteRT serving form run without TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cxr_core.bundle import layer_names
from cxr_core.serving.maps import linear_head_kernel

if TYPE_CHECKING:
    import keras

__all__ = ["KerasForward", "features_and_logits"]


def features_and_logits(model: keras.Model) -> keras.Model:
    """``model``'s forward pass to its ``"features"`` and ``"logits"`` layers, both float32: what a runner needs
    of a member (the probabilities are the logits' sigmoid), and what its LiteRT serving form is converted from."""
    import keras

    features = model.get_layer(layer_names.FEATURES).output
    logits = model.get_layer(layer_names.LOGITS).output
    return keras.Model(model.inputs[0], [keras.ops.cast(features, "float32"), keras.ops.cast(logits, "float32")])


class KerasForward:
    """A member's Keras model as ``forward(batch) -> (features, logits)``, float32 arrays; compiled or eager.

    Compiled (the default), the call is a TensorFlow graph traced once per
    input shape: an eager Keras call costs more than a small network itself on
    a CPU, but the first call of each shape pays the tracing (about a second
    or more per member). With ``compiled=False`` it runs op by op until
    :meth:`compile` has traced it, so a freshly loaded model answers its first
    image at once (the app's start; see :meth:`cxr_core.serving.predictor.Predictor.warm_up`).

    Args:
        model: a classifier with the cxr-assist layer names and the head the
            closed-form maps cover (:func:`cxr_core.serving.maps.linear_head_kernel`).
        compute_dtype: ``"float32"``, or ``"bfloat16"`` for a trunk in bfloat16
            (:func:`cxr_core.serving.precision.with_bfloat16_trunk`; features and head stay float32).
        compiled: start with the compiled call (traced on first use).

    Attributes:
        size: the square input size in pixels.
        kernel: float32 (d, n_findings), the logits layer's Dense kernel as it was when the model was handed in.
        compiled: whether the compiled call is used.

    Raises:
        ValueError: the model's head is not pooling, dropout, a linear Dense ``"logits"`` and a sigmoid.
    """

    def __init__(self, model: keras.Model, *, compute_dtype: str = "float32", compiled: bool = True) -> None:
        import tensorflow as tf

        from cxr_core.serving.precision import with_bfloat16_trunk

        self.kernel = linear_head_kernel(model)
        self.size = int(model.inputs[0].shape[1])
        if compute_dtype == "bfloat16":
            model = with_bfloat16_trunk(model)
        both = features_and_logits(model)
        self._eager = lambda x: both(x, training=False)
        self._compiled = tf.function(self._eager, reduce_retracing=True)
        self.compiled = bool(compiled)

    def compile(self, batch: np.ndarray) -> None:
        """Trace the compiled call for ``batch``'s shape, then use it.

        Safe while another thread runs the eager call: the compiled call is
        switched on only once traced.
        """
        self._compiled(np.asarray(batch, dtype=np.float32))
        self.compiled = True

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features (n, h, w, d), logits (n, n_findings))`` float32 for normalised inputs (n, size, size, 1)."""
        features, logits = (self._compiled if self.compiled else self._eager)(batch)
        return np.asarray(features, dtype=np.float32), np.asarray(logits, dtype=np.float32)
