"""The Secondary Capture cxr-assist returns beside its SR: the film, the map, the words, "NOT FOR CLINICAL USE".

A viewer that shows no Structured Report still shows this picture. It is the film (windowed as every cxr-assist
picture is, :mod:`cxr_core.reporting.overlays`) with, when a finding is flagged, the Grad-CAM++ map of the most probable
flagged one blended over it; when nothing is flagged, the film alone ("the triage view"). Above it, a black band
carries "NOT FOR CLINICAL USE" and the lines of text (triage, flags, what the map shows), burned into the pixels
(``BurnedInAnnotation`` YES), so the film itself is not covered. A film that is not assessed gets no capture.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.pacs.assessment import Assessment
from cxr_core.pacs.results import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    AlgorithmInfo,
    ResultError,
    ResultUIDs,
    clean_source,
    instance_number,
    private_coding_scheme,
)
from cxr_core.reporting.overlays import blend_heatmap, fit_to, gray_to_rgb, window_level

__all__ = ["SC_SERIES_DESCRIPTION", "STAMP", "heatmap_finding", "capture_lines", "capture_pixels", "build_sc"]

SC_SERIES_DESCRIPTION = "cxr-assist AI overlay (not for clinical use)"
#: Burned into every capture, first line, in red.
STAMP = "NOT FOR CLINICAL USE"
_STAMP_COLOR = (255, 70, 70)
_TEXT_COLOR = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Hershey fonts draw ASCII only: the few non-ASCII characters cxr-assist's words use, spelled out.
_ASCII = str.maketrans({"≥": ">=", "≤": "<=", "–": "-", "—": "-", "×": "x", "⚑": "", "’": "'", "·": "-"})


def heatmap_finding(assessment: Assessment) -> str | None:
    """The finding whose map the capture shows: the most probable flagged one; None when nothing is flagged
    (or the film is not assessed), which gives the triage view."""
    if not assessment.assessed or not assessment.flagged:
        return None
    return max(assessment.flagged, key=lambda f: (assessment.probabilities[f], -FINDINGS.index(f)))


def capture_lines(assessment: Assessment, *, shown: str | None) -> tuple[str, ...]:
    """The words a capture carries: the triage, the flags, what the map shows (numbers say what they are).

    Args:
        assessment: an assessed film's results.
        shown: the finding whose map is blended (:func:`heatmap_finding`), or None for the triage view.
    """
    if not assessment.assessed:
        raise ResultError("a film that is not assessed gets no secondary capture")
    lines = [f"cxr-assist triage: {assessment.triage} (probability of any of the 14 findings "
             f"{assessment.triage_probability:.2f}; calibrated on NIH ChestX-ray14 labels)"]
    if assessment.flagged:
        flags = ", ".join(f"{DISPLAY_NAMES[f]} {assessment.probabilities[f]:.2f}" for f in assessment.flagged)
        lines.append(f"Flagged at the {assessment.operating_point} operating point (validation split): {flags}")
    else:
        lines.append(f"No finding flagged at the {assessment.operating_point} operating point (validation split)")
    if shown is None:
        lines.append("Triage view: no heatmap")
    else:
        lines.append(f"Heatmap: Grad-CAM++ of {DISPLAY_NAMES[shown]}, where the model looked; not an outline")
    return tuple(lines)


def _wrap(text: str, *, width: int, scale: float, thickness: int) -> list[str]:
    words, lines, line = text.translate(_ASCII).encode("ascii", "replace").decode().split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if line and cv2.getTextSize(candidate, _FONT, scale, thickness)[0][0] > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def _band(lines: Sequence[str], width: int) -> np.ndarray:
    """The black band with the stamp and the lines, text sized to the picture's width."""
    scale = max(0.35, width / 1400.0)
    thickness = max(1, round(scale * 1.6))
    margin = max(4, round(width * 0.012))
    (_, text_h), base = cv2.getTextSize("Ag", _FONT, scale, thickness)
    step = text_h + base + max(3, round(text_h * 0.45))
    stamp_scale = scale * 1.4  # the stamp stands out: larger, bolder, red
    (_, stamp_h), stamp_base = cv2.getTextSize(STAMP, _FONT, stamp_scale, thickness + 1)
    stamp_step = stamp_h + stamp_base + max(3, round(stamp_h * 0.35))
    rows = [part for text in lines
            for part in _wrap(text, width=width - 2 * margin, scale=scale, thickness=thickness)]
    band = np.zeros((margin * 2 + stamp_step + step * len(rows), width, 3), dtype=np.uint8)
    cv2.putText(band, STAMP, (margin, margin + stamp_h), _FONT, stamp_scale, _STAMP_COLOR, thickness + 1, cv2.LINE_AA)
    for i, text in enumerate(rows):
        y = margin + stamp_step + i * step + text_h
        cv2.putText(band, text, (margin, y), _FONT, scale, _TEXT_COLOR, thickness, cv2.LINE_AA)
    return band


