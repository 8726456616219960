"""Fit the linear head of a frozen pretrained trunk, optionally pulled into expert boxes.

With a pretrained trunk and 2,400 training images, fine-tuning the trunk on
2 CPU cores is slow and, for VGG16 (no BatchNormalization, large
activations), unstable; a linear head on the frozen trunk's pooled features
is the measured better start (``docs/evidence/experiments.md``). Since the trunk does
not change, its features are computed ONCE per image (no augmentation, the
exact preprocessing the app uses) and the head is fitted on those arrays in
seconds instead of epochs of full forward passes.

The head is the model's own ``"logits"`` Dense layer over global-average
pooled ``"features"``, so the class activation map of finding k is
``features @ kernel[:, k]``: linear in the weights. The optional box loss
(after Li et al., CVPR 2018, who trained with NIH's boxes) asks that the
spatial softmax of that map puts its mass inside the expert box of the
finding, on TRAINING images only; it is what moves the heatmaps onto the
lesions (validation T(IoBB) in ``docs/evidence/experiments.md``).

Features are standardised with the training split's mean and standard
deviation while fitting (well-conditioned, one L2 strength for all
channels); the standardisation is folded back into the Dense layer, so the
model keeps the plain cxr-assist layer contract.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import keras
import numpy as np

from cxr_core.bundle import layer_names
from cxr_core.findings import FINDINGS

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class HeadFit:
    """What :func:`fit_linear_head` did.

    Attributes:
        steps: optimiser steps taken.
        l2: L2 strength on the standardised weights.
        box_loss_weight: weight of the box loss (0: none).
        boxed_images: training images that carried boxes into the box loss.
        train_loss: final mean binary cross-entropy on the training features.
        box_loss: final box loss (NaN without boxes).
        seconds: wall time of the fit (feature extraction excluded).
        label_smoothing: target smoothing used.
        mixup_alpha: feature-mixup Beta parameter used (0: none).
    """

    steps: int
    l2: float
    box_loss_weight: float
    boxed_images: int
    train_loss: float
    box_loss: float
    seconds: float
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0


def feature_maps(model: keras.Model, batches, *, pooled_only: bool = True):
    """Run the trunk once over ``batches`` of images.

    Args:
        model: a cxr-assist classifier (layer ``"features"``).
        batches: iterable of float32 image batches (n, size, size, 1) or of
            ``(images, labels)`` pairs (a validation-style tf.data dataset).
        pooled_only: return only the global-average pooled features.

    Returns:
        ``pooled`` float32 (n, channels), and unless ``pooled_only`` also the
        spatial maps float16 (n, h, w, channels).
    """
    import tensorflow as tf

    trunk = keras.Model(model.inputs[0], model.get_layer(layer_names.FEATURES).output)
    run = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True)
    pooled, maps = [], []
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        out = run(tf.convert_to_tensor(images, tf.float32))
        pooled.append(tf.reduce_mean(out, axis=(1, 2)).numpy())
        if not pooled_only:
            maps.append(out.numpy().astype(np.float16))
    pooled = np.concatenate(pooled) if pooled else np.zeros((0, 0), np.float32)
    return pooled if pooled_only else (pooled, np.concatenate(maps))


def box_masks(boxes_per_image, map_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise expert boxes onto the feature map grid.

    Args:
        boxes_per_image: for each image, a list of ``(finding, x, y, w, h)``
            with coordinates as fractions of the image side (0..1).
        map_shape: ``(h, w)`` of the feature map.

    Returns:
        ``masks`` float32 (n, h, w, 14), 1 on the cells a box touches, and
        ``has_box`` float32 (n, 14), 1 where the image has a box of that finding.
    """
    height, width = map_shape
    masks = np.zeros((len(boxes_per_image), height, width, len(FINDINGS)), np.float32)
    has_box = np.zeros((len(boxes_per_image), len(FINDINGS)), np.float32)
    for i, boxes in enumerate(boxes_per_image):
        for finding, x, y, w, h in boxes:
            k = FINDINGS.index(finding)
            x0, y0 = int(np.floor(x * width)), int(np.floor(y * height))
            x1, y1 = int(np.ceil((x + w) * width)), int(np.ceil((y + h) * height))
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
            if x0 >= width or y0 >= height:
                continue
            masks[i, y0:y1, x0:x1, k] = 1.0
            has_box[i, k] = 1.0
    return masks, has_box


