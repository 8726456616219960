"""The guided tour's file (``tour.json``, written by :mod:`cxr_core.jobs.tour`) as pages and the handout read it.

    tour = read_tour("models/default")        # a Tour, or None when the bundle has none
    tour.stops[0].caption, tour.stops[0].boxes[0].iou, tour.absent[0].reason
    resolve_image(stop.source, stop.image, data_root)   # where a stop's image is on this machine

The file's format and version are checked by :func:`cxr_core.bundle.versioned_json.read_versioned_json`; its fields
become the frozen records below, so a page names a field rather than a key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cxr_core.bundle.versioned_json import read_versioned_json

__all__ = ["TOUR_FILE", "TOUR_FORMAT", "TOUR_VERSION", "Absent", "Stop", "BoxScore", "Tour", "read_tour", "resolve_image",
           "tour_from_document"]

TOUR_FILE = "tour.json"
TOUR_FORMAT = "cxr-assist-tour"
TOUR_VERSION = 1

_MODULES = {"scikit-learn": "sklearn"}


@dataclass(frozen=True)
class BoxScore:
    """The heatmap of one finding against one expert box of it, as :func:`cxr_core.jobs.tour_outputs.box_scores`
    measures it when the tour is built and a stop stores it.

    Attributes:
        finding: the boxed finding.
        iou: best IoU of a heatmap box with the expert box.
        iobb: best IoBB (share of a heatmap box inside the expert box, Wang et al. 2017).
        coverage: share of the expert box covered by the heatmap boxes together.
        peak_in_box: the heatmap's strongest value inside the expert box, as a share of its peak.
        box_share: the expert box's area as a share of the film's.
    """

    finding: str
    iou: float
    iobb: float
    coverage: float
    peak_in_box: float
    box_share: float


@dataclass(frozen=True)
class Stop:
    """One stop of the tour: a film, its category, the caption written from ``facts``, and the reading as stored.

    Attributes:
        nih_labels: NIH's labels of the film; None for an image that is not a dataset film (the photograph).
        expert_labels: the radiologists' labels {category: 0.0, 1.0 or None}, or None where the film has none.
        probabilities: the calibrated probabilities; empty where the output was withheld (nothing of it is stored).
        source: where the image comes from (``{"kind": "dataset"}`` or a package's photograph), for :func:`resolve_image`.
    """

    category: str
    title: str
    caption: str
    facts: Mapping
    image: str
    source: Mapping
    patient_id: int | None
    split: str | None
    finding: str | None
    candidates: int
    nih_labels: tuple[str, ...] | None
    expert_labels: Mapping[str, float | None] | None
    probabilities: Mapping[str, float]
    triage: str | None
    triage_probability: float | None
    flagged: tuple[str, ...]
    possible: tuple[str, ...]
    withheld_because: tuple[str, ...]
    boxes: tuple[BoxScore, ...]

    @property
    def withheld(self) -> bool:
        """True where the input check withheld the output (no probabilities stored)."""
        return not self.probabilities

    @property
    def description(self) -> str:
        """What the image is, for an image that is not a dataset film ("" otherwise)."""
        return str(self.source.get("description", ""))


@dataclass(frozen=True)
class Absent:
    """A category no film fits, and why."""

    category: str
    title: str
    reason: str


@dataclass(frozen=True)
class Tour:
    """A stored tour: its stops in order, the absent categories, and how it was made.

    Attributes:
        fingerprint: :func:`cxr_core.jobs.tour.bundle_fingerprint` of the bundle it was built for.
        data: the dataset's record (``root``, ``films``, ``left_out_train_or_val``, ``expert_labels``, ...).
    """

    created: str | None
    command: str | None
    fingerprint: str | None
    description: str | None
    operating_point: str | None
    data: Mapping
    seed: int | None
    top_k: int | None
    eligible_films: int | None
    eligible_patients: int | None
    stops: tuple[Stop, ...]
    absent: tuple[Absent, ...]


def _tuple(values) -> tuple:
    return tuple(values or ())


def _stop(item: Mapping) -> Stop:
    labels = item["nih_labels"]
    return Stop(
        category=item["category"], title=item["title"], caption=item["caption"], facts=dict(item.get("facts") or {}),
        image=item["image"], source=dict(item.get("source") or {}), patient_id=item.get("patient_id"),
        split=item.get("split"), finding=item.get("finding"), candidates=int(item.get("candidates") or 0),
        nih_labels=None if labels is None else tuple(labels), expert_labels=item.get("expert_labels"),
        probabilities=dict(item.get("probabilities") or {}), triage=item.get("triage"),
        triage_probability=item.get("triage_probability"), flagged=_tuple(item.get("flagged")),
        possible=_tuple(item.get("possible")), withheld_because=_tuple(item.get("withheld_because")),
        boxes=tuple(BoxScore(**{k: b[k] for k in BoxScore.__dataclass_fields__}) for b in item.get("boxes") or ()),
    )


def tour_from_document(document: Mapping, where: str | os.PathLike = "the tour") -> Tour:
    """The :class:`Tour` of a tour document (as :func:`cxr_core.jobs.tour.build_tour` or ``select_tour`` returns it).

    Raises:
        ValueError: a stop or absent category lacks a field this version reads.
    """
    try:
        bundle = document.get("bundle") or {}
        return Tour(
            created=document.get("created"), command=document.get("command"), fingerprint=bundle.get("fingerprint"),
            description=bundle.get("description"), operating_point=document.get("operating_point"),
            data=dict(document.get("data") or {}), seed=document.get("seed"), top_k=document.get("top_k"),
            eligible_films=document.get("eligible_films"), eligible_patients=document.get("eligible_patients"),
            stops=tuple(_stop(s) for s in document.get("stops") or ()),
            absent=tuple(Absent(a["category"], a["title"], a["reason"]) for a in document.get("absent") or ()),
        )
    except KeyError as exc:
        raise ValueError(f"{where}: a stop or absent category has no {exc.args[0]!r} field") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"{where}: not a tour this cxr-assist reads ({exc})") from None


def read_tour(directory: str | os.PathLike) -> Tour | None:
    """The stored tour of a bundle folder, or None when it has none.

    Raises:
        ValueError: the file is not a tour this version reads (another format or version, or a field missing).
    """
    path = Path(directory) / TOUR_FILE
    if not path.is_file():
        return None
    document = read_versioned_json(path, format=TOUR_FORMAT, versions=range(0, TOUR_VERSION + 1), missing_version=0)
    return tour_from_document(document, path)


def resolve_image(source: Mapping, image: str, data_root: str | os.PathLike | None = None,
                  dataset_paths: Mapping[str, str] | None = None) -> Path | None:
    """The file of a stop or film on this machine, or None when it is not here.

    Args:
        source: the stop's ``source``.
        image: the image name.
        data_root: the dataset folder (for a dataset film).
        dataset_paths: {image: path} of the dataset, when already read (else ``data_root/images/<image>``).
    """
    if source.get("kind") == "package":
        import importlib.util

        spec = importlib.util.find_spec(_MODULES.get(source["package"], source["package"]))
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / source["path"]
        return path if path.is_file() else None
    if dataset_paths is not None and image in dataset_paths:
        return Path(dataset_paths[image])
    if data_root is None:
        return None
    path = Path(data_root) / "images" / image
    return path if path.is_file() else None