def capture_pixels(
    pixels01: np.ndarray,
    heatmap: np.ndarray | None,
    *,
    lines: Sequence[str],
    max_side: int = 1024,
    alpha: float = 0.45,
    level: float = 0.5,
    width: float = 1.0,
) -> np.ndarray:
    """The capture's picture: the film (with the map when given) below a band with "NOT FOR CLINICAL USE" and the lines.

    Args:
        pixels01: the decoded film, 2-D float in [0, 1] (:func:`cxr_core.data.imageio.decode_image`).
        heatmap: a 2-D map in [0, 1] (any size; resized to the film) or None for the triage view.
        lines: the text lines (e.g. :func:`capture_lines`); long lines wrap.
        max_side: the picture's longer side, at most (text scales with the width).
        alpha, level, width: the map's opacity and the film's window (:func:`~cxr_core.reporting.overlays.blend_heatmap`).

    Returns:
        ``uint8`` RGB ``(H, W, 3)``, ``max(H, W) <= max_side``.
    """
    if max_side < 64:
        raise ValueError(f"max_side must be at least 64, got {max_side}")
    film = np.asarray(pixels01, dtype=np.float32)
    if film.ndim != 2 or min(film.shape) < 8:
        raise ValueError(f"pixels01 must be a 2-D image of at least 8 x 8, got shape {film.shape}")
    if heatmap is not None and np.asarray(heatmap).ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {np.asarray(heatmap).shape}")
    side = max_side
    for _ in range(3):  # the band's height depends on the width: shrink the film until film + band fit
        image, _ = fit_to(film, side)
        band = _band(lines, image.shape[1])
        if image.shape[0] + band.shape[0] <= max_side:
            break
        side = max(32, side - (image.shape[0] + band.shape[0] - max_side) - 1)
    picture = (blend_heatmap(image, heatmap, alpha=alpha, level=level, width=width) if heatmap is not None
               else gray_to_rgb(window_level(image, level, width)))
    out = np.vstack([band, picture])
    if max(out.shape[:2]) > max_side:  # a very tall band on a very wide film: scale the whole picture
        factor = max_side / max(out.shape[:2])
        out = cv2.resize(out, (max(1, round(out.shape[1] * factor)), max(1, round(out.shape[0] * factor))),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out, dtype=np.uint8)


def _valid_cs(value: str) -> bool:
    return len(value) <= 16 and all(c.isupper() or c.isdigit() or c in " _" for c in value)


def build_sc(source: Dataset, rgb: np.ndarray, *, algorithm: AlgorithmInfo, uids: ResultUIDs) -> SCImage:
    """The Secondary Capture of a capture picture, in a new series of the film's study, derived from the film.

    Args:
        source: the film's dataset as received (not modified).
        rgb: the picture, ``uint8`` (H, W, 3) (:func:`capture_pixels`).
        algorithm: the algorithm (its name and version go into the equipment attributes).
        uids: from :func:`~cxr_core.pacs.results.result_uids` (the SC's instance and series UIDs are used).

    Returns:
        a highdicom ``SCImage``: RGB, BurnedInAnnotation YES, ConversionType WSD, the film in its Source Image
        Sequence.
    """
    picture = np.asarray(rgb)
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (height, width, 3), got {picture.dtype} {picture.shape}")
    clean = clean_source(source)
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
        if not str(clean.get(keyword, "") or "").strip():
            raise ResultError(f"the source has no {keyword}: its capture cannot be placed in its study")
    orientation = [str(v) for v in (clean.get("PatientOrientation") or [])]
    sc = SCImage.from_ref_dataset(
        ref_dataset=clean,
        pixel_array=np.ascontiguousarray(picture),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series_instance_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_sop_instance_uid,
        instance_number=instance_number(clean),
        manufacturer=MANUFACTURER,
        # highdicom requires two values for the PATIENT system; the film's own are kept when it has them, else the
        # placeholder is emptied below (the capture's orientation is not known and is not invented).
        patient_orientation=tuple(orientation) if len(orientation) == 2 else ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        coding_schemes=[private_coding_scheme()],
    )
    # What highdicom's SCImage does not take as arguments (PS3.3 C.8.6.1, C.7.6.1, C.7.6.1.1.3): the picture is a
    # workstation's capture (WSD, not a digitised film: highdicom writes DI), its text is burned in, it is derived
    # from the film, and an unknown orientation stays empty (Type 2C).
    if len(orientation) != 2:
        sc.PatientOrientation = ""
    # Laterality (General Series, Type 2C) depends on the body part: the film's body part is the capture's; with
    # it a validator knows a chest is unpaired (no laterality), without it the laterality stays empty (unknown).
    body_part = str(clean.get("BodyPartExamined", "") or "").strip()
    if body_part and "BodyPartExamined" in clean and _valid_cs(body_part):
        sc.BodyPartExamined = body_part
    elif "Laterality" not in sc:
        sc.Laterality = ""
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = "NOT FOR CLINICAL USE: cxr-assist model output (research software), see its SR in this study"
    sc.DerivationDescription = "cxr-assist: the film, windowed, with its Grad-CAM++ map and results as burned-in text"
    reference = Dataset()
    reference.ReferencedSOPClassUID = clean.SOPClassUID
    reference.ReferencedSOPInstanceUID = clean.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc
