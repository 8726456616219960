"""The report of one analysed image: a findings table, a JSON document, a PDF.

    analysis = predictor.analyze(image)
    rows = findings_rows(analysis, predictor.metadata)        # what the app's table shows
    doc = json_report(analysis, predictor.metadata, source_name="scan.png")
    pdf = pdf_report(analysis, predictor.metadata, source_name="scan.png")   # bytes

Every report carries the statement that cxr-assist is not for clinical use,
the model it came from, the triage verdict first, then each finding's
calibrated probability with its band at the operating point (flag,
possible, below, or no flag set and why) and what a flag was worth on
validation (PPV with its interval, lift), and the input warnings. Where the
input check warned and the reader did not ask to see the output anyway, the
report says the output was withheld and why, and holds no findings
(:mod:`cxr_core.evaluation.reading`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cxr_core import __version__
from cxr_core.bundle.format import describe_model, explanation_method, input_sizes
from cxr_core.evaluation.localization import heatmap_to_boxes
from cxr_core.evaluation.reading import Reading, ReadingPolicy
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.reporting.overlays import (
    HEATMAP_BOX_COLOR,
    blend_heatmap,
    draw_boxes,
    fit_to,
    gray_to_rgb,
    scale_boxes,
    window_level,
)
from cxr_core.reporting.words import WITHHELD_NOTE, flag_words, triage_words

if TYPE_CHECKING:  # the predictor imports TensorFlow: pages that only format a report must not wait for it
    from cxr_core.serving.predictor import Analysis

__all__ = [
    "BAND_WORDS", "DISCLAIMER", "REPORT_FORMAT", "findings_rows", "heatmap_boxes", "heatmap_picture", "input_check", "json_report",
    "model_summary", "pdf_report", "reading_and_policy", "triage_summary",
]

DISCLAIMER = (
    "Research tool, NOT for clinical use. cxr-assist has not been validated for diagnosis; its "
    "findings are model outputs trained on text-mined NIH ChestX-ray14 labels and must not guide patient care."
)
REPORT_FORMAT = "cxr-assist-report"
#: 2: the triage and the bands at the operating point replace version 1's Youden POSITIVE/negative calls.
REPORT_VERSION = 2
#: How each band is written in a table a reader sees.
BAND_WORDS = {"flag": "FLAG", "possible": "possible", "below": "", "no flag set": "no flag set"}


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def operating_points(metadata: Mapping | None) -> dict[str, dict]:
    """``{finding: operating point}`` from a bundle's ``operating_points`` list (empty if none)."""
    points = (metadata or {}).get("operating_points") or []
    return {p["finding"]: dict(p) for p in points if isinstance(p, Mapping) and "finding" in p}


def model_summary(metadata: Mapping | None) -> dict:
    """What a report says about the model: backbone, input size, training data, test AUROC.

    For an ensemble, ``backbone`` is the bundle's own description (``"ensemble
    of 2: vgg16 224 px + mobilenetv2 160 px"``) and ``input_size`` the list
    of the members' sizes; ``description`` is one true line for either kind.
    """
    meta = dict(metadata or {})
    data = meta.get("data") or {}
    counts = data.get("counts") or {}
    patients = data.get("patients") or {}
    thresholds = meta.get("thresholds")
    sizes = input_sizes(meta)
    return {
        "backbone": meta.get("backbone"),
        "input_size": sizes if meta.get("members") else meta.get("input_size"),
        "description": describe_model(meta) if metadata else None,
        "created": meta.get("created"),
        "training_images": counts.get("train"),
        "training_patients": patients.get("train"),
        "validation_images": counts.get("val"),
        "test_images": (meta.get("test_summary") or {}).get("test_images", counts.get("test")),
        "test_mean_auroc": _number((meta.get("test_summary") or {}).get("mean_auroc")),
        "threshold_method": thresholds.get("method") if isinstance(thresholds, Mapping) else None,
        "calibration": (meta.get("calibration") or {}).get("method"),
    }


def heatmap_boxes(analysis: Analysis, finding: str, *, threshold: float = 0.5, max_boxes: int = 3) -> list[tuple[float, ...]]:
    """Boxes around a finding's heatmap, in the analysed image's pixels (empty without a map)."""
    heatmap = analysis.heatmaps.get(finding)
    if heatmap is None:
        return []
    return heatmap_to_boxes(heatmap, threshold=threshold, max_boxes=max_boxes, out_shape=analysis.image.pixels.shape)


