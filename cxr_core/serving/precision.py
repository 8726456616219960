"""Serving a trunk in bfloat16 where the CPU computes it natively, and nowhere else.

Recent x86 server CPUs (Intel AMX or AVX512-BF16) multiply bfloat16 matrices
several times faster than float32, and TensorFlow's oneDNN kernels use them
when a layer computes in bfloat16. What that buys depends on the network:
measured on the 2-core development machine (AMX), one analysis of the
HED-VGG16 member took 0.13 s in bfloat16 against 0.46 s in float32 (3.6x),
while a MobileNetV2 member got SLOWER (0.22 s against 0.13 s): its depthwise
convolutions have no bfloat16 fast path there. So bfloat16 is chosen per
member, by backbone, from that measurement (:data:`BFLOAT16_BACKBONES`), and
only on a CPU that has the instructions; without them bfloat16 is emulated
and far slower, so ``"auto"`` keeps float32.

Only the trunk (the layers before the ``"features"`` layer) computes in bfloat16, with
its weights kept in float32 (Keras's ``mixed_bfloat16`` policy); the head
after it (pooling, logits) and Grad-CAM++ stay float32. Probabilities
therefore move by a few thousandths against float32:
``python -m benchmarks.bfloat16`` measures by how much on the validation
split (mean AUROC, calibrated probabilities, calls at the operating
thresholds, expert-box hits) and writes ``benchmarks/BFLOAT16_RESULTS.md``.
Evaluation (``training.evaluate``) keeps float32, the reference every
published number comes from; the app serves ``"auto"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cxr_core.bundle import layer_names

if TYPE_CHECKING:
    import keras


#: How a Predictor computes: ``"float32"`` everywhere, ``"bfloat16"`` trunks where
#: the backbone gains from it, or ``"auto"``: bfloat16 only on a CPU that has it natively.
COMPUTE_MODES = ("float32", "bfloat16", "auto")

#: What one member's trunk computes in (:func:`member_compute_dtype` picks one).
COMPUTE_DTYPES = ("float32", "bfloat16")

#: Backbones measured faster with a bfloat16 trunk on an AMX CPU (see the module docstring).
BFLOAT16_BACKBONES = frozenset({"vgg16"})

#: /proc/cpuinfo flags of native bfloat16 arithmetic (Intel AMX, AVX512-BF16).
_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def check_compute_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`COMPUTE_MODES`; else ValueError with the choices."""
    if mode not in COMPUTE_MODES:
        raise ValueError(f"unknown compute mode {mode!r}; choose one of {', '.join(COMPUTE_MODES)}")
    return mode


def cpu_has_native_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises native bfloat16 arithmetic (Linux ``/proc/cpuinfo`` flags).

    Args:
        cpuinfo: the file to read; where it cannot be read (not Linux), False.
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return bool(_BF16_CPU_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def member_compute_dtype(mode: str, backbone: str, *, native_bfloat16: bool | None = None) -> str:
    """The dtype a member's trunk computes in: ``"float32"`` or ``"bfloat16"``.

    Args:
        mode: one of :data:`COMPUTE_MODES`.
        backbone: the member's backbone name (its bundle's ``"backbone"``).
        native_bfloat16: whether the CPU computes bfloat16 natively; None reads
            :func:`cpu_has_native_bfloat16` (only ``"auto"`` asks).
    """
    check_compute_mode(mode)
    if mode == "float32" or backbone not in BFLOAT16_BACKBONES:
        return "float32"
    if mode == "bfloat16":
        return "bfloat16"
    native = cpu_has_native_bfloat16() if native_bfloat16 is None else native_bfloat16
    return "bfloat16" if native else "float32"


def with_bfloat16_trunk(model: keras.Model, *, features_layer: str = layer_names.FEATURES) -> keras.Model:
    """A copy of ``model`` whose layers before ``features_layer`` compute in bfloat16.

    The copy has the same layer names, the same (float32) weights and the same
    outputs; ``features_layer`` and the layers after it stay float32 (the
    features are cast up on entry), so features, logits and heatmaps are
    float32 arrays and the head's arithmetic is float32.

    Args:
        model: a Functional classifier with the cxr-assist layer names.
        features_layer: the last layer that computes in bfloat16.

    Raises:
        ValueError: ``model`` has no ``features_layer``.
    """
    import keras  # here, not at the top: the LiteRT serving path reads this module without TensorFlow

    names = [layer.name for layer in model.layers]
    if features_layer not in names:
        raise ValueError(f"model {model.name!r} has no layer {features_layer!r}")
    # The features layer itself (an activation) stays float32: it hands float32
    # maps to Grad-CAM++, the pooled features to the input check, and NumPy has
    # no fast bfloat16 arithmetic (a bfloat16 map made an analysis 70 ms slower).
    trunk = set(names[: names.index(features_layer)])

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if layer.name in trunk and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