def fit_linear_head(
    model: keras.Model,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    *,
    l2: float = 0.14,
    steps: int = 300,
    learning_rate: float = 3e-3,
    box_maps: np.ndarray | None = None,
    box_masks_: np.ndarray | None = None,
    has_box: np.ndarray | None = None,
    box_loss_weight: float = 0.0,
    label_smoothing: float = 0.0,
    mixup_alpha: float = 0.0,
    seed: int = 0,
) -> HeadFit:
    """Fit the model's ``"logits"`` layer on pooled features; write it into the model.

    An L2-regularised logistic regression per finding, fitted full batch by
    Adam over a fixed number of steps (deterministic for a seed), jointly
    with the box loss when given.

    Args:
        model: the classifier whose Dense ``"logits"`` layer is replaced.
        train_features: float32 (n, c) pooled features of the TRAINING split.
        train_labels: (n, 14) multi-hot labels.
        l2: L2 strength on the standardised weights (mean over findings);
            scikit-learn's ``C`` is ``1 / (l2 * n)`` (0.14 ~ C = 0.003 at 2,400 images).
        steps: full-batch Adam steps.
        learning_rate: Adam learning rate.
        box_maps: float (m, h, w, c) feature maps of the boxed TRAINING images.
        box_masks_: float32 (m, h, w, 14) from :func:`box_masks`.
        has_box: float32 (m, 14) from :func:`box_masks`.
        box_loss_weight: weight of the box loss; 0 ignores the boxes.
        label_smoothing: targets become ``y * (1 - s) + s / 2`` (NIH's
            text-mined labels are noisy; this caps the confidence they buy).
        mixup_alpha: > 0 mixes each step's standardised features and targets
            with a shuffled copy, weight ~ Beta(alpha, alpha) per row. With a
            frozen trunk this is mixup on the pooled features (manifold
            mixup), not on the images, whose features would need a new trunk
            pass per pair.
        seed: initialisation and mixup seed (the problem is convex without boxes or mixup).

    Returns:
        a :class:`HeadFit` summary.

    Raises:
        ValueError: shapes that do not fit, or no training rows.
    """
    import tensorflow as tf

    x = np.asarray(train_features, np.float64)
    y = np.asarray(train_labels, np.float32)
    if x.ndim != 2 or len(x) == 0 or y.shape != (len(x), len(FINDINGS)):
        raise ValueError(f"expected features (n, c) and labels (n, 14), got {x.shape} and {y.shape}")
    if not 0.0 <= label_smoothing < 1.0 or mixup_alpha < 0:
        raise ValueError(f"label_smoothing must lie in [0, 1) and mixup_alpha be >= 0, got {label_smoothing}, {mixup_alpha}")
    y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    dense = model.get_layer(layer_names.LOGITS)
    kernel_shape = tuple(dense.kernel.shape)
    if kernel_shape != (x.shape[1], len(FINDINGS)):
        raise ValueError(f"the logits layer takes {kernel_shape[0]} features, the cached ones have {x.shape[1]}")
    use_boxes = box_loss_weight > 0 and box_maps is not None and has_box is not None and float(np.sum(has_box)) > 0
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)  # dead channels (all-zero ReLU) stay 0 after scaling
    z = tf.constant((x - mean) / std, tf.float32)
    labels = tf.constant(y)
    rng = np.random.default_rng(seed)
    weights = tf.Variable(rng.normal(0, 1e-3, kernel_shape).astype(np.float32))
    bias = tf.Variable(np.zeros(len(FINDINGS), np.float32))
    if use_boxes:
        n_box, height, width, channels = box_maps.shape
        # Raw maps scaled by 1/std: the CAM of the standardised weights, up to a
        # per-finding constant that the spatial softmax ignores.
        maps = tf.constant((np.asarray(box_maps, np.float32) / std.astype(np.float32)).reshape(n_box, height * width, channels))
        masks = tf.constant(np.asarray(box_masks_, np.float32).reshape(n_box, height * width, len(FINDINGS)))
        present = tf.constant(np.asarray(has_box, np.float32))
    optimizer = keras.optimizers.Adam(learning_rate)

    mixing = tf.random.Generator.from_seed(seed)

    def mixed(inputs, targets):
        # One weight per row, lam ~ Beta(a, a), drawn as G1 / (G1 + G2) from two Gamma(a) draws.
        gammas = tf.random.stateless_gamma((2, len(x), 1), seed=mixing.make_seeds(1)[:, 0], alpha=mixup_alpha)
        lam = gammas[0] / (gammas[0] + gammas[1])
        order = tf.argsort(mixing.uniform((len(x),)))
        return (lam * inputs + (1 - lam) * tf.gather(inputs, order),
                lam * targets + (1 - lam) * tf.gather(targets, order))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            inputs, targets = mixed(z, labels) if mixup_alpha > 0 else (z, labels)
            logits = tf.matmul(inputs, weights) + bias
            bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(targets, logits))
            # mean over findings of 0.5 * l2 * |w_k|^2: scikit-learn's C is 1 / (l2 * n).
            penalty = 0.5 * l2 * tf.reduce_sum(weights * weights) / len(FINDINGS)
            loss = bce + penalty
            box = tf.constant(float("nan"))
            if use_boxes:
                cams = tf.einsum("npc,ck->npk", maps, weights)
                inside = tf.reduce_sum(tf.nn.softmax(cams, axis=1) * masks, axis=1)
                box = tf.reduce_sum(-tf.math.log(inside + 1e-6) * present) / tf.reduce_sum(present)
                loss += box_loss_weight * box
        grads = tape.gradient(loss, [weights, bias])
        optimizer.apply_gradients(zip(grads, [weights, bias]))
        return bce, box

    started = time.perf_counter()
    bce, box = float("nan"), float("nan")
    for _ in range(int(steps)):
        bce, box = step()
    w = weights.numpy().astype(np.float64)
    b = bias.numpy().astype(np.float64)
    # Fold the standardisation into the Dense layer: w' = w / std, b' = b - (mean / std) @ w.
    kernel = w / std[:, None]
    dense.set_weights([kernel.astype(np.float32), (b - (mean / std) @ w).astype(np.float32)])
    fit = HeadFit(
        steps=int(steps), l2=float(l2), box_loss_weight=float(box_loss_weight if use_boxes else 0.0),
        boxed_images=int(box_maps.shape[0]) if use_boxes else 0, train_loss=float(bce),
        box_loss=float(box) if use_boxes else float("nan"), seconds=round(time.perf_counter() - started, 2),
        label_smoothing=float(label_smoothing), mixup_alpha=float(mixup_alpha),
    )
    log.info("linear head fitted: %s", fit)
    return fit