def heatmap_picture(
    analysis: Analysis,
    finding: str,
    *,
    alpha: float = 0.45,
    level: float = 0.5,
    width: float = 1.0,
    max_side: int = 768,
    label: bool = True,
) -> np.ndarray:
    """The image with a finding's Grad-CAM++ map blended over it and boxes around its strongest regions.

    Args:
        analysis: from :meth:`Predictor.analyze` with a heatmap for ``finding``.
        alpha, level, width: opacity and image window (see :func:`blend_heatmap`).
        max_side: the picture is shrunk to this many pixels on its longer side.
        label: write the finding's name on each box.

    Returns:
        ``uint8`` RGB picture.
    """
    pixels, scale = fit_to(analysis.image.pixels, max_side)
    heat, _ = fit_to(analysis.heatmaps[finding], max_side)
    boxes = scale_boxes(heatmap_boxes(analysis, finding), scale)
    picture = blend_heatmap(pixels, heat, alpha=alpha, level=level, width=width)
    labels = [DISPLAY_NAMES[finding]] * len(boxes) if label else None
    return draw_boxes(picture, boxes, labels=labels, color=HEATMAP_BOX_COLOR)


def reading_and_policy(analysis: Analysis, metadata: Mapping | None, reading: Reading | None = None,
                       thresholds: Sequence[float] | None = None) -> tuple[Reading, ReadingPolicy]:
    """The reading a report shows (``reading``, else the analysis's own, else the bundle's default) and its policy."""
    policy = ReadingPolicy.from_metadata(metadata, thresholds)
    if reading is None:
        reading = analysis.reading or policy.read(analysis.probabilities, withheld_because=analysis.withheld_because)
    return reading, policy


def findings_rows(analysis: Analysis, metadata: Mapping | None, thresholds: Sequence[float] | None = None, *,
                  reading: Reading | None = None, policy: ReadingPolicy | None = None) -> list[dict]:
    """One row per finding, highest calibrated probability first.

    Args:
        analysis: from :meth:`Predictor.analyze`.
        metadata: the bundle metadata (``predictor.metadata``): its flags,
            triage and Youden operating points.
        thresholds: the Youden cuts in FINDINGS order (``predictor.thresholds``);
            default: those of the metadata.
        reading: the reading shown (operating point, shown anyway); default:
            the analysis's own (:attr:`Analysis.reading`).
        policy: the reading policy of ``metadata`` and ``thresholds``, when the
            caller has it already (``predictor.policy``); built from them otherwise.

    Returns:
        dicts with ``finding`` (data spelling), ``name`` (display name),
        ``probability``, ``raw_probability``, ``band`` (``"flag"``,
        ``"possible"``, ``"below"``, ``"no flag set"``; ``"withheld"`` when the
        output is withheld), ``flag_threshold`` and ``possible_threshold`` (the
        cuts of the reading's operating point; None where none is set),
        ``meaning`` (the band in words, from validation), ``ppv``,
        ``ppv_low``, ``ppv_high``, ``lift`` (a flag's worth on validation),
        ``youden_threshold``, ``at_youden`` (the earlier design's call, kept
        for audit), ``val_sensitivity`` and ``val_specificity`` (of the Youden cut).
    """
    if policy is None or reading is None:
        reading, policy = reading_and_policy(analysis, metadata, reading, thresholds)
    cuts = policy.cuts(reading.operating_point)
    points = operating_points(metadata)
    youden = policy.youden.flag
    order = analysis.ranked or tuple(sorted(FINDINGS, key=lambda f: -analysis.probabilities[f]))
    rows = []
    for finding in order:
        i = FINDINGS.index(finding)
        point = points.get(finding, {})
        band = "withheld" if reading.withheld else reading.bands[finding]
        worth = cuts.validation[i] or {}
        rows.append(
            {
                "finding": finding,
                "name": DISPLAY_NAMES[finding],
                "probability": float(analysis.probabilities[finding]),
                "raw_probability": _number(analysis.raw_probabilities.get(finding)),
                "band": band,
                "flag_threshold": _number(cuts.flag[i]),
                "possible_threshold": _number(cuts.possible[i]),
                "meaning": "" if reading.withheld else flag_words(finding, band, cuts),
                "ppv": _number(worth.get("ppv")), "ppv_low": _number(worth.get("ppv_low")),
                "ppv_high": _number(worth.get("ppv_high")), "lift": _number(worth.get("lift")),
                "youden_threshold": _number(youden[i]),
                "at_youden": bool(analysis.probabilities[finding] >= youden[i]),
                "val_sensitivity": _number(point.get("val_sensitivity")),
                "val_specificity": _number(point.get("val_specificity")),
            }
        )
    return rows


