"""Training augmentation settings, kept free of TensorFlow.

:class:`AugmentConfig` holds the magnitudes that
:func:`cxr_core.learn.pipeline.augment_batch` applies inside tf.data, for
supervised training and for the self-supervised views of
:mod:`cxr_core.learn.pretrain` alike. It imports nothing heavy, so the
magnitudes can be read without TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; every magnitude is multiplied by ``strength``.

    Horizontal flip is off by default: laterality carries meaning on a chest
    film (the heart is on the left; dextrocardia, left-sided effusions), and a
    flipped film is not a plausible patient.

    Attributes:
        strength: global multiplier in [0, 2]; 0 turns augmentation off.
        crop_area: at strength 1 a random crop keeps between ``1 - crop_area``
            and all of the image area before being resized to the model size.
        aspect: crop aspect ratio lies in ``[1/(1+a), 1+a]`` at strength 1.
        rotation: maximum rotation in degrees at strength 1.
        brightness: maximum brightness shift as a fraction of the 0-255 range.
        contrast: contrast factor lies in ``[1 - c, 1 + c]``.
        horizontal_flip: flip left-right with probability 0.5 (not scaled).
    """

    strength: float = 1.0
    crop_area: float = 0.25
    aspect: float = 0.1
    rotation: float = 7.0
    brightness: float = 0.1
    contrast: float = 0.15
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 2.0:
            raise ValueError(f"augmentation strength must lie in [0, 2], got {self.strength!r}")
        for name in ("crop_area", "aspect", "rotation", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.crop_area * self.strength >= 0.9:
            raise ValueError("crop_area * strength must stay below 0.9 (a crop keeps at least 10% of the image)")
        if self.contrast * self.strength >= 1.0:
            raise ValueError("contrast * strength must stay below 1")

    @property
    def enabled(self) -> bool:
        return self.horizontal_flip or (
            self.strength > 0
            and any(getattr(self, n) > 0 for n in ("crop_area", "aspect", "rotation", "brightness", "contrast"))
        )

    def to_dict(self) -> dict:
        return asdict(self)
