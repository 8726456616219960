"""The members of a Predictor: one classifier each, and the one runner of its calls.

A :class:`Member` is what a Predictor is told about one classifier (its
model, preprocessing, weight, heatmap method, test-time views, compute
dtype). Its :class:`MemberRunner` asks a backend for the forward pass alone
(a normalised batch -> features, logits): the Keras model
(:class:`cxr_core.serving.keras_forward.KerasForward`, compiled once per
input shape, its trunk in bfloat16 where chosen) or the member's LiteRT
serving form without TensorFlow (:class:`cxr_core.serving.litert.LiteModel`).
The rest is written once for both: the test-time views (one forward pass
over the image and its crops, averaged in logits), the sigmoid, and the
Grad-CAM(++) maps in closed form from the features and the logits kernel
(:mod:`cxr_core.serving.maps`). Kept apart from
:mod:`cxr_core.serving.predictor`, which combines the members (weights,
calibration, the reading) and checks the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from cxr_core.bundle.format import check_tta_views
from cxr_core.data.preprocessing import PreprocessConfig
from cxr_core.serving.litert import LiteModel, MemberServingForm
from cxr_core.serving.maps import LinearHeadCams
from cxr_core.serving.precision import COMPUTE_DTYPES
from cxr_core.serving.tta import mean_over_views, with_views

if TYPE_CHECKING:
    import keras

__all__ = ["Member", "Forward", "MemberRunner", "runner_for", "sigmoid"]


@dataclass(frozen=True)
class Member:
    """One classifier of a Predictor.

    Attributes:
        model: Keras model with the cxr-assist layer names (``"features"``, ``"logits"``, ``"probabilities"``);
            None for a member served by its LiteRT form alone (``serving``).
        preprocess: the preprocessing it was trained with (its own input size and normalisation).
        weight: its share of the averaged logits (normalised over the members).
        name: a label (the member's folder in an ensemble bundle).
        explanation: its heatmap method, ``"gradcam++"`` or ``"gradcam"`` (as its bundle records).
        map_weight: its share of the averaged heatmaps (default: ``weight``); 0
            keeps a member out of the maps, e.g. one whose maps measured worse
            on the validation boxes.
        tta_views: 1, or 6 for test-time augmentation: its logits are the
            mean over the image and five crops (:mod:`cxr_core.serving.tta`);
            its maps stay those of the image.
        compute_dtype: ``"float32"``, or ``"bfloat16"`` to run its trunk (the
            layers before ``"features"``) in bfloat16; the features and the
            head stay float32. :meth:`Predictor.from_bundle` chooses it per
            backbone and CPU (:mod:`cxr_core.serving.precision`).
        serving: its LiteRT serving form
            (:class:`cxr_core.serving.litert.MemberServingForm`): when set, the
            member runs with LiteRT, without TensorFlow, and ``model`` may be None.
    """

    model: keras.Model | None
    preprocess: PreprocessConfig
    weight: float = 1.0
    name: str = "model"
    explanation: str = "gradcam++"
    map_weight: float | None = None
    tta_views: int = 1
    compute_dtype: str = "float32"
    serving: MemberServingForm | None = None

    def __post_init__(self) -> None:
        if self.model is None and self.serving is None:
            raise ValueError(f"{self.name}: a member needs a Keras model or a serving form")
        if self.serving is not None and self.compute_dtype != "float32":
            raise ValueError(f"{self.name}: a serving form computes in float32")
        object.__setattr__(self, "tta_views", check_tta_views(self.tta_views))
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"{self.name}: compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
                             f"got {self.compute_dtype!r}")


class Forward(Protocol):
    """What a backend gives a runner: the forward pass, and what it needs first."""

    size: int  #: the square input size in pixels
    kernel: np.ndarray  #: float32 (d, n_findings), the logits layer's Dense kernel
    compiled: bool  #: whether it runs its compiled (traced) call

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features (n, h, w, d), logits (n, n_findings))`` float32 for normalised inputs (n, size, size, 1)."""

    def compile(self, batch: np.ndarray) -> None:
        """Trace (or allocate) for ``batch``'s shape, then run compiled."""


class MemberRunner:
    """A member's calls, whichever backend runs its forward pass: the scores, the features, both from one forward
    pass, and its heatmaps.

    Args:
        member: the classifier.
        forward: its backend (:func:`runner_for` picks it).
        findings: the output columns it must have.

    Attributes:
        size: the member's input size in pixels.
        explainer: ``explainer(features, finding_indices)`` -> float32
            (len(finding_indices), h, w) Grad-CAM(++) maps in [0, 1] of one
            image's features, in closed form (:class:`cxr_core.serving.maps.LinearHeadCams`).

    Raises:
        ValueError: the backend's model does not fit the member (input size, outputs).
    """

    def __init__(self, member: Member, forward: Forward, findings: tuple[str, ...]) -> None:
        if forward.size != member.preprocess.size:
            raise ValueError(f"{member.name}: the model takes {forward.size} px inputs but the preprocessing says "
                             f"{member.preprocess.size}")
        if forward.kernel.shape[1] != len(findings):
            raise ValueError(f"{member.name}: the model has {forward.kernel.shape[1]} outputs, expected {len(findings)}")
        self.member = member
        self.size = int(forward.size)
        self._forward = forward
        self.explainer = LinearHeadCams(forward.kernel, method=member.explanation)

    @property
    def compiled(self) -> bool:
        """Whether the forward pass runs compiled (False while an eager-start Keras member is not yet traced)."""
        return self._forward.compiled

    def compile(self, batch: np.ndarray) -> None:
        """Trace the forward pass an analysis makes for ``batch``'s shape (the image and its test-time views), then
        use it. Safe while another thread runs the eager call.

        Args:
            batch: normalised inputs (n, size, size, 1); a plain gray image will do (the closed-form maps have
                nothing to trace).
        """
        self._forward.compile(with_views(np.asarray(batch, dtype=np.float32), self.member.tta_views))

    def features(self, batch: np.ndarray) -> np.ndarray:
        """The full image's ``"features"`` (n, h, w, d) alone: no test-time views, which only the scores use."""
        return self._forward(np.asarray(batch, dtype=np.float32))[0]

    def features_and_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features, logits, probabilities)`` for normalised inputs (n, size, size, 1): the features of the full
        image (float32), its logits averaged over its test-time views and their sigmoid ((n, 14) float64).

        The image and its test-time views go through the network as one batch:
        one call, and one graph to trace, per member.
        """
        n = len(batch)
        features, logits = self._forward(with_views(np.asarray(batch, dtype=np.float32), self.member.tta_views))
        logits = np.asarray(logits, dtype=np.float64)
        if self.member.tta_views != 1:
            logits = mean_over_views(logits[:n], logits[n:])
        return features[:n], logits, sigmoid(logits)

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, probabilities)`` (n, 14) float64 for normalised inputs, as :meth:`features_and_scores`."""
        _, logits, probabilities = self.features_and_scores(batch)
        return logits, probabilities


def runner_for(member: Member, findings: tuple[str, ...], *, compiled: bool = True) -> MemberRunner:
    """The member's runner with its backend: its LiteRT serving form when it has one (no TensorFlow), else its Keras
    model.

    Args:
        compiled: with the Keras backend, start with its compiled call (traced
            on first use); False runs op by op until :meth:`MemberRunner.compile`,
            so that a freshly loaded model answers at once. LiteRT has nothing to trace.

    Raises:
        ValueError: the model does not fit the member, or has a head the closed-form maps do not cover.
        ServingFormError: LiteRT cannot open the serving form.
    """
    if member.serving is not None:
        return MemberRunner(member, LiteModel(member.serving), findings)
    from cxr_core.serving.keras_forward import KerasForward

    try:
        forward = KerasForward(member.model, compute_dtype=member.compute_dtype, compiled=compiled)
    except ValueError as exc:
        raise ValueError(f"{member.name}: {exc}") from exc
    return MemberRunner(member, forward, findings)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
