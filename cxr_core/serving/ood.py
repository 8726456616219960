"""The learned not-a-chest-X-ray check: how far an image's backbone features are from the training images'.

    fit_ood("models/default", "../shared/nih")      # python -m training.fit_ood; writes the reference into the bundle
    reference = load_reference(bundle_dir, meta)    # None for a bundle without one (the check is then skipped)
    reference.check(pooled_features, inputs_uint8)  # per image: both scores, thresholds, "unlike_training"

Two scores, both fitted on the TRAINING images with thresholds on the
VALIDATION images, and an image is warned when either is beyond its threshold:

- **feature distance**: the global-average-pooled output of the reference
  member's ``"features"`` layer (the first member of an ensemble), the same
  tensor the prediction's forward pass already computes (no extra pass);
- **layout margin**: how much better the image's 16 x 16 thumbnail (of the
  member's 8-bit input, also already at hand) correlates with the training
  images' mean thumbnail upright than turned by 90, 180 or 270 degrees
  (``corr(upright) - max(0, corr(turned))``). Global pooling is nearly blind
  to where things are and a Gaussian model is symmetric about its mean, so a
  rotated, upside-down or inverted film (1 - x) is close to the training
  features; a chest film's layout (dark lungs either side of a bright
  mediastinum, bright abdomen below) matches the mean film upright and
  clearly better than turned, and these do not.

The reference is a probabilistic PCA of the TRAINING images' pooled
features: their mean, the top ``k`` principal directions with their
variances, and one variance for everything outside them (the mean of the
discarded eigenvalues). An image's distance is its Mahalanobis distance under
that covariance, i.e. a covariance shrunk towards isotropy outside the top
``k`` directions, so that features far outside the training subspace (what
noise, photographs and rotated films give) count as well as unusual values
inside it. The threshold is a percentile of the distances of the VALIDATION
images (99.75th by default; the layout threshold is the 0.25th percentile of
their margins), so about 0.5% of validation films are warned by design. (At
99.5 / 0.5, a trial run on 300 of the shipped model's test films warned 2.7%
of them, over the 2% goal: test films have heavier tails than the 342
validation films show; benchmarks/OOD_RESULTS.md.)

Stored in the bundle: ``bundle.json`` key ``"ood"`` (method, member,
threshold, counts, the file's name) and the arrays in an ``.npz`` beside it,
named by a hash of its content, so a reader never pairs a new file with an
old threshold: the file is written first, then ``bundle.json`` (atomically),
then the file it replaced is removed.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_KEY = "ood"
METHOD = "ppca-mahalanobis"
FEATURES_NOTE = "global average of the member's 'features' layer output"
FILE_PREFIX = "ood_reference"
#: The layout thumbnail's side, in pixels.
THUMB_SIDE = 16

OOD_WARNING = (
    "This image does not look like the chest X-rays the model was trained on (its features are far from theirs: "
    "it may not be a frontal chest X-ray, or it may be rotated, inverted, cropped or a photograph of a film). "
    "The findings may be meaningless: read them with care."
)


@dataclass(frozen=True)
class FeatureReference:
    """The training images' pooled-feature distribution and the warning threshold.

    Attributes:
        mean: (D,) mean pooled feature of the training images.
        components: (k, D) principal directions (rows, orthonormal up to storage precision).
        variances: (k,) the variance along each direction.
        residual_variance: the variance assumed in every other direction.
        threshold: distances above it are warned.
        member: the name of the member whose features are used.
        template: (THUMB_SIDE**2,) the training images' mean thumbnail,
            standardised (zero mean, unit norm); None skips the layout check.
        layout_threshold: layout margins (:meth:`layout`) below it are warned.
        info: the ``bundle.json`` entry (method, counts, percentile ...).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    threshold: float
    member: str = "model"
    template: np.ndarray | None = None
    layout_threshold: float = -np.inf
    info: dict | None = None

    def distance(self, pooled: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (n,) of pooled features (n, D) under the reference's covariance."""
        x = np.atleast_2d(np.asarray(pooled, dtype=np.float64)) - self.mean
        components = self.components.astype(np.float64)
        z = x @ components.T
        residual = x - z @ components
        d2 = (z**2 / self.variances).sum(axis=1) + (residual**2).sum(axis=1) / self.residual_variance
        return np.sqrt(d2)

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

    def check(self, pooled: np.ndarray, images_uint8: np.ndarray | None = None) -> list[dict]:
        """Per image: ``feature_distance``, ``layout_margin`` (None without template or images), their thresholds
        and ``unlike_training`` (either beyond its threshold)."""
        distances = self.distance(pooled)
        margins = self.layout(images_uint8) if images_uint8 is not None else None
        out = []
        for i, d in enumerate(distances):
            c = None if margins is None else float(margins[i])
            out.append({
                "feature_distance": float(d), "feature_threshold": float(self.threshold),
                "layout_margin": c, "layout_threshold": None if c is None else float(self.layout_threshold),
                "unlike_training": bool(d > self.threshold or (c is not None and c < self.layout_threshold)),
            })
        return out


def thumbnails(images_uint8: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """(n, side * side) standardised thumbnails (zero mean, unit norm) of 8-bit images (n, h, w) or (h, w)."""
    import cv2

    images = np.asarray(images_uint8)
    if images.ndim == 2:
        images = images[np.newaxis]
    small = np.stack([cv2.resize(np.asarray(im, dtype=np.float32), (side, side), interpolation=cv2.INTER_AREA) for im in images])
    flat = small.reshape(len(images), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-9)


def pooled(features: np.ndarray) -> np.ndarray:
    """Global average over the spatial axes: (n, h, w, c) -> (n, c) float64 (2-D input is returned as is)."""
    features = np.asarray(features, dtype=np.float64)
    return features if features.ndim == 2 else features.mean(axis=tuple(range(1, features.ndim - 1)))


def fit_ppca(train: np.ndarray, components: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(mean, components (k, D), variances (k,), residual variance)`` of pooled training features (n, D)."""
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


def fit_reference(train: np.ndarray, val: np.ndarray, *, components: int = 32, percentile: float = 99.75,
                  member: str = "model", train_images: np.ndarray | None = None,
                  val_images: np.ndarray | None = None) -> tuple[FeatureReference, dict]:
    """The reference fitted on training features (and 8-bit images, for the layout), its thresholds on validation's.

    Components are stored as float16 and the thresholds are computed with the
    stored values, so the file gives exactly the scores they were fitted on.

    Args:
        train, val: pooled features (n, D).
        percentile: the feature threshold is this percentile of the validation
            distances, the layout threshold the ``100 - percentile``-th of their layout margins.
        train_images, val_images: the member's 8-bit inputs (n, size, size) for
            the layout check; None fits the feature check alone.

    Returns:
        ``(reference, validation scores {"distance": (n,), "layout": (n,) or None})``.
    """
    mean, vt, variances, residual = fit_ppca(train, components)
    mean, vt = mean.astype(np.float32), vt.astype(np.float16)
    template = None
    if train_images is not None and val_images is not None:
        t = thumbnails(train_images).mean(axis=0)
        t -= t.mean()
        template = (t / max(np.linalg.norm(t), 1e-9)).astype(np.float32)
    reference = FeatureReference(mean=mean, components=vt, variances=variances, residual_variance=float(residual),
                                 threshold=np.inf, member=member, template=template)
    val_distances = reference.distance(val)
    val_margins = reference.layout(val_images) if template is not None else None
    threshold = float(np.percentile(val_distances, percentile))
    layout_threshold = float(np.percentile(val_margins, 100 - percentile)) if val_margins is not None else -np.inf
    fitted = FeatureReference(mean=mean, components=vt, variances=variances, residual_variance=float(residual),
                              threshold=threshold, member=member, template=template, layout_threshold=layout_threshold)
    return fitted, {"distance": val_distances, "layout": val_margins}


# -- storage -------------------------------------------------------------------


def _npz_bytes(reference: FeatureReference) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, mean=reference.mean.astype(np.float32), components=reference.components.astype(np.float16),
             variances=np.asarray(reference.variances, np.float64),
             residual_variance=np.float64(reference.residual_variance),
             **({} if reference.template is None else {"template": reference.template.astype(np.float32)}))
    return buffer.getvalue()


def save_reference(bundle_dir: str | os.PathLike, reference: FeatureReference, entry: dict) -> dict:
    """Write the reference into a bundle: the ``.npz`` first, then ``bundle.json``'s ``"ood"`` key (atomic), then drop the old file.

    Args:
        entry: what else to record under ``"ood"`` (counts, percentile ...).

    Returns:
        the ``"ood"`` entry written.
    """
    from cxr_core.learn.bundle import Bundle, read_metadata

    bundle_dir = Path(bundle_dir)
    old = (read_metadata(bundle_dir).get(OOD_KEY) or {}).get("file")
    data = _npz_bytes(reference)
    name = f"{FILE_PREFIX}-{hashlib.sha256(data).hexdigest()[:12]}.npz"
    partial = bundle_dir / f".{name}.partial"
    partial.write_bytes(data)
    os.replace(partial, bundle_dir / name)
    record = {
        "method": METHOD, "features": FEATURES_NOTE, "member": reference.member, "file": name,
        "components": int(reference.components.shape[0]), "dimensions": int(reference.components.shape[1]),
        "threshold": float(reference.threshold),
        "layout": None if reference.template is None else {
            "what": (f"correlation of the {THUMB_SIDE} x {THUMB_SIDE} thumbnail of the member's input with the training "
                     "images' mean thumbnail upright, minus the largest (if positive) with it turned 90, 180 or 270 degrees"),
            "threshold": float(reference.layout_threshold)},
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
    layout = entry.get("layout") if isinstance(entry.get("layout"), dict) else None
    try:
        with np.load(Path(bundle_dir) / name, allow_pickle=False) as z:
            return FeatureReference(
                mean=z["mean"].astype(np.float64), components=z["components"], variances=z["variances"].astype(np.float64),
                residual_variance=float(z["residual_variance"]), threshold=float(entry["threshold"]),
                member=str(entry.get("member", "model")), info=dict(entry),
                template=z["template"].astype(np.float64) if "template" in z.files and layout else None,
                layout_threshold=float(layout["threshold"]) if "template" in z.files and layout else -np.inf,
            )
    except (OSError, KeyError, ValueError, TypeError):
        return None


# -- fitting on a dataset --------------------------------------------------------


def member_features(predictor, member_index: int, paths: Sequence[str], *, batch_size: int = 16, workers: int = 2,
                    progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled ``"features"`` (n, D) of one member for image files and their 8-bit inputs (n, size, size), through the one preprocessing."""
    from concurrent.futures import ThreadPoolExecutor

    from cxr_core.data.preprocessing import normalize, to_model_uint8

    member = predictor.members[member_index]
    size = int(member.preprocess.size)
    chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    out, inputs = [], []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for chunk in progress(chunks) if progress else chunks:
            images = np.stack(list(pool.map(lambda p: to_model_uint8(p, size), chunk)))
            out.append(predictor.pooled_features(member_index, normalize(images, member.preprocess)[..., np.newaxis]))
            inputs.append(images)
    if not out:
        return np.zeros((0, 0)), np.zeros((0, size, size), np.uint8)
    return np.concatenate(out), np.concatenate(inputs)


def fit_ood(
    bundle_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    components: int = 32,
    percentile: float = 99.75,
    max_train: int | None = 1000,
    seed: int = 0,
    batch_size: int = 16,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit the learned check of ``bundle_dir`` on its own data and store it in the bundle (see module docstring).

    Args:
        data_root: the dataset the bundle was trained on (its ``splits.csv``
            names the training and validation images).
        components: principal directions kept.
        percentile: of the validation distances, the feature threshold
            (the layout threshold is the ``100 - percentile``-th of their layout margins).
        max_train: at most this many training images (a seeded random
            choice; None: all). A few hundred fix 32 directions well.

    Returns:
        the ``"ood"`` entry written to ``bundle.json``.
    """
    from cxr_core.data.dataset import NIHDataset
    from cxr_core.serving.predictor import Predictor

    started = time.time()
    bundle_dir = Path(bundle_dir)
    predictor = Predictor.from_bundle(bundle_dir)
    bundle = predictor.bundle
    if bundle.splits is None:
        raise ValueError(f"{bundle_dir} records no split: its training and validation images are unknown")
    dataset = NIHDataset(data_root)
    split = dataset.csv["image"].map(bundle.splits.set_index("image")["split"]).fillna("unseen").to_numpy()
    paths = dataset.csv["path"].to_numpy()
    train, val = paths[split == "train"], paths[split == "val"]
    if len(train) < components + 2 or len(val) < 20:
        raise ValueError(f"{data_root} holds {len(train)} of the bundle's training and {len(val)} of its validation images: "
                         "not the data it was trained on, or too few to fit the check")
    total_train = len(train)
    if max_train is not None and len(train) > max_train:
        train = np.random.default_rng(seed).choice(train, size=max_train, replace=False)
    index = predictor.ood_member_index
    name = predictor.members[index].name
    log(f"features of member {name!r} ({predictor.members[index].preprocess.size} px): "
        f"{len(train)} of {total_train} training and {len(val)} validation images")
    f_train, x_train = member_features(predictor, index, list(train), batch_size=batch_size, progress=progress)
    f_val, x_val = member_features(predictor, index, list(val), batch_size=batch_size, progress=progress)
    reference, val_scores = fit_reference(f_train, f_val, components=components, percentile=percentile, member=name,
                                          train_images=x_train, val_images=x_val)
    warned = [c["unlike_training"] for c in reference.check(f_val, x_val)]
    entry = {
        "percentile": float(percentile), "fitted_on": "training split (reference), validation split (threshold)",
        "train_images": int(len(train)), "train_images_in_split": int(total_train), "val_images": int(len(val)),
        "val_warned": float(np.mean(warned)), "seed": int(seed),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record = save_reference(bundle_dir, reference, entry)
    log(f"thresholds: feature distance {reference.threshold:.2f}, layout margin {reference.layout_threshold:.3f} "
        f"({percentile:g}th / {100 - percentile:g}th percentiles on validation; {np.mean(warned):.1%} of validation warned); "
        f"written to {bundle_dir / record['file']} and bundle.json ({time.time() - started:.0f} s)")
    return record
