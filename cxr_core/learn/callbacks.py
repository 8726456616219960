"""Learning-rate schedule and Keras callbacks of full training: validation AUROC, epoch stats, checkpoints, backup.

Split from the engine so that it reads as the steps of a run; the tuner uses
:class:`ValidationAUROC` and :class:`EpochStats` too. :class:`WarmupCosine` is
registered under its old name (``cxr_core>WarmupCosine``), so checkpoints
saved before the split still load.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from cxr_core.findings import FINDINGS
from cxr_core.learn.selection import mean_auroc

log = logging.getLogger(__name__)

MONITOR = "val_mean_auroc"


@keras.saving.register_keras_serializable(package="cxr_core")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then cosine decay to ``peak * floor`` at ``total_steps``.

    Args:
        peak: learning rate after warm-up.
        total_steps: steps of the whole run.
        warmup_steps: steps of the linear ramp from ``peak / warmup_steps``.
        floor: final learning rate as a fraction of ``peak``.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, floor: float = 0.01) -> None:
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.floor = float(floor)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup = self.peak * ops.minimum(step + 1.0, warm) / warm
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = self.peak * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + ops.cos(math.pi * progress)))
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "floor": self.floor}


class ValidationAUROC(keras.callbacks.Callback):
    """At each epoch end, predict the validation set and log its mean AUROC.

    Adds to the epoch logs (seen by later callbacks: checkpoint, early
    stopping, CSV, TensorBoard, keras-tuner): ``val_mean_auroc``,
    ``val_loss`` (when a loss is given) and ``val_pred_std`` (spread of the
    predictions across images; near 0 means the model outputs a constant,
    the symptom of BatchNormalization statistics that never settled).
    Must come first in the callback list.

    Args:
        dataset: the validation dataset, in the order of ``labels``.
        labels: multi-hot validation labels (n, 14).
        loss: a Keras loss to report ``val_loss`` with.
    """

    def __init__(self, dataset, labels, *, loss=None, local: bool = False) -> None:
        super().__init__()
        self.dataset = dataset
        self.labels = np.asarray(labels, dtype=np.float32)
        self.loss = loss
        self.local = local
        self._forward = None
        self.per_finding: dict[str, float] = {}

    def _scores(self) -> np.ndarray:
        if not self.local:
            return np.asarray(self.model.predict(self.dataset, verbose=0))
        # Multi-worker runs: every worker scores the whole validation set with its
        # own (identical) weights, outside the strategy, so all of them take the
        # same checkpoint and early-stopping decisions without exchanging scores.
        import tensorflow as tf

        if self._forward is None:
            self._forward = tf.function(lambda x: self.model(x, training=False))
        return np.concatenate([np.asarray(self._forward(x), dtype=np.float32) for x, _ in self.dataset])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        scores = self._scores()
        if scores.shape != self.labels.shape:
            raise RuntimeError(f"validation predictions {scores.shape} do not line up with labels {self.labels.shape}")
        mean, per = mean_auroc(self.labels, scores)
        logs[MONITOR] = mean
        logs["val_pred_std"] = float(scores.std(axis=0).mean())
        if self.loss is not None:
            logs["val_loss"] = float(self.loss(self.labels, scores))
        self.per_finding = {f: float(v) for f, v in zip(FINDINGS, per)}
        if logs["val_pred_std"] < 1e-4:
            log.warning("validation predictions are (nearly) constant across images: check BatchNormalization momentum")


class EpochStats(keras.callbacks.Callback):
    """Log the learning rate and the wall time of each epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["seconds"] = round(time.perf_counter() - self._start, 2)
        lr = self.model.optimizer.learning_rate
        logs["lr"] = float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))


class ResumableCheckpoint(keras.callbacks.Callback):
    """Best-weights checkpoint, early stopping, and a resumable last checkpoint, in one state.

    Keras' ModelCheckpoint and EarlyStopping forget their best score and
    patience counter when training restarts; this callback writes them to
    ``state.json`` beside ``last.keras`` (model + optimizer), so a resumed run
    continues exactly where it stopped.

    Args:
        directory: checkpoint folder.
        patience: epochs without improvement before stopping; 0 never stops.
        state: the saved state to continue from (resume), or None.
        write: False on non-chief workers of a multi-worker run.
    """

    def __init__(self, directory: Path, *, patience: int, state: dict | None = None, write: bool = True) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.patience = int(patience)
        state = state or {}
        self.best = float(state.get("best", -math.inf) if state.get("best") is not None else -math.inf)
        self.best_epoch = int(state.get("best_epoch", 0))
        self.wait = int(state.get("wait", 0))
        self.stopped = bool(state.get("stopped", False))
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(MONITOR, float("nan"))
        improved = value is not None and np.isfinite(value) and value > self.best
        if improved:
            self.best, self.best_epoch, self.wait = float(value), epoch + 1, 0
            if self.write:
                self.model.save_weights(self.directory / "best.weights.h5")
        else:
            self.wait += 1
        if self.patience and self.wait >= self.patience:
            self.model.stop_training = True
            self.stopped = True
        if self.write:
            # Save under a temporary name and rename: an interrupted save never
            # leaves a last.keras newer or older than state.json says.
            temporary = self.directory / "last.tmp.keras"
            self.model.save(temporary)
            os.replace(temporary, self.directory / "last.keras")
            state = {"epoch": epoch + 1, "best": self.best if np.isfinite(self.best) else None,
                     "best_epoch": self.best_epoch, "wait": self.wait, "stopped": self.stopped, "monitor": MONITOR}
            (self.directory / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")



class ChiefBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore where only the chief writes the backup; every worker restores from it.

    The backup (weights, optimizer state, epoch) is written at each epoch end
    to ``<out>/backup`` by the chief; a restarted cluster, every worker reading
    that folder (it must be on storage all workers see, like the run folder),
    starts again from the last finished epoch with the same weights
    everywhere. The chief deletes it when training ends.
    """

    def __init__(self, backup_dir, *, write: bool) -> None:
        super().__init__(str(backup_dir), delete_checkpoint=write)
        self.write = write

    def on_train_begin(self, logs=None):
        restored = Path(self._training_metadata_path).is_file()
        super().on_train_begin(logs)
        if restored:
            log.info("restored from the backup in %s: continuing at epoch %d", self.backup_dir, self.model._initial_epoch + 1)

    def _save_model(self):
        if self.write:
            super()._save_model()
