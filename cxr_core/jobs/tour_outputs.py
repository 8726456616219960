"""The guided tour's raw material: what the model said about every eligible demo film, and where the files are.

:func:`gather_outputs` runs the model (:mod:`cxr_core.jobs.tour` then
chooses the stops from its outputs without any model): for every film
outside the model's training and validation splits, the reading at the
bundle's default operating point, the calibrated probabilities, NIH's
labels, the radiologists' labels where the film has them, and each boxed
finding's heatmap scored against each expert box (:func:`box_scores`); and
the same for non-chest photographs that ship with installed packages
(:func:`package_photographs`). :func:`cxr_core.reporting.tour_file.resolve_image`
finds a stop's file on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.evaluation.localization import best_iobb, heatmap_to_boxes, iou
from cxr_core.evaluation.reading import Reading
from cxr_core.findings import FINDINGS
from cxr_core.reporting.tour_file import BoxScore, resolve_image

if TYPE_CHECKING:
    from cxr_core.data.dataset import NIHDataset
    from cxr_core.serving.predictor import Predictor

__all__ = ["EXCLUDED_SPLITS", "PHOTOGRAPHS", "FilmOutput", "box_scores", "gather_outputs", "package_photographs"]

#: Films of these splits are never on the tour.
EXCLUDED_SPLITS = ("train", "val")
#: A non-chest image shipped with an installed package: (package, path inside it, what it is).
PHOTOGRAPHS = (
    ("scikit-learn", "datasets/images/china.jpg", "scikit-learn's sample photograph china.jpg (a temple in China)"),
    ("scikit-learn", "datasets/images/flower.jpg", "scikit-learn's sample photograph flower.jpg (a flower)"),
)


@dataclass(frozen=True)
class FilmOutput:
    """One image as the model saw it, with what is known about it.

    Attributes:
        image: the file name (the NIH image index for a dataset film).
        split: the model's split of the film (``train``, ``val``, ``test``), ``unseen``, or
            ``not a film`` for an image that is no dataset film.
        patient_id: NIH's patient ID (None for an image that is no dataset film).
        reading: the reading at the bundle's default operating point, withheld where the input check warned.
        probabilities: {finding: calibrated probability}.
        nih_labels: NIH's findings of the film (empty: No Finding); None for an image that is no dataset film.
        boxes: the heatmap against each expert box of the film.
        expert: the radiologists' labels, {category: 1.0, 0.0 or None (not read)}; None where the film has none.
        source: where the file is: ``{"kind": "dataset"}``, or ``{"kind": "package", "package", "path",
            "description"}`` for a file that ships with an installed package (:func:`resolve_image`).
    """

    image: str
    split: str
    patient_id: int | None
    reading: Reading
    probabilities: dict[str, float]
    nih_labels: tuple[str, ...] | None
    boxes: tuple[BoxScore, ...] = ()
    expert: dict[str, float | None] | None = None
    source: dict = field(default_factory=lambda: {"kind": "dataset"})

    @property
    def withheld(self) -> bool:
        return self.reading.withheld


def package_photographs() -> list[tuple[Path, dict]]:
    """The non-chest photographs that ship with installed packages (:data:`PHOTOGRAPHS`), as ``(path, source)``."""
    found = []
    for package, relative, description in PHOTOGRAPHS:
        source = {"kind": "package", "package": package, "path": relative, "description": description}
        path = resolve_image(source, Path(relative).name)
        if path is not None:
            found.append((path, source))
    return found


def box_scores(heatmap: np.ndarray, finding: str, truth: Iterable[Sequence[float]]) -> list[BoxScore]:
    """The heatmap of ``finding`` against each expert box ``(x, y, w, h)`` (in the heatmap's pixels)."""
    heat = np.asarray(heatmap, dtype=np.float64)
    height, width = heat.shape
    predicted = heatmap_to_boxes(heat, out_shape=(height, width))
    covered = np.zeros((height, width), dtype=bool)
    for x, y, w, h, _ in predicted:
        covered[_span(y, h, height), _span(x, w, width)] = True
    peak = float(np.nanmax(heat)) if heat.size else 0.0
    out = []
    for box in truth:
        gt = tuple(float(v) for v in box[:4])
        rows, cols = _span(gt[1], gt[3], height), _span(gt[0], gt[2], width)
        inside = heat[rows, cols]
        area = inside.size
        out.append(BoxScore(
            finding=finding,
            iou=max((iou(p, gt) for p in predicted), default=0.0),
            iobb=best_iobb(predicted, gt),
            coverage=float(covered[rows, cols].mean()) if area else 0.0,
            peak_in_box=float(np.nanmax(inside)) / peak if area and peak > 0 else 0.0,
            box_share=gt[2] * gt[3] / float(height * width),
        ))
    return out


def _span(start: float, size: float, limit: int) -> slice:
    low = int(np.clip(np.floor(start), 0, limit))
    return slice(low, int(np.clip(np.ceil(start + size), low, limit)))


def _expert_row(expert, image: str) -> dict[str, float | None] | None:
    if expert is None:
        return None
    table = expert.set_index("image") if "image" in getattr(expert, "columns", ()) else expert
    if image not in table.index:
        return None
    row = table.loc[image]
    return {c: None if row[c] != row[c] else float(row[c]) for c in EXPERT_CATEGORIES}


def gather_outputs(
    predictor: Predictor,
    dataset: NIHDataset,
    *,
    expert=None,
    extra_images: Sequence[tuple[str | os.PathLike, Mapping]] = (),
    progress: Callable | None = None,
) -> list[FilmOutput]:
    """Run the model over every film of ``dataset`` outside its training and validation splits, and over extra images.

    Films with expert boxes get the heatmap of each boxed finding, scored
    against each box (:func:`box_scores`); the others are analysed without
    heatmaps.

    Args:
        predictor: the bundle's Predictor (its default operating point gives the readings).
        dataset: the demo set (any NIH layout).
        expert: the radiologists' labels (:func:`cxr_core.data.read_expert_labels`), or None.
        extra_images: ``(path, source)`` of images that are no dataset film (:func:`package_photographs`).
        progress: wraps an iterable with a progress bar.

    Returns:
        one :class:`FilmOutput` per analysed image, dataset films in the dataset's order, then the extras.
    """
    csv = dataset.csv
    rows = [(i, name) for i, name in enumerate(csv["image"]) if (predictor.split_of(name) or "unseen") not in EXCLUDED_SPLITS]
    boxes = dataset.boxes
    outputs = []
    for i, name in progress(rows) if progress else rows:
        boxed = [f for f in FINDINGS if f in set(boxes.loc[boxes["image"] == name, "finding"])]
        analysis = predictor.analyze(csv["path"].iloc[i], explain=boxed)
        height, width = analysis.image.pixels.shape
        scores = []
        if boxed:
            truth = dataset.boxes_for(name, width=width, height=height)
            for finding in boxed:
                mine = truth[truth["finding"] == finding][["x", "y", "w", "h"]].to_numpy()
                scores += box_scores(analysis.heatmaps[finding], finding, mine)
        labels = dataset.labels[i]
        outputs.append(FilmOutput(
            image=name, split=predictor.split_of(name) or "unseen", patient_id=int(csv["patient_id"].iloc[i]),
            reading=analysis.reading, probabilities=dict(analysis.probabilities),
            nih_labels=tuple(f for f, v in zip(FINDINGS, labels) if v > 0.5), boxes=tuple(scores),
            expert=_expert_row(expert, name)))
    for path, source in extra_images:
        analysis = predictor.analyze(path, explain=[])
        outputs.append(FilmOutput(image=Path(path).name, split="not a film", patient_id=None, reading=analysis.reading,
                                  probabilities=dict(analysis.probabilities), nih_labels=None, source=dict(source)))
    return outputs
