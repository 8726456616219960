"""The one preprocessing shared by training, evaluation and the app.

Pipeline: :func:`cxr_core.data.imageio.decode_image` -> :func:`resize_to_model`
(area interpolation to a square, then quantised to the 8-bit grid) ->
:func:`normalize` with the mean and standard deviation the model bundle
records. The training cache stores exactly the output of
:func:`to_model_uint8`, so a cached image and an uploaded file reach the
network as identical tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from cxr_core.data.imageio import ImageSource, decode_image

PREPROCESSING_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input; stored in every model bundle.

    Attributes:
        size: side of the square model input, in pixels.
        mean: intensity mean subtracted after scaling to [0, 1].
        std: intensity standard deviation divided by after subtracting the mean.
        version: preprocessing code version, checked when a bundle loads.
    """

    size: int = 224
    mean: float = 0.5
    std: float = 0.25
    version: int = PREPROCESSING_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.size, (int, np.integer)) or not 32 <= int(self.size) <= 2048:
            raise ValueError(f"input size must be an integer between 32 and 2048, got {self.size!r}")
        if not np.isfinite(self.mean) or not 0.0 <= self.mean <= 1.0:
            raise ValueError(f"mean must lie in [0, 1], got {self.mean!r}")
        if not np.isfinite(self.std) or self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")

    def to_dict(self) -> dict:
        return {"name": "cxr-assist-gray", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        version = int(data.get("version", PREPROCESSING_VERSION))
        if version != PREPROCESSING_VERSION:
            raise ValueError(
                f"this model was trained with preprocessing version {version}, "
                f"but this code implements version {PREPROCESSING_VERSION}"
            )
        return cls(size=int(data["size"]), mean=float(data["mean"]), std=float(data["std"]), version=version)


def resize_to_model(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D [0, 1] image to ``size x size`` and quantise to 8 bits.

    The NIH images are square already (their originals were squashed to
    1024 x 1024), so a non-square upload is squashed the same way rather than
    padded. Area interpolation avoids aliasing when shrinking large films.
    Quantising to the 8-bit grid makes live inputs identical to cached ones.

    Args:
        pixels: float array (height, width) with values in [0, 1].
        size: output side in pixels.

    Returns:
        uint8 array (size, size).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    if pixels.size == 0:
        raise ValueError("the image has no pixels")
    pixels = pixels.astype(np.float32, copy=False)
    if float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0:
        raise ValueError("pixel values must lie in [0, 1]; decode the image with cxr_core.data.imageio.decode_image")
    height, width = pixels.shape
    interpolation = cv2.INTER_AREA if (height >= size and width >= size) else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (int(size), int(size)), interpolation=interpolation)
    return np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)


def to_model_uint8(source: ImageSource, size: int) -> np.ndarray:
    """Decode ``source`` and resize it: the form stored in the training cache.

    Returns:
        uint8 array (size, size).
    """
    return resize_to_model(decode_image(source).pixels, size)


def normalize(image_uint8, config: PreprocessConfig):
    """Scale 8-bit pixels to the network's input range.

    Works on NumPy arrays and TensorFlow tensors alike (plain arithmetic), so
    the tf.data pipeline and the app call this same function.

    Args:
        image_uint8: array or tensor of 8-bit values, any shape.
        config: the bundle's preprocessing configuration.

    Returns:
        float32 values ``(x / 255 - mean) / std``.
    """
    # Checked by module name so that NumPy callers never pay TensorFlow's import.
    if type(image_uint8).__module__.startswith("tensorflow"):
        import tensorflow as tf

        x = tf.cast(image_uint8, tf.float32) / 255.0
        return (x - config.mean) / config.std
    x = np.asarray(image_uint8, dtype=np.float32) / np.float32(255.0)
    return ((x - np.float32(config.mean)) / np.float32(config.std)).astype(np.float32)


def preprocess(source: ImageSource, config: PreprocessConfig) -> np.ndarray:
    """Decode, resize and normalise one image for the model.

    Args:
        source: path or bytes of a PNG, JPEG or DICOM file.
        config: the bundle's preprocessing configuration.

    Returns:
        float32 array (size, size, 1).

    Raises:
        ImageReadError: if the file cannot be used (see ``decode_image``).
    """
    return normalize(to_model_uint8(source, config.size), config)[..., np.newaxis]


def preprocess_pixels(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Same as :func:`preprocess` for an already decoded [0, 1] image."""
    return normalize(resize_to_model(pixels, config.size), config)[..., np.newaxis]
