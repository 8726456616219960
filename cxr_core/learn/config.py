"""The training configuration: :class:`TrainConfig` (loadable from TOML, flat keys) and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass

LR_SCHEDULES = ("cosine", "constant")
LR_SCALINGS = ("linear", "sqrt", "none")
#: ``full``: fit the whole network on augmented batches; ``linear_head``: keep the
#: (pretrained) trunk frozen, compute its features once, fit only the logits
#: layer on them (:mod:`cxr_core.learn.linear_head`).
TRAIN_MODES = ("full", "linear_head", "top_finetune")
MIXED_PRECISION = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Everything a training run depends on; loadable from TOML (flat keys).

    Data:
        data: NIH dataset folder (files are decoded on the fly), or
        cache: a cache made by ``python -m training.prepare`` (faster).
        out: run folder (checkpoints, logs, bundle).
        split_strategy, split_seed, split_fractions: as
            :func:`cxr_core.data.splits.make_split`; a cache must have been made
            with the same values.
        limit_per_split: use only the first N images of each split (quick runs, tests).
        decode_size: side files are decoded to before augmentation
            (default: ``input_size``; a cache decides it itself).
    Model:
        backbone, weights, input_size, width_multiplier, dropout, bn_momentum: as
            :func:`cxr_core.learn.models.build_model`.
        freeze_batchnorm: ``full`` training: every BatchNormalization layer is
            made non-trainable (:func:`cxr_core.learn.models.freeze_batchnorm`):
            its scale and offset stay fixed and it normalises with its moving
            statistics (the pretrained ones), never updating them.
        init_from: a folder written by ``python -m training.pretrain`` (a
            self-supervised trunk, :mod:`cxr_core.learn.pretrain`): the
            network starts from it instead of a random initialisation
            (``weights`` must then be none; the architecture must match).
        features_layer: backbone layer(s) whose activation is ``"features"``
            (empty: the backbone's last conv activation; several: concatenated).
        explanation: ``gradcam++`` | ``gradcam``: the heatmap method the bundle
            records for the Predictor (``gradcam`` is the class activation map
            of a GAP + Dense head, the map the box loss trains).
        preprocess_mean, preprocess_std: the normalisation stored in the bundle.
    Optimisation:
        train_mode: ``full`` | ``linear_head`` (frozen trunk, head fitted on its
            features computed once; no augmentation, no epochs) |
            ``top_finetune`` (the linear head first, then the layers above
            ``finetune_from`` trained with it for ``epochs`` at
            ``learning_rate`` over that layer's activations computed once;
            see :mod:`cxr_core.learn.top_finetune`).
        head_l2, head_steps: L2 strength and full-batch steps of the linear head.
        box_loss_weight: ``linear_head`` and ``top_finetune``: weight of the loss that pulls each
            finding's class activation map into its expert boxes, on training
            images (needs ``data``: the NIH folder with ``BBox_List_2017.csv``).
        mixup_alpha: ``linear_head`` only: mixup of the standardised pooled
            features and their targets, Beta(alpha, alpha) weights (0: off).
        feature_cache_dir: ``linear_head`` only: keep the frozen trunk's features
            there, keyed by everything they depend on, so recipes that share a
            trunk (e.g. head settings compared by ``training.experiment``) run
            it once.
        batch_size: images per replica per step; with several replicas (GPUs,
            workers) the global batch is ``batch_size * replicas``, split across them.
        epochs, steps_per_epoch: epochs to run; steps default to one pass over train.
        learning_rate, lr_schedule (``cosine``|``constant``), warmup_epochs,
        min_lr_fraction (cosine floor as a fraction of the peak), weight_decay (AdamW).
        lr_scaling: how ``learning_rate`` (set for one replica) grows with the
            replicas: ``linear`` (x replicas, Goyal et al. 2017, with the warm-up),
            ``sqrt`` or ``none``.
        loss: ``weighted_bce`` | ``focal`` | ``bce``; max_pos_weight, focal_gamma,
            focal_alpha, label_smoothing.
        augment_strength, horizontal_flip: see :class:`cxr_core.learn.pipeline.AugmentConfig`.
    Run:
        seed, early_stopping_patience (0: never stop early), resume,
        mixed_precision (``auto``: on when a GPU is present; ``on``; ``off``),
        verbose (Keras: 0 silent, 1 progress bar, 2 one line per epoch),
        float16_bundle, tensorboard (needs the ``tensorboard`` package), shuffle_buffer.
    """

    data: str | None = None
    cache: str | None = None
    out: str = "runs/train"
    split_strategy: str = "auto"
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    limit_per_split: int | None = None
    decode_size: int | None = None

    backbone: str = "mobilenetv2"
    weights: str | None = None
    input_size: int = 224
    width_multiplier: float = 1.0
    init_from: str | None = None
    dropout: float = 0.2
    bn_momentum: float = 0.9
    freeze_batchnorm: bool = False
    features_layer: tuple[str, ...] = ()
    explanation: str = "gradcam++"
    preprocess_mean: float = 0.5
    preprocess_std: float = 0.25

    train_mode: str = "full"
    head_l2: float = 0.14
    head_steps: int = 500
    box_loss_weight: float = 0.0
    finetune_from: str = ""
    mixup_alpha: float = 0.0
    feature_cache_dir: str | None = None
    batch_size: int = 16
    epochs: int = 10
    steps_per_epoch: int | None = None
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_fraction: float = 0.01
    lr_scaling: str = "linear"
    weight_decay: float = 1e-4
    loss: str = "weighted_bce"
    max_pos_weight: float = 100.0
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25
    label_smoothing: float = 0.0
    augment_strength: float = 1.0
    horizontal_flip: bool = False

    seed: int = 0
    early_stopping_patience: int = 5
    resume: bool = False
    mixed_precision: str = "auto"
    verbose: int = 1
    float16_bundle: bool = False
    tensorboard: bool = True
    shuffle_buffer: int = 2048

    def __post_init__(self) -> None:
        from cxr_core.learn.losses import LOSS_NAMES
        from cxr_core.learn.models import BACKBONES

        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if isinstance(self.features_layer, str):  # one name given as text, e.g. --set features_layer=block4_conv3
            self.features_layer = (self.features_layer,) if self.features_layer else ()
        self.features_layer = tuple(self.features_layer)
        checks = [
            (self.backbone in BACKBONES, f"backbone must be one of {sorted(BACKBONES)}"),
            (self.loss in LOSS_NAMES, f"loss must be one of {LOSS_NAMES}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.lr_scaling in LR_SCALINGS, f"lr_scaling must be one of {LR_SCALINGS}"),
            (self.train_mode in TRAIN_MODES, f"train_mode must be one of {TRAIN_MODES}"),
            (self.explanation in ("gradcam++", "gradcam"), "explanation must be gradcam++ or gradcam"),
            (self.head_l2 >= 0 and self.head_steps >= 1 and self.box_loss_weight >= 0,
             "head_l2 and box_loss_weight must be >= 0, head_steps >= 1"),
            (self.box_loss_weight == 0 or (self.train_mode in ("linear_head", "top_finetune") and self.data is not None),
             "box_loss_weight needs train_mode = \"linear_head\" or \"top_finetune\" and data (the NIH folder with "
             "its boxes), not a cache"),
            (self.mixup_alpha >= 0 and (self.mixup_alpha == 0 or self.train_mode == "linear_head"),
             "mixup_alpha must be >= 0 and is implemented for train_mode = \"linear_head\" only (mixup of the pooled features)"),
            (self.width_multiplier > 0 and (self.width_multiplier == 1.0 or self.backbone == "mobilenetv2"),
             "width_multiplier must be > 0 and differs from 1 for mobilenetv2 only"),
            (self.init_from is None or (self.weights is None and self.train_mode == "full"),
             "init_from (a self-supervised trunk) needs weights = \"none\" and train_mode = \"full\""),
            (0 <= self.label_smoothing < 1, "label_smoothing must lie in [0, 1)"),
            ((self.train_mode == "top_finetune") == bool(self.finetune_from),
             "train_mode = \"top_finetune\" needs finetune_from (the layer whose activation is cached, e.g. "
             "block4_pool), and finetune_from is only for that mode"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (self.split_strategy in ("auto", "official", "patient"), "split_strategy must be auto, official or patient"),
            (len(self.split_fractions) == 3 and math.isclose(sum(self.split_fractions), 1.0), "split_fractions must be 3 numbers summing to 1"),
            (self.batch_size >= 1 and self.epochs >= 1, "batch_size and epochs must be >= 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch must be >= 1"),
            (self.limit_per_split is None or self.limit_per_split >= 1, "limit_per_split must be >= 1"),
            (self.learning_rate > 0 and self.weight_decay >= 0, "learning_rate must be > 0, weight_decay >= 0"),
            (0 <= self.min_lr_fraction <= 1 and self.warmup_epochs >= 0, "min_lr_fraction in [0, 1], warmup_epochs >= 0"),
            (self.early_stopping_patience >= 0, "early_stopping_patience must be >= 0"),
            (self.verbose in (0, 1, 2), "verbose must be 0, 1 or 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training configuration: {message}")

    # -- loading -------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a flat dict, converting values to each field's type.

        Raises:
            ValueError: unknown keys (listed with the valid ones) or bad values.
        """
        return dataclass_from_dict(cls, values, what="configuration")

    @classmethod
    def from_toml(cls, path: str | os.PathLike | None, overrides: dict | None = None) -> "TrainConfig":
        """Read a TOML file of flat keys (tables such as ``[tune]`` are ignored), then apply ``overrides``."""
        return cls.from_dict({**read_flat_toml(path), **(overrides or {})})

    def with_overrides(self, **values) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **values})

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["split_fractions"] = list(self.split_fractions)
        data["features_layer"] = list(self.features_layer)
        return data

    def augment(self):
        from cxr_core.learn.pipeline import AugmentConfig

        return AugmentConfig(strength=self.augment_strength, horizontal_flip=self.horizontal_flip)

    def preprocess(self):
        from cxr_core.data.preprocessing import PreprocessConfig

        return PreprocessConfig(size=self.input_size, mean=self.preprocess_mean, std=self.preprocess_std)

    def model_args(self) -> dict:
        """Arguments of build_model that rebuild this run's architecture without downloading weights."""
        return {"backbone": self.backbone, "input_size": self.input_size, "rgb_stem": self.weights is not None,
                "width_multiplier": self.width_multiplier, "dropout": self.dropout, "bn_momentum": self.bn_momentum,
                "features_layer": tuple(self.features_layer) or None}


def read_flat_toml(path: str | os.PathLike | None) -> dict:
    """The top-level keys of a TOML file (tables such as ``[experiment]`` are left out); {} for no file."""
    if path is None:
        return {}
    with open(path, "rb") as handle:
        return {k: v for k, v in tomllib.load(handle).items() if not isinstance(v, dict)}


def dataclass_from_dict(cls, values: dict, *, what: str):
    """``cls(**values)`` with each value converted to its field's type (TOML and the command line give loose types).

    Args:
        cls: a dataclass whose ``__post_init__`` checks the values.
        values: flat keys.
        what: names the settings in the message about unknown keys.

    Raises:
        ValueError: unknown keys (listed with the valid ones) or bad values.
    """
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; valid keys: {', '.join(hints)}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def parse_override(text: str) -> tuple[str, object]:
    """``"key=value"`` -> (key, value), the value read as a TOML value when it is one.

    ``lr=3e-4`` gives a float, ``split_fractions=[0.8,0.1,0.1]`` a list,
    ``weights=imagenet`` the string, ``focal_alpha=none`` None.
    """
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    if raw.lower() in ("none", "null"):
        return key, None
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def _coerce(key: str, value, hint):
    """Convert ``value`` to the annotated type (TOML and CLI give ints for floats, lists for tuples)."""
    args = typing.get_args(hint)
    if type(None) in args and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        value = None  # TOML has no null; optional keys take the string "none"
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"{key} cannot be empty")
    if type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            if isinstance(value, str):  # one name for a list of names
                value = [value]
            return tuple(_coerce(key, v, args[0]) for v in value)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value
