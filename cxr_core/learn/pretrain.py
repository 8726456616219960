"""Self-supervised pretraining of a trunk (SimCLR) on a cache's images, labels unused.

No pretrained weights can be downloaded where cxr-assist trains, and the
labelled training split is small; every image of the dataset, test split
included, can still teach a trunk what chest films look like if its labels
are never read. :func:`pretrain_simclr` does that with SimCLR (Chen et al.,
ICML 2020): two strongly augmented views of each image, a projection head
on the trunk's pooled features, and the NT-Xent loss that pulls the two
views of one film together and pushes the other films of the batch away.

What it promises:

- **labels are never read**: the input stream parses the image bytes of the
  cache records only (:func:`image_stream`), so pretraining on the test
  split cannot leak its findings into the model;
- **the trunk only**: :func:`save_trunk` writes every weight below the
  ``logits`` layer of a :func:`cxr_core.learn.models.build_model` network
  (the projection head is discarded, as in the paper), with
  ``pretrain.json`` saying how it was made (portable paths only);
- **a checked hand-over**: :func:`load_trunk` refuses a trunk whose
  architecture differs from the model it is loaded into, with a message
  that says which setting differs, instead of failing inside Keras.

The fine-tuning that follows is ordinary supervised training
(:func:`cxr_core.learn.engine.train` with ``init_from`` set to the folder
written here).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.bundle import layer_names
from cxr_core.bundle.versioned_json import read_versioned_json

log = logging.getLogger(__name__)

PRETRAIN_FORMAT = "cxr-assist-pretrain"
PRETRAIN_VERSION = 1
TRUNK_FILE = "trunk.npz"
RECORD_FILE = "pretrain.json"
#: Settings a trunk and the model it is loaded into must share.
ARCHITECTURE_KEYS = ("backbone", "input_size", "width_multiplier", "small_cnn_width")


@dataclass
class PretrainConfig:
    """A SimCLR pretraining run; loadable from TOML (flat keys).

    Attributes:
        cache: a cache made by ``python -m training.prepare`` (its images; labels unused).
        out: folder for ``trunk.npz``, ``pretrain.json`` and ``log.csv``.
        splits: cache splits whose images are used (default all three).
        backbone, input_size, width_multiplier, small_cnn_width, bn_momentum:
            the trunk, as :func:`cxr_core.learn.models.build_model`.
        epochs, batch_size (films per step; each gives two views), learning_rate,
            warmup_epochs, weight_decay: AdamW with warm-up and cosine decay.
        temperature: NT-Xent temperature (0.1-0.5 in the paper).
        projection_dim, projection_hidden: the projection head (discarded after).
        augment_strength: multiplier of :class:`cxr_core.learn.augment.AugmentConfig`'s
            magnitudes for the views (stronger than supervised training's 1.0:
            contrastive learning needs views that differ).
        blur_probability: chance of a Gaussian blur (sigma 0.1-2 px) per view.
        seed: seeds the initialisation, the order and the views.
        verbose: Keras verbosity (0, 1, 2).
    """

    cache: str = "cache/nih192"
    out: str = "runs/pretrain/simclr"
    splits: tuple[str, ...] = ("train", "val", "test")
    backbone: str = "mobilenetv2"
    input_size: int = 160
    width_multiplier: float = 1.0
    small_cnn_width: int = 16
    bn_momentum: float = 0.9
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    warmup_epochs: float = 2.0
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 128
    projection_hidden: int = 512
    augment_strength: float = 2.0
    blur_probability: float = 0.5
    seed: int = 0
    verbose: int = 2

    def __post_init__(self) -> None:
        from cxr_core.learn.models import BACKBONES

        self.splits = (self.splits,) if isinstance(self.splits, str) else tuple(self.splits)
        checks = [
            (self.backbone in BACKBONES, f"backbone must be one of {sorted(BACKBONES)}"),
            (bool(self.splits) and set(self.splits) <= {"train", "val", "test"},
             "splits must name some of train, val, test"),
            (self.input_size >= 32, "input_size must be >= 32"),
            (self.width_multiplier > 0, "width_multiplier must be > 0"),
            (self.epochs >= 1 and self.batch_size >= 2, "epochs must be >= 1 and batch_size >= 2"),
            (self.learning_rate > 0 and self.weight_decay >= 0, "learning_rate must be > 0, weight_decay >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.projection_dim >= 1 and self.projection_hidden >= 1, "projection sizes must be >= 1"),
            (0 <= self.augment_strength <= 2, "augment_strength must lie in [0, 2]"),
            (0 <= self.blur_probability <= 1, "blur_probability must lie in [0, 1]"),
            (self.verbose in (0, 1, 2), "verbose must be 0, 1 or 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid pretraining configuration: {message}")

    @classmethod
    def from_toml(cls, path: str | os.PathLike | None, overrides: dict | None = None) -> "PretrainConfig":
        """Read flat keys of a TOML file (tables are ignored), then apply ``overrides``.

        Raises:
            ValueError: unknown keys (listed with the valid ones) or bad values.
        """
        from cxr_core.learn.config import dataclass_from_dict, read_flat_toml

        return dataclass_from_dict(cls, {**read_flat_toml(path), **(overrides or {})}, what="pretraining")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["splits"] = list(self.splits)
        return data

    def architecture(self) -> dict:
        return {key: getattr(self, key) for key in ARCHITECTURE_KEYS}


# ------------------------------------------------------------------ views

def random_gaussian_blur(images, seed, probability: float, sigma_range: tuple[float, float] = (0.1, 2.0)):
    """Blur each image of a batch with its own Gaussian, with probability ``probability``.

    One separable depthwise convolution for the whole batch (images moved to
    the channel axis, one kernel each); an image left sharp gets the identity
    kernel. Borders are reflected, as the augmentation's resampling does.

    Args:
        images: float32 (B, H, W, 1).
        seed: int tensor (2,) for the stateless draws.
        probability: chance that an image is blurred.
        sigma_range: the blur's standard deviation in pixels, drawn uniformly.

    Returns:
        float32 (B, H, W, 1).
    """
    import tensorflow as tf

    if probability <= 0:
        return images
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    sigma = tf.random.stateless_uniform([batch], seed=seeds[0], minval=sigma_range[0], maxval=sigma_range[1])
    blurred = tf.random.stateless_uniform([batch], seed=seeds[1]) < probability
    radius = int(math.ceil(3 * sigma_range[1]))
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(offsets[None, :] / sigma[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)
    identity = tf.cast(tf.equal(offsets, 0.0), tf.float32)[None, :]
    kernel = tf.where(blurred[:, None], kernel, identity)                      # (B, k)
    stacked = tf.transpose(images, [3, 1, 2, 0])                                # (1, H, W, B)
    stacked = tf.pad(stacked, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    columns = tf.transpose(kernel)[:, None, :, None]                            # (k, 1, B, 1)
    rows = tf.transpose(kernel)[None, :, :, None]                               # (1, k, B, 1)
    stacked = tf.nn.depthwise_conv2d(stacked, columns, strides=[1, 1, 1, 1], padding="VALID")
    stacked = tf.nn.depthwise_conv2d(stacked, rows, strides=[1, 1, 1, 1], padding="VALID")
    return tf.transpose(stacked, [3, 1, 2, 0])


def image_stream(cache, splits: typing.Sequence[str], *, seed: int):
    """Every image of ``splits`` of ``cache`` as uint8 (S, S, 1), shuffled, repeated; labels never parsed."""
    import tensorflow as tf

    streams = [cache.records(split, shuffle_files=True, seed=seed) for split in splits]
    records = streams[0]
    for stream in streams[1:]:
        records = records.concatenate(stream)
    count = sum(len(cache.split_index(split)) for split in splits)
    return records.shuffle(min(count, 4096), seed=seed, reshuffle_each_iteration=True).repeat().map(
        cache.parse_image, num_parallel_calls=tf.data.AUTOTUNE), count


def view_pairs(images, *, config: PretrainConfig, batch_size: int, seed: int):
    """Batches of ``2 * batch_size`` views: the first half one view of each film, the second half the other.

    Args:
        images: a dataset of uint8 (S, S, 1) images (e.g. :func:`image_stream`).
        config: gives the augmentation strength, blur chance and input size.
        batch_size: films per batch.
        seed: seed of the views.

    Returns:
        a dataset of (float32 (2B, size, size, 1) normalised views, float32 (2B,) zeros).
    """
    import tensorflow as tf

    from cxr_core.data.preprocessing import PreprocessConfig, normalize
    from cxr_core.learn.augment import AugmentConfig
    from cxr_core.learn.pipeline import augment_batch

    augment = AugmentConfig(strength=config.augment_strength)
    preprocess = PreprocessConfig(size=config.input_size)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2).batch(4)

    def two_views(films, draws):
        views = [random_gaussian_blur(augment_batch(films, draws[2 * i], augment, config.input_size), draws[2 * i + 1],
                                      config.blur_probability) for i in range(2)]
        both = normalize(tf.concat(views, axis=0), preprocess)
        return both, tf.zeros([tf.shape(both)[0]], tf.float32)

    batches = images.batch(batch_size, drop_remainder=True)
    return tf.data.Dataset.zip(batches, seeds).map(two_views, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


# ------------------------------------------------------------------- loss

def nt_xent(projections, temperature: float):
    """NT-Xent (normalised temperature-scaled cross-entropy) of a batch of view pairs.

    Args:
        projections: (2B, D); rows i and i + B are the two views of one film.
        temperature: divides the cosine similarities.

    Returns:
        (2B,) loss per view: minus the log-probability of its partner among
        the other 2B - 1 views.
    """
    from keras import ops

    rows = ops.shape(projections)[0]
    half = rows // 2
    z = projections / (ops.norm(projections, axis=1, keepdims=True) + 1e-8)
    similarity = ops.matmul(z, ops.transpose(z)) / temperature
    similarity = similarity - 1e9 * ops.eye(rows, dtype=similarity.dtype)  # a view is not its own partner
    partner = ops.concatenate([z[half:], z[:half]], axis=0)
    positive = ops.sum(z * partner, axis=1) / temperature
    return ops.logsumexp(similarity, axis=1) - positive


# ------------------------------------------------------------ trunk files

def _trunk_layers(model):
    from cxr_core.learn.layer_walk import iter_layers

    return [layer for layer in iter_layers(model) if layer.weights and layer.name != layer_names.LOGITS
            and not hasattr(layer, "layers")]


def save_trunk(model, out: str | os.PathLike, record: dict) -> Path:
    """Write every weight of ``model`` below its ``logits`` layer to ``trunk.npz``, and ``pretrain.json``.

    Args:
        model: a network of :func:`cxr_core.learn.models.build_model`.
        out: the folder (created).
        record: what ``pretrain.json`` says (architecture, config, history).

    Returns:
        the folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {f"{layer.name}/{i}": np.asarray(w.numpy(), np.float32)
              for layer in _trunk_layers(model) for i, w in enumerate(layer.weights)}
    temporary = out / (TRUNK_FILE + ".partial.npz")
    np.savez(temporary, **arrays)
    temporary.replace(out / TRUNK_FILE)  # a cut-off run never leaves half a trunk under the real name
    document = {"format": PRETRAIN_FORMAT, "version": PRETRAIN_VERSION, **record}
    (out / RECORD_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return out


def read_record(folder: str | os.PathLike) -> dict:
    """``pretrain.json`` of a pretraining folder.

    Raises:
        ValueError: the folder holds no finished pretraining, or its record is of another format or version.
    """
    folder = Path(folder)
    path = folder / RECORD_FILE
    if not path.is_file() or not (folder / TRUNK_FILE).is_file():
        raise ValueError(f"{folder} holds no pretrained trunk ({RECORD_FILE} and {TRUNK_FILE}); "
                         "make one with python -m training.pretrain")
    return read_versioned_json(path, format=PRETRAIN_FORMAT, versions=(PRETRAIN_VERSION,), version_key="version",
                               missing_version=PRETRAIN_VERSION)


def load_trunk(model, folder: str | os.PathLike, *, architecture: dict) -> dict:
    """Copy a pretrained trunk into ``model`` (every layer below ``logits``), after checking it fits.

    Args:
        model: a fresh network of :func:`cxr_core.learn.models.build_model`.
        folder: a folder written by :func:`pretrain_simclr`.
        architecture: the model's values of :data:`ARCHITECTURE_KEYS`.

    Returns:
        the folder's ``pretrain.json``.

    Raises:
        ValueError: no trunk there, or one of another architecture.
    """
    record = read_record(folder)
    made = record.get("architecture", {})
    for key in ARCHITECTURE_KEYS:
        if key in architecture and key in made and made[key] != architecture[key]:
            raise ValueError(f"the pretrained trunk in {folder} was made with {key}={made[key]!r}; "
                             f"this model has {key}={architecture[key]!r}")
    with np.load(Path(folder) / TRUNK_FILE) as stored:
        arrays = dict(stored)
    for layer in _trunk_layers(model):
        values = []
        for i, weight in enumerate(layer.weights):
            key = f"{layer.name}/{i}"
            if key not in arrays or arrays[key].shape != tuple(weight.shape):
                raise ValueError(f"the pretrained trunk in {folder} does not fit this model at layer {layer.name!r}")
            values.append(arrays[key])
        layer.set_weights(values)
    return record


# ---------------------------------------------------------------- the run

def simclr_model(config: PretrainConfig):
    """(classifier, contrastive model): the build_model network, and its trunk + projection head."""
    import keras
    from keras import layers

    from cxr_core.learn.models import build_model

    classifier = build_model(config.backbone, config.input_size, weights=None, dropout=0.0,
                             bn_momentum=config.bn_momentum, width_multiplier=config.width_multiplier,
                             small_cnn_width=config.small_cnn_width)
    pooled = classifier.get_layer("pool").output
    hidden = layers.Dense(config.projection_hidden, activation="relu", name="projection_hidden")(pooled)
    projection = layers.Dense(config.projection_dim, name="projection")(hidden)
    return classifier, keras.Model(classifier.inputs, projection, name="simclr")


def check_pretraining(config: PretrainConfig, *, overwrite: bool = False):
    """What a pretraining run checks before it starts; the opened cache.

    Apart from the run so that a command can tell the user's mistakes (these)
    from failures during the hour of training, which keep their traceback.

    Raises:
        ValueError: a trunk already in ``config.out`` (unless ``overwrite``), no
            cache there, a named split without images, or fewer images than one batch.
    """
    from cxr_core.learn.cache import open_cache

    if (Path(config.out) / TRUNK_FILE).exists() and not overwrite:
        raise ValueError(f"{config.out} already holds a pretrained trunk; choose another out or pass overwrite")
    cache = open_cache(config.cache)
    for split in config.splits:
        cache.records(split)  # raises the cache's own message for a split without images
    count = sum(len(cache.split_index(split)) for split in config.splits)
    if count < config.batch_size:
        raise ValueError(f"the cache has {count} images in {list(config.splits)}, fewer than one batch of "
                         f"{config.batch_size}; lower batch_size")
    return cache


def pretrain_simclr(config: PretrainConfig, *, overwrite: bool = False) -> Path:
    """Pretrain a trunk with SimCLR on the images of ``config.splits`` of ``config.cache``.

    Args:
        config: the run.
        overwrite: replace a trunk already in ``config.out`` (an hour of CPU:
            refused by default).

    Returns:
        the output folder, holding ``trunk.npz``, ``pretrain.json`` and ``log.csv``.

    Raises:
        ValueError: as :func:`check_pretraining`.
    """
    import keras

    from cxr_core.bundle.format import code_version, portable_path
    from cxr_core.learn.callbacks import WarmupCosine

    cache = check_pretraining(config, overwrite=overwrite)
    keras.utils.set_random_seed(config.seed)
    images, count = image_stream(cache, config.splits, seed=config.seed)
    steps = count // config.batch_size
    dataset = view_pairs(images, config=config, batch_size=config.batch_size, seed=config.seed)
    classifier, contrastive = simclr_model(config)
    schedule = WarmupCosine(config.learning_rate, steps * config.epochs, int(round(config.warmup_epochs * steps)))
    contrastive.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
                        loss=lambda _, projections: nt_xent(projections, config.temperature))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("SimCLR: %s (width %g) at %d px on %d images of %s (labels unused), %d steps of %d films x 2 views, %d epochs",
             config.backbone, config.width_multiplier, config.input_size, count, list(config.splits), steps,
             config.batch_size, config.epochs)
    start = time.perf_counter()
    history = contrastive.fit(dataset, epochs=config.epochs, steps_per_epoch=steps, verbose=config.verbose, shuffle=False,
                              callbacks=[keras.callbacks.CSVLogger(str(out / "log.csv"))])
    seconds = time.perf_counter() - start
    return save_trunk(classifier, out, {
        "method": "simclr",
        "architecture": config.architecture(),
        "config": {**config.to_dict(), "cache": portable_path(config.cache), "out": portable_path(config.out)},
        "images": {split: int(len(cache.split_index(split))) for split in config.splits},
        "labels_used": False,
        "loss": [float(v) for v in history.history["loss"]],
        "seconds": round(seconds, 1),
        "code": code_version(),
    })
