"""Training: data -> patient-wise split -> tf.data -> model -> checkpoints -> bundle.

``train(TrainConfig(...))`` runs one training and returns the bundle folder.
The same steps are exposed for the tuner:
:func:`cxr_core.learn.training_data.load_training_data`,
:func:`make_datasets`, :func:`compile_model` (its callbacks are in
:mod:`cxr_core.learn.callbacks`).

Run folder (``config.out``)::

    config.json                 the resolved configuration
    log.csv                     one row per epoch (loss, val_mean_auroc, lr, seconds ...)
    tensorboard/                TensorBoard event files
    checkpoints/last.keras      model + optimizer state after the last epoch (resume)
    checkpoints/best.weights.h5 weights of the best validation mean AUROC
    checkpoints/state.json      epoch reached, best score, early-stopping counter
    bundle/                     the model bundle (:mod:`cxr_core.bundle.format`)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cxr_core.findings import FINDINGS
from cxr_core.learn.callbacks import (
    ChiefBackupAndRestore,
    EpochStats,
    ResumableCheckpoint,
    ValidationAUROC,
    WarmupCosine,
)
from cxr_core.learn.config import TrainConfig
from cxr_core.learn.training_data import TrainingData, load_training_data

log = logging.getLogger(__name__)

#: A folder where each worker writes its data part, first batch and final weights (tests).
DEBUG_DIR_ENV = "CXR_WORKER_DEBUG_DIR"


# --------------------------------------------------------------------------
# tf.data datasets
# --------------------------------------------------------------------------


def make_datasets(data: TrainingData, config: TrainConfig, *, input_size: int | None = None, augment=None,
                  seed: int | None = None):
    """Training (repeated, shuffled, augmented) and validation (ordered) datasets.

    Args:
        data: from :func:`load_training_data`.
        config: batch size, seed, augmentation, sizes.
        input_size: overrides ``config.input_size`` (the tuner).
        augment: overrides ``config.augment()``.
        seed: overrides ``config.seed`` for shuffling and augmentation.

    Returns:
        ``(train_ds, val_ds, steps_per_epoch)``.
    """
    from cxr_core.learn.pipeline import dataset_from_cache, dataset_from_files

    preprocess = config.preprocess() if input_size is None else dataclasses.replace(config.preprocess(), size=int(input_size))
    augment = augment or config.augment()
    n_train = len(data.rows("train"))
    steps = config.steps_per_epoch or max(1, math.ceil(n_train / config.batch_size))
    common = {"preprocess": preprocess, "batch_size": config.batch_size, "seed": config.seed if seed is None else seed}
    if data.cache is not None:
        train_ds = dataset_from_cache(data.cache, "train", training=True, augment=augment, repeat=True,
                                      limit=config.limit_per_split, shuffle_buffer=config.shuffle_buffer, **common)
        val_ds = dataset_from_cache(data.cache, "val", training=False, limit=config.limit_per_split, **common)
    else:
        paths = data.table["path"].to_numpy()
        train_rows, val_rows = data.rows("train"), data.rows("val")
        decode = config.decode_size or preprocess.size
        train_ds = dataset_from_files(paths[train_rows], data.labels[train_rows], training=True, augment=augment,
                                      repeat=True, decode_size=decode, **common)
        # Validation decodes at the model size: exactly what the app will do.
        val_ds = dataset_from_files(paths[val_rows], data.labels[val_rows], training=False, **common)
    return train_ds, val_ds, steps


# --------------------------------------------------------------------------
# Model, strategy, training loop
# --------------------------------------------------------------------------


def choose_strategy():
    """MultiWorkerMirrored when TF_CONFIG is set, Mirrored with several GPUs, else the default.

    MultiWorkerMirroredStrategy must be created before any other TensorFlow
    op runs in the process; call this first.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def _task_id(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0) if resolver is not None else 0


def lr_scale(config: TrainConfig, replicas: int) -> float:
    """The factor ``config.learning_rate`` (set for one replica) is multiplied by with ``replicas`` in sync.

    ``linear``: the global batch grows with the replicas (``batch_size`` each),
    so the step grows too (Goyal et al. 2017, "Accurate, large minibatch SGD";
    the warm-up of the cosine schedule keeps the first steps stable);
    ``sqrt``: the milder square-root rule; ``none``: unchanged.
    """
    replicas = max(1, int(replicas))
    return {"linear": float(replicas), "sqrt": math.sqrt(replicas), "none": 1.0}[config.lr_scaling]


def make_distributed_train_dataset(data: TrainingData, config: TrainConfig, strategy, *, seed: int):
    """The training input of a run with several replicas: one pipeline per worker, each reading its own part.

    ``strategy.distribute_datasets_from_function`` calls the builder once per
    worker with its ``InputContext``; the builder shards the training images
    itself (:func:`cxr_core.learn.pipeline.cache_shard`, or every n-th file)
    and batches ``batch_size`` per replica, so the global batch
    ``batch_size * replicas`` is split across workers. tf.distribute's
    auto-sharding is not used: FILE sharding fails on a cache written as one
    TFRecord per split, and DATA sharding would make every worker parse and
    augment every image, then drop all but its own.

    Returns:
        ``(distributed_dataset, steps_per_epoch, builder)``; ``builder(context)``
        gives one worker's dataset and records its part in ``builder.parts``.
    """
    import tensorflow as tf

    from cxr_core.learn.pipeline import cache_shard, dataset_from_cache, dataset_from_files

    global_batch = config.batch_size * int(strategy.num_replicas_in_sync)
    steps = config.steps_per_epoch or max(1, math.ceil(len(data.rows("train")) / global_batch))
    parts: dict[int, dict] = {}

    def builder(context: tf.distribute.InputContext):
        k, n = context.input_pipeline_id, context.num_input_pipelines
        batch = context.get_per_replica_batch_size(global_batch)
        common = {"preprocess": config.preprocess(), "batch_size": batch, "seed": seed + 7919 * k,
                  "training": True, "augment": config.augment(), "repeat": True, "shard": (k, n)}
        if data.cache is not None:
            images = cache_shard(data.cache, "train", (k, n), limit=config.limit_per_split).images
            dataset = dataset_from_cache(data.cache, "train", limit=config.limit_per_split,
                                         shuffle_buffer=config.shuffle_buffer, **common)
        else:
            rows = data.rows("train")
            images = data.table["image"].to_numpy()[rows][k::n].tolist()
            dataset = dataset_from_files(data.table["path"].to_numpy()[rows], data.labels[rows],
                                         decode_size=config.decode_size or config.input_size, **common)
        parts[k] = {"worker": k, "workers": n, "per_replica_batch": batch, "global_batch": global_batch, "images": images}
        return dataset

    builder.parts = parts
    return strategy.distribute_datasets_from_function(builder), steps, builder


def _synchronize_batch_norm(model: keras.Model) -> None:
    """BatchNormalization over the global batch: statistics all-reduced across replicas at each step.

    Otherwise every worker keeps moving statistics of its own images: the
    weights would differ between workers, and so would their validation
    scores and early-stopping decisions (a worker that stops while another
    goes on hangs the collectives). The bundle's inference model is built
    afresh and is not affected.
    """
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
        stack.extend(getattr(layer, "layers", []))


def _build_before_fit(model: keras.Model, strategy, size: int, *, multi_worker: bool) -> None:
    """Make Keras 3.15's ``fit`` work with MultiWorkerMirroredStrategy and a per-worker dataset.

    Builds the model's metrics, loss and optimizer state from a zero batch, under the strategy.

    Keras 3.15's fit first takes one batch of a distributed dataset and
    averages it across replicas (``strategy.reduce`` on the ``(x, y)`` tuple)
    to build what compile left unbuilt; under MultiWorkerMirroredStrategy that
    reduce fails ("Attempt to convert a value (PerReplica ...) to a Tensor")
    and it would consume a batch. Built here, that step has nothing to do and
    is skipped.
    """
    import tensorflow as tf

    batch = (tf.zeros((1, size, size, 1), tf.float32), tf.zeros((1, len(FINDINGS)), tf.float32))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    if not multi_worker:
        return  # one host, several GPUs: Keras averages the local replicas' scalar logs itself
    # Then each step's logs are averaged across workers with
    # strategy.reduce("MEAN", value, axis=0), which fails on scalars ("Invalid
    # reduction dimension 0 for input with 0 dimensions", tensorflow/tensorflow
    # issue 72388): give it shape (1,) values, averaged back to scalars.
    train_step = model.train_step

    def step_with_vector_logs(data):
        return {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}

    model.train_step = step_with_vector_logs


