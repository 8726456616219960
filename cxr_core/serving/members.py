"""The members of a Predictor: one classifier each, and its compiled calls.

A :class:`Member` is what a Predictor is told about one classifier (its
model, preprocessing, weight, heatmap method, test-time views, compute
dtype); its runner compiles the model's calls once per input shape: the
scores, or the features and the scores from one forward pass, the test-time
views averaged in logits, and the member's Grad-CAM head; or, for a member
served by its LiteRT form (:mod:`cxr_core.serving.litert`), the same calls
without TensorFlow (:class:`LiteMemberRunner`). Kept apart from
:mod:`cxr_core.serving.predictor`, which combines the members (weights,
calibration, the reading) and checks the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxr_core.data.preprocessing import PreprocessConfig
from cxr_core.serving.litert import LiteModel, MemberServingForm
from cxr_core.serving.maps import linear_head_cams
from cxr_core.serving.precision import COMPUTE_DTYPES
from cxr_core.serving.tta import check_tta_views, crop_views, mean_over_views, with_views

if TYPE_CHECKING:
    import keras

__all__ = ["Member", "MemberRunner", "LiteMemberRunner", "runner_for", "logit", "sigmoid"]


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


class MemberRunner:
    """A member's calls: probabilities and logits, or features too, from one forward pass; compiled or eager.

    Compiled (the default), each call is a TensorFlow graph traced once per
    input shape: an eager Keras call costs more than a small network itself
    on a CPU, but the first call of each shape pays the tracing (about a
    second or more per member). With ``compiled=False`` the calls run op by op
    until :meth:`compile` has traced them, so a freshly loaded model answers
    its first image at once (the app's start; see :meth:`Predictor.warm_up`).

    Args:
        member: the classifier.
        findings: the output columns it must have.
        compiled: start with the compiled calls (they trace on first use).
    """

    def __init__(self, member: Member, findings: tuple[str, ...], *, compiled: bool = True) -> None:
        import keras
        import tensorflow as tf

        from cxr_core.serving.explain import HeadGradcamPlusPlus, split_model
        from cxr_core.serving.precision import with_bfloat16_trunk

        model = member.model
        size = model.inputs[0].shape[1]
        if size != member.preprocess.size:
            raise ValueError(f"{member.name}: the model takes {size} px inputs but the preprocessing says {member.preprocess.size}")
        if int(model.outputs[0].shape[-1]) != len(findings):
            raise ValueError(f"{member.name}: the model has {model.outputs[0].shape[-1]} outputs, expected {len(findings)}")
        self.member = member
        self.size = int(member.preprocess.size)
        if member.compute_dtype == "bfloat16":
            model = with_bfloat16_trunk(model)
        backbone, head = split_model(model)
        logits = _logits_output(model)
        if logits is None:
            scores = keras.Model(model.inputs[0], model.outputs[0])
        else:
            scores = keras.Model(model.inputs[0], [logits, model.outputs[0]])
        both = keras.Model(model.inputs[0], [*backbone.outputs, *([] if logits is None else [logits])])
        self._eager_scores = lambda x: scores(x, training=False)
        self._eager_both = lambda x: both(x, training=False)
        # Compiled once per input shape: an eager Keras call costs more than the network itself on CPU.
        self._compiled_scores = tf.function(self._eager_scores, reduce_retracing=True)
        self._compiled_both = tf.function(self._eager_both, reduce_retracing=True)
        self._has_logits = logits is not None
        self.explainer = HeadGradcamPlusPlus(head, method=member.explanation, compiled=compiled)
        self.compiled = bool(compiled)

    def compile(self, batch: np.ndarray, *, explain: bool = True) -> None:
        """Trace the compiled calls an analysis makes for ``batch``'s shape (one forward pass over the image and its
        test-time views, and the heatmap head), then use them.

        Safe while another thread runs the eager calls: the compiled calls are
        switched on only once traced.

        Args:
            batch: normalised inputs (n, size, size, 1); a plain gray image will do.
            explain: also trace the heatmap head (not needed for a member kept out of the maps).
        """
        batch = np.asarray(batch, dtype=np.float32)
        out = self._compiled_both(with_views(batch, self.member.tta_views))
        if explain:
            self.explainer.compile(np.asarray(out[0])[: len(batch)])
        self.compiled = True

    def _scores(self, batch):
        return (self._compiled_scores if self.compiled else self._eager_scores)(batch)

    def _both(self, batch):
        return (self._compiled_both if self.compiled else self._eager_both)(batch)

    def _view_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._scores(batch)
        if self._has_logits:
            logits, probabilities = out
            return np.asarray(logits, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
        probabilities = np.asarray(out, dtype=np.float64)
        return logit(probabilities), probabilities

    def _with_crops(self, batch: np.ndarray, logits: np.ndarray, probabilities: np.ndarray):
        """With test-time augmentation: the full view's scores averaged (in logits) with the crops'."""
        if self.member.tta_views == 1:
            return logits, probabilities
        crop_logits, _ = self._view_scores(crop_views(batch))
        logits = mean_over_views(logits, crop_logits)
        return logits, sigmoid(logits)

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, probabilities)`` (n, 14) float64 for normalised inputs."""
        return self._with_crops(batch, *self._view_scores(batch))

    def features(self, batch: np.ndarray) -> np.ndarray:
        """The full image's ``"features"`` alone: no test-time views, which only the scores use."""
        return np.asarray(self._both(batch)[0])

    def features_and_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features, logits, probabilities)``: features of the full image, from the same forward pass as its scores.

        The image and its test-time views go through the network as one batch:
        one call, and one graph to trace, per member (an analysis's first call
        pays the tracing).
        """
        n = len(batch)
        out = self._both(with_views(np.asarray(batch, dtype=np.float32), self.member.tta_views))
        features, probabilities = np.asarray(out[0])[:n], np.asarray(out[1], dtype=np.float64)
        logits = np.asarray(out[2], dtype=np.float64) if self._has_logits else logit(probabilities)
        if self.member.tta_views == 1:
            return features, logits, probabilities
        logits = mean_over_views(logits[:n], logits[n:])
        return features, logits, sigmoid(logits)


class LiteMemberRunner:
    """A member's calls from its LiteRT serving form (:mod:`cxr_core.serving.litert`): the same interface and numbers
    as :class:`MemberRunner`, no TensorFlow.

    Args:
        member: the member (its ``serving`` form set).
        findings: the output columns.
    """

    compiled = True  # nothing to trace

    def __init__(self, member: Member, findings: tuple[str, ...]) -> None:
        form = member.serving
        if form is None:
            raise ValueError(f"{member.name} has no serving form")
        if form.input_size != member.preprocess.size:
            raise ValueError(f"{member.name}: the serving form takes {form.input_size} px inputs but the preprocessing "
                             f"says {member.preprocess.size}")
        if form.kernel.shape[1] != len(findings):
            raise ValueError(f"{member.name}: the serving form has {form.kernel.shape[1]} outputs, expected {len(findings)}")
        self.member = member
        self.size = int(form.input_size)
        self._model = LiteModel(form)
        self._kernel = form.kernel
        self.explainer = self._explain

    def compile(self, batch: np.ndarray, *, explain: bool = True) -> None:
        """Nothing to trace; runs ``batch`` once so its size is allocated."""
        self._model(with_views(np.asarray(batch, dtype=np.float32), self.member.tta_views))

    def _explain(self, features: np.ndarray, finding_indices) -> np.ndarray:
        return linear_head_cams(features, self._kernel, finding_indices, method=self.member.explanation)

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, probabilities)`` (n, 14) float64 for normalised inputs."""
        _, logits, probabilities = self.features_and_scores(batch)
        return logits, probabilities

    def features(self, batch: np.ndarray) -> np.ndarray:
        """The full image's ``"features"`` (no test-time views)."""
        return self._model(np.asarray(batch, dtype=np.float32))[0]

    def features_and_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(features, logits, probabilities)``: the image and its test-time views in one call."""
        n = len(batch)
        features, logits = self._model(with_views(np.asarray(batch, dtype=np.float32), self.member.tta_views))
        logits = np.asarray(logits, dtype=np.float64)
        if self.member.tta_views != 1:
            logits = mean_over_views(logits[:n], logits[n:])
        return np.array(features[:n]), logits, sigmoid(logits)


def runner_for(member: Member, findings: tuple[str, ...], *, compiled: bool = True) -> MemberRunner | LiteMemberRunner:
    """The member's runner: :class:`LiteMemberRunner` when it has a serving form (no TensorFlow), else
    :class:`MemberRunner`."""
    if member.serving is not None:
        return LiteMemberRunner(member, findings)
    return MemberRunner(member, findings, compiled=compiled)


def _logits_output(model: keras.Model):
    """The output of the model's ``"logits"`` layer (cast to float32), or None for a model without one."""
    import keras

    from cxr_core.bundle.layer_names import LOGITS

    try:
        output = model.get_layer(LOGITS).output
    except ValueError:
        return None
    return keras.ops.cast(output, "float32")


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))