def triage_summary(reading: Reading, policy: ReadingPolicy) -> dict:
    """The triage part of a report: verdict, probability, the two cuts and the sentence that explains them."""
    triage = policy.triage
    return {
        "verdict": reading.triage,
        "probability": _number(reading.triage_probability),
        "above_balanced_point": reading.above_balanced,
        "rule_out_point": None if triage is None else triage.rule_out,
        "balanced_point": None if triage is None else triage.balanced,
        "explanation": triage_words(reading, policy),
    }


def json_report(
    analysis: Analysis,
    metadata: Mapping | None,
    *,
    source_name: str | None = None,
    thresholds: Sequence[float] | None = None,
    box_findings: Sequence[str] | None = None,
    reading: Reading | None = None,
) -> dict:
    """The JSON report of one analysed image (plain types only, ``json.dumps``-able).

    Args:
        analysis, metadata, thresholds, reading: see :func:`findings_rows`.
        source_name: the file name shown in the report.
        box_findings: findings whose heatmap boxes are listed (default: every
            finding that has a heatmap).

    A withheld reading gives ``withheld: true``, the reasons, and no findings,
    triage probability or boxes.
    """
    reading, policy = reading_and_policy(analysis, metadata, reading, thresholds)
    rows = [] if reading.withheld else findings_rows(analysis, metadata, reading=reading, policy=policy)
    wanted = set(analysis.heatmaps if box_findings is None else box_findings)
    for row in rows:
        if row["finding"] in wanted:
            row["heatmap_boxes"] = [
                {"x": round(b[0], 1), "y": round(b[1], 1), "w": round(b[2], 1), "h": round(b[3], 1), "peak": round(b[4], 4)}
                for b in heatmap_boxes(analysis, row["finding"])
            ]
    image = analysis.image
    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": {"name": "cxr-assist", "version": __version__},
        "disclaimer": DISCLAIMER,
        "model": model_summary(metadata),
        "image": {
            "name": source_name,
            "format": image.source_format,
            "original_height": int(image.original_shape[0]),
            "original_width": int(image.original_shape[1]),
            "bit_depth": int(image.bit_depth),
        },
        "warnings": list(analysis.warnings),
        "input_check": input_check(analysis),
        "withheld": reading.withheld,
        "withheld_because": list(reading.withheld_because) if reading.withheld else [],
        "shown_despite_input_warning": bool(reading.withheld_because) and not reading.withheld,
        "operating_point": reading.operating_point,
        "triage": triage_summary(reading, policy),
        "flagged_findings": list(reading.flagged),
        "possible_findings": list(reading.possible),
        "findings": rows,
        "notes": (
            (WITHHELD_NOTE + " ") if reading.withheld else ""
        ) + (
            "probability: calibrated on the model's validation split. triage: the calibrated probability of any of the "
            "14 findings; 'abnormal' at or above the rule-out point fitted on validation, else 'no finding likely'. "
            "band: 'flag' at or above the finding's flag cut (validation specificity 0.95 at the default operating "
            "point), 'possible' at or above the lower cut, 'no flag set' where validation had too few positives; "
            "ppv, lift: what a flag was worth on the validation split (NIH labels). youden_threshold, at_youden: the "
            f"earlier per-finding cut, for audit. Heatmaps are {heatmap_method(metadata)} maps, boxes are drawn around "
            "their strongest regions (x, y = top-left corner, original image pixels)."
        ),
    }


def heatmap_method(meta: Mapping | None) -> str:
    """What the heatmaps are, from a bundle's metadata: "Grad-CAM++", "Grad-CAM", or both for a mixed ensemble.

    Each (member) bundle records its method under ``explanation``; bundles
    from before that key used Grad-CAM++.
    """
    meta = meta or {}
    entries = meta.get("members") or [meta]
    words = {"gradcam++": "Grad-CAM++", "gradcam": "Grad-CAM"}
    methods = []
    for entry in entries:
        method = words.get(explanation_method(entry), "Grad-CAM++")
        if method not in methods:
            methods.append(method)
    return " + ".join(methods)


