"""tf.data input pipeline: files or cache -> uint8 -> augment -> normalize -> batch.

One path for every source::

    source (file paths | cache records)   uint8 (S, S, 1), S = decode/cache size
      -> batch
      -> training: random resized crop + rotation (+ optional flip) + brightness/contrast,
         one projective transform per image, output size = model size
         evaluation: identity when S == model size, else area resize on the 8-bit grid
      -> normalize(x, PreprocessConfig)   the same function the app calls
      -> prefetch

Files are decoded with :func:`cxr_core.data.preprocessing.to_model_uint8` inside
``tf.numpy_function`` (the ONE preprocessing), so evaluation on files equals
``preprocess(path, config)`` exactly, and equals evaluation on a cache made at
the same size. Augmentation works on whole batches (one op per batch, not per
image) and draws its randomness from a seeded ``tf.data.Dataset.random``,
so a run is reproducible whatever the parallelism.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from cxr_core.data.preprocessing import PreprocessConfig, normalize, to_model_uint8
from cxr_core.findings import FINDINGS
from cxr_core.learn.augment import AugmentConfig

AUTOTUNE = tf.data.AUTOTUNE


def fit_to_size(images: tf.Tensor, size: int) -> tf.Tensor:
    """Deterministic evaluation resize of a batch of uint8 images.

    Identity (cast to float) when the side is already ``size``; otherwise
    area interpolation, then rounding to the 8-bit grid as
    :func:`cxr_core.data.preprocessing.resize_to_model` does.

    Args:
        images: uint8 or float tensor (batch, S, S, 1) with values 0-255.
        size: output side.

    Returns:
        float32 (batch, size, size, 1) with integer values 0-255.
    """
    images = tf.cast(images, tf.float32)
    if images.shape[1] == size and images.shape[2] == size:
        return images
    resized = tf.image.resize(images, (size, size), method="area", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, config: AugmentConfig, size: int) -> tf.Tensor:
    """Random resized crop, rotation, optional flip, brightness and contrast.

    Crop, scale, rotation and flip form one projective transform per image,
    sampled bilinearly (one resampling, not four). With ``strength=0`` and no
    flip the transform is the identity or the evaluation resize.

    Args:
        images: uint8 or float tensor (batch, S, S, 1), values 0-255.
        seed: int tensor of shape (2,) for the stateless random draws.
        config: the augmentation settings.
        size: output side (the model input size).

    Returns:
        float32 (batch, size, size, 1) with values clipped to [0, 255].
    """
    if not config.enabled:
        return fit_to_size(images, size)
    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]
    source = tf.cast(tf.shape(images)[1], tf.float32)
    k = float(config.strength)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)

    def uniform(i: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform([batch], seed=seeds[i], minval=low, maxval=high)

    area = uniform(0, 1.0 - config.crop_area * k, 1.0)
    log_ratio = math.log1p(config.aspect * k)
    ratio = tf.exp(uniform(1, -log_ratio, log_ratio)) if log_ratio > 0 else tf.ones([batch])
    crop_w = tf.minimum(source * tf.sqrt(area * ratio), source)
    crop_h = tf.minimum(source * tf.sqrt(area / ratio), source)
    # Crop centre in pixel-index coordinates (pixel i covers [i, i+1)), kept inside the image.
    centre_x = crop_w / 2.0 + uniform(2, 0.0, 1.0) * (source - crop_w) - 0.5
    centre_y = crop_h / 2.0 + uniform(3, 0.0, 1.0) * (source - crop_h) - 0.5
    max_angle = math.radians(config.rotation * k)
    angle = uniform(4, -max_angle, max_angle) if max_angle > 0 else tf.zeros([batch])
    scale_x, scale_y = crop_w / size, crop_h / size
    if config.horizontal_flip:
        flip = tf.where(uniform(5, 0.0, 1.0) < 0.5, -1.0, 1.0)
        scale_x = scale_x * flip
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) -> input point: centre + R(angle) @ diag(scale) @ ((x, y) - output centre).
    half = (size - 1) / 2.0
    a0, a1 = cos * scale_x, -sin * scale_y
    b0, b1 = sin * scale_x, cos * scale_y
    a2 = centre_x - (a0 + a1) * half
    b2 = centre_y - (b0 + b1) * half
    zeros = tf.zeros([batch])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([size, size], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        # Reflection fills the corners a rotation uncovers with plausible anatomy
        # instead of black wedges the network could learn to notice.
        fill_mode="REFLECT",
    )
    if config.contrast * k > 0:
        factor = uniform(6, 1.0 - config.contrast * k, 1.0 + config.contrast * k)[:, None, None, None]
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * factor + mean
    if config.brightness * k > 0:
        delta = 255.0 * config.brightness * k
        shift = tf.random.stateless_uniform([batch], seed=seeds[7], minval=-delta, maxval=delta)
        images = images + shift[:, None, None, None]
    return tf.clip_by_value(images, 0.0, 255.0)


def decode_path(path: tf.Tensor, size: int) -> tf.Tensor:
    """Decode one image file inside tf.data with the one preprocessing.

    Args:
        path: scalar string tensor.
        size: side of the decoded square.

    Returns:
        uint8 (size, size, 1), equal to ``to_model_uint8(path, size)[..., None]``.
    """

    def _decode(raw: bytes) -> np.ndarray:
        return to_model_uint8(raw.decode("utf-8"), size)

    image = tf.numpy_function(_decode, [path], tf.uint8, stateful=False)
    image.set_shape((size, size))
    return image[..., tf.newaxis]


def finish_pipeline(
    dataset: tf.data.Dataset,
    *,
    preprocess: PreprocessConfig,
    training: bool,
    augment: AugmentConfig | None = None,
    batch_size: int = 32,
    seed: int = 0,
    drop_remainder: bool = False,
    has_labels: bool = True,
) -> tf.data.Dataset:
    """Batch, augment or fit to size, normalise and prefetch a uint8 image dataset.

    Args:
        dataset: elements ``(uint8 (S, S, 1), labels (14,))``, or images only
            when ``has_labels`` is False; already shuffled/repeated as wanted.
        preprocess: the model's preprocessing (its ``size`` is the output side).
        training: apply ``augment``; otherwise the deterministic evaluation path.
        augment: augmentation settings (default :class:`AugmentConfig`()).
        batch_size: images per batch.
        seed: seed of the augmentation draws.
        drop_remainder: drop a last partial batch (fixed shapes for training).
        has_labels: elements carry labels.

    Returns:
        batches of float32 (B, size, size, 1) [and float32 labels (B, 14)].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    size = int(preprocess.size)
    augment = augment if augment is not None else AugmentConfig()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)

    if training and augment.enabled:
        # Pairs of random int64 drawn afresh every epoch, one pair per batch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds)
        if has_labels:
            def _map(element, batch_seed):
                images, labels = element
                return normalize(augment_batch(images, batch_seed, augment, size), preprocess), labels
        else:
            def _map(images, batch_seed):
                return normalize(augment_batch(images, batch_seed, augment, size), preprocess)
    elif has_labels:
        def _map(images, labels):
            return normalize(fit_to_size(images, size), preprocess), labels
    else:
        def _map(images):
            return normalize(fit_to_size(images, size), preprocess)
    dataset = dataset.map(_map, num_parallel_calls=AUTOTUNE)
    return dataset.prefetch(AUTOTUNE)


