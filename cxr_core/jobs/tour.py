"""The guided tour: a dozen demo films that show where the model helps and where it fails, chosen from its own outputs.

    outputs = gather_outputs(predictor, NIHDataset("data/demo"), expert=expert_table,
                             extra_images=package_photographs())         # runs the model
    tour = select_tour(outputs, predictor.policy, seed=0)                # pure: no model, no files
    build_tour("models/default", "data/demo")                            # both, written to models/default/tour.json

``python -m training.tour`` runs :func:`build_tour`; the app's Guided tour page
and the PDF handout (:mod:`cxr_core.reporting.handout`) only read the stored
file (:func:`cxr_core.reporting.tour_file.read_tour`, where its format lives).

Each stop is one film with a category, a title and a caption written from
numbers (``facts``) measured on that film: the calibrated probabilities, the
reading at the bundle's default operating point (:mod:`cxr_core.evaluation.reading`),
the heatmap boxes scored against NIH's expert boxes as the evaluation scores
them (:func:`cxr_core.evaluation.localization.heatmap_to_boxes`, IoU, IoBB),
NIH's labels and, where the film has them, the radiologists' labels of
Majkowska et al. (:mod:`cxr_core.evaluation.expert` maps the model's findings
onto their categories). :func:`caption` turns the facts into the sentence, so a
caption can always be checked against its numbers.

Rules of the selection:

* only films outside the model's training AND validation splits (validation
  films chose the checkpoint, calibration and cuts: their outputs are optimistic);
* one film per patient over the whole tour;
* films whose output the input check withheld take part only as what they are
  (a refused image), never as a hit or a miss;
* each category ranks its candidates by a stated score and a seeded random
  choice takes one of the best :data:`TOP_K` (the seed is stored), so the same
  outputs and seed give the same tour; scarce categories choose first;
* a category without a candidate is recorded as absent, with the reason,
  never filled by relaxing its rule.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.evaluation.expert import EXPERT_MAPPING, category_labels, category_scores
from cxr_core.evaluation.flags import FLAG, POSSIBLE
from cxr_core.evaluation.reading import ReadingPolicy
from cxr_core.evaluation.triage import ABNORMAL, NO_FINDING_LIKELY
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.jobs.tour_outputs import EXCLUDED_SPLITS, FilmOutput, gather_outputs, package_photographs
from cxr_core.reporting.tour_file import TOUR_FILE, TOUR_FORMAT, TOUR_VERSION

if TYPE_CHECKING:  # the model is needed only to gather outputs
    pass

__all__ = ["CATEGORIES", "build_tour", "bundle_fingerprint", "caption", "select_tour", "write_tour"]

#: The seeded choice takes one of this many best-ranked candidates.
TOP_K = 3
#: A heatmap is well placed when its best box lies at least this much inside the expert box (Wang et al.'s T(IoBB) = 0.5).
WELL_PLACED_IOBB = 0.5
#: A "small" finding: its expert box covers less than this share of the film.
SMALL_BOX_SHARE = 0.02
#: A heatmap is weak over a box when its strongest value inside it stays below this share of the map's peak: the
#: threshold at which heatmap boxes are drawn (:func:`heatmap_to_boxes`), so no heatmap box reaches the box's peak.
WEAK_PEAK = 0.5
#: The hits shown by name; "hit_other" takes the best of the other boxed findings.
HIT_FINDINGS = ("Cardiomegaly", "Effusion")

#: category key -> (title, what it shows), in the order the tour presents them.
CATEGORIES: dict[str, tuple[str, str]] = {
    "hit_cardiomegaly": ("A clear hit: cardiomegaly", "Cardiomegaly flagged, NIH-labelled, the heatmap on the expert box"),
    "hit_effusion": ("A clear hit: effusion", "Effusion flagged, NIH-labelled, the heatmap on the expert box"),
    "hit_other": ("A clear hit: {finding}", "another boxed finding flagged, NIH-labelled, the heatmap on the expert box"),
    "normal_set_aside": ("A normal film set aside", "triage 'no finding likely' on a film NIH labels No Finding"),
    "abnormal_no_flag": ("Caught by the triage, no single flag", "triage 'abnormal', no finding flagged, NIH labels findings"),
    "false_alarm": ("A confident false alarm", "the most confident flag on a film NIH labels No Finding"),
    "miss": ("A miss", "an NIH-labelled finding with an expert box, below even the 'possible' cut"),
    "triage_miss": ("An abnormal film set aside", "triage 'no finding likely' on a film NIH labels with findings"),
    "small_nodule": ("A small nodule, a weak heatmap", "a small expert nodule box the heatmap does not reach"),
    "nih_overturned": ("NIH says yes, the radiologists say no", "NIH's text-mined label overturned by radiologists"),
    "nih_missed": ("NIH says no, the radiologists say yes", "a finding the radiologists marked and NIH's label lacks"),
    "refused": ("Not a chest film: refused", "a non-chest image: the input check withholds the output"),
}
#: Scarce categories choose first, so the one-film-per-patient rule costs the plentiful ones.
SELECTION_ORDER = ("refused", "nih_overturned", "nih_missed", "small_nodule", "hit_cardiomegaly", "hit_effusion",
                   "hit_other", "miss", "triage_miss", "normal_set_aside", "abnormal_no_flag", "false_alarm")


# -- captions ---------------------------------------------------------------------------------------------------------


def _name(finding: str) -> str:
    return DISPLAY_NAMES.get(finding, finding)


def _labels(findings: Sequence[str]) -> str:
    return ", ".join(_name(f) for f in findings) if findings else "No Finding"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _band_words(band: str) -> str:
    return {FLAG: "flagged", POSSIBLE: "'possible', not a flag"}.get(band, "below the 'possible' cut")


def caption(category: str, facts: Mapping) -> str:
    """The caption of a stop, written from its facts only (so it can be checked against them)."""
    f = facts
    triage = (f"Triage: {f['triage']} (probability of any finding {f['triage_p']:.2f})." if "triage" in f else "")
    if category.startswith("hit_"):
        name = _name(f["finding"])
        return (f"{name} flagged at p = {f['p']:.2f} (its flag cut is {f['flag_cut']:.2f}); NIH label {name}. "
                f"{_pct(f['iobb'])} of the best heatmap box lies inside the expert box (IoBB {f['iobb']:.2f}, IoU "
                f"{f['iou']:.2f}), and the heatmap boxes cover {_pct(f['coverage'])} of the expert box. {triage}")
    if category == "normal_set_aside":
        text = (f"Triage: no finding likely: probability of any finding {f['triage_p']:.2f}, below the rule-out point "
                f"{f['rule_out']:.2f}. NIH label No Finding; no finding flagged (the highest is {_name(f['top_finding'])} "
                f"at p = {f['top_p']:.2f}).")
        return text + (" The radiologists marked none of their four categories either." if f.get("radiologists_normal") else "")
    if category == "abnormal_no_flag":
        return (f"Triage: abnormal: probability of any finding {f['triage_p']:.2f}, at or above the rule-out point "
                f"{f['rule_out']:.2f}, yet no single finding reaches its flag cut. NIH labels {_labels(f['nih_labels'])}. "
                f"The highest finding is {_name(f['top_finding'])} at p = {f['top_p']:.2f} ({_band_words(f['top_band'])}).")
    if category == "false_alarm":
        name = _name(f["finding"])
        text = (f"{name} flagged at p = {f['p']:.2f} (its flag cut is {f['flag_cut']:.2f}) on a film NIH labels No Finding. "
                f"{triage}")
        if f.get("radiologists_category"):
            text += f" The radiologists did not mark '{f['radiologists_category'].lower()}' either."
        return text
    if category == "miss":
        name = _name(f["finding"])
        return (f"NIH label {name}, with an expert box. The model gives {name} p = {f['p']:.2f}, below its 'possible' cut "
                f"{f['possible_cut']:.2f}: no flag. The heatmap boxes cover {_pct(f['coverage'])} of the expert box (a heatmap "
                f"shows where the model looked for {name}, however low its probability). {triage}")
    if category == "triage_miss":
        return (f"Triage: no finding likely: probability of any finding {f['triage_p']:.2f}, below the rule-out point "
                f"{f['rule_out']:.2f}, but NIH labels {_labels(f['nih_labels'])}. On the validation split the rule-out "
                f"point caught {_pct(f['val_sensitivity'])} of abnormal films; this film is one of the others.")
    if category == "small_nodule":
        return (f"Nodule: NIH label and an expert box covering {100 * f['box_share']:.1f}% of the film. The model gives "
                f"Nodule p = {f['p']:.2f} ({_band_words(f['band'])}); inside the expert box the heatmap reaches only "
                f"{_pct(f['peak_in_box'])} of its peak, and the heatmap boxes cover {_pct(f['coverage'])} of the box.")
    if category in ("nih_overturned", "nih_missed"):
        cat = f["category"]
        parts = ", ".join(_name(x) for x in f["model_findings"])
        if category == "nih_overturned":
            said = (f"NIH label {_labels(f['nih_findings'])} (text-mined from the report); the radiologists "
                    f"(Majkowska et al.) did not mark '{cat.lower()}'.")
        else:
            said = (f"NIH labels {_labels(f['nih_labels'])}, none of them '{cat.lower()}'; the radiologists "
                    f"(Majkowska et al.) marked '{cat.lower()}'.")
        flagged = ", ".join(_name(x) for x in f["flagged"]) or "none"
        return (f"{said} The model: '{cat.lower()}' {f['model_score']:.2f} (the highest of {parts}); flagged: {flagged}. "
                f"{triage}")
    if category == "refused":
        return (f"{f['description']}: the input check gave {f['warnings']} warning{'s' if f['warnings'] != 1 else ''}, so "
                "the triage, the flags and the heatmaps are withheld (a reader may still ask to see them on the Analyze page).")
    raise ValueError(f"unknown tour category {category!r}")


# -- selection (pure) -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    film: FilmOutput
    rank: float  # lower is better
    facts: dict
    finding: str | None
    title: str | None = None


def _r(value) -> float:
    return round(float(value), 4)


def _p(film: FilmOutput, finding: str) -> float:
    return float(film.probabilities[finding])


def _triage_facts(film: FilmOutput) -> dict:
    return {"triage": film.reading.triage, "triage_p": _r(film.reading.triage_probability)}


def _top(film: FilmOutput) -> str:
    return max(FINDINGS, key=lambda f: film.probabilities[f])


def _hits(films, policy, findings: Sequence[str]) -> list[_Candidate]:
    cuts = policy.cuts()
    out = []
    for film in films:
        for box in film.boxes:
            if (box.finding in findings and box.finding in film.nih_labels and film.reading.bands.get(box.finding) == FLAG
                    and box.iobb >= WELL_PLACED_IOBB):
                finding = box.finding
                out.append(_Candidate(film, -(box.iou + box.coverage), {
                    "finding": finding, "p": _r(_p(film, finding)), "flag_cut": _r(cuts.flag[FINDINGS.index(finding)]),
                    "iobb": _r(box.iobb), "iou": _r(box.iou), "coverage": _r(box.coverage), **_triage_facts(film)},
                    finding, CATEGORIES["hit_other"][0].format(finding=_name(finding).lower())))
    return out


def _radiologists_normal(film: FilmOutput) -> bool | None:
    if film.expert is None:
        return None
    return all(v == 0.0 for c, v in film.expert.items() if v is not None)


def _candidates(category: str, films: Sequence[FilmOutput], policy: ReadingPolicy) -> tuple[list[_Candidate], str]:
    """The candidates of a category (best first after sorting by rank) and the reason it would be absent."""
    cuts = policy.cuts()
    triage = policy.triage
    assessed = [f for f in films if f.nih_labels is not None and not f.withheld]
    if category in ("hit_cardiomegaly", "hit_effusion"):
        finding = HIT_FINDINGS[0] if category == "hit_cardiomegaly" else HIT_FINDINGS[1]
        hits = _hits(assessed, policy, [finding])
        return [_Candidate(c.film, c.rank, c.facts, c.finding) for c in hits], (
            f"no film has {_name(finding)} NIH-labelled and flagged with an expert box that its best heatmap box lies at "
            f"least {_pct(WELL_PLACED_IOBB)} inside (IoBB >= {WELL_PLACED_IOBB})")
    if category == "hit_other":
        others = [f for f in FINDINGS if f not in HIT_FINDINGS]
        return _hits(assessed, policy, others), (
            f"no film has another boxed finding NIH-labelled and flagged with its best heatmap box at least "
            f"{_pct(WELL_PLACED_IOBB)} inside the expert box")
    if category in ("normal_set_aside", "abnormal_no_flag", "triage_miss") and triage is None:
        return [], "this bundle has no triage (evaluate it with python -m training.evaluate)"
    out = []
    if category == "normal_set_aside":
        for film in assessed:
            if (not film.nih_labels and film.reading.triage == NO_FINDING_LIKELY and not film.reading.flagged
                    and _radiologists_normal(film) is not False):
                top = _top(film)
                out.append(_Candidate(film, film.reading.triage_probability, {
                    "triage_p": _r(film.reading.triage_probability), "rule_out": _r(triage.rule_out),
                    "top_finding": top, "top_p": _r(_p(film, top)), "radiologists_normal": _radiologists_normal(film)}, top))
        return out, "no film NIH labels No Finding is set aside by the triage as 'no finding likely'"
    if category == "abnormal_no_flag":
        for film in assessed:
            if film.nih_labels and film.reading.triage == ABNORMAL and not film.reading.flagged:
                top = _top(film)
                focus = max(film.nih_labels, key=lambda f: film.probabilities[f])
                out.append(_Candidate(film, -film.reading.triage_probability, {
                    "triage_p": _r(film.reading.triage_probability), "rule_out": _r(triage.rule_out),
                    "nih_labels": list(film.nih_labels), "top_finding": top, "top_p": _r(_p(film, top)),
                    "top_band": film.reading.bands[top]}, focus))
        return out, "no film with NIH findings is called 'abnormal' by the triage without any finding flagged"
    if category == "triage_miss":
        for film in assessed:
            if film.nih_labels and film.reading.triage == NO_FINDING_LIKELY:
                focus = max(film.nih_labels, key=lambda f: film.probabilities[f])
                sensitivity = (triage.validation.get("rule_out") or {}).get("sensitivity")
                out.append(_Candidate(film, film.reading.triage_probability, {
                    "triage_p": _r(film.reading.triage_probability), "rule_out": _r(triage.rule_out),
                    "nih_labels": list(film.nih_labels),
                    "val_sensitivity": None if sensitivity is None else _r(sensitivity)}, focus))
        out = [c for c in out if c.facts["val_sensitivity"] is not None]
        return out, "the triage set aside no film that NIH labels with findings"
    if category == "false_alarm":
        for film in assessed:
            if film.nih_labels or not film.reading.flagged:
                continue
            finding = film.reading.flagged[0]  # the most probable flag
            category_of = next((c for c, members in EXPERT_MAPPING.items() if finding in members), None)
            said = None if film.expert is None or category_of is None else film.expert.get(category_of)
            if said == 1.0:  # the radiologists saw it: not a false alarm, a label NIH missed
                continue
            # Confidence: how far the probability is above the finding's flag cut (cuts differ 4-fold between findings).
            out.append(_Candidate(film, -_p(film, finding) / float(cuts.flag[FINDINGS.index(finding)]), {
                "finding": finding, "p": _r(_p(film, finding)), "flag_cut": _r(cuts.flag[FINDINGS.index(finding)]),
                "radiologists_category": category_of if said == 0.0 else None, **_triage_facts(film)}, finding))
        return out, "no film NIH labels No Finding has a finding flagged"
    if category == "miss":
        for film in assessed:
            for box in film.boxes:
                f = box.finding
                if f in film.nih_labels and film.reading.bands.get(f) == "below":
                    cut = float(cuts.possible[FINDINGS.index(f)])
                    out.append(_Candidate(film, _p(film, f) / cut, {
                        "finding": f, "p": _r(_p(film, f)), "possible_cut": _r(cut), "coverage": _r(box.coverage),
                        **_triage_facts(film)}, f))
        return out, "every NIH-labelled finding with an expert box reaches at least its 'possible' cut"
    if category == "small_nodule":
        for film in assessed:
            for box in film.boxes:
                if (box.finding == "Nodule" and "Nodule" in film.nih_labels and box.box_share < SMALL_BOX_SHARE
                        and box.peak_in_box < WEAK_PEAK):
                    out.append(_Candidate(film, box.peak_in_box, {
                        "p": _r(_p(film, "Nodule")), "band": film.reading.bands["Nodule"], "box_share": _r(box.box_share),
                        "peak_in_box": _r(box.peak_in_box), "coverage": _r(box.coverage)}, "Nodule"))
        return out, (f"no NIH-labelled nodule has an expert box under {_pct(SMALL_BOX_SHARE)} of the film where the heatmap "
                     f"stays below {_pct(WEAK_PEAK)} of its peak")
    if category in ("nih_overturned", "nih_missed"):
        read = [f for f in assessed if f.expert is not None]
        if not read:
            return [], ("no film on offer has the radiologists' labels of Majkowska et al. (give them with "
                        "python -m training.tour --expert-labels FILE)")
        want_nih = 1.0 if category == "nih_overturned" else 0.0
        for film in read:
            y = np.array([[1.0 if f in film.nih_labels else 0.0 for f in FINDINGS]])
            nih = category_labels(y)[0]
            scores = category_scores(np.array([[film.probabilities[f] for f in FINDINGS]]))[0]
            for k, cat in enumerate(EXPERT_CATEGORIES):
                said = film.expert.get(cat)
                if said is None or nih[k] != nih[k] or nih[k] != want_nih or said != 1.0 - want_nih:
                    continue
                members = EXPERT_MAPPING[cat]
                focus = max(members, key=lambda f: film.probabilities[f])
                facts = {"category": cat, "model_score": _r(scores[k]), "model_findings": list(members),
                         "flagged": list(film.reading.flagged), **_triage_facts(film)}
                if category == "nih_overturned":
                    facts["nih_findings"] = [f for f in film.nih_labels if f in members]
                else:
                    facts["nih_labels"] = list(film.nih_labels)
                # No ranking: every disagreement is as good an example as another (a seeded choice among all).
                out.append(_Candidate(film, 0.0, facts, focus))
        side = "NIH labels a category the radiologists did not mark" if want_nih else "the radiologists marked a category NIH's label lacks"
        return out, f"among the {len(read)} films with the radiologists' labels, none where {side}"
    if category == "refused":
        extras = [f for f in films if f.nih_labels is None]
        if not extras:
            return [], "no non-chest image was offered (no photograph shipped with an installed package was found)"
        for film in extras:
            if film.withheld:
                out.append(_Candidate(film, 0.0, {"description": film.source.get("description", film.image),
                                                  "warnings": len(film.reading.withheld_because)}, None))
        return out, "the input check did not warn on any non-chest image offered (" + ", ".join(f.image for f in extras) + ")"
    raise ValueError(f"unknown tour category {category!r}")


def _stop(category: str, chosen: _Candidate, candidates: int) -> dict:
    film = chosen.film
    reading = film.reading
    title = chosen.title if category == "hit_other" else CATEGORIES[category][0]
    return {
        "category": category,
        "title": title,
        "caption": caption(category, chosen.facts),
        "facts": chosen.facts,
        "image": film.image,
        "source": dict(film.source),
        "patient_id": film.patient_id,
        "split": film.split,
        "finding": chosen.finding,
        "candidates": candidates,
        "nih_labels": None if film.nih_labels is None else list(film.nih_labels),
        "expert_labels": film.expert,
        # Nothing of a withheld reading is stored: the page shows what a reader is shown.
        "probabilities": {} if reading.withheld else {f: round(float(film.probabilities[f]), 6) for f in FINDINGS},
        "triage": reading.triage,
        "triage_probability": None if reading.triage_probability is None else round(reading.triage_probability, 6),
        "flagged": list(reading.flagged),
        "possible": list(reading.possible),
        "withheld_because": list(reading.withheld_because) if reading.withheld else [],
        "boxes": [{"finding": b.finding, "iou": _r(b.iou), "iobb": _r(b.iobb), "coverage": _r(b.coverage),
                   "peak_in_box": _r(b.peak_in_box), "box_share": _r(b.box_share)} for b in film.boxes],
    }


def select_tour(outputs: Sequence[FilmOutput], policy: ReadingPolicy, *, seed: int = 0, top_k: int = TOP_K) -> dict:
    """Choose the tour's stops from the model's outputs (pure: same outputs and seed, same tour).

    Args:
        outputs: from :func:`gather_outputs` (films of the training and validation splits are ignored here too).
        policy: the bundle's reading policy (its cuts and triage write the captions).
        seed: the seed of the choice among each category's best candidates.
        top_k: how many best-ranked candidates the choice is among.

    Returns:
        ``{"seed", "top_k", "stops": [...] in the order of :data:`CATEGORIES`, "absent": [{"category", "title",
        "reason"}], "eligible_films", "eligible_patients"}``.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    films = [f for f in outputs if f.split not in EXCLUDED_SPLITS]
    used: set[int] = set()
    chosen: dict[str, tuple[_Candidate, int]] = {}
    absent: dict[str, str] = {}
    for index, category in enumerate(SELECTION_ORDER):
        candidates, reason = _candidates(category, films, policy)
        free = [c for c in candidates if c.film.patient_id is None or c.film.patient_id not in used]
        if not free:
            absent[category] = (reason if not candidates else
                                f"every candidate film ({len(candidates)}) belongs to a patient already on the tour")
            continue
        free.sort(key=lambda c: (c.rank, c.film.image, c.finding or ""))
        # One generator per category: a change in one category's candidates leaves the others' choices alone.
        rng = np.random.default_rng([seed, index])
        pick = free[int(rng.integers(min(top_k, len(free))))]
        chosen[category] = (pick, len(free))
        if pick.film.patient_id is not None:
            used.add(pick.film.patient_id)
    dataset_films = [f for f in films if f.nih_labels is not None]
    return {
        "seed": int(seed),
        "top_k": int(top_k),
        "stops": [_stop(c, *chosen[c]) for c in CATEGORIES if c in chosen],
        "absent": [{"category": c, "title": CATEGORIES[c][0].format(finding="another finding"), "reason": absent[c]}
                   for c in CATEGORIES if c in absent],
        "eligible_films": len(dataset_films),
        "eligible_patients": len({f.patient_id for f in dataset_films}),
    }


