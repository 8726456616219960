"""Tests for cxr_core.evaluation.localization: hand-computed boxes and Wang et al. 2017 scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_core.evaluation import best_iobb, heatmap_to_boxes, iobb, iou, localization_accuracy

# ---------------------------------------------------------------- IoU / IoBB


def test_iou_hand_computed():
    # Overlap [5,10) x [5,10) = 25; union 100 + 100 - 25 = 175.
    assert iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    # Touching edges do not overlap.
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0
    # Symmetric.
    assert iou((2, 3, 4, 8), (1, 1, 5, 5)) == iou((1, 1, 5, 5), (2, 3, 4, 8))


def test_iobb_divides_by_predicted_area():
    gt = (0, 0, 100, 100)
    small_inside = (10, 10, 20, 20)
    # Predicted box inside the lesion: IoBB 1 while IoU is only 400/10000.
    assert iobb(small_inside, gt) == 1.0
    assert iou(small_inside, gt) == pytest.approx(0.04)
    # Half of the predicted box (50x20 of 100x20) lies in the ground truth.
    assert iobb((50, 0, 100, 20), gt) == pytest.approx(0.5)
    # Not symmetric: the large box is mostly outside the small one.
    assert iobb(gt, small_inside) == pytest.approx(0.04)
    assert iobb((0, 0, 0, 10), gt) == 0.0


def test_boxes_with_scores_accepted_and_bad_boxes_rejected():
    assert iobb((10, 10, 20, 20, 0.9), (0, 0, 100, 100)) == 1.0
    with pytest.raises(ValueError):
        iou((0, 0, -1, 5), (0, 0, 1, 1))
    with pytest.raises(ValueError):
        iou((0, 0, 1), (0, 0, 1, 1))


def test_best_iobb_takes_the_best_prediction_or_zero():
    gt = (0, 0, 100, 100)
    assert best_iobb([(150, 150, 10, 10), (50, 0, 100, 20)], gt) == pytest.approx(0.5)
    assert best_iobb([], gt) == 0.0


# ---------------------------------------------------------------- heatmap_to_boxes


def two_blob_map() -> np.ndarray:
    """A 64x64 map: a strong blob at rows 8-15, cols 40-55, a weaker one at rows 40-55, cols 4-11."""
    heat = np.zeros((64, 64))
    heat[8:16, 40:56] = 1.0
    heat[40:56, 4:12] = 0.7
    heat[30, 30] = 0.9  # a one-pixel speckle, below min_area
    return heat


def test_two_blobs_give_two_boxes_in_map_coordinates():
    boxes = heatmap_to_boxes(two_blob_map())
    assert len(boxes) == 2
    # Strongest first: (x, y, w, h, score) with x = column, y = row.
    assert boxes[0] == pytest.approx((40, 8, 16, 8, 1.0))
    assert boxes[1] == pytest.approx((4, 40, 8, 16, 0.7))


def test_boxes_scaled_to_out_shape():
    # 64x64 map onto a 1024 (rows) x 512 (cols) image: y x16, x x8.
    boxes = heatmap_to_boxes(two_blob_map(), out_shape=(1024, 512))
    assert boxes[0] == pytest.approx((320, 128, 128, 128, 1.0))
    assert boxes[1] == pytest.approx((32, 640, 64, 256, 0.7))
    full = heatmap_to_boxes(np.ones((7, 7)), out_shape=(1024, 1024))
    assert full == [pytest.approx((0, 0, 1024, 1024, 1.0))]


def test_threshold_and_limits():
    heat = two_blob_map()
    # Relative threshold 0.8 of the max keeps only the strong blob.
    assert len(heatmap_to_boxes(heat, threshold=0.8)) == 1
    # Without the area filter the speckle (0.9) ranks between the blobs.
    boxes = heatmap_to_boxes(heat, min_area_fraction=0.0)
    assert [b[4] for b in boxes] == pytest.approx([1.0, 0.9, 0.7])
    assert len(heatmap_to_boxes(heat, max_boxes=1)) == 1
    # The threshold is relative: scaling the map changes nothing but scores.
    scaled = heatmap_to_boxes(heat * 0.01)
    assert [b[:4] for b in scaled] == [b[:4] for b in heatmap_to_boxes(heat)]


def test_blank_or_bad_maps():
    assert heatmap_to_boxes(np.zeros((14, 14))) == []
    assert heatmap_to_boxes(np.full((14, 14), np.nan)) == []
    with pytest.raises(ValueError, match="2-D"):
        heatmap_to_boxes(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="threshold"):
        heatmap_to_boxes(np.ones((4, 4)), threshold=0)


def test_boxes_round_trip_into_iobb():
    heat = two_blob_map()
    boxes = heatmap_to_boxes(heat, out_shape=(1024, 1024))
    # Ground truth drawn around the strong blob in image pixels (x16).
    gt = (40 * 16, 8 * 16, 16 * 16, 8 * 16)
    assert best_iobb(boxes, gt) == pytest.approx(1.0)


# ---------------------------------------------------------------- T(IoBB)


def test_localization_accuracy_hand_made_records():
    records = [
        {"finding": "Mass", "iobb": 0.95},
        {"finding": "Mass", "iobb": 0.30},
        {"finding": "Mass", "iobb": 0.0},  # nothing predicted
        {"finding": "Mass", "iobb": 0.5},  # exactly at T counts as a hit
        {"finding": "Atelectasis", "iobb": 0.2},
        {"finding": "Infiltrate", "iobb": 0.8},  # BBox_List spelling
    ]
    table = localization_accuracy(records)
    assert list(table.index) == ["Atelectasis", "Infiltration", "Mass"]  # FINDINGS order
    assert list(table.columns) == ["n_boxes", "T(IoBB)=0.1", "T(IoBB)=0.25", "T(IoBB)=0.5", "T(IoBB)=0.75", "T(IoBB)=0.9"]
    assert table.loc["Mass"].tolist() == pytest.approx([4, 0.75, 0.75, 0.5, 0.25, 0.25])
    assert table.loc["Atelectasis"].tolist() == pytest.approx([1, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert table.loc["Infiltration"].tolist() == pytest.approx([1, 1.0, 1.0, 1.0, 1.0, 0.0])


def test_localization_accuracy_accepts_dataframe_and_custom_thresholds():
    frame = pd.DataFrame({"finding": ["Nodule", "Nodule"], "iobb": [0.4, 0.6]})
    table = localization_accuracy(frame, thresholds=(0.5,))
    assert table.loc["Nodule", "T(IoBB)=0.5"] == 0.5
    assert table.loc["Nodule", "n_boxes"] == 2


def test_localization_accuracy_rejects_bad_records():
    with pytest.raises(ValueError, match="iobb"):
        localization_accuracy([{"finding": "Mass", "iobb": float("nan")}])
    with pytest.raises(KeyError):
        localization_accuracy([{"finding": "No Finding", "iobb": 0.5}])
    assert localization_accuracy([]).empty
