"""Fine-tune a bundle's members on a site's fit part, starting from the bundle's own weights.

Two depths (``training.adapt --fine-tune``):

* ``"heads"``: each member's ``"logits"`` layer (a linear map of the
  global-average pooled ``"features"``). The trunk does not change, so its
  pooled features are computed once per film; for a member scored over six
  test-time views the features are averaged over the same views, which gives
  exactly the logits the member serves (the head is linear).
* ``"last-block"``: the member's last block and its head, over the cached
  activations of the block below (:mod:`cxr_core.learn.top_finetune`; the
  cut is :data:`LAST_BLOCK_CUTS`, else the last residual ``*_add`` layer),
  on the image alone (no test-time views). Every BatchNormalization layer is
  frozen (:func:`cxr_core.learn.models.freeze_batchnorm`): a few hundred site
  films cannot re-estimate its statistics, and EfficientNet-Lite fine-tunes
  well only with them frozen (issue 25).

Both train with :func:`cxr_core.learn.top_finetune.finetune_top` on a
patient-wise 80/20 split of the FIT part (the check part is never seen) and
keep the best epoch on its 20%, epoch 0 being the shipped weights: a member
whose fine-tuning does not help there is left as shipped. Where a film's label
of a finding is unknown, the target is the member's own shipped probability
(the loss then pulls that output towards what it was, no label is made up).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping

import numpy as np

from cxr_core.data.preprocessing import normalize
from cxr_core.data.splits import patient_split

FINE_TUNE_MODES = ("none", "heads", "last-block")
#: The layer below the last block, for the backbones without residual ``*_add`` layers at their top.
LAST_BLOCK_CUTS = {"vgg16": "block4_pool", "small_cnn": "block3_relu"}
#: Default AdamW learning rates. The heads see raw pooled features (hundreds to a thousand channels, not standardised):
#: at 1e-3 one step can move a logit by about one; a VGG16 block needs 1e-5 to stay stable (top_finetune).
LEARNING_RATES = {"heads": 1e-4, "last-block": 1e-4, "last-block-vgg16": 1e-5}
DEFAULT_EPOCHS = {"heads": 10, "last-block": 5}
#: Share of the fit part's patients that choose the epoch.
TUNE_SHARE = 0.2
_CHUNK = 32


def cut_layer(model, backbone: str) -> str:
    """The layer whose activation feeds the member's last block.

    Raises:
        ValueError: the backbone has no known cut and no residual ``*_add`` layer.
    """
    if backbone in LAST_BLOCK_CUTS:
        return LAST_BLOCK_CUTS[backbone]
    adds = [layer.name for layer in model.layers if layer.name.endswith("_add")]
    if not adds:
        raise ValueError(f"no last block is defined for the {backbone or 'unknown'} backbone; use --fine-tune heads")
    return adds[-1]


def _members(bundle) -> list[tuple[str, object, int]]:
    """``(name, single-model Bundle, test-time views)`` of each member (one for a single-model bundle)."""
    if hasattr(bundle, "members"):
        return [(m.name, m.bundle, m.tta_views) for m in bundle.members]
    return [("model", bundle, 1)]


def _batches(images: np.ndarray, preprocess, views: int):
    from cxr_core.serving.tta import with_views

    for start in range(0, len(images), _CHUNK):
        yield with_views(normalize(images[start:start + _CHUNK], preprocess)[..., np.newaxis], views)


def _head_inputs(model, images: np.ndarray, preprocess, views: int) -> np.ndarray:
    """Pooled features (n, C), averaged over the member's test-time views."""
    from cxr_core.learn.linear_head import feature_maps

    out = []
    for batch in _batches(images, preprocess, views):
        pooled = feature_maps(model, [batch])
        out.append(pooled.reshape(views, -1, pooled.shape[-1]).mean(axis=0))
    return np.concatenate(out).astype(np.float32)


def _head_model(model):
    """pooled features -> (features, logits), through the member's own ``"logits"`` layer (training it trains the member)."""
    import keras

    from cxr_core.bundle.layer_names import LOGITS

    dense = model.get_layer(LOGITS)
    pooled = keras.Input((dense.kernel.shape[0],), name="pooled_features")
    features = keras.layers.Identity(name="features")(pooled)
    return keras.Model(pooled, [features, dense(pooled)], name=f"{model.name}_head")


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _targets(labels: np.ndarray, shipped_logits: np.ndarray) -> np.ndarray:
    """The site's labels, and the member's own shipped probability where a label is unknown."""
    own = 1.0 / (1.0 + np.exp(-shipped_logits))
    return np.where(np.isfinite(labels), labels, own).astype(np.float32)


