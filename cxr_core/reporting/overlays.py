"""Pictures for people: window/level, heatmap colouring and blending, boxes.

Display-agnostic (numpy and OpenCV only): the Streamlit pages, the PDF report
and the command-line tools all draw with these functions, so an overlay looks
the same everywhere. Images in are the decoded ``[0, 1]`` float images of
:func:`cxr_core.data.imageio.decode_image`; pictures out are ``uint8`` RGB arrays
of shape ``(height, width, 3)``.

Boxes are ``(x, y, w, h)`` (an optional 5th value, a score, is ignored) in
the pixels of the image they are drawn on, ``x, y`` the top-left corner, as
:func:`cxr_core.evaluation.localization.heatmap_to_boxes` and the NIH box list give them.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "GROUND_TRUTH_COLOR",
    "HEATMAP_BOX_COLOR",
    "blend_heatmap",
    "colorize_heatmap",
    "draw_boxes",
    "fit_to",
    "gray_to_rgb",
    "scale_boxes",
    "window_level",
]

#: Expert (ground-truth) boxes: green.
GROUND_TRUTH_COLOR: tuple[int, int, int] = (40, 220, 40)
#: Boxes taken from a heatmap: white, visible over any colour map.
HEATMAP_BOX_COLOR: tuple[int, int, int] = (255, 255, 255)

_COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "hot": cv2.COLORMAP_HOT,
    "viridis": cv2.COLORMAP_VIRIDIS,
}


def _image(pixels, name: str = "image") -> np.ndarray:
    image = np.asarray(pixels, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"{name} must be a 2-D (height, width) array, got shape {image.shape}")
    return np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)


def window_level(pixels, level: float = 0.5, width: float = 1.0) -> np.ndarray:
    """Window/level (contrast) of a ``[0, 1]`` image, as on a PACS viewer.

    Values at ``level - width/2`` and below become black, values at
    ``level + width/2`` and above white, linear in between. ``level=0.5,
    width=1`` leaves the image as it is.

    Args:
        pixels: 2-D float image in [0, 1].
        level: centre of the window, in image units.
        width: width of the window, > 0 (small = more contrast).

    Returns:
        float32 image in [0, 1], same shape.
    """
    if not np.isfinite(width) or width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    if not np.isfinite(level):
        raise ValueError(f"window level must be finite, got {level}")
    image = _image(pixels)
    low = float(level) - float(width) / 2.0
    return np.clip((image - low) / float(width), 0.0, 1.0).astype(np.float32)


def gray_to_rgb(pixels) -> np.ndarray:
    """A ``[0, 1]`` gray image as ``uint8`` RGB (h, w, 3)."""
    image = np.clip(_image(pixels), 0.0, 1.0)
    gray = np.round(image * 255.0).astype(np.uint8)
    return np.repeat(gray[..., np.newaxis], 3, axis=2)


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if array.shape[:2] == tuple(shape):
        return array
    height, width = shape
    shrinking = array.shape[0] > height or array.shape[1] > width
    return cv2.resize(array, (int(width), int(height)), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def colorize_heatmap(heatmap, colormap: str = "jet") -> np.ndarray:
    """A heatmap in [0, 1] as a ``uint8`` RGB colour picture (low = blue, high = red for jet).

    Values outside [0, 1] are clipped; NaN counts as 0.
    """
    if colormap not in _COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(_COLORMAPS)}")
    heat = np.clip(_image(heatmap, "heatmap"), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(heat * 255.0).astype(np.uint8), _COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def blend_heatmap(
    pixels,
    heatmap,
    *,
    alpha: float = 0.4,
    level: float = 0.5,
    width: float = 1.0,
    colormap: str = "jet",
    weighted: bool = True,
) -> np.ndarray:
    """The image (windowed) with a coloured heatmap blended over it.

    Args:
        pixels: 2-D image in [0, 1].
        heatmap: 2-D map in [0, 1]; resized to the image if its size differs.
        alpha: opacity of the heatmap, 0 (image only) to 1.
        level, width: window of the image (see :func:`window_level`).
        colormap: ``"jet"``, ``"turbo"``, ``"inferno"``, ``"hot"`` or ``"viridis"``.
        weighted: scale the opacity by the map's value, so unactivated areas
            show the image untinted; ``False`` blends uniformly.

    Returns:
        ``uint8`` RGB (h, w, 3) at the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = window_level(pixels, level, width)
    heat = np.clip(_resize(_image(heatmap, "heatmap"), image.shape), 0.0, 1.0)
    base = gray_to_rgb(image).astype(np.float32)
    colour = colorize_heatmap(heat, colormap).astype(np.float32)
    weight = alpha * (np.sqrt(heat) if weighted else np.ones_like(heat))
    out = base * (1.0 - weight[..., np.newaxis]) + colour * weight[..., np.newaxis]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def scale_boxes(boxes: Sequence[Sequence[float]], scale_x: float, scale_y: float | None = None) -> list[tuple[float, ...]]:
    """Boxes scaled to a resized image (a 5th value, the score, is kept as is)."""
    scale_y = scale_x if scale_y is None else scale_y
    scaled = []
    for box in boxes:
        x, y, w, h, *rest = (float(v) for v in box)
        scaled.append((x * scale_x, y * scale_y, w * scale_x, h * scale_y, *rest))
    return scaled


