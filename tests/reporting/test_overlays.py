"""cxr_core.reporting.overlays: window/level, heatmap colouring and blending, boxes."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.reporting import overlays


def test_window_level_identity_and_contrast():
    image = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 101)
    np.testing.assert_allclose(overlays.window_level(image, 0.5, 1.0), image, atol=1e-6)
    narrow = overlays.window_level(image, 0.5, 0.2)
    assert narrow.dtype == np.float32 and narrow.min() == 0.0 and narrow.max() == 1.0
    assert narrow[0, 40] == 0.0 and narrow[0, 60] == 1.0 and narrow[0, 50] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="width"):
        overlays.window_level(image, 0.5, 0.0)
    with pytest.raises(ValueError, match="2-D"):
        overlays.window_level(np.zeros((2, 2, 3)), 0.5, 1.0)


def test_gray_and_heatmap_colours():
    rgb = overlays.gray_to_rgb(np.array([[0.0, 1.0]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    colour = overlays.colorize_heatmap(np.array([[0.0, 1.0]]))
    assert colour[0, 0, 2] > colour[0, 0, 0]  # jet: low is blue
    assert colour[0, 1, 0] > colour[0, 1, 2]  # high is red
    with pytest.raises(ValueError, match="colormap"):
        overlays.colorize_heatmap(np.zeros((2, 2)), "rainbow")


def test_blend_heatmap_opacity_and_resizing():
    image = np.full((40, 60), 0.5, dtype=np.float32)
    heat = np.zeros((10, 15), dtype=np.float32)
    heat[5:, 7:] = 1.0
    plain = overlays.blend_heatmap(image, heat, alpha=0.0)
    assert plain.shape == (40, 60, 3) and (plain == 128).all()
    blended = overlays.blend_heatmap(image, heat, alpha=1.0)
    assert (blended[0, 0] == 128).all()  # weighted: no activation, no tint
    red = overlays.colorize_heatmap(np.ones((1, 1)))[0, 0]
    assert blended[-1, -1].tolist() == red.tolist() and red[0] > red[2]  # full activation: the colour map alone
    uniform = overlays.blend_heatmap(image, heat, alpha=0.5, weighted=False)
    assert not (uniform[0, 0] == 128).all()
    with pytest.raises(ValueError, match="alpha"):
        overlays.blend_heatmap(image, heat, alpha=1.5)


def test_draw_boxes_copies_clips_and_labels():
    picture = np.zeros((100, 100, 3), dtype=np.uint8)
    out = overlays.draw_boxes(picture, [(10, 20, 30, 40, 0.9), (90, 90, 50, 50)], labels=["Mass", ""], color=(0, 255, 0), thickness=1)
    assert picture.sum() == 0  # input untouched
    assert (out[20, 10:41, 1] == 255).all()  # top edge of the first box
    assert out[60, 10, 1] == 255  # left edge
    assert out[99, 95, 1] == 255  # the second box is clipped to the picture
    assert out[0:20, 10:40].any()  # label drawn above the box
    dashed = overlays.draw_boxes(picture, [(10, 20, 60, 40)], dashed=True, thickness=1)
    assert 0 < (dashed[20, 10:71] > 0).all(axis=1).sum() < 61
    assert overlays.draw_boxes(picture, [(200, 200, 5, 5)]).sum() == 0  # entirely outside: skipped
    with pytest.raises(ValueError, match="labels"):
        overlays.draw_boxes(picture, [(1, 1, 2, 2)], labels=["a", "b"])
    with pytest.raises(ValueError, match="non-negative"):
        overlays.draw_boxes(picture, [(1, 1, -2, 2)])
    gray = overlays.draw_boxes(np.zeros((10, 10)), [(1, 1, 3, 3)])
    assert gray.shape == (10, 10, 3)


def test_fit_to_and_scale_boxes():
    image = np.random.default_rng(0).random((1000, 500)).astype(np.float32)
    small, scale = overlays.fit_to(image, 200)
    assert small.shape == (200, 100) and scale == pytest.approx(0.2)
    same, one = overlays.fit_to(image, 2000)
    assert same.shape == image.shape and one == 1.0
    assert overlays.scale_boxes([(10, 20, 30, 40, 0.7)], 0.5) == [(5.0, 10.0, 15.0, 20.0, 0.7)]
    assert overlays.scale_boxes([(10, 20, 30, 40)], 0.5, 2.0) == [(5.0, 40.0, 15.0, 80.0)]