def _debug_dump(folder: str, task: int, builder, model, strategy) -> None:
    """With CXR_WORKER_DEBUG_DIR set: this worker's part of the data, its first batch and final weights (tests)."""
    import tensorflow as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    workers = len(spec.get("chief", [])) + len(spec.get("worker", []))
    # The worker's own pipeline again, as distribute_datasets_from_function built it.
    context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=task,
                                         num_replicas_in_sync=int(strategy.num_replicas_in_sync))
    images, _ = next(iter(builder(context)))
    part = dict(builder.parts[task])
    part["first_batch_sums"] = [float(v) for v in tf.reduce_sum(images, axis=[1, 2, 3]).numpy()]
    (folder / f"worker-{task}.json").write_text(json.dumps(part, indent=1))
    np.savez(folder / f"worker-{task}.weights.npz", *[np.asarray(w) for w in model.get_weights()])


def use_mixed_precision(setting: str) -> bool:
    """Mixed precision only on GPUs: on CPUs float16 maths is emulated and slower."""
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if setting == "on" and not has_gpu:
        warnings.warn("mixed_precision='on' ignored: no GPU (float16 is slower on CPUs)", stacklevel=2)
    return has_gpu and setting in ("auto", "on")


def compile_model(config: TrainConfig, train_labels, steps_per_epoch: int, *, input_size: int | None = None,
                  lr_multiplier: float = 1.0):
    """Build and compile the model of ``config`` (call inside the strategy scope).

    Args:
        config: the run configuration.
        train_labels: multi-hot TRAINING labels, for the positive weights.
        steps_per_epoch: steps of one epoch, for the schedule.
        input_size: overrides ``config.input_size`` (the tuner).
        lr_multiplier: multiplies ``config.learning_rate`` (:func:`lr_scale`).
    """
    from cxr_core.learn.losses import make_loss
    from cxr_core.learn.models import build_model

    size = int(input_size or config.input_size)
    model = build_model(
        config.backbone, size, weights=config.weights, dropout=config.dropout, bn_momentum=config.bn_momentum,
        preprocess=dataclasses.replace(config.preprocess(), size=size), width_multiplier=config.width_multiplier,
    )
    if config.init_from:
        from cxr_core.learn.pretrain import load_trunk

        load_trunk(model, config.init_from, architecture={"backbone": config.backbone, "input_size": size,
                                                          "width_multiplier": config.width_multiplier})
    if config.freeze_batchnorm:
        from cxr_core.learn.models import freeze_batchnorm

        # Before compile: the optimizer and the train step see the BatchNormalization layers frozen.
        log.info("froze %d BatchNormalization layers", freeze_batchnorm(model))
    peak = config.learning_rate * float(lr_multiplier)
    if config.lr_schedule == "cosine":
        learning_rate = WarmupCosine(peak, config.epochs * steps_per_epoch,
                                     int(round(config.warmup_epochs * steps_per_epoch)), config.min_lr_fraction)
    else:
        learning_rate = peak
    loss = make_loss(config.loss, train_labels=train_labels, label_smoothing=config.label_smoothing,
                     focal_gamma=config.focal_gamma, focal_alpha=config.focal_alpha, max_pos_weight=config.max_pos_weight)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay),
        loss=loss,
        metrics=[keras.metrics.AUC(multi_label=True, num_labels=len(FINDINGS), name="auc")],
    )
    return model


def _history_summary(log_file: Path, checkpoint: ResumableCheckpoint) -> dict:
    epochs: list[dict] = []
    if log_file.is_file():
        frame = pd.read_csv(log_file)
        epochs = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                  for row in frame.to_dict(orient="records")]
    return {
        "epochs_run": len(epochs),
        "best_epoch": checkpoint.best_epoch or None,
        "best_val_mean_auroc": checkpoint.best if np.isfinite(checkpoint.best) else None,
        "stopped_early": checkpoint.stopped,
        "seconds": round(float(sum(e.get("seconds") or 0 for e in epochs)), 1),
        "epochs": epochs,
    }


