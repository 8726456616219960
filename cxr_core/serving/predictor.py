"""The public face of a trained model: calibrated probabilities and heatmaps.

    predictor = Predictor.from_bundle("models/default")
    predictor.predict("scan.png")            # {finding: calibrated probability}
    predictor.explain("scan.png", ["Mass"])  # {finding: heatmap in [0, 1] at the image's size}
    predictor.analyze("scan.png")            # both, from ONE forward pass

A Predictor loads once and is safe to share between threads (the app shares
one across sessions): model calls are serialised by a lock, and nothing in
the object changes after construction.

A Predictor serves one classifier or an ensemble (:class:`Member` each, from
an ensemble bundle). Every member gets the image through the ONE
preprocessing at its own input size and normalisation, runs once, and the
members' LOGITS are averaged with their weights before the sigmoid (averaging
logits, not probabilities, keeps a confident member's evidence from being
squashed); calibration and thresholds, fitted on validation after averaging,
apply to the ensemble's output. Heatmaps are each member's Grad-CAM++ maps
(scores are that member's logits), resized to the image and averaged with the
same weights. With one member everything is exactly the single model's path.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_core.data.decoding import DecodedImage
from cxr_core.data.imageio import ImageSource, decode_image
from cxr_core.data.preprocessing import PreprocessConfig, normalize, resize_to_model, to_model_uint8
from cxr_core.errors import ImageReadError
from cxr_core.evaluation.calibration import Calibration
from cxr_core.evaluation.reading import Reading, ReadingPolicy
from cxr_core.findings import FINDINGS, canonical_finding
from cxr_core.screening.ood import OOD_WARNING, FeatureReference, load_reference, pooled
from cxr_core.screening.intensity import intensity_warnings
from cxr_core.screening.rules import constant_warning, rule_warnings
from cxr_core.serving.maps import resize_map
from cxr_core.serving.members import Member, runner_for, sigmoid
from cxr_core.serving.precision import check_compute_mode, member_compute_dtype

if TYPE_CHECKING:
    import keras

#: How :meth:`Predictor.from_bundle` runs the members: Keras (TensorFlow), their LiteRT serving forms, or LiteRT
#: where every member has one.
RUNTIMES = ("keras", "litert", "auto")
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
        warnings: reasons to doubt the input: from decoding, the simple rules
            (size, shape, near-constant), the intensity check and the learned
            check (features far from the training images').
        ranked: the findings, most probable first.
        input_check: the learned check's numbers (None when the bundle has no
            reference): ``feature_distance``, ``grid_distance``,
            ``layout_margin`` and ``scale_distance``, each with its
            ``*_threshold`` (None for a score the reference lacks), ``beyond``
            (the scores past their threshold) and ``unlike_training`` (any is;
            see :meth:`cxr_core.screening.ood.FeatureReference.check`).
        withheld_because: the input check's warnings (the simple rules, the
            intensity check, the learned check), a subset of ``warnings``:
            any of them withholds the reading by default.
        reading: what a reader is shown at the bundle's default operating
            point, output withheld where the input check warned
            (:class:`cxr_core.evaluation.reading.Reading`); pages that offer
            another operating point or "show anyway" ask
            :attr:`Predictor.policy` again.
    """

    probabilities: dict[str, float]
    raw_probabilities: dict[str, float]
    positive: dict[str, bool]
    heatmaps: dict[str, np.ndarray]
    image: DecodedImage
    warnings: tuple[str, ...] = ()
    ranked: tuple[str, ...] = field(default=())
    input_check: dict | None = None
    withheld_because: tuple[str, ...] = ()
    reading: Reading | None = None


def _shares(values, what: str) -> np.ndarray:
    """``values`` normalised to sum 1; ValueError unless finite, non-negative and not all zero."""
    weights = np.asarray([float(v) for v in values])
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"{what} must be finite, non-negative and not all zero, got {weights.tolist()}")
    return weights / weights.sum()


