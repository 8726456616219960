"""The one preprocessing: config validation and identical results on every path."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.data import (
    PreprocessConfig,
    decode_image,
    normalize,
    preprocess,
    preprocess_pixels,
    resize_to_model,
    to_model_uint8,
)
from cxr_core.errors import ImageReadError


@pytest.fixture(scope="module")
def demo_image(demo_root):
    return sorted((demo_root / "images").glob("*.png"))[0]


def test_config_round_trip_and_validation():
    config = PreprocessConfig(size=256, mean=0.49, std=0.24)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    for bad in ({"size": 8}, {"size": 224.5}, {"mean": 2.0}, {"std": 0.0}, {"std": float("nan")}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)
    with pytest.raises(ValueError, match="version"):
        PreprocessConfig.from_dict({**config.to_dict(), "version": 99})


def test_preprocess_shape_range_and_normalisation(demo_image):
    config = PreprocessConfig(size=128, mean=0.5, std=0.25)
    x = preprocess(demo_image, config)
    assert x.shape == (128, 128, 1) and x.dtype == np.float32
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6
    # Normalisation is exactly the recorded mean and std.
    raw = to_model_uint8(demo_image, 128)
    np.testing.assert_allclose(x[..., 0], (raw / 255.0 - 0.5) / 0.25, atol=1e-6)


def test_file_bytes_and_cache_paths_give_identical_inputs(demo_image):
    """What the app computes from an upload equals what training reads from its cache."""
    config = PreprocessConfig(size=96)
    from_path = preprocess(demo_image, config)
    from_bytes = preprocess(demo_image.read_bytes(), config)
    cached = to_model_uint8(demo_image, 96)  # what training.prepare stores
    from_cache = normalize(cached, config)[..., None]
    from_decoded = preprocess_pixels(decode_image(demo_image).pixels, config)
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(from_path, from_cache)
    np.testing.assert_array_equal(from_path, from_decoded)


def test_tensorflow_and_numpy_normalise_alike(demo_image):
    tf = pytest.importorskip("tensorflow")
    config = PreprocessConfig(size=64, mean=0.45, std=0.2)
    raw = to_model_uint8(demo_image, 64)
    np.testing.assert_allclose(normalize(tf.constant(raw), config).numpy(), normalize(raw, config), atol=1e-6)


def test_resize_validates_input():
    with pytest.raises(ValueError, match="2-D"):
        resize_to_model(np.zeros((10, 10, 3), np.float32), 32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resize_to_model(np.full((10, 10), 255.0, np.float32), 32)
    with pytest.raises(ValueError, match="no pixels"):
        resize_to_model(np.zeros((0, 10), np.float32), 32)
    out = resize_to_model(np.linspace(0, 1, 100 * 60, dtype=np.float32).reshape(100, 60), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8 and out[0, 0] < out[-1, -1]


def test_bad_file_raises_the_one_error_type(tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError):
        preprocess(bad, PreprocessConfig())
