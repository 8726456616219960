"""Simple rules that say an image may not be a frontal chest X-ray (warnings, never refusals).

    rule_warnings(decoded.pixels, decoded.original_shape)   # [] for an ordinary chest film

Each rule is a pure function of the decoded image and gives one plain-language
sentence. They catch what needs no model: an image too small to hold a chest
film's detail, a shape no chest film has, an image with (almost) nothing in it.
The learned check (features far from the training images',
:mod:`cxr_core.screening.ood`) catches the rest.
"""

from __future__ import annotations

import numpy as np

#: Chest films are stored at 1,024 px or more; NIH's smallest resized copies here are 320 px.
MIN_SHORT_SIDE = 256
#: Width / height of a chest film: detector plates are 14 x 17 in (0.82) or 17 x 14 (1.21), 14 x 14 square.
ASPECT_RANGE = (0.6, 1.7)
#: Below this standard deviation (pixels in [0, 1]) or this 1st-99th percentile spread, the image is nearly uniform.
CONSTANT_STD = 0.02
CONSTANT_SPREAD = 0.05

TOO_SMALL = (
    "This image is only {width} × {height} px; chest X-rays are at least {minimum} px on each side. "
    "It may be a thumbnail or not a chest X-ray: read the results with care."
)
ODD_SHAPE = (
    "This image's shape ({width} × {height} px, width/height {ratio:.2f}) is unlike a chest film's "
    "(between {low} and {high}). It may be cropped, a strip or not a chest X-ray: read the results with care."
)
NEAR_CONSTANT = (
    "This image is nearly uniform (almost no contrast), unlike the chest X-rays the model was trained on: there is "
    "little or nothing for the model to read. Check that the right file was chosen; the results are not meaningful."
)


def size_warning(shape: tuple[int, int], minimum: int = MIN_SHORT_SIDE) -> str | None:
    """A warning when the shorter side of ``(height, width)`` is under ``minimum`` pixels."""
    height, width = int(shape[0]), int(shape[1])
    if min(height, width) < minimum:
        return TOO_SMALL.format(width=width, height=height, minimum=minimum)
    return None


def aspect_warning(shape: tuple[int, int], allowed: tuple[float, float] = ASPECT_RANGE) -> str | None:
    """A warning when width / height of ``(height, width)`` is outside ``allowed``."""
    height, width = int(shape[0]), int(shape[1])
    ratio = width / max(height, 1)
    if not allowed[0] <= ratio <= allowed[1]:
        return ODD_SHAPE.format(width=width, height=height, ratio=ratio, low=allowed[0], high=allowed[1])
    return None


def constant_warning(pixels: np.ndarray, *, max_std: float = CONSTANT_STD, max_spread: float = CONSTANT_SPREAD) -> str | None:
    """A warning when a [0, 1] image is nearly uniform (tiny standard deviation or 1st-99th percentile spread)."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.size == 0:
        return NEAR_CONSTANT
    if x.size > 1_000_000:  # a regular subsample is plenty for two statistics
        step = int(np.ceil(np.sqrt(x.size / 1_000_000)))
        x = x[::step, ::step] if x.ndim == 2 else x.reshape(-1)[:: step * step]
    low, high = np.percentile(x, [1, 99])
    if float(x.std()) < max_std or float(high - low) < max_spread:
        return NEAR_CONSTANT
    return None


def rule_warnings(pixels: np.ndarray, shape: tuple[int, int] | None = None) -> list[str]:
    """Every rule's warning for a decoded [0, 1] image (empty for an ordinary chest film).

    Args:
        pixels: the decoded 2-D image.
        shape: ``(height, width)`` of the image as stored (``DecodedImage.original_shape``);
            default: ``pixels.shape``.
    """
    shape = tuple(pixels.shape[:2]) if shape is None else tuple(shape)[:2]
    notes = [size_warning(shape), aspect_warning(shape), constant_warning(pixels)]
    return [n for n in notes if n]
