"""The learned not-a-chest-X-ray check: how far an image is from the training images, four ways.

    fit_ood("models/default", "../shared/nih")      # cxr_core.jobs.ood_fit (python -m training.fit_ood): into the bundle
    reference = load_reference(bundle_dir, meta)    # None for a bundle without one (the check is then skipped)
    reference.check(pooled(features), inputs_uint8) # per image: the scores, thresholds, "unlike_training"

Four scores, each from what the prediction already has at hand (the
reference member's ``"features"`` output and its 8-bit input: no extra
forward pass), each modelled on the TRAINING images and thresholded on the
VALIDATION images; an image is warned when any score is beyond its threshold:

- **feature distance**: the global average of the ``"features"`` map;
- **grid distance**: the same map averaged over a 2 x 2 grid (what is in
  each quarter of the image: global pooling hardly sees where things are);
- **layout margin**: how much better the image's 16 x 16 thumbnail
  correlates with the training images' mean thumbnail upright than turned by
  90, 180 or 270 degrees (``corr(upright) - max(0, corr(turned))``; a
  Gaussian model is symmetric about its mean, so an inverted film ``1 - x``
  lands near the training features, but not near their layout);
- **scale distance**: the shape of the image's radial power spectrum (log
  power in :data:`SPECTRUM_BANDS` log-spaced frequency bands, relative to the
  total): a film cropped to a third of its side and enlarged has its ribs,
  vessels and edges two to three times larger, i.e. its power moved to lower
  frequencies (and, for a crop of a small copy, the enlargement's blur).

The three distances are Mahalanobis distances under a probabilistic PCA of
the training images' values (:class:`PPCA`: mean, top ``k`` principal
directions with their variances, one variance for everything outside them),
so values far outside the training subspace count as well as unusual values
inside it.

Thresholds (:func:`conformal_threshold`): the false-alarm budget
(``false_alarm``, default 1.2%) is split evenly over the scores, and each
score's threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest of its ``n``
validation values (for the layout margin, the same from below): a new film
from the validation films' distribution is beyond it with probability at most
``alpha`` (exchangeability; capped at the validation maximum, whose bound is
``1 / (n + 1)``). With the shipped bundle's 342 validation films and four
scores this is each score's validation maximum (0.29% each, <= 1.2% together).
No test image is used.

Stored in the bundle: ``bundle.json`` key ``"ood"`` (method, member,
thresholds, counts, the file's name) and the arrays in an ``.npz`` beside it,
named by a hash of its content, so a reader never pairs a new file with an
old threshold: the file is written first, then ``bundle.json`` (atomically),
then the file it replaced is removed. A reference fitted before the grid and
scale scores existed loads with those two skipped.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_KEY = "ood"
METHOD = "ppca-mahalanobis"
FEATURES_NOTE = "global average of the member's 'features' layer output"
GRID_NOTE = "the member's 'features' layer output averaged over a 2 x 2 grid (4 x channels values)"
FILE_PREFIX = "ood_reference"
#: The layout thumbnail's side, in pixels.
THUMB_SIDE = 16
#: The grid the feature map is pooled over (:func:`pooled`); its mean is the global average.
GRID = 2
#: Log-spaced radial frequency bands of the scale score, from 1 cycle per image to the Nyquist frequency.
SPECTRUM_BANDS = 10
#: The whole check's false-alarm budget on films like the validation films, split evenly over the scores.
FALSE_ALARM = 0.012
#: Principal directions kept: pooled features, grid features, spectrum.
COMPONENTS, GRID_COMPONENTS, SCALE_COMPONENTS = 32, 32, 4
#: How the thresholds are fitted, in words (recorded in the bundle).
THRESHOLD_RULE = ("each score's threshold is the k-th smallest of its n validation values, k = ceil((n + 1)(1 - alpha)) "
                  "capped at n (the k-th largest for the layout margin, where lower is worse), "
                  "alpha = false_alarm_budget / number of scores")
#: The scores, in the order of :meth:`FeatureReference.check`'s keys, and the key of each one's value there.
SCORES = ("feature", "grid", "layout", "scale")
SCORE_KEYS = {"feature": "feature_distance", "grid": "grid_distance", "layout": "layout_margin", "scale": "scale_distance"}

OOD_WARNING = (
    "This image does not look like the chest X-rays the model was trained on (its features, layout or scale of detail "
    "are far from theirs: it may not be a frontal chest X-ray, or it may be rotated, inverted, heavily cropped or a "
    "photograph of a film). The findings may be meaningless: read them with care."
)


@dataclass(frozen=True)
class PPCA:
    """A probabilistic PCA of vectors (n, D): their mean, ``k`` principal directions and variances, a residual variance.

    Attributes:
        mean: (D,) float32.
        components: (k, D) principal directions (rows, orthonormal up to float16 storage).
        variances: (k,) the variance along each direction.
        residual_variance: the variance assumed in every other direction.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float

    @classmethod
    def fit(cls, x: np.ndarray, components: int) -> PPCA:
        """Fitted on vectors (n, D); stored at the precision it is saved with, so scores do not change on reload."""
        mean, vt, variances, residual = fit_ppca(x, components)
        return cls(mean.astype(np.float32), vt.astype(np.float16), variances, residual)

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (n,) of vectors (n, D) under the fitted covariance."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.mean
        components = self.components.astype(np.float64)
        z = x @ components.T
        residual = x - z @ components
        d2 = (z**2 / self.variances).sum(axis=1) + (residual**2).sum(axis=1) / self.residual_variance
        return np.sqrt(d2)

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays to store, their names prefixed (``""`` for the feature score, as older files have them)."""
        return {f"{prefix}mean": self.mean.astype(np.float32), f"{prefix}components": self.components.astype(np.float16),
                f"{prefix}variances": np.asarray(self.variances, np.float64),
                f"{prefix}residual_variance": np.float64(self.residual_variance)}

    @classmethod
    def from_arrays(cls, z, prefix: str = "") -> PPCA | None:
        """Read back what :meth:`arrays` stored (None when ``z`` holds none under ``prefix``)."""
        if f"{prefix}mean" not in z:
            return None
        return cls(z[f"{prefix}mean"].astype(np.float64), z[f"{prefix}components"],
                   z[f"{prefix}variances"].astype(np.float64), float(z[f"{prefix}residual_variance"]))


@dataclass(frozen=True)
class FeatureReference:
    """The training images' distributions of the four scores (module docstring) and the thresholds.

    Attributes:
        features: the PPCA of globally pooled features.
        threshold: feature distances above it are warned.
        member: the name of the member whose features and inputs are used.
        template: (THUMB_SIDE**2,) the training images' mean thumbnail,
            standardised (zero mean, unit norm); None skips the layout check.
        layout_threshold: layout margins (:meth:`layout`) below it are warned.
        grid: the PPCA of 2 x 2 pooled features (None skips the grid score).
        grid_threshold: grid distances above it are warned.
        scale: the PPCA of radial spectrum profiles (:func:`spectrum_profile`; None skips the scale score).
        scale_threshold: scale distances above it are warned.
        info: the ``bundle.json`` entry (method, counts, budget ...).
    """

    features: PPCA
    threshold: float
    member: str = "model"
    template: np.ndarray | None = None
    layout_threshold: float = -np.inf
    grid: PPCA | None = None
    grid_threshold: float = np.inf
    scale: PPCA | None = None
    scale_threshold: float = np.inf
    info: dict | None = None

    def distance(self, pooled_features: np.ndarray) -> np.ndarray:
        """Feature distance (n,) of pooled features: (n, D), or (n, g, g, D) as :func:`pooled` gives them."""
        return self.features.distance(global_average(pooled_features))

    def grid_distance(self, pooled_features: np.ndarray) -> np.ndarray | None:
        """Grid distance (n,) of :func:`pooled` features (n, g, g, D); None without a grid model or for (n, D) input."""
        x = np.asarray(pooled_features)
        if self.grid is None or x.ndim != 4:
            return None
        return self.grid.distance(x.reshape(len(x), -1))

    def layout(self, images_uint8: np.ndarray) -> np.ndarray | None:
        """Layout margin (n,) of 8-bit images (None without a template): the correlation of each thumbnail with the
        training images' mean thumbnail upright, minus the largest (if positive) with it turned by 90, 180 or 270 degrees."""
        if self.template is None:
            return None
        side = int(round(np.sqrt(self.template.size)))
        square = np.asarray(self.template, dtype=np.float64).reshape(side, side)
        thumbs = thumbnails(images_uint8, side)
        turned = np.stack([thumbs @ np.rot90(square, k).ravel() for k in (1, 2, 3)], axis=1).max(axis=1)
        return thumbs @ square.ravel() - np.maximum(turned, 0.0)

    def scale_distance(self, images_uint8: np.ndarray) -> np.ndarray | None:
        """Scale distance (n,) of 8-bit images (None without a scale model)."""
        return None if self.scale is None else self.scale.distance(spectrum_profile(images_uint8))

    def scores(self, pooled_features: np.ndarray, images_uint8: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
        """Every score (n,) by name (:data:`SCORES`); None for one that is not fitted or lacks its input."""
        images = None if images_uint8 is None else _stack(images_uint8)
        return {"feature": self.distance(pooled_features), "grid": self.grid_distance(pooled_features),
                "layout": None if images is None else self.layout(images),
                "scale": None if images is None else self.scale_distance(images)}

    @property
    def thresholds(self) -> dict[str, float]:
        """Each score's threshold by name (a score not fitted has an infinite one)."""
        return {"feature": self.threshold, "grid": self.grid_threshold, "layout": self.layout_threshold,
                "scale": self.scale_threshold}

    def beyond(self, name: str, values: np.ndarray) -> np.ndarray:
        """Whether each value of score ``name`` is beyond its threshold (below it for the layout margin)."""
        values = np.asarray(values, dtype=np.float64)
        threshold = self.thresholds[name]
        return values < threshold if name == "layout" else values > threshold

    def check(self, pooled_features: np.ndarray, images_uint8: np.ndarray | None = None) -> list[dict]:
        """Per image: ``feature_distance``, ``grid_distance``, ``layout_margin``, ``scale_distance`` (None for a
        score not fitted or without its input), their ``*_threshold``, ``beyond`` (the scores beyond their
        thresholds) and ``unlike_training`` (any is)."""
        values = self.scores(pooled_features, images_uint8)
        flags = {k: None if v is None else self.beyond(k, v) for k, v in values.items()}
        thresholds = self.thresholds
        out = []
        for i in range(len(values["feature"])):
            row, beyond = {}, []
            for name in SCORES:
                v = values[name]
                row[SCORE_KEYS[name]] = None if v is None else float(v[i])
                row[name + "_threshold"] = None if v is None else float(thresholds[name])
                if v is not None and flags[name][i]:
                    beyond.append(name)
            out.append({**row, "beyond": beyond, "unlike_training": bool(beyond)})
        return out


def _stack(images_uint8: np.ndarray) -> np.ndarray:
    images = np.asarray(images_uint8)
    return images[np.newaxis] if images.ndim == 2 else images


def thumbnails(images_uint8: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """(n, side * side) standardised thumbnails (zero mean, unit norm) of 8-bit images (n, h, w) or (h, w)."""
    import cv2

    images = _stack(images_uint8)
    small = np.stack([cv2.resize(np.asarray(im, dtype=np.float32), (side, side), interpolation=cv2.INTER_AREA) for im in images])
    flat = small.reshape(len(images), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-9)


def _spectrum_bands(height: int, width: int, bands: int) -> np.ndarray:
    """Band index of every ``rfft2`` bin of an (height, width) image: 0 .. bands - 1 by log radius (cycles per
    image) from 1 to half the shorter side, -1 outside (the DC term, the corners); edges are nudged off exact
    integers, so a bin's band does not depend on rounding."""
    ky = np.fft.fftfreq(height) * height
    kx = np.fft.rfftfreq(width) * width
    r2 = ky[:, np.newaxis] ** 2 + kx[np.newaxis, :] ** 2
    top = min(height, width) / 2
    edges2 = (np.geomspace(1.0, top, bands + 1) ** 2) * (1 + 1e-6)
    index = np.clip(np.searchsorted(edges2[1:-1], r2, side="right"), 0, bands - 1)
    return np.where((r2 < 1) | (r2 > edges2[-1]), -1, index)


def spectrum_profile(images_uint8: np.ndarray, bands: int = SPECTRUM_BANDS) -> np.ndarray:
    """(n, bands) radial power spectrum profile of 8-bit images: log mean power per band minus log total power.

    Each image is centred and Hann-windowed first (no edge artefacts); a band
    with no frequency bin (very small images) is left at 0.
    """
    images = _stack(images_uint8).astype(np.float64)
    n, height, width = images.shape
    index = _spectrum_bands(height, width, bands).ravel()
    keep = index >= 0
    counts = np.bincount(index[keep], minlength=bands).astype(np.float64)
    window = np.outer(np.hanning(height), np.hanning(width))
    out = np.zeros((n, bands))
    for i, image in enumerate(images):
        power = np.abs(np.fft.rfft2((image - image.mean()) * window)) ** 2
        per_band = np.bincount(index[keep], weights=power.ravel()[keep], minlength=bands)
        mean = per_band / np.maximum(counts, 1)
        total = max(float(per_band.sum()), 1e-12)
        out[i] = np.where(counts > 0, np.log(np.maximum(mean, 1e-12)) - np.log(total), 0.0)
    return out


def pooled(features: np.ndarray, grid: int = GRID) -> np.ndarray:
    """A feature map (n, h, w, c) averaged over a ``grid`` x ``grid`` grid of equal areas: (n, grid, grid, c) float64.

    Cells split pixels fractionally where the map's side is not a multiple of
    ``grid``, so the cells' mean is exactly the global average
    (:func:`global_average`). 2-D input (already pooled, (n, c)) is returned as is.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 2:
        return x
    weights = [_cell_weights(x.shape[axis], grid) for axis in (1, 2)]
    return np.einsum("ay,bx,nyxc->nabc", weights[0], weights[1], x)


def _cell_weights(length: int, grid: int) -> np.ndarray:
    """(grid, length): row i averages the pixels of [i, i + 1) * length / grid, splitting a pixel that a cell edge crosses."""
    edges = np.arange(grid + 1) * length / grid
    start, stop = np.arange(length), np.arange(length) + 1
    overlap = np.clip(np.minimum(stop, edges[1:, None]) - np.maximum(start, edges[:-1, None]), 0, None)
    return overlap / (length / grid)


def global_average(pooled_features: np.ndarray) -> np.ndarray:
    """(n, c): the global average of :func:`pooled` output (n, g, g, c), or (n, c) input as is."""
    x = np.asarray(pooled_features, dtype=np.float64)
    return x if x.ndim == 2 else x.mean(axis=(1, 2))


def fit_ppca(train: np.ndarray, components: int = COMPONENTS) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(mean, components (k, D), variances (k,), residual variance)`` of training vectors (n, D)."""
    x = np.asarray(train, dtype=np.float64)
    n, dim = x.shape
    k = int(min(components, dim - 1, n - 2))
    if k < 1:
        raise ValueError(f"need more training images than {n} to fit a reference of {components} components")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    eigen = s**2 / (n - 1)
    floor = max(float(eigen[0]) * 1e-6, 1e-12)
    rest = eigen[k:]
    # Directions the training images never span (dim > n) have no eigenvalue: count them at the mean of those seen.
    residual = float(rest.sum() / max(dim - k, 1)) if rest.size else floor
    return mean, vt[:k], np.maximum(eigen[:k], floor), max(residual, floor)


def conformal_threshold(values: np.ndarray, alpha: float, *, below: bool = False) -> tuple[float, float]:
    """A threshold that a new value exchangeable with ``values`` is beyond with probability at most ``alpha``.

    The ``k = ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` values (the
    k-th largest with ``below``), capped at the extreme; a new value is beyond
    it with probability at most ``(n + 1 - k) / (n + 1)`` (ties aside), which is
    <= ``alpha`` unless capped.

    Returns:
        ``(threshold, that probability bound)``.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n == 0:
        raise ValueError("no validation values to fit a threshold on")
    k = min(max(math.ceil((n + 1) * (1 - alpha) - 1e-9), 1), n)
    return (float(v[n - k]) if below else float(v[k - 1])), (n + 1 - k) / (n + 1)


def fit_reference(train: np.ndarray, val: np.ndarray, *, components: int = COMPONENTS, grid_components: int = GRID_COMPONENTS,
                  scale_components: int = SCALE_COMPONENTS, false_alarm: float = FALSE_ALARM, member: str = "model",
                  train_images: np.ndarray | None = None, val_images: np.ndarray | None = None,
                  ) -> tuple[FeatureReference, dict]:
    """The reference fitted on training features and 8-bit images, its thresholds on validation's (module docstring).

    Args:
        train, val: pooled features, (n, g, g, D) as :func:`pooled` gives them
            (the grid score is fitted too) or (n, D) (the feature score only).
        false_alarm: the budget split evenly over the scores fitted (:func:`conformal_threshold`).
        train_images, val_images: the member's 8-bit inputs (n, size, size) for
            the layout and scale scores; None fits the feature scores alone.

    Returns:
        ``(reference, validation {"scores": {name: (n,) or None}, "alpha": per score, "bounds": {name: bound}})``.
    """
    train, val = np.asarray(train, dtype=np.float64), np.asarray(val, dtype=np.float64)
    features = PPCA.fit(global_average(train), components)
    grid = PPCA.fit(train.reshape(len(train), -1), grid_components) if train.ndim == 4 else None
    template = scale = None
    if train_images is not None and val_images is not None:
        t = thumbnails(train_images).mean(axis=0)
        t -= t.mean()
        template = (t / max(np.linalg.norm(t), 1e-9)).astype(np.float32)
        scale = PPCA.fit(spectrum_profile(train_images), scale_components)
    unfitted = FeatureReference(features=features, threshold=np.inf, member=member, template=template, grid=grid, scale=scale)
    scores = unfitted.scores(val, val_images)
    fitted = [name for name in SCORES if scores[name] is not None]
    alpha = false_alarm / len(fitted)
    thresholds, bounds = {}, {}
    for name in fitted:
        thresholds[name], bounds[name] = conformal_threshold(scores[name], alpha, below=name == "layout")
    reference = FeatureReference(
        features=features, threshold=thresholds["feature"], member=member, template=template,
        layout_threshold=thresholds.get("layout", -np.inf), grid=grid, grid_threshold=thresholds.get("grid", np.inf),
        scale=scale, scale_threshold=thresholds.get("scale", np.inf))
    return reference, {"scores": scores, "alpha": alpha, "bounds": bounds}


# -- storage -------------------------------------------------------------------


def _npz_bytes(reference: FeatureReference) -> bytes:
    buffer = io.BytesIO()
    arrays = reference.features.arrays()
    for prefix, model in (("grid_", reference.grid), ("scale_", reference.scale)):
        if model is not None:
            arrays.update(model.arrays(prefix))
    if reference.template is not None:
        arrays["template"] = reference.template.astype(np.float32)
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_reference(bundle_dir: str | os.PathLike, reference: FeatureReference, entry: dict) -> dict:
    """Write the reference into a bundle: the ``.npz`` first, then ``bundle.json``'s ``"ood"`` key (atomic), then drop the old file.

    Args:
        entry: what else to record under ``"ood"`` (counts, budget ...).

    Returns:
        the ``"ood"`` entry written.
    """
    from cxr_core.bundle.format import Bundle, read_metadata

    bundle_dir = Path(bundle_dir)
    old = (read_metadata(bundle_dir).get(OOD_KEY) or {}).get("file")
    data = _npz_bytes(reference)
    name = f"{FILE_PREFIX}-{hashlib.sha256(data).hexdigest()[:12]}.npz"
    partial = bundle_dir / f".{name}.partial"
    partial.write_bytes(data)
    os.replace(partial, bundle_dir / name)
    record = {
        "method": METHOD, "features": FEATURES_NOTE, "member": reference.member, "file": name,
        "components": int(reference.features.components.shape[0]), "dimensions": int(reference.features.components.shape[1]),
        "threshold": float(reference.threshold),
        "grid": None if reference.grid is None else {
            "what": GRID_NOTE, "components": int(reference.grid.components.shape[0]),
            "dimensions": int(reference.grid.components.shape[1]), "threshold": float(reference.grid_threshold)},
        "layout": None if reference.template is None else {
            "what": (f"correlation of the {THUMB_SIDE} x {THUMB_SIDE} thumbnail of the member's input with the training "
                     "images' mean thumbnail upright, minus the largest (if positive) with it turned 90, 180 or 270 degrees"),
            "threshold": float(reference.layout_threshold)},
        "scale": None if reference.scale is None else {
            "what": (f"radial power spectrum profile of the member's input ({reference.scale.mean.size} log-spaced bands, "
                     "log power relative to the total)"),
            "bands": int(reference.scale.mean.size), "components": int(reference.scale.components.shape[0]),
            "threshold": float(reference.scale_threshold)},
        **entry,
    }
    try:
        Bundle.update_metadata(bundle_dir, **{OOD_KEY: record})
    except BaseException:
        if name != old:
            (bundle_dir / name).unlink(missing_ok=True)
        raise
    if old and old != name and Path(old).name == old:
        (bundle_dir / old).unlink(missing_ok=True)
    return record


def load_reference(bundle_dir: str | os.PathLike | None, meta: dict | None) -> FeatureReference | None:
    """The bundle's reference, or None when it has none (older bundles) or its file cannot be read: the check is then skipped."""
    entry = (meta or {}).get(OOD_KEY)
    if not isinstance(entry, dict) or bundle_dir is None or entry.get("method") != METHOD:
        return None
    name = str(entry.get("file", ""))
    if not name or Path(name).name != name:
        return None
    parts = {key: entry.get(key) if isinstance(entry.get(key), dict) else None for key in ("grid", "layout", "scale")}
    try:
        with np.load(Path(bundle_dir) / name, allow_pickle=False) as z:
            grid = PPCA.from_arrays(z, "grid_") if parts["grid"] else None
            scale = PPCA.from_arrays(z, "scale_") if parts["scale"] else None
            layout = parts["layout"] if "template" in z.files else None
            features = PPCA.from_arrays(z)
            if features is None:
                return None
            return FeatureReference(
                features=features, threshold=float(entry["threshold"]), member=str(entry.get("member", "model")),
                template=z["template"].astype(np.float64) if layout else None,
                layout_threshold=float(layout["threshold"]) if layout else -np.inf,
                grid=grid, grid_threshold=float(parts["grid"]["threshold"]) if grid else np.inf,
                scale=scale, scale_threshold=float(parts["scale"]["threshold"]) if scale else np.inf,
                info=dict(entry),
            )
    except (OSError, KeyError, ValueError, TypeError):
        return None