def fit_to(pixels, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink a 2-D image (or map) so its longer side is at most ``max_side``.

    Returns:
        ``(image, scale)``: the image (unchanged if already small enough) and
        the factor applied, to scale boxes with :func:`scale_boxes`.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    image = _image(pixels)
    height, width = image.shape
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return image, 1.0
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    return _resize(image, shape), scale


def draw_boxes(
    rgb,
    boxes: Sequence[Sequence[float]],
    *,
    labels: Sequence[str] | None = None,
    color: tuple[int, int, int] = GROUND_TRUTH_COLOR,
    thickness: int | None = None,
    dashed: bool = False,
) -> np.ndarray:
    """Draw boxes (and a label above each) on a copy of an RGB picture.

    Args:
        rgb: ``uint8`` (h, w, 3) picture, e.g. from :func:`blend_heatmap`; a
            2-D [0, 1] image is converted with :func:`gray_to_rgb` first.
        boxes: ``(x, y, w, h[, score])`` in the picture's pixels; boxes are
            clipped to the picture, boxes entirely outside are skipped.
        labels: one text per box (or None for none).
        color: RGB colour.
        thickness: line width in pixels; default scales with the picture.
        dashed: draw dashed outlines (to tell two box sets apart without colour).

    Returns:
        a new ``uint8`` RGB array; the input is not modified.
    """
    picture = np.asarray(rgb)
    if picture.ndim == 2:
        picture = gray_to_rgb(picture)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"rgb must be (height, width, 3), got shape {picture.shape}")
    out = np.ascontiguousarray(picture.astype(np.uint8, copy=True))
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    height, width = out.shape[:2]
    side = max(height, width)
    line = thickness if thickness is not None else max(1, round(side / 300))
    font_scale = max(0.35, side / 1400)
    colour = tuple(int(c) for c in color)
    for i, box in enumerate(boxes):
        x, y, w, h = (float(v) for v in tuple(box)[:4])
        if not np.isfinite([x, y, w, h]).all() or w < 0 or h < 0:
            raise ValueError(f"box {i} must have finite coordinates and non-negative size, got {box!r}")
        x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
        x1, y1 = min(width - 1, int(round(x + w))), min(height - 1, int(round(y + h)))
        if x1 < x0 or y1 < y0:
            continue
        if dashed:
            _dashed_rectangle(out, (x0, y0), (x1, y1), colour, line)
        else:
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, line)
        if labels is not None and labels[i]:
            text = str(labels[i])
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            top = y0 - th - base - 2 if y0 - th - base - 2 >= 0 else min(y1 + 1, height - th - base - 1)
            top = max(0, top)
            cv2.rectangle(out, (x0, top), (min(width - 1, x0 + tw + 4), top + th + base + 2), colour, -1)
            ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
            cv2.putText(out, text, (x0 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, 1, cv2.LINE_AA)
    return out


def _dashed_rectangle(image: np.ndarray, p0, p1, colour, thickness: int) -> None:
    dash = max(4, 4 * thickness)
    (x0, y0), (x1, y1) = p0, p1
    for start in range(x0, x1 + 1, 2 * dash):
        end = min(start + dash, x1)
        cv2.line(image, (start, y0), (end, y0), colour, thickness)
        cv2.line(image, (start, y1), (end, y1), colour, thickness)
    for start in range(y0, y1 + 1, 2 * dash):
        end = min(start + dash, y1)
        cv2.line(image, (x0, start), (x0, end), colour, thickness)
        cv2.line(image, (x1, start), (x1, end), colour, thickness)