def _check_labels(labels, count: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape != (count, len(FINDINGS)):
        raise ValueError(f"labels must have shape ({count}, {len(FINDINGS)}), got {labels.shape}")
    return labels


def dataset_from_files(
    paths: Sequence[str],
    labels=None,
    *,
    preprocess: PreprocessConfig,
    training: bool = False,
    augment: AugmentConfig | None = None,
    batch_size: int = 32,
    decode_size: int | None = None,
    shuffle: bool | None = None,
    repeat: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Input pipeline reading image files (PNG, JPEG, DICOM).

    Args:
        paths: image file paths.
        labels: multi-hot (n, 14) or ``None`` to yield images only.
        preprocess: the model's preprocessing configuration.
        training: shuffle (unless ``shuffle=False``) and augment.
        augment: augmentation settings for training.
        batch_size: images per batch.
        decode_size: side files are decoded to before augmentation (default
            the model size; e.g. 256 for a 224 model to crop from more pixels).
        shuffle: shuffle paths each epoch (default: ``training``).
        repeat: repeat forever (use with ``steps_per_epoch``).
        seed: seed of the shuffle and the augmentation.
        drop_remainder: drop the last partial batch.
        shard: ``(k, n)``: only every n-th file from offset k (worker k of n
            in a multi-worker run); default all.

    Returns:
        a ``tf.data.Dataset`` of float32 (B, size, size, 1) images [and labels].
    """
    paths = [str(p) for p in paths]
    if shard is not None:
        k, n = shard
        paths = paths[k::n]
        labels = None if labels is None else np.asarray(labels)[k::n]
    if not paths:
        raise ValueError("no image paths given")
    decode_size = int(decode_size or preprocess.size)
    elements = tf.constant(paths) if labels is None else (tf.constant(paths), _check_labels(labels, len(paths)))
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    if training if shuffle is None else shuffle:
        # Shuffling the path strings (not decoded images) gives a full shuffle for free.
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if labels is None:
        dataset = dataset.map(lambda p: decode_path(p, decode_size), num_parallel_calls=AUTOTUNE)
    else:
        dataset = dataset.map(lambda p, y: (decode_path(p, decode_size), y), num_parallel_calls=AUTOTUNE)
    return finish_pipeline(
        dataset, preprocess=preprocess, training=training, augment=augment, batch_size=batch_size,
        seed=seed, drop_remainder=drop_remainder, has_labels=labels is not None,
    )


def dataset_from_cache(
    cache,
    split: str,
    *,
    preprocess: PreprocessConfig,
    training: bool = False,
    augment: AugmentConfig | None = None,
    batch_size: int = 32,
    shuffle: bool | None = None,
    shuffle_buffer: int = 2048,
    repeat: bool = False,
    seed: int = 0,
    limit: int | None = None,
    drop_remainder: bool = False,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Input pipeline reading a preprocessed cache (:mod:`cxr_core.learn.cache`).

    Evaluation reads records in index order (so predictions line up with
    ``cache.labels(split)``); training interleaves shards in a shuffled order
    and shuffles records in a buffer.

    Args:
        cache: an opened :class:`cxr_core.learn.cache.Cache`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        preprocess: the model's preprocessing; when its size differs from the
            cache's, images are cropped (training) or resized (evaluation).
        training, augment, batch_size, shuffle, repeat, seed, drop_remainder:
            as in :func:`dataset_from_files`.
        shuffle_buffer: records held for shuffling (64 KB each at 256 px).
        limit: use only the first ``limit`` records of the split.
        shard: ``(k, n)``: worker k of n reads only its part (see :func:`cache_shard`).

    Returns:
        a ``tf.data.Dataset`` of float32 (B, size, size, 1) images and labels (B, 14).
    """
    do_shuffle = training if shuffle is None else shuffle
    part = cache_shard(cache, split, shard, limit=limit)
    by_records = part.records is not None
    # Records are sharded on the in-order stream (so the part is exact), files may be shuffled otherwise.
    dataset = cache.records(split, shuffle_files=do_shuffle and limit is None and not by_records, seed=seed, files=part.files)
    if limit is not None:
        dataset = dataset.take(int(limit))
    if by_records:
        dataset = dataset.shard(*part.records)
    count = len(part.images)
    # TFRecord files have unknown length; stating it lets Keras size progress
    # bars and end predict() without an "input ran out of data" warning.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    if do_shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(cache.parse, num_parallel_calls=AUTOTUNE)
    return finish_pipeline(
        dataset, preprocess=preprocess, training=training, augment=augment, batch_size=batch_size,
        seed=seed, drop_remainder=drop_remainder,
    )


@dataclass(frozen=True)
class CacheShard:
    """One worker's part of a cached split.

    Attributes:
        files: the TFRecord files it reads.
        records: ``(n, k)`` for ``Dataset.shard(n, k)`` on the in-order record
            stream, or None when whole files were divided.
        images: the names of its images, in index order (its size and, for
            tests and logs, which images it trains on).
    """

    files: list[str]
    records: tuple[int, int] | None
    images: list[str]


def cache_shard(cache, split: str, shard: tuple[int, int] | None, *, limit: int | None = None) -> CacheShard:
    """Which records of ``split`` worker ``k`` of ``n`` reads.

    Whole TFRecord files when the split has at least ``n`` of them (and no
    ``limit``): each worker opens only its own files (``files[k::n]``), as
    tf.distribute's FILE auto-sharding would. Otherwise every worker streams
    the split in index order and keeps every n-th record from offset k
    before parsing, so a cache written as one file per split (the demo set,
    any small cache) still divides exactly, and no worker decodes or
    augments images that another one trains on.
    """
    index = cache.split_index(split)
    names = index["image"].tolist()
    files = cache.files(split)
    if limit is not None:
        names = names[: int(limit)]
    if shard is None or shard[1] == 1:
        return CacheShard(files, None, names)
    k, n = shard
    if limit is None and len(files) >= n:
        mine = files[k::n]
        wanted = {Path(f).name for f in mine}
        return CacheShard(mine, None, index.loc[index["shard"].isin(wanted), "image"].tolist())
    return CacheShard(files, (n, k), names[k::n])