def input_check(analysis: Analysis) -> dict:
    """The not-a-frontal-chest-X-ray check of a report: whether the image was warned, and the learned check's numbers.

    ``learned`` is None when the bundle has no fitted reference (only the
    simple rules and the intensity check ran); else the feature and grid
    distances, the layout margin and the scale distance with their
    thresholds, and which of them went past (``beyond``; :mod:`cxr_core.screening.ood`).
    """
    learned = analysis.input_check
    if learned is not None:
        learned = {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v))
                   for k, v in learned.items()}
    return {"warned": bool(analysis.warnings), "learned": learned}


def _jpeg(rgb: np.ndarray) -> io.BytesIO:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 RGB array
        raise RuntimeError("could not encode an image for the PDF")
    return io.BytesIO(encoded.tobytes())


def _fmt(value, pattern: str = "{:.3f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def pdf_report(
    analysis: Analysis,
    metadata: Mapping | None,
    *,
    source_name: str | None = None,
    thresholds: Sequence[float] | None = None,
    overlay_findings: Sequence[str] | None = None,
    alpha: float = 0.4,
    level: float = 0.5,
    width: float = 1.0,
    max_side: int = 512,
    reading: Reading | None = None,
) -> bytes:
    """A two-page PDF: page 1 the triage, the image and heatmap overlays, page 2 the findings table.

    A withheld reading gives one page: the image, the warnings and why the
    output is withheld; no findings, no heatmaps.

    Args:
        analysis, metadata, thresholds, source_name, reading: see :func:`json_report`.
        overlay_findings: findings whose Grad-CAM++ overlay is shown (default:
            the flagged findings, then the most probable, 4 in all, that have a heatmap).
        alpha, level, width: overlay opacity and image window.
        max_side: pictures are shrunk to this many pixels on their longer side.

    Returns:
        the PDF file's bytes.
    """
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, PageBreak, Paragraph, Spacer, Table, TableStyle

    reading, policy = reading_and_policy(analysis, metadata, reading, thresholds)
    rows = [] if reading.withheld else findings_rows(analysis, metadata, reading=reading, policy=policy)
    model = model_summary(metadata)
    if reading.withheld:
        overlay_findings = []
    elif overlay_findings is None:
        ranked = [*reading.flagged, *(r["finding"] for r in rows if r["finding"] not in reading.flagged)]
        overlay_findings = [f for f in ranked if f in analysis.heatmaps][:4]
    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    caption = small.clone("caption", alignment=1)  # centred under its picture
    warn = styles["BodyText"].clone("warn", textColor=colors.HexColor("#9a3412"))

    pixels, _ = fit_to(analysis.image.pixels, max_side)
    base = gray_to_rgb(window_level(pixels, level, width))
    content_width = A4[0] - 30 * mm

    def picture(rgb: np.ndarray, side_mm: float) -> Image:
        h, w = rgb.shape[:2]
        side = side_mm * mm
        return Image(_jpeg(rgb), width=side * w / max(h, w), height=side * h / max(h, w))

    tiles = []
    for finding in overlay_findings:
        rgb = heatmap_picture(analysis, finding, alpha=alpha, level=level, width=width, max_side=max_side, label=False)
        tiles.append([picture(rgb, 50), Paragraph(f"{DISPLAY_NAMES[finding]}: p = {analysis.probabilities[finding]:.2f}", caption)])
    grid = [[tiles[i][0] if i < len(tiles) else "", tiles[i + 1][0] if i + 1 < len(tiles) else ""] for i in range(0, len(tiles), 2)]
    captions = [[tiles[i][1] if i < len(tiles) else "", tiles[i + 1][1] if i + 1 < len(tiles) else ""] for i in range(0, len(tiles), 2)]
    overlay_table = []
    for pics, texts in zip(grid, captions):
        overlay_table += [pics, texts]

    name = source_name or "uploaded image"
    story = _pdf_opening(
        "cxr-assist report",
        f"Image: {_escape(name)} ({analysis.image.source_format}, {analysis.image.original_shape[1]} x "
        f"{analysis.image.original_shape[0]} px). Model: {_escape(str(model['description']))}, "
        f"test mean AUROC {_fmt(model['test_mean_auroc'])}. Generated "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by cxr-assist {__version__}.",
        styles=styles, warn=warn, small=small,
    )
    for note in analysis.warnings:
        story.append(Paragraph(f"Warning: {_escape(note)}", warn))
    story.append(Spacer(1, 3 * mm))
    if reading.withheld:
        story += [Paragraph(f"<b>Output withheld.</b> {_escape(WITHHELD_NOTE)}", warn), Spacer(1, 3 * mm),
                  picture(base, 90), Paragraph("The image as received.", caption)]
        return _build_pdf(story, name)
    verdict = {"abnormal": "ABNORMAL", "no finding likely": "NO FINDING LIKELY"}.get(reading.triage, reading.triage.upper())
    flagged = ", ".join(DISPLAY_NAMES[f] for f in reading.flagged) or "none"
    story += [
        Paragraph(f"<b>Triage: {verdict}.</b> {_escape(triage_words(reading, policy))}", styles["BodyText"]),
        Paragraph(f"<b>Flagged findings:</b> {_escape(flagged)}"
                  + ("" if reading.operating_point == "specificity" else " (Youden's J operating point)")
                  + (". Shown although the input check warned." if reading.withheld_because else "."), styles["BodyText"]),
        Spacer(1, 3 * mm), picture(base, 70), Paragraph("The image as analysed.", caption), Spacer(1, 3 * mm),
    ]
    if overlay_table:
        table = Table(overlay_table, colWidths=[content_width / 2] * 2)
        table.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
        story += [Paragraph(f"{heatmap_method(metadata)} heatmaps of the flagged, then the most probable findings (white "
                            "boxes: strongest regions).", small), table]
    story.append(PageBreak())

    story.append(Paragraph("Findings", styles["Heading1"]))
    header = ["Finding", "Probability", "Band", "Flag cut", "Flag PPV (95% CI), validation", "Lift"]
    body = [
        [r["name"], f"{r['probability']:.3f}", BAND_WORDS.get(r["band"], r["band"]), _fmt(r["flag_threshold"]),
         "n/a" if r["ppv"] is None else f"{r['ppv']:.2f} ({_fmt(r['ppv_low'], '{:.2f}')}-{_fmt(r['ppv_high'], '{:.2f}')})",
         _fmt(r["lift"], "{:.1f}x")]
        for r in rows
    ]
    table = Table([header, *body], repeatRows=1)
    style = [
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("FONTSIZE", (0, 0), (-1, -1), 9),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e5e7eb")),
        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
    ]
    style += [("TEXTCOLOR", (2, i + 1), (2, i + 1), colors.HexColor("#b91c1c")) for i, r in enumerate(rows) if r["band"] == "flag"]
    table.setStyle(TableStyle(style))
    unset = [f"{r['name']}: {r['meaning']}" for r in rows if r["band"] == "no flag set"]
    story += [
        table,
        Spacer(1, 4 * mm),
        Paragraph(
            "Probabilities are calibrated on the model's validation split. A finding is flagged when its probability reaches "
            "its flag cut, fitted on validation for a specificity of 0.95 (about 1 flag in 20 films without the finding); "
            "'possible' marks a lower cut (specificity 0.80) and is not a flag. PPV: the share of flagged validation films "
            "that had the finding; lift: PPV divided by the finding's prevalence in validation. The reference labels of NIH "
            "ChestX-ray14 are text-mined from reports and are noisy." if reading.operating_point == "specificity" else
            "Probabilities are calibrated on the model's validation split. Flags at Youden's J cut per finding (the earlier "
            "design: sensitivity + specificity maximised on validation; many flags on normal films).",
            small,
        ),
        *[Paragraph(_escape(line), small) for line in unset],
        Spacer(1, 2 * mm),
        Paragraph(f"<b>{DISCLAIMER}</b>", warn),
    ]
    return _build_pdf(story, name)


def _pdf_opening(title: str, about: str, *, styles, warn, small) -> list:
    """A PDF's first lines: its title, the disclaimer (in ``warn``), a gap and the paragraph ``about`` it (in ``small``)."""
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Spacer

    return [Paragraph(title, styles["Title"]), Paragraph(f"<b>{DISCLAIMER}</b>", warn), Spacer(1, 3 * mm),
            Paragraph(about, small)]


def _build_pdf(story: list, name: str, title: str = "cxr-assist report") -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=12 * mm, bottomMargin=12 * mm,
        title=title, author="cxr-assist", subject=name,
    )
    doc.build(story)
    return buffer.getvalue()


def _escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