def _bundle_of(config: TrainConfig, data: TrainingData, model: keras.Model, training: dict):
    """The bundle of a finished run (model, preprocessing, data summary, provenance, explanation method)."""
    from cxr_core.bundle.format import Bundle, code_version

    if config.init_from:
        from cxr_core.learn.pretrain import read_record

        record = read_record(config.init_from)
        # What the trunk's pretraining was, so the member's cost and data are known without its folder.
        training = {**training, "pretraining": {key: record.get(key) for key in
                                                ("method", "architecture", "images", "labels_used", "seconds")}
                    | {"epochs": record.get("config", {}).get("epochs"), "final_loss": (record.get("loss") or [None])[-1]}}
    return Bundle(
        model=model,
        input_size=config.input_size,
        preprocessing=config.preprocess(),
        backbone=config.backbone,
        model_config={**config.model_args(), "weights_init": config.weights or ("simclr" if config.init_from else None)},
        data=data.summary(),
        split=data.split_info,
        splits=data.splits_table(),
        code=code_version(),
        training={"config": config.to_dict(), **training},
        extra={"explanation": {"method": config.explanation}},
    )


def train(config: TrainConfig) -> Path | None:
    """Train a model as ``config`` says and write its bundle.

    Steps: seed everything; choose the distribution strategy; read the data
    and its patient-wise split (checked disjoint); build tf.data pipelines;
    build and compile the model (or reload ``checkpoints/last.keras`` with its
    optimizer state when ``resume`` is set and a checkpoint exists); fit with
    validation mean AUROC checkpoints, early stopping, CSV and TensorBoard
    logs; reload the best weights into a float32 inference model and save the
    bundle.

    Several replicas (``TF_CONFIG`` set: MultiWorkerMirroredStrategy; or
    several GPUs): each worker reads its own part of the training images
    (:func:`make_distributed_train_dataset`), the global batch is
    ``batch_size * replicas``, the learning rate is scaled by
    :func:`lr_scale`, every worker scores the whole validation set, and
    only the chief writes the run folder (checkpoints, logs, backup,
    bundle); other workers keep their logs in ``worker-<id>-tmp/`` and remove
    it when they finish. With ``TF_CONFIG``, ``<out>/backup`` (Keras
    BackupAndRestore, written by the chief at each epoch end) lets a cluster
    restarted after a lost worker continue from the last finished epoch.

    Returns:
        the bundle folder (``<out>/bundle``); None on a worker that is not the chief.
    """
    from cxr_core.learn.models import build_model

    strategy = choose_strategy()
    keras.utils.set_random_seed(config.seed)
    out = Path(config.out)
    chief = _is_chief(strategy)
    replicas = int(strategy.num_replicas_in_sync)
    multi_worker = bool(os.environ.get("TF_CONFIG")) and getattr(strategy, "cluster_resolver", None) is not None
    task = _task_id(strategy)
    checkpoints = out / "checkpoints"  # the chief's; every worker reads it (resume), only the chief writes
    workdir = checkpoints if chief else out / f"worker-{task}-tmp"
    workdir.mkdir(parents=True, exist_ok=True)

    state_file = checkpoints / "state.json"
    state = json.loads(state_file.read_text()) if config.resume and state_file.is_file() else None
    if config.resume and state is None:
        log.warning("resume requested but %s has no checkpoint: starting from scratch", checkpoints)
    if state is not None:
        saved = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
        for key in ("backbone", "input_size", "loss", "data", "cache"):
            if key in saved and saved[key] != getattr(config, key):
                raise ValueError(f"cannot resume: the checkpoint was trained with {key}={saved[key]!r}, this run has {getattr(config, key)!r}")
    backup = out / "backup"
    restoring = multi_worker and (backup / "training_metadata.json").is_file()
    if chief:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")

    data = load_training_data(config)
    if config.train_mode in ("linear_head", "top_finetune"):
        from cxr_core.learn.pretrained_modes import train_linear_head, train_top_finetune

        mode = train_linear_head if config.train_mode == "linear_head" else train_top_finetune
        model, history = mode(config, data, out, write=chief)
        bundle = _bundle_of(config, data, model, {"history": history, "mixed_precision": False,
                                                  "replicas": replicas, "positive_weights": None})
        return _finish(bundle, config, out, workdir, chief)
    # A resumed run shuffles and augments with a new seed, not epoch 1's order again.
    seed = config.seed + (int(state["epoch"]) if state else 0)
    builder = None
    if replicas > 1:
        train_ds, steps, builder = make_distributed_train_dataset(data, config, strategy, seed=seed)
        _, val_ds, _ = make_datasets(data, config, seed=seed)
    else:
        train_ds, val_ds, steps = make_datasets(data, config, seed=seed)
    train_labels = data.split_labels("train")
    multiplier = lr_scale(config, replicas)
    log.info("training %s at %d px on %d images (%d steps/epoch of %d images: %d per replica x %d replicas; "
             "learning rate %g x %g), validating on %d", config.backbone, config.input_size, len(data.rows("train")), steps,
             config.batch_size * replicas, config.batch_size, replicas, config.learning_rate, multiplier, len(data.rows("val")))

    mixed = use_mixed_precision(config.mixed_precision)
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        with strategy.scope():
            if state is not None and not restoring:
                model = keras.models.load_model(checkpoints / "last.keras")
                initial_epoch = int(state["epoch"])
                log.info("resuming from epoch %d (optimizer step %d)", initial_epoch, int(model.optimizer.iterations.numpy()))
            else:
                model = compile_model(config, train_labels, steps, lr_multiplier=multiplier)
                initial_epoch = 0
        if builder is not None:
            _synchronize_batch_norm(model)
            _build_before_fit(model, strategy, config.input_size, multi_worker=multi_worker)
        if restoring and state is None and state_file.is_file():
            state = json.loads(state_file.read_text())  # best score and patience continue with the backup
        checkpoint = ResumableCheckpoint(checkpoints, patience=config.early_stopping_patience, state=state, write=chief)
        callbacks = [ValidationAUROC(val_ds, data.split_labels("val"), loss=model.loss, local=replicas > 1), EpochStats(),
                     checkpoint, keras.callbacks.CSVLogger(str(workdir / "log.csv" if not chief else out / "log.csv"),
                                                           append=state is not None or restoring)]
        if multi_worker:
            callbacks.append(ChiefBackupAndRestore(backup, write=chief))
        if config.tensorboard and chief:
            if importlib.util.find_spec("tensorboard") is None:
                # tensorflow-cpu 2.21 does not pull the tensorboard package in;
                # tf.summary then fails at the first epoch end, so skip cleanly.
                log.warning("TensorBoard logs skipped: the tensorboard package is not installed (pip install tensorboard)")
            else:
                callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, update_freq="epoch"))
        if state is not None and not restoring and (state.get("stopped") or initial_epoch >= config.epochs):
            log.info("the checkpoint has already finished (epoch %d, stopped early: %s)", initial_epoch, state.get("stopped"))
        else:
            model.fit(train_ds, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=config.verbose, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if os.environ.get(DEBUG_DIR_ENV) and builder is not None:
        _debug_dump(os.environ[DEBUG_DIR_ENV], task, builder, model, strategy)

    # Inference model: float32 whatever the training policy, no optimizer,
    # holding the best validation weights (the last ones if no epoch scored).
    inference = build_model(**config.model_args(), preprocess=config.preprocess())
    best = checkpoints / "best.weights.h5"
    if chief and best.is_file():
        model.load_weights(best)
    inference.set_weights(model.get_weights())
    bundle = _bundle_of(config, data, inference, {
        "history": _history_summary(out / "log.csv", checkpoint), "mixed_precision": mixed,
        "replicas": replicas, "global_batch": config.batch_size * replicas,
        "learning_rate": {"configured": config.learning_rate, "scaling": config.lr_scaling, "multiplier": multiplier},
        "positive_weights": getattr(model.loss, "pos_weight", None)})
    return _finish(bundle, config, out, workdir, chief)


def _finish(bundle, config: TrainConfig, out: Path, workdir: Path, chief: bool) -> Path | None:
    """The chief saves the bundle; another worker removes its temporary folder and returns None."""
    if chief:
        return bundle.save(out / "bundle", float16=config.float16_bundle, overwrite=True)
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    return None
