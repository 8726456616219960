"""Boxes from heatmaps, and the localisation scoring of Wang et al. 2017.

NIH ships radiologist boxes (``BBox_List_2017.csv``) for 8 findings on 880
images, in original image pixels (1024 x 1024) as ``(x, y, w, h)``. A
class-activation map is much coarser (e.g. 7 x 7 or 14 x 14, upsampled), so
boxes are taken from the map and scaled to the image with ``out_shape``.

Scoring follows Wang et al. 2017 ("ChestX-ray8", Table 3): a ground-truth box
is correctly localised at threshold T when some predicted box for the same
finding on the same image has IoBB >= T, where IoBB is the intersection over
the *predicted* box area (which rewards a tight box inside a large lesion).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from cxr_core.findings import FINDING_INDEX, canonical_finding

__all__ = [
    "IOBB_THRESHOLDS",
    "heatmap_to_boxes",
    "iou",
    "iobb",
    "best_iobb",
    "best_iou_each",
    "localization_accuracy",
]

#: The T(IoBB) thresholds reported by Wang et al. 2017.
IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)

Box = tuple[float, float, float, float]


def heatmap_to_boxes(
    heatmap,
    *,
    threshold: float = 0.5,
    min_area_fraction: float = 0.005,
    max_boxes: int = 3,
    out_shape: tuple[int, int] | None = None,
) -> list[tuple[float, float, float, float, float]]:
    """Boxes around the strongly activated regions of a heatmap.

    The map is thresholded at ``threshold * max(heatmap)``, split into
    8-connected components, components smaller than ``min_area_fraction`` of
    the map are dropped (speckle, not a lesion), and each remaining
    component's bounding box is returned.

    Args:
        heatmap: activation map, shape (height, width). Non-finite values
            count as no activation.
        threshold: fraction of the map maximum, in (0, 1].
        min_area_fraction: smallest component kept, as a fraction of the
            map's pixels.
        max_boxes: at most this many boxes are returned.
        out_shape: ``(height, width)`` of the image the boxes are for (e.g.
            the original 1024 x 1024 film); defaults to the map's shape.

    Returns:
        List of ``(x, y, w, h, score)`` floats in ``out_shape`` pixels, ``x, y``
        the top-left corner, ``score`` the component's peak activation
        (in heatmap units). Strongest first (ties: largest first). Empty when
        the map has no positive activation.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if min_area_fraction < 0:
        raise ValueError(f"min_area_fraction must be >= 0, got {min_area_fraction}")
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be at least 1, got {max_boxes}")
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim == 3 and heat.shape[-1] == 1:
        heat = heat[..., 0]
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be 2-D (height, width), got shape {heat.shape}")
    heat = np.where(np.isfinite(heat), heat, -np.inf)
    peak = heat.max()
    # A map that is nowhere positive (blank Grad-CAM) points at nothing.
    if not np.isfinite(peak) or peak <= 0:
        return []
    height, width = heat.shape
    out_h, out_w = (height, width) if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_shape must be positive, got {out_shape}")
    scale_x, scale_y = out_w / width, out_h / height

    mask = (heat >= threshold * peak).astype(np.uint8)
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = min_area_fraction * height * width
    candidates = []
    for label in range(1, n_labels):  # label 0 is the background
        left, top, w, h, area = (int(v) for v in stats[label])
        if area < min_area:
            continue
        score = float(heat[labels == label].max())
        candidates.append((score, area, left, top, w, h))
    candidates.sort(key=lambda c: (-c[0], -c[1]))
    # Pixel (i, j) covers [j, j+1) x [i, i+1), so edges scale by the same
    # factor as sizes and a full-map box maps to the full image.
    return [
        (left * scale_x, top * scale_y, w * scale_x, h * scale_y, score)
        for score, _area, left, top, w, h in candidates[:max_boxes]
    ]


def _box(box: Sequence[float], name: str) -> Box:
    values = tuple(float(v) for v in box)
    # A 5th element is allowed so heatmap_to_boxes output can be passed as is.
    if len(values) not in (4, 5):
        raise ValueError(f"{name} must be (x, y, w, h) or (x, y, w, h, score), got {box!r}")
    x, y, w, h = values[:4]
    if w < 0 or h < 0 or not np.isfinite(values[:4]).all():
        raise ValueError(f"{name} must have finite coordinates and non-negative size, got {box!r}")
    return x, y, w, h


