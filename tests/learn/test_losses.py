"""Loss values against hand computation, on logits and on probabilities."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from cxr_core.learn import BinaryFocalLoss, WeightedBinaryCrossentropy, make_loss, positive_weights


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


Y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=np.float32)
Z = np.array([[0.5, -1.0, 2.0], [1.5, -0.3, -2.5]], dtype=np.float32)
W = np.array([2.0, 1.0, 3.0], dtype=np.float32)


def hand_weighted_bce(y, z, w, smoothing=0.0):
    total = 0.0
    for row_y, row_z in zip(y, z):
        per = []
        for k, (t, logit) in enumerate(zip(row_y, row_z)):
            t = t * (1 - smoothing) + 0.5 * smoothing
            per.append(w[k] * t * softplus(-logit) + (1 - t) * softplus(logit))
        total += sum(per) / len(per)
    return total / len(y)


def test_positive_weights_are_negatives_over_positives_of_the_given_labels():
    labels = np.array([[1, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 1], [0, 0, 0, 1]], dtype=np.float32)
    weights = positive_weights(labels)
    # column 0: 2 pos / 2 neg -> 1; column 1: 1 pos / 3 neg -> 3; no positives -> 1; no negatives -> 1
    np.testing.assert_allclose(weights, [1.0, 3.0, 1.0, 1.0])
    assert weights.dtype == np.float32
    rare = np.zeros((1000, 1), dtype=np.float32)
    rare[0] = 1
    assert positive_weights(rare, max_weight=50)[0] == 50.0
    assert positive_weights(rare, max_weight=1000)[0] == pytest.approx(999.0)


def test_weighted_bce_on_logits_equals_hand_computation():
    loss = WeightedBinaryCrossentropy(W, from_logits=True)
    assert float(loss(Y, Z)) == pytest.approx(hand_weighted_bce(Y, Z, W), rel=1e-5)


def test_weighted_bce_on_probabilities_equals_the_logit_form():
    on_logits = float(WeightedBinaryCrossentropy(W, from_logits=True)(Y, Z))
    on_probs = float(WeightedBinaryCrossentropy(W, from_logits=False)(Y, sigmoid(Z).astype(np.float32)))
    assert on_probs == pytest.approx(on_logits, rel=1e-4)


def test_unweighted_bce_matches_keras_and_label_smoothing_matches_hand():
    ours = float(make_loss("bce", from_logits=True)(Y, Z))
    reference = float(keras.losses.BinaryCrossentropy(from_logits=True)(Y, Z))
    assert ours == pytest.approx(reference, rel=1e-5)
    smoothed = WeightedBinaryCrossentropy(W, from_logits=True, label_smoothing=0.2)
    assert float(smoothed(Y, Z)) == pytest.approx(hand_weighted_bce(Y, Z, W, smoothing=0.2), rel=1e-5)
    assert float(smoothed(Y, Z)) != pytest.approx(hand_weighted_bce(Y, Z, W), rel=1e-3)


def test_focal_loss_equals_hand_computation_on_logits_and_probabilities():
    gamma, alpha = 2.0, 0.25
    expected = 0.0
    for row_y, row_z in zip(Y, Z):
        per = []
        for t, logit in zip(row_y, row_z):
            p = 1 / (1 + math.exp(-logit))
            if t == 1:
                per.append(-alpha * (1 - p) ** gamma * math.log(p))
            else:
                per.append(-(1 - alpha) * p**gamma * math.log(1 - p))
        expected += sum(per) / len(per)
    expected /= len(Y)
    assert float(BinaryFocalLoss(gamma, alpha, from_logits=True)(Y, Z)) == pytest.approx(expected, rel=1e-5)
    on_probs = float(BinaryFocalLoss(gamma, alpha)(Y, sigmoid(Z).astype(np.float32)))
    assert on_probs == pytest.approx(expected, rel=1e-4)


def test_focal_with_gamma_zero_and_no_alpha_is_plain_bce():
    focal = float(BinaryFocalLoss(0.0, None, from_logits=True)(Y, Z))
    assert focal == pytest.approx(hand_weighted_bce(Y, Z, np.ones(3)), rel=1e-5)


def test_extreme_probabilities_stay_finite():
    y = np.array([[1.0, 0.0]], dtype=np.float32)
    p = np.array([[0.0, 1.0]], dtype=np.float32)  # maximally wrong
    for loss in (WeightedBinaryCrossentropy(None), BinaryFocalLoss()):
        value = float(loss(y, p))
        assert np.isfinite(value) and value > 5


def test_make_loss_checks_its_arguments_and_losses_serialize():
    with pytest.raises(ValueError, match="training labels"):
        make_loss("weighted_bce")
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        make_loss("bce", label_smoothing=1.0)
    labels = np.zeros((10, 14), dtype=np.float32)
    labels[:2, 3] = 1
    loss = make_loss("weighted_bce", train_labels=labels)
    assert loss.pos_weight[3] == pytest.approx(4.0)
    clone = WeightedBinaryCrossentropy.from_config(loss.get_config())
    assert clone.pos_weight == loss.pos_weight
    focal = BinaryFocalLoss.from_config(BinaryFocalLoss(1.5, 0.4, label_smoothing=0.1).get_config())
    assert (focal.gamma, focal.alpha, focal.label_smoothing) == (1.5, 0.4, 0.1)
