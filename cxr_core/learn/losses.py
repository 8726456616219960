"""Multi-label losses for the 14 findings.

Each loss works on logits (``from_logits=True``) or on probabilities
(``from_logits=False``, the default, because cxr-assist models output the
sigmoid layer ``"probabilities"``) and gives the same value either way: the
probabilities are clipped to ``[eps, 1 - eps]`` (as Keras does) and turned
back into logits, and everything is computed from logits with ``softplus``,
which is stable for large magnitudes.

Per sample, the loss is the mean over findings; Keras then averages over the
batch.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cxr_core.findings import FINDINGS

#: Probabilities are clipped to [EPSILON, 1 - EPSILON] before taking logits.
EPSILON = 1e-7

LOSS_NAMES = ("weighted_bce", "focal", "bce")


def positive_weights(labels, *, max_weight: float = 100.0) -> np.ndarray:
    """Per-finding weights of positive examples, from the TRAINING labels only.

    ``weight = negatives / positives`` (the ``pos_weight`` of
    ``BCEWithLogitsLoss``), so that positives and negatives of each finding
    carry equal total weight. Computed on the training split only: weights
    that looked at validation or test labels would leak them.

    Args:
        labels: multi-hot training labels, shape (n, k).
        max_weight: upper clip; a finding with 1 positive in 5,000 images
            would otherwise get a weight of 4,999 and dominate the gradient.

    Returns:
        float32 array (k,). A finding with no positives (or no negatives) gets
        weight 1: there is nothing to rebalance.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (n, k), got shape {labels.shape}")
    if max_weight < 1:
        raise ValueError(f"max_weight must be >= 1, got {max_weight!r}")
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where((positives > 0) & (negatives > 0), negatives / positives, 1.0)
    return np.clip(weights, None, max_weight).astype(np.float32)


def _to_logits(y_pred, from_logits: bool):
    if from_logits:
        return y_pred
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return ops.log(p) - ops.log1p(-p)


def _smooth(y_true, label_smoothing: float):
    # Smooth towards 0.5, as keras.losses.BinaryCrossentropy does.
    if label_smoothing:
        return y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return y_true


def _check_smoothing(label_smoothing: float) -> float:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)


class _FindingLoss(keras.losses.Loss):
    """What both losses share: logits or probabilities in, smoothed targets, one value per film averaged over findings.

    Args:
        from_logits: ``y_pred`` holds logits rather than probabilities.
        label_smoothing: in [0, 1); targets move towards 0.5.
        name, reduction, dtype: as :class:`keras.losses.Loss`.
    """

    def __init__(self, *, from_logits: bool = False, label_smoothing: float = 0.0, name: str,
                 reduction: str = "sum_over_batch_size", dtype=None) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def _targets_and_logits(self, y_true, y_pred):
        """``(smoothed targets, logits)`` in ``y_pred``'s dtype."""
        y_pred = ops.convert_to_tensor(y_pred)
        return _smooth(ops.cast(y_true, y_pred.dtype), self.label_smoothing), _to_logits(y_pred, self.from_logits)

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="cxr_core")
class WeightedBinaryCrossentropy(_FindingLoss):
    """Binary cross-entropy with a weight on each finding's positive term.

    ``loss = mean_k [ w_k * y * softplus(-z) + (1 - y) * softplus(z) ]`` with
    ``z`` the logit; with all weights 1 this is plain binary cross-entropy.

    Args:
        pos_weight: per-finding positive weights, shape (k,), e.g. from
            :func:`positive_weights`; ``None`` means all ones.
        **options: ``from_logits``, ``label_smoothing``, ``name`` (default ``"weighted_bce"``), ``reduction``,
            ``dtype`` (:class:`_FindingLoss`).
    """

    def __init__(self, pos_weight=None, **options) -> None:
        super().__init__(**{"name": "weighted_bce", **options})
        self.pos_weight = None if pos_weight is None else [float(w) for w in np.asarray(pos_weight).ravel()]
        if self.pos_weight is not None and any(not np.isfinite(w) or w <= 0 for w in self.pos_weight):
            raise ValueError("pos_weight values must be positive and finite")

    def call(self, y_true, y_pred):
        y_true, z = self._targets_and_logits(y_true, y_pred)
        positive = y_true * ops.softplus(-z)
        if self.pos_weight is not None:
            positive = positive * ops.cast(ops.convert_to_tensor(self.pos_weight), z.dtype)
        return ops.mean(positive + (1.0 - y_true) * ops.softplus(z), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable(package="cxr_core")
class BinaryFocalLoss(_FindingLoss):
    """Focal loss (Lin et al. 2017) for each finding, averaged over findings.

    ``loss = -[a y (1-p)^g log p + (1-a)(1-y) p^g log(1-p)]``; with
    ``alpha=None`` the ``a`` factors are dropped, with ``gamma=0`` and
    ``alpha=None`` it is binary cross-entropy. The two-term form also covers
    smoothed (soft) targets.

    Args:
        gamma: focusing exponent >= 0; larger down-weights easy examples more.
        alpha: weight of positives in [0, 1], or ``None`` for no class weighting.
        **options: ``from_logits``, ``label_smoothing``, ``name`` (default ``"focal"``), ``reduction``, ``dtype``
            (:class:`_FindingLoss`).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, **options) -> None:
        super().__init__(**{"name": "focal", **options})
        if not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha!r}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def call(self, y_true, y_pred):
        y_true, z = self._targets_and_logits(y_true, y_pred)
        p = ops.sigmoid(z)
        # -log p = softplus(-z) and -log(1 - p) = softplus(z), stable for any z.
        positive = y_true * ops.power(1.0 - p, self.gamma) * ops.softplus(-z)
        negative = (1.0 - y_true) * ops.power(p, self.gamma) * ops.softplus(z)
        if self.alpha is not None:
            positive, negative = self.alpha * positive, (1.0 - self.alpha) * negative
        return ops.mean(positive + negative, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


def make_loss(
    name: str,
    *,
    train_labels=None,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = 0.25,
    max_pos_weight: float = 100.0,
) -> keras.losses.Loss:
    """Build a loss by name.

    Args:
        name: ``"weighted_bce"`` (positive weights from ``train_labels``),
            ``"focal"`` or ``"bce"``.
        train_labels: multi-hot labels of the training split, shape (n, 14);
            required for ``"weighted_bce"``.
        from_logits: the model output fed to the loss is logits.
        label_smoothing: in [0, 1).
        focal_gamma, focal_alpha: focal loss parameters.
        max_pos_weight: clip of the positive weights.
    """
    if name == "weighted_bce":
        if train_labels is None:
            raise ValueError("weighted_bce needs the training labels to compute positive weights")
        weights = positive_weights(train_labels, max_weight=max_pos_weight)
        if weights.shape != (len(FINDINGS),):
            raise ValueError(f"expected labels with {len(FINDINGS)} columns, got {weights.shape[0]}")
        return WeightedBinaryCrossentropy(weights, from_logits=from_logits, label_smoothing=label_smoothing)
    if name == "bce":
        return WeightedBinaryCrossentropy(None, from_logits=from_logits, label_smoothing=label_smoothing, name="bce")
    if name == "focal":
        return BinaryFocalLoss(focal_gamma, focal_alpha, from_logits=from_logits, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