class Predictor:
    """Calibrated findings and Grad-CAM++ maps from a classifier or an ensemble of them.

    Args:
        model: Keras model with the cxr-assist layer names (``"features"`` ...
            ``"probabilities"``); or None with ``members``.
        preprocess: the preprocessing ``model`` was trained with.
        members: instead of ``model`` and ``preprocess``: the classifiers of an
            ensemble, each with its own preprocessing and weight.
        findings: output column names (must be the 14 FINDINGS in order).
        calibration: per-finding calibration fitted on validation (after
            averaging, for an ensemble), or None.
        thresholds: per-finding operating thresholds on calibrated probabilities, or None.
        metadata: the bundle's metadata (shown by the app; validated sensitivity etc.).
        ood: the learned not-a-chest-X-ray check's reference
            (:mod:`cxr_core.screening.ood`; from the bundle's ``"ood"`` key), or
            None to skip that check (the simple rules still apply).
        compiled: True (default): every member call is a compiled graph,
            traced on first use or by :meth:`warm_up`. False: the members run
            op by op until :meth:`warm_up` has traced them, so a model just
            loaded answers a first image without waiting for its tracing (the
            app's start); same numbers either way.
    """

    def __init__(
        self,
        model: keras.Model | None = None,
        *,
        preprocess: PreprocessConfig | None = None,
        members: Sequence[Member] | None = None,
        findings: Sequence[str] = FINDINGS,
        calibration: Calibration | None = None,
        thresholds: Sequence[float] | None = None,
        metadata: dict | None = None,
        ood: FeatureReference | None = None,
        compiled: bool = True,
    ) -> None:
        findings = tuple(findings)
        if findings != FINDINGS:
            raise ValueError(f"the model's findings {findings} differ from cxr-assist's {FINDINGS}")
        if (model is None) == (members is None):
            raise ValueError("give either a model with its preprocess, or members")
        if model is not None:
            if preprocess is None:
                raise ValueError("a model needs its preprocess configuration")
            members = [Member(model=model, preprocess=preprocess)]
        members = list(members)
        if not members:
            raise ValueError("a Predictor needs at least one member")
        self.members = tuple(members)
        self.weights = _shares([m.weight for m in members], "member weights")
        self.map_weights = _shares([m.weight if m.map_weight is None else m.map_weight for m in members], "member map weights")
        self.findings = findings
        self.calibration = calibration
        self.thresholds = np.full(len(findings), UNFITTED_THRESHOLD) if thresholds is None else np.asarray(thresholds, float)
        self.metadata = dict(metadata or {})
        self.policy = ReadingPolicy.from_metadata(self.metadata, self.thresholds)
        self._runners = tuple(runner_for(m, findings, compiled=compiled) for m in self.members)
        if ood is not None and self.is_ensemble and ood.member not in [m.name for m in self.members]:
            ood = None  # a reference fitted on another member's features cannot be used
        self.ood = ood
        self._lock = threading.Lock()
        self.bundle = None

    def warm_up(self, progress: Callable[[str], None] | None = None) -> None:
        """Trace every member's compiled calls before they are needed, the members in parallel threads.

        Tracing (building the graphs of the forward pass, the test-time views
        and the heatmap head for each input size) costs a second or more per
        member the first time; done here, the first real analysis costs what
        every later one does. The members are traced at once on their own
        threads (graph building is partly in C++, so two cores overlap part of
        it); then one full analysis of a plain gray image checks the whole path.

        With ``compiled=True`` analyses wait while the members trace; with
        ``compiled=False`` they go on op by op meanwhile, each member switching
        to its compiled calls once they are traced.

        Args:
            progress: receives one line per step ("compiling 3 members ...", "checking ...").
        """
        image = np.full((256, 256), 0.5, dtype=np.float32)
        batches = self._normalised(self.resize_inputs(image))

        def trace(k: int) -> None:
            self._compile(k, batches[k])

        if progress:
            progress(f"compiling {len(self._runners)} member{'s' * (len(self._runners) > 1)} for this CPU")
        waiting = all(runner.compiled for runner in self._runners)
        with self._lock if waiting else contextlib.nullcontext():
            with ThreadPoolExecutor(max_workers=len(self._runners), thread_name_prefix="cxr-assist-trace") as pool:
                list(pool.map(trace, range(len(self._runners))))
        if progress:
            progress("checking a full analysis")
        self.analyze(image)

    def compile_member(self, index: int) -> None:
        """Trace one member's compiled calls for an analysis (as :meth:`warm_up` does for all), holding the
        analysis lock: a caller that traces the members one by one between analyses (the app, on its model thread)
        keeps an analysis from waiting for more than one member's tracing.

        Args:
            index: the member's position in :attr:`members`.
        """
        image = np.full((256, 256), 0.5, dtype=np.float32)
        batch = self._normalised(self.resize_inputs(image))[index]
        with self._lock:
            self._compile(index, batch)

    def _compile(self, index: int, batch: np.ndarray) -> None:
        """Trace member ``index``'s calls for ``batch``; its heatmap head only where it contributes to the maps."""
        self._runners[index].compile(batch, explain=bool(self.map_weights[index] > 0))

    @property
    def is_compiled(self) -> bool:
        """Whether every member runs its compiled calls (False while an eager-start model is still tracing)."""
        return all(runner.compiled for runner in self._runners)

    @classmethod
    def from_bundle(cls, path: str | Path, *, compute: str = "float32", compiled: bool = True,
                    runtime: str = "keras", serving_cache: str | Path | None = None) -> "Predictor":
        """Load a model bundle folder, one model or an ensemble (see :mod:`cxr_core.bundle.format`).

        Args:
            path: the bundle folder.
            compute: ``"float32"`` (the reference the bundle was evaluated
                with), ``"bfloat16"`` or ``"auto"``: trunks of the backbones
                that gain from it in bfloat16, ``"auto"`` only on a CPU that
                computes it natively (:mod:`cxr_core.serving.precision`).
                Keras members only: a serving form computes in float32.
            compiled: as the constructor's (False: answer op by op until :meth:`warm_up`).
            runtime: one of :data:`RUNTIMES`: ``"keras"`` (default) loads
                each member's ``model.keras`` with TensorFlow; ``"litert"``
                runs each member's serving form (:mod:`cxr_core.serving.litert`;
                same float32 numbers, no TensorFlow) and raises
                ``ServingFormError`` where a member has none; ``"auto"`` is
                ``"litert"`` when every member has one, else ``"keras"``.
            serving_cache: the serving forms' folder (default
                :func:`cxr_core.serving.litert.cache_root`).

        Raises:
            BundleError: not a bundle, or its findings order or input size do
                not match this code or its stored model.
            ServingFormError: ``runtime="litert"`` and a member has no usable serving form.
        """
        from cxr_core.bundle.ensemble import load_bundle

        check_compute_mode(compute)  # before the (slow) model load
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime != "keras":
            from cxr_core.serving.litert import ServingFormError, find_serving_form

            try:
                bundle = load_bundle(path, load_model=False)
                return cls._assemble(bundle, find_serving_form(bundle, cache=serving_cache), compute, compiled)
            except ServingFormError:  # not built, stale, unreadable: "auto" runs the Keras models instead
                if runtime == "litert":
                    raise
        return cls._assemble(load_bundle(path), None, compute, compiled)

    @classmethod
    def _assemble(cls, bundle, forms: Mapping | None, compute: str, compiled: bool) -> "Predictor":
        """The Predictor of a loaded bundle: its members' serving forms (``forms``) or Keras models (None)."""
        from cxr_core.bundle.ensemble import EnsembleBundle
        from cxr_core.bundle.format import explanation_method

        meta = bundle.metadata()
        calibration = Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None
        thresholds = meta.get("thresholds")
        if isinstance(thresholds, dict):
            thresholds = thresholds.get("values")
        ood = load_reference(bundle.path, meta)

        def member(single, name: str, **kwargs) -> Member:
            form = None if forms is None else forms[name]
            return Member(model=single.model, preprocess=single.preprocessing, name=name,
                          explanation=explanation_method(single.metadata()), serving=form,
                          compute_dtype="float32" if form is not None else member_compute_dtype(compute, single.backbone),
                          **kwargs)

        if isinstance(bundle, EnsembleBundle):
            members = [member(m.bundle, m.name, weight=m.weight, map_weight=m.map_weight, tta_views=m.tta_views)
                       for m in bundle.members]
        else:
            members = [member(bundle, "model")]
        predictor = cls(members=members, findings=bundle.findings, calibration=calibration, thresholds=thresholds,
                        metadata=meta, ood=ood, compiled=compiled)
        predictor.bundle = bundle
        return predictor

    @property
    def runtime(self) -> str:
        """``"litert"`` when every member runs its serving form (no TensorFlow), else ``"keras"``."""
        return "litert" if all(m.serving is not None for m in self.members) else "keras"

    # -- what it is -----------------------------------------------------------

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def compute_dtypes(self) -> dict[str, str]:
        """``{member name: "float32" or "bfloat16"}``: what each member's trunk computes in."""
        return {m.name: m.compute_dtype for m in self.members}

    def _single(self, what: str) -> Member:
        if self.is_ensemble:
            raise ValueError(
                f"this Predictor is an ensemble of {len(self.members)} members, each with its own {what}; "
                "use predictor.members (or input_sizes / predict_uint8 for inputs)"
            )
        return self.members[0]

    @property
    def model(self) -> keras.Model | None:
        """The one Keras model (None when served by its LiteRT form; ValueError for an ensemble: see :attr:`members`)."""
        return self._single("model").model

    @property
    def preprocess(self) -> PreprocessConfig:
        """The one preprocessing (ValueError for an ensemble: see :attr:`members`)."""
        return self._single("preprocessing").preprocess

    @property
    def input_sizes(self) -> tuple[int, ...]:
        """The distinct input sizes of the members, in member order."""
        return tuple(dict.fromkeys(int(m.preprocess.size) for m in self.members))

    @property
    def reference_size(self) -> int:
        """The size at which the intensity check looks at an image (the first member's)."""
        return int(self.members[0].preprocess.size)

    @property
    def ood_member_index(self) -> int:
        """The member whose features the learned check uses: the reference's, else the first."""
        if self.ood is not None:
            for i, member in enumerate(self.members):
                if member.name == self.ood.member:
                    return i
        return 0

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

    def resize_inputs(self, pixels: np.ndarray) -> dict[int, np.ndarray]:
        """``{size: uint8 (size, size)}``: a decoded [0, 1] image through the one preprocessing at each member's size."""
        return {size: resize_to_model(pixels, size) for size in self.input_sizes}

    def load_inputs(self, source: ImageSource) -> dict[int, np.ndarray]:
        """Decode a file once and resize it for every member (what batch prediction feeds :meth:`predict_uint8`).

        Raises:
            ImageReadError: the image cannot be used.
        """
        if len(self.input_sizes) == 1:
            return {self.input_sizes[0]: to_model_uint8(source, self.input_sizes[0])}
        return self.resize_inputs(decode_image(source).pixels)

    def load_checked(self, source: ImageSource) -> tuple[dict[int, np.ndarray], list[str]]:
        """:meth:`load_inputs` and the warnings that need no model (:meth:`image_warnings`), from one decode.

        Raises:
            ImageReadError: the image cannot be used.
        """
        inputs, notes, _ = self.load_screened(source)
        return inputs, notes

    def load_screened(self, source: ImageSource) -> tuple[dict[int, np.ndarray], list[str], list[str]]:
        """:meth:`load_checked` that also says which warnings are the input check's (:meth:`check_warnings`).

        Returns:
            ``(inputs, all warnings that need no model, the input check's among them)``.

        Raises:
            ImageReadError: the image cannot be used.
        """
        decoded = decode_image(source)
        inputs = self.resize_inputs(decoded.pixels)
        checks = self.check_warnings(decoded, inputs[self.reference_size])
        return inputs, list(decoded.warnings) + checks, checks

    def _normalised(self, images_uint8: Mapping[int, np.ndarray]) -> list[np.ndarray]:
        batches = []
        for member in self.members:
            size = int(member.preprocess.size)
            if size not in images_uint8:
                raise ValueError(f"no {size} px input given for member {member.name}")
            images = np.asarray(images_uint8[size])
            if images.ndim == 2:
                images = images[np.newaxis]
            batches.append(normalize(images, member.preprocess)[..., np.newaxis])
        return batches

    def _combine(self, logits: Sequence[np.ndarray], probabilities: Sequence[np.ndarray]) -> np.ndarray:
        """Raw probabilities: the one model's own output, or the sigmoid of the weighted mean of the members' logits."""
        if len(logits) == 1:
            return probabilities[0]
        return sigmoid(sum(w * z for w, z in zip(self.weights, logits)))

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.calibration is None else np.asarray(self.calibration.apply(raw), dtype=float)

    # -- public API -----------------------------------------------------------

    def predict(self, image: ImageSource | DecodedImage | np.ndarray) -> dict[str, float]:
        """Calibrated probability of each finding for one image.

        Raises:
            ImageReadError: the image cannot be used.
        """
        decoded = self._decode(image)
        _, calibrated = self.predict_uint8(self.resize_inputs(decoded.pixels))
        return dict(zip(self.findings, calibrated[0].tolist()))

    def predict_batch(self, images: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw (uncalibrated) and calibrated probabilities of preprocessed images.

        Args:
            images: float32 (n, size, size, 1) already normalised, for a
                one-model Predictor; for an ensemble, one such array per
                member (each at the member's size and normalisation).

        Returns:
            ``(raw, calibrated)``, each (n, 14).
        """
        if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
            images = [images]
        if len(images) != len(self.members):
            raise ValueError(f"{len(images)} input arrays for {len(self.members)} members")
        raw, _ = self._forward(images)
        return raw, self._calibrate(raw)

    def _forward(self, batches: Sequence[np.ndarray], screen: Mapping[int, np.ndarray] | None = None):
        """``(raw, checks)``: every member once; with ``screen`` (the 8-bit inputs) and a reference, the reference
        member also gives its features for the learned check (``checks``, else None)."""
        logits, probabilities, checks = [], [], None
        with self._lock:
            for k, (runner, batch) in enumerate(zip(self._runners, batches)):
                batch = np.asarray(batch, dtype=np.float32)
                if screen is not None and self.ood is not None and k == self.ood_member_index:
                    features, z, p = runner.features_and_scores(batch)
                    small = np.asarray(screen[int(runner.size)])
                    checks = self.ood.check(pooled(features), small if small.ndim == 3 else small[np.newaxis])
                else:
                    z, p = runner.scores(batch)
                logits.append(z)
                probabilities.append(p)
        return self._combine(logits, probabilities), checks

    def predict_screened(self, images: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[dict] | None]:
        """:meth:`predict_uint8` plus the learned check, from the same forward pass.

        Returns:
            ``(raw, calibrated, checks)``: per image, the learned check's
            numbers (:meth:`cxr_core.screening.ood.FeatureReference.check`; warn
            with :meth:`feature_warnings`), or None when the bundle has no reference.
        """
        raw, checks = self._forward(self._normalised(images), screen=images)
        return raw, self._calibrate(raw), checks

    def pooled_features(self, member_index: int, batch: np.ndarray) -> np.ndarray:
        """One member's ``"features"`` for its normalised inputs (n, size, size, 1), averaged over a 2 x 2 grid.

        Returns (n, 2, 2, D) float64 (:func:`cxr_core.screening.ood.pooled`): the
        grid score reads the cells, the feature score their mean, which is the
        global average pool.
        """
        with self._lock:
            features = self._runners[member_index].features(np.asarray(batch, dtype=np.float32))
        return pooled(features)

    def image_warnings(self, decoded: DecodedImage, small_uint8: np.ndarray | None = None) -> list[str]:
        """Warnings that need no model: decoding's, the simple rules' (size, shape, near-constant) and the intensity check's.

        Args:
            decoded: the decoded image.
            small_uint8: the image at :attr:`reference_size` (8-bit), for the intensity check; None skips it.
        """
        return list(decoded.warnings) + self.check_warnings(decoded, small_uint8)

    def check_warnings(self, decoded: DecodedImage, small_uint8: np.ndarray | None = None) -> list[str]:
        """The input check's warnings that need no model (the simple rules, the intensity check): those that withhold
        the reading, unlike decoding's notes (a colour file converted, a damaged orientation tag)."""
        notes = rule_warnings(decoded.pixels, decoded.original_shape)
        if small_uint8 is not None and constant_warning(decoded.pixels) is None:  # a blank image is already warned
            notes += intensity_warnings(small_uint8, self.metadata.get("intensity_reference"))
        return notes

    @staticmethod
    def feature_warnings(check: dict | None) -> list[str]:
        """The learned check's warning for one image's numbers (none without a reference)."""
        return [OOD_WARNING] if check and check.get("unlike_training") else []

    def predict_uint8(self, images: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw and calibrated probabilities of 8-bit model-size images.

        Args:
            images: ``{size: uint8 (n, size, size)}`` with one entry per
                distinct member input size (:attr:`input_sizes`), as
                :meth:`load_inputs` or the training cache gives them; each
                member normalises with its own preprocessing.

        Returns:
            ``(raw, calibrated)``, each (n, 14).
        """
        return self.predict_batch(self._normalised(images))

    def explain(
        self, image: ImageSource | DecodedImage | np.ndarray, findings: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Grad-CAM++ map of each requested finding (all 14 by default), at the image's size."""
        return self.analyze(image, explain=findings if findings is not None else self.findings).heatmaps

    def analyze(
        self,
        image: ImageSource | DecodedImage | np.ndarray,
        *,
        explain: Sequence[str] | None = None,
        inputs: Mapping[int, np.ndarray] | None = None,
    ) -> Analysis:
        """Probabilities and maps from one forward pass of each member's backbone.

        Args:
            image: path, bytes, decoded image or 2-D [0, 1] array.
            explain: findings to map; ``None`` maps all 14.
            inputs: the image already resized for every member
                (``{size: uint8 (size, size)}``, :meth:`load_inputs`); skips resizing.

        Raises:
            ImageReadError: the image cannot be used.
        """
        decoded = self._decode(image)
        smalls = dict(inputs) if inputs is not None else self.resize_inputs(decoded.pixels)
        batches = self._normalised(smalls)
        wanted = self.findings if explain is None else tuple(canonical_finding(f) for f in explain)
        indices = [self.findings.index(f) for f in wanted]
        logits, probabilities, cams, check = [], [], [], None
        with self._lock:
            for k, (runner, batch) in enumerate(zip(self._runners, batches)):
                features, z, p = runner.features_and_scores(batch)
                if self.ood is not None and k == self.ood_member_index:
                    check = self.ood.check(pooled(features), smalls[int(runner.size)][np.newaxis])[0]
                # A member kept out of the maps (map weight 0) is not explained: its maps would be multiplied by 0.
                cams.append(runner.explainer(features, indices) if self.map_weights[k] > 0 else None)
                logits.append(z)
                probabilities.append(p)
        raw = self._combine(logits, probabilities)
        calibrated = self._calibrate(raw)[0]
        height, width = decoded.pixels.shape
        heatmaps = {}
        for k, finding in enumerate(wanted):
            maps = [(w, resize_map(member_cams[k], (height, width)))
                    for w, member_cams in zip(self.map_weights, cams) if member_cams is not None]
            heatmaps[finding] = maps[0][1] if len(cams) == 1 else np.clip(
                sum(np.float32(w) * m for w, m in maps), 0.0, 1.0).astype(np.float32)
        probabilities_by_finding = dict(zip(self.findings, calibrated.tolist()))
        checks = self.check_warnings(decoded, smalls[self.reference_size]) + self.feature_warnings(check)
        notes = list(decoded.warnings) + checks
        return Analysis(
            probabilities=probabilities_by_finding,
            raw_probabilities=dict(zip(self.findings, raw[0].tolist())),
            positive={f: bool(p >= t) for (f, p), t in zip(probabilities_by_finding.items(), self.thresholds)},
            heatmaps=heatmaps,
            image=decoded,
            warnings=tuple(notes),
            ranked=tuple(sorted(self.findings, key=lambda f: -probabilities_by_finding[f])),
            input_check=check,
            withheld_because=tuple(checks),
            reading=self.policy.read(probabilities_by_finding, withheld_because=checks),
        )
