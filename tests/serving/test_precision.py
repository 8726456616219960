"""bfloat16 trunks: chosen per backbone and CPU, same layers and weights, outputs within a measured margin."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cxr_core.serving import Predictor
from cxr_core.serving.precision import (
    check_compute_mode,
    cpu_has_native_bfloat16,
    member_compute_dtype,
    with_bfloat16_trunk,
)
from tests.conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "default"

# Synthetic /proc/cpuinfo excerpts (named so): the flags line is all that is read.
AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"
OLD_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    (tmp_path / "amx").write_text(AMX_CPUINFO)
    (tmp_path / "old").write_text(OLD_CPUINFO)
    assert cpu_has_native_bfloat16(tmp_path / "amx") is True
    assert cpu_has_native_bfloat16(tmp_path / "old") is False
    assert cpu_has_native_bfloat16(tmp_path / "absent") is False  # not Linux: float32


def test_member_dtype_by_mode_backbone_and_cpu():
    assert member_compute_dtype("auto", "vgg16", native_bfloat16=True) == "bfloat16"
    assert member_compute_dtype("auto", "vgg16", native_bfloat16=False) == "float32"  # emulated bfloat16 is slower
    assert member_compute_dtype("auto", "mobilenetv2", native_bfloat16=True) == "float32"  # measured slower in bfloat16
    assert member_compute_dtype("bfloat16", "vgg16", native_bfloat16=False) == "bfloat16"
    assert member_compute_dtype("bfloat16", "mobilenetv2") == "float32"
    assert member_compute_dtype("float32", "vgg16", native_bfloat16=True) == "float32"
    with pytest.raises(ValueError, match="choose one of float32, bfloat16, auto"):
        check_compute_mode("fp16")


def test_bfloat16_trunk_keeps_layers_weights_and_a_float32_head():
    from cxr_core.learn import build_model

    model = build_model("small_cnn", 64, weights=None)
    copy = with_bfloat16_trunk(model)
    assert [layer.name for layer in copy.layers] == [layer.name for layer in model.layers]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), copy.get_weights()))
    before = copy.layers[[layer.name for layer in copy.layers].index("features") - 1]
    assert before.compute_dtype == "bfloat16" and copy.get_layer("features").compute_dtype == "float32"
    assert copy.get_layer("features").output.dtype == "float32"  # float32 maps for Grad-CAM++ and NumPy
    assert copy.get_layer("logits").compute_dtype == "float32"
    assert copy.outputs[0].dtype == "float32"
    x = np.random.default_rng(0).random((2, 64, 64, 1), np.float32)
    assert np.allclose(copy(x), model(x), atol=0.02)
    assert before.name != "image" and model.get_layer(before.name).compute_dtype == "float32"  # the original is untouched
    with pytest.raises(ValueError, match="no layer 'nope'"):
        with_bfloat16_trunk(model, features_layer="nope")
    from cxr_core.data import PreprocessConfig
    from cxr_core.serving import Member

    with pytest.raises(ValueError, match="compute_dtype must be one of float32, bfloat16, got 'float16'"):
        Member(model=model, preprocess=PreprocessConfig(size=64), compute_dtype="float16")


@pytest.fixture(scope="module")
def shipped_pair():
    return Predictor.from_bundle(SHIPPED), Predictor.from_bundle(SHIPPED, compute="bfloat16")


def test_shipped_bundle_in_bfloat16_stays_close_on_real_images(shipped_pair, demo_root):
    reference, fast = shipped_pair
    assert set(reference.compute_dtypes.values()) == {"float32"}
    # Only the VGG16 member computes in bfloat16; the MobileNetV2 members stay float32.
    backbones = [m["backbone"] for m in reference.metadata["members"]]
    assert [d == "bfloat16" for d in fast.compute_dtypes.values()] == [b == "vgg16" for b in backbones]
    for image in sorted((demo_root / "images").glob("*.png"))[:3]:
        a, b = reference.analyze(image), fast.analyze(image)
        # The margin benchmarks/bfloat16.py measured over the validation split, with room.
        assert max(abs(a.probabilities[f] - b.probabilities[f]) for f in a.probabilities) < 0.02
        assert max(float(np.abs(a.heatmaps[f] - b.heatmaps[f]).max()) for f in a.heatmaps) < 0.08
        assert a.ranked[0] == b.ranked[0]


def test_auto_falls_back_to_float32_without_native_bfloat16(monkeypatch):
    import cxr_core.serving.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda *args: False)
    assert set(Predictor.from_bundle(SHIPPED, compute="auto").compute_dtypes.values()) == {"float32"}
    with pytest.raises(ValueError, match="unknown compute mode"):
        Predictor.from_bundle(SHIPPED, compute="half")
    assert keras.mixed_precision.dtype_policy().name == "float32"  # nothing global was changed