def _intersection(a: Box, b: Box) -> float:
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0.0) * max(dy, 0.0)


def iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes, in [0, 1].

    Two empty boxes have IoU 0.
    """
    a, b = _box(box_a, "box_a"), _box(box_b, "box_b")
    inter = _intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def iobb(pred_box: Sequence[float], gt_box: Sequence[float]) -> float:
    """Intersection over the predicted box's area (Wang et al. 2017), in [0, 1].

    Boxes are ``(x, y, w, h)``. An empty predicted box has IoBB 0.
    """
    pred, gt = _box(pred_box, "pred_box"), _box(gt_box, "gt_box")
    area = pred[2] * pred[3]
    return _intersection(pred, gt) / area if area > 0 else 0.0


def best_iobb(pred_boxes: Iterable[Sequence[float]], gt_box: Sequence[float]) -> float:
    """Largest IoBB of any predicted box with one ground-truth box; 0 if none.

    Pass only the predicted boxes for the ground truth's finding on the same
    image; the result is the ``iobb`` of one :func:`localization_accuracy` record.
    """
    return max((iobb(p, gt_box) for p in pred_boxes), default=0.0)


def best_iou_each(pred_boxes: Iterable[Sequence[float]], gt_boxes: Iterable[Sequence[float]]) -> list[float]:
    """For each predicted box, its largest IoU with any ground-truth box (0 without one), in the predicted boxes' order.

    How the heatmap boxes of one finding on one film match the expert boxes of that finding (the Browse page labels
    each heatmap box with it). Boxes are ``(x, y, w, h)``, a 5th element (a score) allowed.
    """
    gt = list(gt_boxes)
    return [max((iou(p, g) for g in gt), default=0.0) for p in pred_boxes]


def localization_accuracy(
    records: Iterable[Mapping] | pd.DataFrame,
    *,
    thresholds: Sequence[float] = IOBB_THRESHOLDS,
) -> pd.DataFrame:
    """T(IoBB) localisation accuracy per finding (Wang et al. 2017, Table 3).

    Args:
        records: one record per ground-truth box, with keys (or DataFrame
            columns) ``finding`` (any NIH spelling, e.g. "Infiltrate") and
            ``iobb``: the best IoBB over the predicted boxes for that finding
            on that image (:func:`best_iobb`), 0 when none was predicted.
        thresholds: the T values, each in (0, 1].

    Returns:
        DataFrame indexed by finding (those present, in FINDINGS order) with
        column ``n_boxes`` and one column ``"T(IoBB)=<t>"`` per threshold
        (e.g. ``"T(IoBB)=0.25"``) holding the fraction of that finding's
        boxes with ``iobb >= t``.
    """
    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not 0 < t <= 1 for t in thresholds):
        raise ValueError(f"thresholds must be in (0, 1], got {thresholds}")
    columns = ["n_boxes", *(f"T(IoBB)={t:g}" for t in thresholds)]
    if frame.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="finding"))
    missing = {"finding", "iobb"} - set(frame.columns)
    if missing:
        raise ValueError(f"records lack {sorted(missing)}")
    findings = frame["finding"].map(canonical_finding)
    values = pd.to_numeric(frame["iobb"], errors="coerce").to_numpy(dtype=float)
    # NaN would silently count as a miss; a box with no prediction must say 0.
    if np.isnan(values).any() or (values < 0).any() or (values > 1 + 1e-9).any():
        raise ValueError("iobb must be in [0, 1] for every record (0 where nothing was predicted)")
    hits = pd.DataFrame({f"T(IoBB)={t:g}": values >= t for t in thresholds})
    hits["finding"] = findings.to_numpy()
    grouped = hits.groupby("finding", sort=False)
    table = grouped.mean()
    table.insert(0, "n_boxes", grouped.size())
    table = table.loc[sorted(table.index, key=FINDING_INDEX.__getitem__)]
    table.index.name = "finding"
    return table[columns]
