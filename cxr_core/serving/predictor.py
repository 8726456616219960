"""The public face of a trained model: calibrated probabilities and heatmaps.

    predictor = Predictor.from_bundle("models/default")
    predictor.predict("scan.png")            # {finding: calibrated probability}
    predictor.explain("scan.png", ["Mass"])  # {finding: heatmap in [0, 1] at the image's size}
    predictor.analyze("scan.png")            # both, from ONE forward pass

A Predictor loads once and is safe to share between threads (the app shares
one across sessions): model calls are serialised by a lock, and nothing in
the object changes after construction.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from cxr_core.data.imageio import DecodedImage, ImageSource, decode_image
from cxr_core.data.preprocessing import PreprocessConfig, normalize, resize_to_model
from cxr_core.errors import ImageReadError
from cxr_core.evaluation.calibration import Calibration
from cxr_core.findings import FINDINGS, canonical_finding
from cxr_core.serving.explain import HeadGradcamPlusPlus, resize_map, split_model

#: Default operating point when a bundle has no fitted thresholds yet.
UNFITTED_THRESHOLD = 0.5


@dataclass(frozen=True)
class Analysis:
    """Everything the app shows for one image.

    Attributes:
        probabilities: {finding: calibrated probability}, FINDINGS order.
        raw_probabilities: {finding: model output before calibration}.
        positive: {finding: probability >= the finding's operating threshold}.
        heatmaps: {finding: float32 map in [0, 1] at the image's size}.
        image: the decoded image (pixels in [0, 1]).
        warnings: reasons to doubt the input (from decoding and intensity checks).
    """

    probabilities: dict[str, float]
    raw_probabilities: dict[str, float]
    positive: dict[str, bool]
    heatmaps: dict[str, np.ndarray]
    image: DecodedImage
    warnings: tuple[str, ...] = ()
    ranked: tuple[str, ...] = field(default=())


def intensity_warnings(model_input_uint8: np.ndarray, reference: dict | None) -> list[str]:
    """Warn when an image's intensity statistics are far from the training images'.

    Args:
        model_input_uint8: the resized 8-bit image, (size, size).
        reference: ``{"mean": m, "std": s, "mean_sd": ..., "std_sd": ...}`` of
            per-image mean and standard deviation over the training images (in
            [0, 1] units), as recorded in the bundle; ``None`` skips the check.
    """
    if not reference:
        return []
    x = model_input_uint8.astype(np.float32) / 255.0
    notes = []
    z_mean = (float(x.mean()) - reference["mean"]) / max(reference.get("mean_sd", 0.05), 1e-3)
    z_std = (float(x.std()) - reference["std"]) / max(reference.get("std_sd", 0.03), 1e-3)
    if abs(z_mean) > 4 or abs(z_std) > 4:
        notes.append(
            "This image's brightness and contrast are very unlike the chest X-rays the model was trained on "
            "(it may be inverted, cropped, a photo, or not a frontal chest film). Read the results with care."
        )
    return notes


class Predictor:
    """Calibrated findings and Grad-CAM++ maps from a classifier.

    Args:
        model: Keras model with the cxr-assist layer names (``"features"`` ... ``"probabilities"``).
        preprocess: the preprocessing the model was trained with.
        findings: output column names (must be the 14 FINDINGS in order).
        calibration: per-finding calibration fitted on validation, or None.
        thresholds: per-finding operating thresholds on calibrated probabilities, or None.
        metadata: the bundle's metadata (shown by the app; validated sensitivity etc.).
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        preprocess: PreprocessConfig,
        findings: Sequence[str] = FINDINGS,
        calibration: Calibration | None = None,
        thresholds: Sequence[float] | None = None,
        metadata: dict | None = None,
    ) -> None:
        findings = tuple(findings)
        if findings != FINDINGS:
            raise ValueError(f"the model's findings {findings} differ from cxr-assist's {FINDINGS}")
        size = model.inputs[0].shape[1]
        if size != preprocess.size:
            raise ValueError(f"the model takes {size} px inputs but the preprocessing says {preprocess.size}")
        if int(model.outputs[0].shape[-1]) != len(findings):
            raise ValueError(f"the model has {model.outputs[0].shape[-1]} outputs, expected {len(findings)}")
        self.model = model
        self.preprocess = preprocess
        self.findings = findings
        self.calibration = calibration
        self.thresholds = np.full(len(findings), UNFITTED_THRESHOLD) if thresholds is None else np.asarray(thresholds, float)
        self.metadata = dict(metadata or {})
        import tensorflow as tf

        backbone, head = split_model(model)
        # Compiled once per input shape: an eager Keras call costs more than the network itself on CPU.
        self._backbone = tf.function(lambda x: backbone(x, training=False), reduce_retracing=True)
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._explainer = HeadGradcamPlusPlus(head)
        self._lock = threading.Lock()
        self.bundle = None

    @classmethod
    def from_bundle(cls, path: str | Path) -> "Predictor":
        """Load a model bundle folder (see :mod:`cxr_core.learn.bundle`).

        Raises:
            BundleError: not a bundle, or its findings order or input size do
                not match this code or its stored model.
        """
        from cxr_core.learn.bundle import Bundle

        bundle = Bundle.load(path)
        meta = bundle.metadata()
        calibration = Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None
        thresholds = meta.get("thresholds")
        if isinstance(thresholds, dict):
            thresholds = thresholds.get("values")
        predictor = cls(
            bundle.model,
            preprocess=bundle.preprocessing,
            findings=bundle.findings,
            calibration=calibration,
            thresholds=thresholds,
            metadata=meta,
        )
        predictor.bundle = bundle
        return predictor

    def split_of(self, image_name: str) -> str | None:
        """The split (train/val/test) an image had in this model's data, or None."""
        return None if self.bundle is None else self.bundle.split_of(image_name)

    # -- inputs ---------------------------------------------------------------

    def _decode(self, image: ImageSource | DecodedImage | np.ndarray) -> DecodedImage:
        if isinstance(image, DecodedImage):
            return image
        if isinstance(image, np.ndarray):
            if image.ndim != 2:
                raise ImageReadError("The image array must be 2-D grayscale.", reason="corrupt")
            pixels = image.astype(np.float32)
            if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
                raise ImageReadError("The image array must hold values in [0, 1].", reason="corrupt")
            return DecodedImage(pixels=pixels, source_format="array", original_shape=pixels.shape, bit_depth=32)
        return decode_image(image)

    def _model_input(self, decoded: DecodedImage) -> tuple[np.ndarray, np.ndarray]:
        small = resize_to_model(decoded.pixels, self.preprocess.size)
        return small, normalize(small, self.preprocess)[np.newaxis, ..., np.newaxis]

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.calibration is None else np.asarray(self.calibration.apply(raw), dtype=float)

    # -- public API -----------------------------------------------------------

    def predict(self, image: ImageSource | DecodedImage | np.ndarray) -> dict[str, float]:
        """Calibrated probability of each finding for one image.

        Raises:
            ImageReadError: the image cannot be used.
        """
        decoded = self._decode(image)
        _, batch = self._model_input(decoded)
        with self._lock:
            raw = np.asarray(self._forward(batch))[0].astype(float)
        return dict(zip(self.findings, self._calibrate(raw[np.newaxis])[0].tolist()))

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) and calibrated probabilities of preprocessed images.

        Args:
            images: float32 (n, size, size, 1) already normalised.

        Returns:
            ``(raw, calibrated)``, each (n, 14).
        """
        with self._lock:
            raw = np.asarray(self._forward(np.asarray(images, dtype=np.float32)), dtype=float)
        return raw, self._calibrate(raw)

    def explain(
        self, image: ImageSource | DecodedImage | np.ndarray, findings: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Grad-CAM++ map of each requested finding (all 14 by default), at the image's size."""
        return self.analyze(image, explain=findings if findings is not None else self.findings).heatmaps

    def analyze(
        self, image: ImageSource | DecodedImage | np.ndarray, *, explain: Sequence[str] | None = None
    ) -> Analysis:
        """Probabilities and maps from one forward pass of the backbone.

        Args:
            image: path, bytes, decoded image or 2-D [0, 1] array.
            explain: findings to map; ``None`` maps all 14.

        Raises:
            ImageReadError: the image cannot be used.
        """
        decoded = self._decode(image)
        small, batch = self._model_input(decoded)
        wanted = self.findings if explain is None else tuple(canonical_finding(f) for f in explain)
        indices = [self.findings.index(f) for f in wanted]
        with self._lock:
            features, raw = self._backbone(batch)
            cams = self._explainer(np.asarray(features), indices)
        raw = np.asarray(raw, dtype=float)
        calibrated = self._calibrate(raw)[0]
        height, width = decoded.pixels.shape
        heatmaps = {f: resize_map(cam, (height, width)) for f, cam in zip(wanted, cams)}
        probabilities = dict(zip(self.findings, calibrated.tolist()))
        notes = list(decoded.warnings) + intensity_warnings(small, self.metadata.get("intensity_reference"))
        return Analysis(
            probabilities=probabilities,
            raw_probabilities=dict(zip(self.findings, raw[0].tolist())),
            positive={f: bool(p >= t) for (f, p), t in zip(probabilities.items(), self.thresholds)},
            heatmaps=heatmaps,
            image=decoded,
            warnings=tuple(notes),
            ranked=tuple(sorted(self.findings, key=lambda f: -probabilities[f])),
        )