# -- the stored tour --------------------------------------------------------------------------------------------------


def bundle_fingerprint(metadata: Mapping | None) -> str:
    """A short digest of what a tour depends on in a bundle: its members, calibration, cuts and triage."""
    meta = dict(metadata or {})
    keys = ("created", "members", "calibration", "thresholds", "triage", "flags")
    text = json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_tour(tour: Mapping, directory: str | os.PathLike) -> Path:
    """Write ``tour.json`` into a bundle folder (atomically); returns its path."""
    path = Path(directory) / TOUR_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(tour, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def build_tour(
    bundle_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    expert_labels: str | os.PathLike | None = None,
    seed: int = 0,
    photographs: bool = True,
    out: str | os.PathLike | None = None,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Gather the bundle's outputs on a dataset, select the tour, and write it (``python -m training.tour``).

    Args:
        bundle_dir: the model bundle; the tour goes into it as ``tour.json`` unless ``out`` names another folder.
        data_root: the demo set (any NIH layout).
        expert_labels: the radiologists' label file; None looks under ``data_root``
            (:func:`cxr_core.data.find_expert_labels`); without one, the disagreement categories are absent.
        seed: see :func:`select_tour`.
        photographs: offer the photographs that ship with installed packages as the non-chest image.
        out: the folder to write ``tour.json`` to (default: the bundle).
        progress, log: a progress bar wrapper and a line printer.

    Returns:
        the tour as written.

    Raises:
        FileNotFoundError: the bundle, the dataset or a given expert label file is missing.
        ValueError: the dataset has no film outside the model's training and validation splits.
    """
    from cxr_core import __version__
    from cxr_core.bundle.format import describe_model, portable_path
    from cxr_core.data import NIHDataset, find_expert_labels, read_expert_labels
    from cxr_core.serving.predictor import Predictor

    bundle_dir, data_root = Path(bundle_dir), Path(data_root)
    if not (bundle_dir / "bundle.json").is_file():
        raise FileNotFoundError(f"no model bundle at {bundle_dir} (a folder with bundle.json)")
    if not data_root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data_root}")
    if expert_labels is not None and not Path(expert_labels).is_file():
        raise FileNotFoundError(f"expert label file not found: {expert_labels}")
    dataset = NIHDataset(data_root)
    predictor = Predictor.from_bundle(bundle_dir)
    splits = [predictor.split_of(n) or "unseen" for n in dataset.csv["image"]]
    excluded = sum(s in EXCLUDED_SPLITS for s in splits)
    if excluded == len(splits):
        raise ValueError(f"every film of {data_root} is in the model's training or validation split: a tour needs films "
                         "the model was neither trained nor tuned on")
    label_file = Path(expert_labels) if expert_labels is not None else find_expert_labels(data_root)
    expert = read_expert_labels(label_file) if label_file is not None else None
    extras = package_photographs() if photographs else []
    log(f"analysing {len(splits) - excluded} films outside the training and validation splits ({excluded} left out)"
        f"{' and ' + str(len(extras)) + ' photographs' if extras else ''}")
    outputs = gather_outputs(predictor, dataset, expert=expert, extra_images=extras, progress=progress)
    tour = select_tour(outputs, predictor.policy, seed=seed)
    command = f"python -m training.tour --bundle {portable_path(bundle_dir)} --data {portable_path(data_root)}"
    if expert_labels is not None:
        command += f" --expert-labels {portable_path(expert_labels)}"
    if seed:
        command += f" --seed {seed}"
    document = {
        "format": TOUR_FORMAT,
        "format_version": TOUR_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": {"name": "cxr-assist", "version": __version__},
        "command": command,
        "bundle": {"description": describe_model(predictor.metadata), "fingerprint": bundle_fingerprint(predictor.metadata)},
        "operating_point": predictor.policy.default_operating_point,
        "data": {
            "root": portable_path(data_root), "films": len(splits), "left_out_train_or_val": int(excluded),
            "expert_labels": None if label_file is None else label_file.name,
            "films_with_expert_labels": sum(o.expert is not None for o in outputs),
            "photographs_offered": [s["description"] for _, s in extras],
        },
        **tour,
    }
    path = write_tour(document, out or bundle_dir)
    log(f"{len(tour['stops'])} stops, {len(tour['absent'])} categories absent; written to {path}")
    for item in tour["absent"]:
        log(f"  absent: {item['category']}: {item['reason']}")
    return document
