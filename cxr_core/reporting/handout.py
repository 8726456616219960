"""The stored guided tour as pictures and as a PDF handout (the layout of :mod:`cxr_core.reporting.report`).

    pictures = stop_pictures(stop, path, dataset=dataset, analysis=analysis)    # what the page shows
    pdf = tour_pdf(tour, metadata, dataset=dataset, analyze=predictor.analyze)  # bytes

Both read the stop as stored (:class:`cxr_core.reporting.tour_file.Stop`): its caption, the
reading at the bundle's default operating point, NIH's labels, the
radiologists' labels; the heatmap comes from an analysis of the stop's image
when one is given (a stop whose output was withheld gets none). The reading's
words are those of every other page (:func:`cxr_core.reporting.words.triage_words`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.evaluation.localization import heatmap_to_boxes
from cxr_core.evaluation.reading import Reading, ReadingPolicy
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.reporting import overlays
from cxr_core.reporting.tour_file import Stop, Tour, resolve_image
from cxr_core.reporting.words import WITHHELD_NOTE, triage_words

__all__ = ["StopPictures", "stop_pictures", "stop_reading", "tour_pdf", "radiologists_rows"]


@dataclass(frozen=True)
class StopPictures:
    """The pictures of one stop (``uint8`` RGB) and what each shows.

    Attributes:
        image: the film with every expert box (green, named), or the image as received.
        image_caption: what ``image`` shows.
        heatmap: the focus finding's heatmap with its boxes (white, dashed) and the finding's expert boxes; None
            without an analysis, a focus finding, or where the output was withheld.
        heatmap_caption: what ``heatmap`` shows ("" without one).
    """

    image: np.ndarray
    image_caption: str
    heatmap: np.ndarray | None
    heatmap_caption: str


def stop_reading(stop: Stop, policy: ReadingPolicy) -> Reading:
    """The reading a stop shows, rebuilt from its stored probabilities (withheld where its output was)."""
    if stop.withheld:
        return policy.read(np.zeros(len(FINDINGS)), withheld_because=list(stop.withheld_because) or ["withheld"])
    return policy.read({f: stop.probabilities[f] for f in FINDINGS})


def stop_pictures(stop: Stop, pixels: np.ndarray, *, dataset=None, analysis=None, max_side: int = 640) -> StopPictures:
    """The pictures of a stop.

    Args:
        stop: a stored stop.
        pixels: the decoded image ([0, 1], its stored size).
        dataset: the dataset the film is from (its expert boxes), or None.
        analysis: the image's :class:`cxr_core.serving.predictor.Analysis` with a heatmap of the stop's finding, or None.
        max_side: the pictures' longer side.
    """
    small, scale = overlays.fit_to(pixels, max_side)
    height, width = pixels.shape
    truth = None
    if dataset is not None and stop.nih_labels is not None:
        truth = dataset.boxes_for(stop.image, width=width, height=height)
    base = overlays.gray_to_rgb(small)
    if truth is not None and len(truth):
        boxes = overlays.scale_boxes(truth[["x", "y", "w", "h"]].to_numpy(), scale)
        image = overlays.draw_boxes(base, boxes, labels=[DISPLAY_NAMES[f] for f in truth["finding"]])
        image_caption = "The film with NIH's expert boxes (green)"
    else:
        image = base
        image_caption = ("The image as received" if stop.nih_labels is None else
                         "The film (NIH gives no expert box for it)")
    finding = stop.finding
    if analysis is None or finding is None or stop.withheld or finding not in analysis.heatmaps:
        return StopPictures(image, image_caption, None, "")
    heat = analysis.heatmaps[finding]
    predicted = overlays.scale_boxes(heatmap_to_boxes(heat, out_shape=(height, width)), scale)
    picture = overlays.blend_heatmap(small, overlays.fit_to(heat, max_side)[0])
    gt = []
    if truth is not None and len(truth):
        mine = truth[truth["finding"] == finding]
        gt = overlays.scale_boxes(mine[["x", "y", "w", "h"]].to_numpy(), scale)
        picture = overlays.draw_boxes(picture, gt, labels=["expert"] * len(gt))
    picture = overlays.draw_boxes(picture, predicted, labels=["heatmap"] * len(predicted), color=overlays.HEATMAP_BOX_COLOR,
                                  dashed=True)
    words = f"Heatmap of {DISPLAY_NAMES[finding]}: the model's boxes white (dashed)"
    return StopPictures(image, image_caption, picture, words + (", the expert box green" if len(gt) else ""))


def radiologists_rows(stop: Stop) -> list[dict]:
    """The radiologists' labels of a stop beside NIH's (mapped to their categories); empty where the film has none."""
    expert = stop.expert_labels
    if not expert:
        return []
    from cxr_core.evaluation.expert import category_labels

    nih = category_labels(np.array([[1.0 if f in (stop.nih_labels or ()) else 0.0 for f in FINDINGS]]))[0]
    said = lambda v: "—" if v is None or v != v else ("yes" if v > 0.5 else "no")  # noqa: E731
    return [{"category": c, "radiologists": said(expert.get(c)), "NIH (mapped)": said(float(nih[k]))}
            for k, c in enumerate(EXPERT_CATEGORIES)]


def _labels_text(stop: Stop) -> str:
    labels = stop.nih_labels
    if labels is None:
        return "not a dataset film"
    return ", ".join(DISPLAY_NAMES[f] for f in labels) or "No Finding"


def _or_na(value) -> str:
    return "n/a" if value is None else str(value)


def tour_pdf(
    tour: Tour,
    metadata: Mapping | None,
    *,
    dataset=None,
    analyze: Callable | None = None,
    data_root=None,
    max_side: int = 512,
) -> bytes:
    """The tour as a PDF handout: a cover page with the stops and the absent categories, then one page per stop.

    Args:
        tour: the stored tour (:func:`cxr_core.reporting.tour_file.read_tour`).
        metadata: the bundle's metadata (its triage and cuts write the reading's words).
        dataset: the demo set (paths and expert boxes); None draws no expert box.
        analyze: ``analyze(path) -> Analysis`` for the heatmaps (e.g. a cached :meth:`Predictor.analyze`); None: none.
        data_root: where the films are, when no ``dataset`` is given.
        max_side: pictures are shrunk to this many pixels on their longer side.

    Returns:
        the PDF file's bytes.
    """
    from reportlab.lib import colors
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, PageBreak, Paragraph, Spacer, Table, TableStyle

    from cxr_core import __version__
    from cxr_core.data.imageio import decode_image
    from cxr_core.reporting.report import DISCLAIMER, _build_pdf, _escape, _jpeg, _pdf_opening

    policy = ReadingPolicy.from_metadata(metadata)
    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    caption_style = small.clone("caption", alignment=1)
    warn = styles["BodyText"].clone("warn", textColor=colors.HexColor("#9a3412"))
    stops, absent = tour.stops, tour.absent
    paths = dict(zip(dataset.csv["image"], dataset.csv["path"])) if dataset is not None else None
    if data_root is None and dataset is not None:
        data_root = dataset.root

    def picture(rgb: np.ndarray, side_mm: float) -> Image:
        h, w = rgb.shape[:2]
        return Image(_jpeg(rgb), width=side_mm * mm * w / max(h, w), height=side_mm * mm * h / max(h, w))

    def table(rows: list[list], widths=None) -> Table:
        t = Table(rows, colWidths=widths, repeatRows=1)
        t.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"), ("FONTSIZE", (0, 0), (-1, -1), 8),
                               ("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e5e7eb"))]))
        return t

    data = tour.data
    story = [
        *_pdf_opening(
            "cxr-assist: a guided tour",
            f"Model: {_escape(str(tour.description))}. Films: {data.get('films', 'n/a')} demo films "
            f"({_escape(str(data.get('root')))}), of which {_or_na(tour.eligible_films)} outside the model's training "
            f"and validation splits ({_or_na(tour.eligible_patients)} patients) were on offer; one film per patient. "
            f"Stops chosen automatically from the model's outputs (seed {tour.seed}); every caption is computed "
            f"from them. Built {_escape(str(tour.created))} with <font face='Courier'>{_escape(str(tour.command))}"
            f"</font>. Handout generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by cxr-assist {__version__}.",
            styles=styles, warn=warn, small=small),
        Spacer(1, 3 * mm),
        table([["#", "Stop", "Image", "Caption"],
               *[[str(i + 1), Paragraph(_escape(s.title), small), Paragraph(_escape(s.image), small),
                  Paragraph(_escape(s.caption), small)] for i, s in enumerate(stops)]],
              widths=[8 * mm, 40 * mm, 32 * mm, 100 * mm]),
    ]
    if absent:
        story += [Spacer(1, 3 * mm), Paragraph("<b>Not on this tour</b> (no film in the demo set fits):", small)]
        story += [Paragraph(f"{_escape(a.title)}: {_escape(a.reason)}.", small) for a in absent]
    story.append(Paragraph("Labels: NIH ChestX-ray14's labels are text-mined from reports and noisy; the radiologists' "
                           "labels are the adjudicated re-reads of Majkowska et al. (Radiology 2019), four categories, "
                           "where the film has them.", small))

    for i, stop in enumerate(stops):
        path = resolve_image(stop.source, stop.image, data_root, paths)
        reading = stop_reading(stop, policy)
        story += [PageBreak(), Paragraph(f"Stop {i + 1} of {len(stops)}: {_escape(stop.title)}", styles["Heading2"]),
                  Paragraph(_escape(stop.caption), styles["BodyText"]), Spacer(1, 2 * mm)]
        where = ("" if stop.patient_id is None else f"patient {stop.patient_id}, model split {stop.split}; ")
        story.append(Paragraph(f"Image {_escape(stop.image)} ({where}NIH labels: {_escape(_labels_text(stop))}).", small))
        if reading.withheld:
            story.append(Paragraph(f"<b>Output withheld.</b> {_escape(WITHHELD_NOTE)}", warn))
            story += [Paragraph(f"Warning: {_escape(w)}", small) for w in stop.withheld_because]
        else:
            verdict = reading.triage.upper()
            flagged = ", ".join(DISPLAY_NAMES[f] for f in reading.flagged) or "none"
            story += [Paragraph(f"<b>Triage: {verdict}.</b> {_escape(triage_words(reading, policy))}", small),
                      Paragraph(f"<b>Flagged findings:</b> {_escape(flagged)}.", small)]
        story.append(Spacer(1, 2 * mm))
        if path is None:
            story.append(Paragraph(f"The image {_escape(stop.image)} is not on this machine.", warn))
        else:
            pixels = decode_image(path).pixels
            analysis = analyze(path) if analyze is not None and not reading.withheld and stop.finding else None
            pics = stop_pictures(stop, pixels, dataset=dataset, analysis=analysis, max_side=max_side)
            tiles = [(pics.image, pics.image_caption)] + ([(pics.heatmap, pics.heatmap_caption)] if pics.heatmap is not None else [])
            grid = Table([[picture(t[0], 85) for t in tiles], [Paragraph(_escape(t[1]), caption_style) for t in tiles]],
                         colWidths=[90 * mm] * len(tiles))
            grid.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]))
            story.append(grid)
        if not reading.withheld:
            top = sorted(FINDINGS, key=lambda f: -stop.probabilities[f])[:5]
            story += [Spacer(1, 2 * mm), table([["Finding (5 most probable)", "Probability", "Band", "NIH label"],
                                                *[[DISPLAY_NAMES[f], f"{stop.probabilities[f]:.3f}",
                                                   {"flag": "FLAG"}.get(reading.bands[f], reading.bands[f]),
                                                   "yes" if f in (stop.nih_labels or ()) else ""] for f in top]])]
        rows = radiologists_rows(stop)
        if rows:
            story += [Spacer(1, 2 * mm), Paragraph("Radiologists' labels (Majkowska et al.) beside NIH's:", small),
                      table([list(rows[0]), *[list(r.values()) for r in rows]])]
    story += [Spacer(1, 4 * mm), Paragraph(f"<b>{DISCLAIMER}</b>", warn)]
    return _build_pdf(story, "guided tour", title="cxr-assist guided tour")
