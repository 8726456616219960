"""Walking a Keras model's layers, nested models included.

Its own module, below both the model builders (:mod:`cxr_core.learn.models`)
and the weight loaders they register (:mod:`cxr_core.learn.efficientnet_lite`),
so a loader can walk a model without importing the builders that import it.
"""

from __future__ import annotations

import keras

__all__ = ["iter_layers"]


def iter_layers(model: keras.Model):
    """Yield every layer of ``model``, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)
