"""The public face of a trained model: a film screened, read and explained from one forward pass.

    predictor = Predictor.from_bundle("models/default")
    inputs = predictor.prepare("scan.png")            # decoded once, at every member's size, screened without the model
    analysis = predictor.analyze(inputs)              # probabilities, the learned check, the reading and the maps
    predictor.analyze("scan.png", explain=["Mass"])   # the same from a file, one finding mapped
    predictor.analyze([a, b, c], explain=[])          # a batch: one forward pass per member, one Analysis per film
    predictor.predict("scan.png")                     # {finding: calibrated probability}

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from cxr_core.data.decoding import DecodedImage
from cxr_core.data.imageio import ImageSource, decode_image
from cxr_core.data.preprocessing import normalize, resize_to_model
from cxr_core.errors import ImageReadError
from cxr_core.evaluation.calibration import Calibration
from cxr_core.evaluation.reading import Reading, ReadingPolicy
from cxr_core.findings import FINDINGS, canonical_finding
from cxr_core.screening.check import learned_warnings, model_free_warnings
from cxr_core.screening.ood import FeatureReference, load_reference, pooled
from cxr_core.serving.maps import resize_map
from cxr_core.serving.members import Member, runner_for, sigmoid
from cxr_core.serving.precision import check_compute_mode, member_compute_dtype

if TYPE_CHECKING:
    import keras

    from cxr_core.data.preprocessing import PreprocessConfig

#: How :meth:`Predictor.from_bundle` runs the members: Keras (TensorFlow), their LiteRT serving forms, or LiteRT
#: where every member has one.
RUNTIMES = ("keras", "litert", "auto")
#: Default operating point when a bundle has no fitted thresholds yet.
UNFITTED_THRESHOLD = 0.5


@dataclass(frozen=True)
class Inputs:
    """One film made ready for the members (:meth:`Predictor.prepare`): decoded once, resized, screened without the model.

    Attributes:
        resized: ``{size: uint8 (size, size)}``, one entry per member input size (:attr:`Predictor.input_sizes`).
        image: the decoded film; None when prepared without it (its maps then come at the largest input size).
        notes: decoding's notes (a colour file converted, a damaged tag ...): shown, never withholding.
        checks: the input check's warnings that need no model (:func:`cxr_core.screening.check.model_free_warnings`).
    """

    resized: Mapping[int, np.ndarray]
    image: DecodedImage | None = None
    notes: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()


#: What :meth:`Predictor.analyze` takes: prepared inputs, or anything :meth:`Predictor.prepare` takes.
Film = Union[Inputs, ImageSource, DecodedImage, np.ndarray]


@dataclass(frozen=True)
class Analysis:
    """Everything the app shows for one image.

    Attributes:
        probabilities: {finding: calibrated probability}, FINDINGS order.
        raw_probabilities: {finding: model output before calibration}.
        positive: {finding: probability >= the finding's operating threshold}.
        heatmaps: {finding: float32 map in [0, 1] at the image's size}, the findings asked for.
        image: the decoded image (pixels in [0, 1]); None when prepared without it.
        warnings: reasons to doubt the input: decoding's notes and the input check's warnings.
        ranked: the findings, most probable first.
        input_check: the learned check's numbers (:meth:`cxr_core.screening.ood.FeatureReference.check`:
            each score, its threshold, ``beyond``, ``unlike_training``); None when the bundle has no reference.
        withheld_because: the input check's warnings (the simple rules, the intensity check, the learned
            check), a subset of ``warnings``: any of them withholds the reading by default.
        reading: what a reader is shown at the bundle's default operating point, withheld where the input
            check warned (:class:`cxr_core.evaluation.reading.Reading`); pages that offer another operating
            point or "show anyway" ask :attr:`Predictor.policy` again.
    """

    probabilities: dict[str, float]
    raw_probabilities: dict[str, float]
    positive: dict[str, bool]
    heatmaps: dict[str, np.ndarray]
    image: DecodedImage | None
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
        model: Keras model with the cxr-assist layer names (``"features"`` ... ``"probabilities"``); or None with
            ``members``.
        preprocess: the preprocessing ``model`` was trained with.
        members: instead of ``model`` and ``preprocess``: the classifiers of an ensemble, each with its own
            preprocessing and weight.
        findings: output column names (must be the 14 FINDINGS in order).
        calibration: per-finding calibration fitted on validation (after averaging, for an ensemble), or None.
        thresholds: per-finding operating thresholds on calibrated probabilities, or None.
        metadata: the bundle's metadata (shown by the app; validated sensitivity etc.).
        ood: the learned not-a-chest-X-ray check's reference (:mod:`cxr_core.screening.ood`; from the bundle's
            ``"ood"`` key), or None to skip that check (the simple rules still apply).
        compiled: True (default): every member call is a compiled graph, traced on first use or by :meth:`warm_up`.
            False: the members run op by op until :meth:`warm_up` has traced them, so a model just loaded answers a
            first image without waiting for its tracing (the app's start); same numbers either way.
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

    @classmethod
    def from_bundle(cls, path: str | Path, *, compute: str = "float32", compiled: bool = True,
                    runtime: str = "keras", serving_cache: str | Path | None = None) -> "Predictor":
        """Load a model bundle folder, one model or an ensemble (see :mod:`cxr_core.bundle.format`).

        The one place the runtime is chosen: ``"auto"`` falls back to the Keras models here, and nowhere else.

        Args:
            path: the bundle folder.
            compute: ``"float32"`` (the reference the bundle was evaluated with), ``"bfloat16"`` or ``"auto"``: trunks
                of the backbones that gain from it in bfloat16, ``"auto"`` only on a CPU that computes it natively
                (:mod:`cxr_core.serving.precision`). Keras members only: a serving form computes in float32.
            compiled: as the constructor's (False: answer op by op until :meth:`warm_up`).
            runtime: one of :data:`RUNTIMES`: ``"keras"`` (default) loads each member's ``model.keras`` with
                TensorFlow; ``"litert"`` runs each member's serving form (:mod:`cxr_core.serving.litert`; same float32
                numbers, no TensorFlow) and raises ``ServingFormError`` where a member has none; ``"auto"`` is
                ``"litert"`` when every member has one, else ``"keras"``.
            serving_cache: the serving forms' folder (default :func:`cxr_core.serving.litert.cache_root`).

        Raises:
            BundleError: not a bundle, or its findings order or input size do not match this code or its stored model.
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

    # -- what it is -----------------------------------------------------------

    @property
    def runtime(self) -> str:
        """``"litert"`` when every member runs its serving form (no TensorFlow), else ``"keras"``."""
        return "litert" if all(m.serving is not None for m in self.members) else "keras"

    @property
    def is_compiled(self) -> bool:
        """Whether every member runs its compiled calls (False while an eager-start model is still tracing)."""
        return all(runner.compiled for runner in self._runners)

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def compute_dtypes(self) -> dict[str, str]:
        """``{member name: "float32" or "bfloat16"}``: what each member's trunk computes in."""
        return {m.name: m.compute_dtype for m in self.members}

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

    # -- warming up -----------------------------------------------------------

    def warm_up(self, progress: Callable[[str], None] | None = None) -> None:
        """Trace every member's compiled calls before they are needed, the members in parallel threads.

        Tracing (the graph of the forward pass over the image and its test-time views, for each input size) costs a
        second or more per member the first time; done here, the first real analysis costs what every later one does.
        The members trace at once on their own threads (graph building is partly in C++), then one full analysis of a
        plain gray image checks the whole path. With ``compiled=True`` analyses wait meanwhile; with
        ``compiled=False`` they go on op by op, each member switching to its compiled calls once traced.

        Args:
            progress: receives one line per step ("compiling 3 members ...", "checking ...").
        """
        gray = self._plain_gray()
        batches = self._normalised([gray])

        def trace(k: int) -> None:
            self._runners[k].compile(batches[k])

        if progress:
            progress(f"compiling {len(self._runners)} member{'s' * (len(self._runners) > 1)} for this CPU")
        with self._lock if self.is_compiled else contextlib.nullcontext():
            with ThreadPoolExecutor(max_workers=len(self._runners), thread_name_prefix="cxr-assist-trace") as pool:
                list(pool.map(trace, range(len(self._runners))))
        if progress:
            progress("checking a full analysis")
        self.analyze(gray)

    def compile_member(self, index: int) -> None:
        """Trace one member's compiled calls for an analysis (as :meth:`warm_up` does for all), holding the
        analysis lock: a caller that traces the members one by one between analyses (the app, on its model thread)
        keeps an analysis from waiting for more than one member's tracing.

        Args:
            index: the member's position in :attr:`members`.
        """
        batch = self._normalised([self._plain_gray()])[index]
        with self._lock:
            self._runners[index].compile(batch)

    def _plain_gray(self) -> Inputs:
        """A plain gray film, what the tracing runs (its numbers do not matter, only its shapes)."""
        return self.prepare(np.full((256, 256), 0.5, dtype=np.float32))

    # -- a film in ------------------------------------------------------------

    def prepare(self, source: ImageSource | DecodedImage | np.ndarray, *, keep_image: bool = True) -> Inputs:
        """A film decoded once, through the one preprocessing at every member's input size, and screened by the
        input check's rules that need no model (the simple rules, the intensity check).

        Args:
            source: path, bytes, decoded image or 2-D [0, 1] array.
            keep_image: keep the decoded film (for its maps at its own size and for showing it); False (batch jobs)
                keeps only the resized copies.

        Raises:
            ImageReadError: the image cannot be used.
        """
        decoded = self._decode(source)
        resized = {size: resize_to_model(decoded.pixels, size) for size in self.input_sizes}
        checks = model_free_warnings(decoded, resized[self.reference_size], self.metadata.get("intensity_reference"))
        return Inputs(resized=resized, image=decoded if keep_image else None, notes=tuple(decoded.warnings),
                      checks=tuple(checks))

    @staticmethod
    def _decode(image: ImageSource | DecodedImage | np.ndarray) -> DecodedImage:
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

    def _normalised(self, films: Sequence[Inputs]) -> list[np.ndarray]:
        """Each member's batch: the films' 8-bit copies at its size, normalised its way, (n, size, size, 1) float32."""
        batches = []
        for member in self.members:
            size = int(member.preprocess.size)
            if any(size not in film.resized for film in films):
                raise ValueError(f"no {size} px input given for member {member.name}")
            images = np.stack([np.asarray(film.resized[size]) for film in films])
            batches.append(normalize(images, member.preprocess)[..., np.newaxis])
        return batches

    # -- what the model says --------------------------------------------------

    def predict(self, source: Film) -> dict[str, float]:
        """Calibrated probability of each finding for one film (:meth:`analyze` without maps).

        Raises:
            ImageReadError: the image cannot be used.
        """
        return self.analyze(source, explain=[]).probabilities

    def features(self, images_uint8: np.ndarray) -> np.ndarray:
        """The learned check's member's ``"features"`` for its 8-bit inputs (n, size, size), averaged over a 2 x 2 grid
        (what fitting the learned check reads, :mod:`cxr_core.jobs.ood_fit`).

        Returns (n, 2, 2, D) float64 (:func:`cxr_core.screening.ood.pooled`): the
        grid score reads the cells, the feature score their mean, which is the
        global average pool.
        """
        index = self.ood_member_index
        batch = normalize(np.asarray(images_uint8), self.members[index].preprocess)[..., np.newaxis]
        with self._lock:
            features = self._runners[index].features(np.asarray(batch, dtype=np.float32))
        return pooled(features)

    def analyze(
        self,
        inputs: Film | Sequence[Film],
        *,
        explain: Sequence[str] | Callable[[Reading], Sequence[str]] | None = None,
    ) -> Analysis | list[Analysis]:
        """Probabilities, the input check, the reading and the maps of one film or a batch, from one forward pass of
        each member.

        Args:
            inputs: one film (:class:`Inputs` from :meth:`prepare`, or anything it takes: prepared here), or a list
                or tuple of them (a batch: one forward pass per member for all).
            explain: the findings to map; ``None`` maps all 14; or a function of a film's :class:`Reading` that names
                them (e.g. ``lambda reading: reading.flagged[:1]``, the most probable flagged finding).

        Returns:
            the film's :class:`Analysis`, or one per film, in order, for a list or tuple.

        Raises:
            ImageReadError: an image cannot be used.
        """
        batch = isinstance(inputs, (list, tuple))
        films = [film if isinstance(film, Inputs) else self.prepare(film) for film in (inputs if batch else [inputs])]
        if not films:
            return []
        batches = self._normalised(films)
        logits, probabilities, features, checks = [], [], [], None
        with self._lock:
            for k, (runner, x) in enumerate(zip(self._runners, batches)):
                f, z, p = runner.features_and_scores(x)
                if self.ood is not None and k == self.ood_member_index:
                    small = np.stack([np.asarray(film.resized[int(runner.size)]) for film in films])
                    checks = self.ood.check(pooled(f), small)
                features.append(f)
                logits.append(z)
                probabilities.append(p)
            raw = self._combine(logits, probabilities)
            calibrated = self._calibrate(raw)
            analyses = [self._read(film, raw[i], calibrated[i], None if checks is None else checks[i])
                        for i, film in enumerate(films)]
            cams = [self._cams(features, i, self._wanted(explain, a.reading)) for i, a in enumerate(analyses)]
        analyses = [replace(a, heatmaps=self._maps(film, c)) if c else a for a, film, c in zip(analyses, films, cams)]
        return analyses if batch else analyses[0]

    def _combine(self, logits: Sequence[np.ndarray], probabilities: Sequence[np.ndarray]) -> np.ndarray:
        """Raw probabilities: the one model's own output, or the sigmoid of the weighted mean of the members' logits."""
        if len(logits) == 1:
            return probabilities[0]
        return sigmoid(sum(w * z for w, z in zip(self.weights, logits)))

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.calibration is None else np.asarray(self.calibration.apply(raw), dtype=float)

    def _read(self, film: Inputs, raw: np.ndarray, calibrated: np.ndarray, check: dict | None) -> Analysis:
        """One film's Analysis without its maps: the probabilities, every warning, and the reading."""
        probabilities = dict(zip(self.findings, calibrated.tolist()))
        withheld = [*film.checks, *learned_warnings(check)]
        return Analysis(
            probabilities=probabilities,
            raw_probabilities=dict(zip(self.findings, raw.tolist())),
            positive={f: bool(p >= t) for (f, p), t in zip(probabilities.items(), self.thresholds)},
            heatmaps={},
            image=film.image,
            warnings=(*film.notes, *withheld),
            ranked=tuple(sorted(self.findings, key=lambda f: -probabilities[f])),
            input_check=check,
            withheld_because=tuple(withheld),
            reading=self.policy.read(probabilities, withheld_because=withheld),
        )

    def _wanted(self, explain, reading: Reading) -> tuple[str, ...]:
        if explain is None:
            return self.findings
        return tuple(canonical_finding(f) for f in (explain(reading) if callable(explain) else explain))

    def _cams(self, features: Sequence[np.ndarray], i: int, wanted: tuple[str, ...]) -> dict[str, list]:
        """Film ``i``'s maps at each member's feature size: ``{finding: [(map weight, cam) per member in the maps]}``.
        A member kept out of the maps (map weight 0) is not explained: its maps would be multiplied by 0."""
        if not wanted:
            return {}
        indices = [self.findings.index(f) for f in wanted]
        per_member = [(w, runner.explainer(f[i:i + 1], indices))
                      for w, runner, f in zip(self.map_weights, self._runners, features) if w > 0]
        return {finding: [(w, cams[k]) for w, cams in per_member] for k, finding in enumerate(wanted)}

    def _maps(self, film: Inputs, cams: dict[str, list]) -> dict[str, np.ndarray]:
        """The maps at the film's size (the largest input size without its image), averaged with the map weights."""
        largest = max(self.input_sizes)
        shape = film.image.pixels.shape if film.image is not None else (largest, largest)
        maps = {}
        for finding, weighted in cams.items():
            resized = [(w, resize_map(cam, shape)) for w, cam in weighted]
            maps[finding] = resized[0][1] if len(self.members) == 1 else np.clip(
                sum(np.float32(w) * m for w, m in resized), 0.0, 1.0).astype(np.float32)
        return maps