def fine_tune_members(
    bundle,
    inputs: Mapping[int, np.ndarray],
    labels: np.ndarray,
    groups,
    *,
    mode: str,
    epochs: int | None = None,
    learning_rate: float | None = None,
    batch_size: int = 32,
    seed: int = 0,
    select_epoch: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Fine-tune every member of a loaded bundle in place on the fit part's films.

    Args:
        bundle: a :class:`~cxr_core.bundle.format.Bundle` or
            :class:`~cxr_core.bundle.ensemble.EnsembleBundle` loaded with its models.
        inputs: ``{size: uint8 (n, size, size)}``, the fit-part films at every member's input size.
        labels: fit-part labels (n, 14): 1, 0 or NaN.
        groups: patient id per film (the 80/20 split that chooses the epoch).
        mode: ``"heads"`` or ``"last-block"``.
        epochs: passes over the films (default :data:`DEFAULT_EPOCHS`).
        learning_rate: AdamW learning rate (default :data:`LEARNING_RATES`).
        batch_size: films per step.
        seed: split and shuffling seed.
        select_epoch: choose the epoch on a patient-wise 20% of the fit part (True); False trains on every fit
            film and chooses on those same films (the last epochs win: tests that need a fine-tune to happen).
        log: one line per member.

    Returns:
        one record per member: what was trained (``cut``), on how many films,
        the epochs (``history``: loss and the 20%'s mean AUROC), ``best_epoch``,
        ``seconds`` (features and training) and ``weights_sha256``.
    """
    from cxr_core.learn.models import freeze_batchnorm
    from cxr_core.learn.top_finetune import activations, finetune_top, split_model

    if mode not in ("heads", "last-block"):
        raise ValueError(f"fine-tuning mode must be 'heads' or 'last-block', got {mode!r}")
    labels, groups = np.asarray(labels, dtype=float), np.asarray(groups)
    if select_epoch:
        parts = patient_split(groups, np.nan_to_num(labels), fractions=(1 - TUNE_SHARE, TUNE_SHARE),
                              names=("train", "tune"), seed=seed)
        train, tune = np.flatnonzero(parts == "train"), np.flatnonzero(parts == "tune")
    else:
        train = tune = np.arange(len(labels))
    records = []
    for name, member, views in _members(bundle):
        started = time.perf_counter()
        model = member.model
        images = inputs[int(member.input_size)]
        if mode == "heads":
            cut, upper = "features (pooled)", _head_model(model)
            x = _head_inputs(model, images, member.preprocessing, views)
        else:
            freeze_batchnorm(model)
            cut = cut_layer(model, member.backbone)
            lower, upper = split_model(model, cut)
            x = activations(lower, _batches(images, member.preprocessing, 1))
        shipped_logits = np.concatenate([upper(x[i:i + _CHUNK], training=False)[1].numpy()
                                         for i in range(0, len(x), _CHUNK)])
        y = _targets(labels, shipped_logits)
        rate = learning_rate or LEARNING_RATES["last-block-vgg16" if mode == "last-block" and member.backbone == "vgg16"
                                               else mode]
        history = finetune_top(upper, x[train], y[train], x[tune], y[tune], epochs=epochs or DEFAULT_EPOCHS[mode],
                               batch_size=batch_size, learning_rate=rate, seed=seed)
        best = max(history, key=lambda row: row["val_mean_auroc"] if np.isfinite(row["val_mean_auroc"]) else -1.0)
        record = {"member": name, "mode": mode, "cut": cut, "learning_rate": rate, "films_train": int(len(train)),
                  "films_tune": int(len(tune)) if select_epoch else 0, "history": history,
                  "best_epoch": int(best["epoch"]), "seconds": round(time.perf_counter() - started, 1),
                  "weights_sha256": _weights_digest(model)}
        records.append(record)
        log(f"fine-tuned {name} ({mode}, from {cut}): best epoch {record['best_epoch']} of {len(history) - 1} "
            f"(choosing-set mean AUROC {best['val_mean_auroc']:.3f}), {record['seconds']} s")
    return records
