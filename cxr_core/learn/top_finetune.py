"""Fine-tune the top block of a pretrained trunk over its cached lower-block activations.

Full fine-tuning of VGG16 at 224 px trains at 1.3 images/s on 2 CPU
cores (``docs/evidence/scaling.md``), half an hour an epoch. The lower blocks hold most of the compute and,
pretrained on edges, transfer as they are; the top block and the head are
what must adapt to chest films. Their input (for VGG16, ``block4_pool``'s
activation) does not change while they train, so it is computed ONCE per
image and the top block is trained on those arrays. The price: no image
augmentation (the arrays are of the unaugmented image, the same tensors the
app makes).

Stability: VGG16 has no BatchNormalization and large activations. A fresh
head trained jointly with the trunk at Adam 1e-4 wrecked the pretrained
features (validation AUROC fell to 0.60 after 3 epochs, measured on this
project's data). So the caller first fits the head on the frozen features
(:mod:`cxr_core.learn.linear_head`), and this module then trains the top
block and that head together at a small learning rate, keeping the weights
of the best validation epoch (epoch 0: the linear head alone).

The optional box loss is the one of the linear-head mode (Li et al., CVPR
2018): the spatial softmax of each finding's class activation map should put
its mass inside the expert box, on TRAINING images only.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from cxr_core.bundle import layer_names
from cxr_core.findings import FINDINGS
from cxr_core.learn.selection import mean_auroc

log = logging.getLogger(__name__)


def split_model(model: keras.Model, at: str) -> tuple[keras.Model, keras.Model]:
    """Cut a cxr-assist classifier at layer ``at``.

    Args:
        model: a classifier with layers ``"features"`` and ``"logits"``.
        at: the layer whose activation is the cut (e.g. VGG16 ``"block4_pool"``).

    Returns:
        ``lower`` (image -> activation of ``at``) and ``upper`` (that
        activation -> ``(features, logits)``). Both share their layers with
        ``model``: training ``upper`` changes ``model``.

    Raises:
        ValueError: ``model`` has no layer ``at``, or ``at`` lies above the features.
    """
    try:
        cut = model.get_layer(at).output
    except ValueError:
        raise ValueError(f"the model has no layer named {at!r} to fine-tune from") from None
    try:
        upper = keras.Model(cut, [model.get_layer(layer_names.FEATURES).output, model.get_layer(layer_names.LOGITS).output],
                            name=f"{model.name}_above_{at}")
    except ValueError as error:
        raise ValueError(f"cannot fine-tune from {at!r}: the features do not depend on it only ({error})") from None
    if not upper.trainable_weights:
        raise ValueError(f"nothing to train above {at!r}")
    lower = keras.Model(model.inputs[0], cut, name=f"{model.name}_to_{at}")
    return lower, upper


def activations(model: keras.Model, batches) -> np.ndarray:
    """Run ``model`` (e.g. the ``lower`` part of :func:`split_model`) over batches once.

    Args:
        model: image -> activation model.
        batches: iterable of float32 image batches or ``(images, labels)`` pairs.

    Returns:
        float16 (n, h, w, c) activations (half the memory; the values of a
        pretrained VGG16 stay well inside float16's range).
    """
    import tensorflow as tf

    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    out = []
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        out.append(run(tf.convert_to_tensor(images, tf.float32)).numpy().astype(np.float16))
    return np.concatenate(out)


def finetune_top(
    upper: keras.Model,
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    val_inputs: np.ndarray,
    val_labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 32,
    learning_rate: float = 1e-5,
    weight_decay: float = 0.0,
    box_masks: np.ndarray | None = None,
    has_box: np.ndarray | None = None,
    box_loss_weight: float = 0.0,
    seed: int = 0,
    on_epoch=None,
) -> list[dict]:
    """Train ``upper`` on cached activations; leave it at its best validation epoch.

    Args:
        upper: the ``upper`` model of :func:`split_model`, head already fitted.
        train_inputs: (n, h, w, c) activations of the TRAINING images.
        train_labels: (n, 14) multi-hot labels.
        val_inputs, val_labels: the same for validation (selection only).
        epochs: passes over the training activations.
        batch_size: activations per step.
        learning_rate: AdamW learning rate (1e-5 keeps VGG16 stable).
        weight_decay: AdamW decoupled weight decay.
        box_masks: float (n, fh, fw, 14) masks of the expert boxes on the
            features grid (zeros for images without boxes), from
            :func:`cxr_core.learn.linear_head.box_masks`.
        has_box: float (n, 14), 1 where the image has a box of that finding.
        box_loss_weight: weight of the box loss; 0 ignores the boxes.
        seed: shuffling seed.
        on_epoch: optional callable given each epoch's row as it finishes.

    Returns:
        one row per epoch (epoch 0 = before training): ``loss``, ``box_loss``,
        ``val_mean_auroc``, ``seconds``; ``upper`` holds the weights of the
        row with the best ``val_mean_auroc``.

    Raises:
        ValueError: shapes that do not match.
    """
    import tensorflow as tf

    n = len(train_inputs)
    if train_labels.shape != (n, len(FINDINGS)) or val_labels.shape != (len(val_inputs), len(FINDINGS)):
        raise ValueError(f"labels must be (n, 14) for {n} training and {len(val_inputs)} validation activations")
    use_boxes = box_loss_weight > 0 and has_box is not None and float(np.sum(has_box)) > 0
    if use_boxes and (box_masks is None or len(box_masks) != n or len(has_box) != n):
        raise ValueError("box_masks and has_box need one row per training activation")
    kernel = upper.get_layer(layer_names.LOGITS).kernel
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    variables = upper.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x, y, masks, present):
        with tf.GradientTape() as tape:
            features, logits = upper(x, training=True)
            bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, logits))
            loss, box = bce, tf.constant(0.0)
            if use_boxes:
                cams = tf.einsum("bhwc,ck->bhwk", features, kernel)
                shape = tf.shape(cams)
                cams = tf.reshape(cams, (shape[0], -1, len(FINDINGS)))
                inside = tf.reduce_sum(tf.nn.softmax(cams, axis=1) * tf.reshape(masks, tf.shape(cams)), axis=1)
                box = tf.reduce_sum(-tf.math.log(inside + 1e-6) * present) / tf.maximum(tf.reduce_sum(present), 1.0)
                loss = bce + box_loss_weight * box
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return bce, box

    predict = tf.function(lambda x: upper(x, training=False)[1], reduce_retracing=True)

    def val_score() -> float:
        scores = np.concatenate([predict(tf.constant(val_inputs[i:i + 64], tf.float32)).numpy()
                                 for i in range(0, len(val_inputs), 64)])
        return mean_auroc(val_labels, scores)[0]

    rng = np.random.default_rng(seed)
    masks = np.asarray(box_masks, np.float32) if use_boxes else np.zeros((n, 1, 1, len(FINDINGS)), np.float32)
    present = np.asarray(has_box, np.float32) if use_boxes else np.zeros((n, len(FINDINGS)), np.float32)
    rows = [{"epoch": 0, "loss": float("nan"), "box_loss": float("nan"), "val_mean_auroc": val_score(), "seconds": 0.0}]
    best, best_weights = rows[0]["val_mean_auroc"], [w.copy() for w in upper.get_weights()]
    if on_epoch:
        on_epoch(rows[0])
    for epoch in range(1, int(epochs) + 1):
        started = time.perf_counter()
        order = rng.permutation(n)
        losses, boxes = [], []
        for i in range(0, n, batch_size):
            idx = np.sort(order[i:i + batch_size])
            bce, box = step(tf.constant(train_inputs[idx], tf.float32), tf.constant(train_labels[idx], tf.float32),
                            tf.constant(masks[idx]), tf.constant(present[idx]))
            losses.append(float(bce))
            boxes.append(float(box))
        score = val_score()
        row = {"epoch": epoch, "loss": float(np.mean(losses)),
               "box_loss": float(np.mean(boxes)) if use_boxes else float("nan"),
               "val_mean_auroc": score, "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        log.info("top fine-tuning epoch %d: loss %.4f, validation mean AUROC %.4f (%.0f s)",
                 epoch, row["loss"], score, row["seconds"])
        if on_epoch:
            on_epoch(row)
        if np.isfinite(score) and (not np.isfinite(best) or score > best):
            best, best_weights = score, [w.copy() for w in upper.get_weights()]
    upper.set_weights(best_weights)
    return rows
