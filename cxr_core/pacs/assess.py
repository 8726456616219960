"""One received film through the model: the :class:`Assessment` its results state, and the picture they show.

Built on the :class:`~cxr_core.serving.predictor.Predictor`'s public API only
(:meth:`~cxr_core.serving.predictor.Predictor.analyze`): the node reads a film
exactly as ``training.predict`` and the Analyze page do (the same decoding,
preprocessing, input check and reading), so its numbers are theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from pydicom.uid import UID

from cxr_core.errors import ImageReadError
from cxr_core.pacs.assessment import Assessment
from cxr_core.reporting.words import WITHHELD_NOTE

#: SOP classes of the films the model reads: projection radiographs for presentation, and secondary captures
#: (digitised films and NIH-style exports are secondary captures with Modality DX or CR).
ASSESSED_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1",        # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",      # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.7",        # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.2",      # Multi-frame Grayscale Byte Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.3",      # Multi-frame Grayscale Word Secondary Capture Image Storage
})


@dataclass(frozen=True)
class FilmResult:
    """What the node makes of one film.

    Attributes:
        assessment: the numbers and words of the Structured Report.
        pixels: the decoded film in [0, 1] (h, w) for the Secondary Capture; None when not assessed.
        heatmap: the map of the most probable flagged finding at the film's size, in [0, 1]; None when nothing is
            flagged (the capture then shows the film with the triage) or when not assessed.
        heatmap_finding: the finding ``heatmap`` shows.
    """

    assessment: Assessment
    pixels: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    heatmap_finding: str | None = None


def not_assessed_reason_for_class(sop_class_uid: str) -> str | None:
    """Why an instance of this SOP class is not read (None: it is read)."""
    if str(sop_class_uid) in ASSESSED_SOP_CLASSES:
        return None
    name = UID(str(sop_class_uid)).name
    return (f"The instance is a {name} object, not a chest radiograph (CR, DX or a secondary capture of one): "
            "cxr-assist assesses frontal chest X-rays only.")


def assess_film(predictor, path: str | os.PathLike, *, sop_class_uid: str) -> FilmResult:
    """Read one film with the bundle's default operating point, as ``training.predict`` and the Analyze page do.

    Args:
        predictor: a loaded :class:`~cxr_core.serving.predictor.Predictor`.
        path: the film (a DICOM file).
        sop_class_uid: its SOP Class UID; classes other than :data:`ASSESSED_SOP_CLASSES` are not assessed.

    Returns:
        the film's :class:`FilmResult`; a film that cannot be read or that the
        input check withholds is ``not assessed`` with the reason.
    """
    point = predictor.policy.default_operating_point
    refused = not_assessed_reason_for_class(sop_class_uid)
    if refused:
        return FilmResult(Assessment.not_assessed(refused, operating_point=point))
    try:
        analysis = predictor.analyze(path, explain=_top_flag)  # the one map the capture shows, not all 14
    except ImageReadError as exc:
        return FilmResult(Assessment.not_assessed(f"The film could not be read: {exc}", operating_point=point))
    reading = analysis.reading
    notes = tuple(w for w in analysis.warnings if w not in analysis.withheld_because)
    if reading.withheld:
        reason = " ".join([WITHHELD_NOTE, *reading.withheld_because])
        return FilmResult(Assessment(triage=reading.triage, triage_probability=None, operating_point=point,
                                     reason=reason, notes=notes))
    assessment = Assessment(
        triage=reading.triage,
        triage_probability=reading.triage_probability,
        probabilities=dict(analysis.probabilities),
        flagged=tuple(reading.flagged),
        operating_point=reading.operating_point,
        notes=notes,
    )
    top = reading.flagged[0] if reading.flagged else None
    return FilmResult(assessment, pixels=analysis.image.pixels,
                      heatmap=analysis.heatmaps.get(top) if top else None, heatmap_finding=top)


def _top_flag(reading) -> tuple[str, ...]:
    """The finding whose map the Secondary Capture shows: the most probable flagged one (none when nothing is flagged)."""
    return tuple(reading.flagged[:1])
