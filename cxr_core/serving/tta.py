"""Test-time augmentation: a member scores several views of each image and averages their logits.

The views are the image itself and five crops of it (four corners and the
centre), each keeping 176/192 of the side (84% of the area) and resized back
to the model's input size. There is no horizontal flip: laterality carries
meaning on a chest film. On the GPU exploration of issue 11
(``docs/evidence/experiments.md``) these six views raised the validation mean AUROC of
11 of 12 from-scratch models, by +0.009 on average, scoring the same
checkpoint, at six forward passes per image.

Only the scores use the views. Heatmaps and the learned input check keep the
full image's features: a map is drawn over the image the user sees.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["CROP_FRACTION", "crop_views", "with_views", "mean_over_views"]

#: Side of each crop as a fraction of the image's side (176 of 192 px in the exploration).
CROP_FRACTION = 176 / 192


def crop_views(batch: np.ndarray) -> np.ndarray:
    """The five crops of each image, resized back to the input size.

    Args:
        batch: float32 (n, S, S, 1), already normalised (resizing is linear,
            so it commutes with the normalisation).

    Returns:
        float32 (5 * n, S, S, 1): all images' top-left crops, then top-right,
        bottom-left, bottom-right and centre.
    """
    batch = np.asarray(batch, dtype=np.float32)
    side = batch.shape[1]
    crop = int(round(side * CROP_FRACTION))
    corners = (0, side - crop)
    centre = (side - crop) // 2
    offsets = [(y, x) for y in corners for x in corners] + [(centre, centre)]
    views = [cv2.resize(image[y:y + crop, x:x + crop, 0], (side, side), interpolation=cv2.INTER_LINEAR)
             for y, x in offsets for image in batch]
    return np.stack(views)[..., np.newaxis].astype(np.float32)


def with_views(batch: np.ndarray, tta_views: int) -> np.ndarray:
    """The images, then (with ``tta_views`` 6) their five crops (:func:`crop_views`): one batch for one forward pass.

    Args:
        batch: float32 (n, S, S, 1), normalised.
        tta_views: 1 (the images alone) or 6.

    Returns:
        (n, S, S, 1) or (6 * n, S, S, 1); the first n rows are the images.
    """
    return batch if tta_views == 1 else np.concatenate([batch, crop_views(batch)])


def mean_over_views(full_view_logits: np.ndarray, crop_logits: np.ndarray) -> np.ndarray:
    """Average the full image's logits (n, k) with its five crops' (5 * n, k, in :func:`crop_views` order)."""
    n = full_view_logits.shape[0]
    stacked = np.concatenate([full_view_logits[np.newaxis], crop_logits.reshape(5, n, -1)])
    return stacked.mean(axis=0)
