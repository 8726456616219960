"""The guided tour: its selection (pure, seeded), the stored tour of the shipped model checked against the data, the
page through AppTest, the PDF handout and the command's errors.

The selection rules are tested on hand-written model outputs (named ``synthetic_*``: records of numbers, no image);
everything else runs on real demo films: the tiny test bundle's outputs and the shipped model's stored tour.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.data import NIHDataset, read_expert_labels
from cxr_core.evaluation.reading import ReadingPolicy
from cxr_core.findings import FINDINGS
from cxr_core.jobs.tour import (
    CATEGORIES,
    SMALL_BOX_SHARE,
    WEAK_PEAK,
    WELL_PLACED_IOBB,
    bundle_fingerprint,
    caption,
    select_tour,
)
from cxr_core.jobs.tour_outputs import EXCLUDED_SPLITS, FilmOutput, box_scores
from cxr_core.reporting.tour_file import TOUR_FILE, BoxScore, read_tour, tour_from_document
from tests.app_bundle import SHIPPED_BUNDLE, tiny_app_bundle
from tests.conftest import REPO_ROOT, SHARED_NIH

SHIPPED_META = json.loads((SHIPPED_BUNDLE / "bundle.json").read_text()) if (SHIPPED_BUNDLE / "bundle.json").is_file() else None


# -- the selection on hand-written outputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    if SHIPPED_META is None:
        pytest.skip("the shipped bundle's bundle.json (its fitted cuts and triage) is not here")
    return ReadingPolicy.from_metadata(SHIPPED_META)


def synthetic_film(policy, image, patient, *, p=None, labels=(), boxes=(), expert=None, split="test", withheld=()):
    """A hand-written model output: probabilities 0.01 except ``p``, read by the shipped bundle's policy."""
    probabilities = {f: 0.01 for f in FINDINGS} | dict(p or {})
    reading = policy.read(probabilities, withheld_because=withheld)
    return FilmOutput(image=image, split=split, patient_id=patient, reading=reading, probabilities=probabilities,
                      nih_labels=tuple(labels) if labels is not None else None, boxes=tuple(boxes), expert=expert)


def synthetic_outputs(policy):
    cuts = policy.cuts()
    flag = lambda f, more=0.05: float(cuts.flag[FINDINGS.index(f)]) + more  # noqa: E731
    possible = lambda f: float(cuts.possible[FINDINGS.index(f)]) + 0.005  # noqa: E731
    good = lambda f: BoxScore(f, iou=0.45, iobb=0.9, coverage=0.7, peak_in_box=1.0, box_share=0.1)  # noqa: E731
    expert_none = {"Pneumothorax": 0.0, "Nodule or mass": 0.0, "Airspace opacity": 0.0, "Fracture": 0.0}
    films = [
        synthetic_film(policy, "synthetic_cardio.png", 1, p={"Cardiomegaly": flag("Cardiomegaly")}, labels=["Cardiomegaly"],
                       boxes=[good("Cardiomegaly")]),
        synthetic_film(policy, "synthetic_effusion.png", 2, p={"Effusion": flag("Effusion")}, labels=["Effusion"],
                       boxes=[good("Effusion")]),
        synthetic_film(policy, "synthetic_mass.png", 3, p={"Mass": flag("Mass")}, labels=["Mass"], boxes=[good("Mass")]),
        synthetic_film(policy, "synthetic_normal.png", 4, labels=[]),
        synthetic_film(policy, "synthetic_possible.png", 5, labels=["Infiltration", "Atelectasis"],
                       p={f: possible(f) for f in ("Atelectasis", "Effusion", "Infiltration", "Pneumonia", "Consolidation",
                                                   "Pleural_Thickening", "Edema", "Nodule")}),
        synthetic_film(policy, "synthetic_false_alarm.png", 6, p={"Mass": flag("Mass", 0.3)}, labels=[]),
        synthetic_film(policy, "synthetic_miss.png", 7, p={"Pneumothorax": 0.02}, labels=["Pneumothorax"],
                       boxes=[BoxScore("Pneumothorax", iou=0.0, iobb=0.0, coverage=0.05, peak_in_box=0.2, box_share=0.1)]),
        synthetic_film(policy, "synthetic_set_aside.png", 8, labels=["Fibrosis"]),
        synthetic_film(policy, "synthetic_nodule.png", 9, p={"Nodule": 0.12}, labels=["Nodule"],
                       boxes=[BoxScore("Nodule", iou=0.0, iobb=0.0, coverage=0.0, peak_in_box=0.2, box_share=0.005)]),
        synthetic_film(policy, "synthetic_overturned.png", 10, p={"Nodule": 0.1}, labels=["Nodule"], expert=expert_none),
        synthetic_film(policy, "synthetic_nih_missed.png", 11, labels=[], expert=expert_none | {"Pneumothorax": 1.0}),
        synthetic_film(policy, "synthetic_photo.jpg", None, labels=None, withheld=["not a chest film"]),
    ]
    films[-1] = replace(films[-1], split="not a film", source={"kind": "package", "package": "x", "path": "p.jpg",
                                                                 "description": "a photograph"})
    return films


def test_every_category_fills_from_outputs_that_fit_it(policy):
    films = synthetic_outputs(policy)
    tour = select_tour(films, policy, seed=0)
    assert [s["category"] for s in tour["stops"]] == list(CATEGORIES)
    assert tour["absent"] == []
    by = {s["category"]: s for s in tour["stops"]}
    assert by["hit_cardiomegaly"]["image"] == "synthetic_cardio.png" and by["hit_other"]["title"] == "A clear hit: mass"
    assert by["normal_set_aside"]["image"] == "synthetic_normal.png" and by["triage_miss"]["image"] == "synthetic_set_aside.png"
    assert by["false_alarm"]["facts"]["finding"] == "Mass" and by["miss"]["finding"] == "Pneumothorax"
    assert by["nih_overturned"]["facts"]["category"] == "Nodule or mass" and by["nih_missed"]["facts"]["category"] == "Pneumothorax"
    assert by["refused"]["probabilities"] == {} and by["refused"]["withheld_because"] == ["not a chest film"]
    for stop in tour["stops"]:
        assert stop["caption"] == caption(stop["category"], stop["facts"])
    assert "Cardiomegaly flagged at p = " in by["hit_cardiomegaly"]["caption"]
    assert "covering 0.5% of the film" in by["small_nodule"]["caption"]
    json.dumps(tour, allow_nan=False)  # plain JSON


def test_selection_is_reproducible_and_seeded(policy):
    films = synthetic_outputs(policy)
    # Three well-placed cardiomegaly hits of three patients: the seed chooses among them.
    more = [replace(films[0], image=f"synthetic_cardio_{k}.png", patient_id=100 + k) for k in range(2)]
    a = select_tour(films + more, policy, seed=0)
    assert a == select_tour(films + more, policy, seed=0)
    assert a == select_tour(list(reversed(films + more)), policy, seed=0)  # not the input order
    picks = {select_tour(films + more, policy, seed=s)["stops"][0]["image"] for s in range(12)}
    assert len(picks) > 1
    assert select_tour(films + more, policy, seed=0, top_k=1)["stops"][0]["candidates"] == 3


def test_training_and_validation_films_are_never_chosen(policy):
    films = synthetic_outputs(policy)
    best = replace(films[0], image="synthetic_cardio_train.png", patient_id=200,
                   boxes=(BoxScore("Cardiomegaly", iou=0.9, iobb=1.0, coverage=1.0, peak_in_box=1.0, box_share=0.1),))
    for split in EXCLUDED_SPLITS:
        tour = select_tour([replace(best, split=split)] + films[1:], policy, seed=0, top_k=1)
        assert all(s["image"] != best.image for s in tour["stops"])
        assert "hit_cardiomegaly" in {a["category"] for a in tour["absent"]}


def test_one_film_per_patient_and_absent_categories_say_why(policy):
    films = synthetic_outputs(policy)
    # The only cardiomegaly hit belongs to the patient of the small nodule, which chooses first (scarcer).
    shared = [replace(f, patient_id=9) if f.image == "synthetic_cardio.png" else f for f in films]
    tour = select_tour(shared, policy, seed=0)
    patients = [s["patient_id"] for s in tour["stops"] if s["patient_id"] is not None]
    assert len(patients) == len(set(patients))
    absent = {a["category"]: a["reason"] for a in tour["absent"]}
    assert absent == {"hit_cardiomegaly": "every candidate film (1) belongs to a patient already on the tour"}
    # No expert labels, no photograph, no normal film: absent, each with its reason.
    normal = ("synthetic_normal.png", "synthetic_nih_missed.png")
    bare = [replace(f, expert=None) for f in films if f.nih_labels is not None and f.image not in normal]
    absent = {a["category"]: a["reason"] for a in select_tour(bare, policy)["absent"]}
    assert set(absent) == {"nih_overturned", "nih_missed", "refused", "normal_set_aside"}
    assert "--expert-labels" in absent["nih_overturned"] and "no non-chest image was offered" in absent["refused"]
    # A photograph the input check did not warn on is not "refused".
    calm = [replace(f, reading=policy.read(f.probabilities)) if f.nih_labels is None else f for f in films]
    assert "did not warn" in {a["category"]: a["reason"] for a in select_tour(calm, policy)["absent"]}["refused"]


def test_a_film_whose_output_was_withheld_is_no_hit_or_miss(policy):
    films = synthetic_outputs(policy)
    warned = [replace(f, reading=policy.read(f.probabilities, withheld_because=["odd film"])) if f.image == "synthetic_cardio.png"
              else f for f in films]
    tour = select_tour(warned, policy)
    assert "synthetic_cardio.png" not in {s["image"] for s in tour["stops"]}


def test_box_scores_measure_the_heatmap_against_the_box():
    heat = np.zeros((100, 100))
    heat[20:40, 20:40] = 1.0  # one strong region
    heat[80:90, 80:90] = 0.3  # a weak one
    inside, weak = box_scores(heat, "Mass", [(20, 20, 20, 20), (80, 80, 10, 10)])
    assert inside.iou == pytest.approx(1.0) and inside.iobb == pytest.approx(1.0) and inside.coverage == pytest.approx(1.0)
    assert inside.peak_in_box == 1.0 and inside.box_share == pytest.approx(0.04)
    assert weak.iou == 0.0 and weak.coverage == 0.0 and weak.peak_in_box == pytest.approx(0.3)
    half = box_scores(heat, "Mass", [(20, 20, 40, 20)])[0]
    assert half.coverage == pytest.approx(0.5) and half.iou == pytest.approx(0.5) and half.iobb == pytest.approx(1.0)


# -- the stored tour of the shipped model, checked against the data ---------------------------------------------------


@pytest.fixture(scope="module")
def shipped_tour():
    tour = read_tour(SHIPPED_BUNDLE) if (SHIPPED_BUNDLE / "bundle.json").is_file() else None
    if tour is None:
        pytest.skip("no models/default/tour.json (python -m training.tour --bundle models/default --data data/demo)")
    return tour


def test_the_stored_tour_is_of_this_bundle_with_portable_paths(shipped_tour):
    assert shipped_tour.fingerprint == bundle_fingerprint(SHIPPED_META)
    text = (SHIPPED_BUNDLE / TOUR_FILE).read_text()
    assert not re.search(r'"(/|[A-Za-z]:\\)', text) and "/work/" not in text and "/root/" not in text and "/home/" not in text
    assert 10 <= len(shipped_tour.stops) <= 14
    assert {s.category for s in shipped_tour.stops} | {a.category for a in shipped_tour.absent} == set(CATEGORIES)
    assert all(a.reason for a in shipped_tour.absent)


def test_every_stored_stop_matches_the_data(shipped_tour, demo_root):
    """Each stop's film, labels, split, probabilities, reading and caption against the demo set, the bundle's split and
    its stored evaluation predictions (predictions.csv.gz, written by training.evaluate)."""
    from cxr_core.evaluation.calibration import Calibration
    from cxr_core.jobs.bundle_evaluation import read_predictions

    dataset = NIHDataset(demo_root)
    rows = dataset.csv.set_index("image")
    splits = pd.read_csv(SHIPPED_BUNDLE / "splits.csv").set_index("image")["split"]
    predictions = read_predictions(SHIPPED_BUNDLE).set_index("image")
    calibration = Calibration.from_dict(SHIPPED_META["calibration"])
    policy = ReadingPolicy.from_metadata(SHIPPED_META)
    cuts = policy.cuts()
    patients = []
    for stop in shipped_tour.stops:
        assert stop.title and stop.caption == caption(stop.category, stop.facts), stop.category
        if stop.nih_labels is None:  # the non-chest image: withheld, nothing of the reading stored
            assert stop.category == "refused" and stop.withheld_because and stop.probabilities == {} and stop.withheld
            assert stop.source["kind"] == "package" and stop.triage == "not assessed"
            continue
        image = stop.image
        assert splits.get(image, "unseen") not in EXCLUDED_SPLITS and stop.split == splits.get(image, "unseen")
        assert stop.patient_id == int(rows.loc[image, "patient_id"])
        patients.append(stop.patient_id)
        y = dataset.labels[dataset.csv.index[dataset.csv["image"] == image][0]]
        assert stop.nih_labels == tuple(f for f, v in zip(FINDINGS, y) if v > 0.5)
        p = np.array([stop.probabilities[f] for f in FINDINGS])
        stored = calibration.apply(predictions.loc[image, list(FINDINGS)].to_numpy(dtype=float)[None, :])[0]
        np.testing.assert_allclose(p, stored, atol=2e-3)  # one film analysed vs the batch evaluation, 6 decimals
        reading = policy.read(p)
        assert (reading.triage, tuple(reading.flagged)) == (stop.triage, stop.flagged)
        assert stop.triage_probability == pytest.approx(reading.triage_probability, abs=1e-5)
        facts, category = stop.facts, stop.category
        for key in ("p", "top_p"):
            if key in facts:
                finding = facts.get("finding") or facts.get("top_finding") or "Nodule"
                assert facts[key] == pytest.approx(stop.probabilities[finding], abs=1e-4)
        if "triage_p" in facts:
            assert facts["triage_p"] == pytest.approx(stop.triage_probability, abs=1e-4)
        box = {b.finding: b for b in stop.boxes}
        if category.startswith("hit_"):
            f = facts["finding"]
            assert f in stop.nih_labels and f in stop.flagged and box[f].iobb >= WELL_PLACED_IOBB
            assert facts["flag_cut"] == pytest.approx(cuts.flag[FINDINGS.index(f)], abs=1e-4)
            assert (facts["iobb"], facts["iou"], facts["coverage"]) == (box[f].iobb, box[f].iou, box[f].coverage)
        elif category == "normal_set_aside":
            assert stop.nih_labels == () and stop.triage == "no finding likely" and stop.flagged == ()
        elif category == "abnormal_no_flag":
            assert stop.nih_labels and stop.triage == "abnormal" and stop.flagged == ()
        elif category == "triage_miss":
            assert stop.nih_labels and stop.triage == "no finding likely"
        elif category == "false_alarm":
            assert stop.nih_labels == () and stop.flagged[0] == facts["finding"]
        elif category == "miss":
            f = facts["finding"]
            assert f in stop.nih_labels and reading.bands[f] == "below" and f in box
        elif category == "small_nodule":
            assert "Nodule" in stop.nih_labels and box["Nodule"].box_share < SMALL_BOX_SHARE
            assert box["Nodule"].peak_in_box < WEAK_PEAK and facts["peak_in_box"] == box["Nodule"].peak_in_box
        elif category in ("nih_overturned", "nih_missed"):
            said = stop.expert_labels[facts["category"]]
            assert said == (0.0 if category == "nih_overturned" else 1.0)
            members = {"Pneumothorax": ["Pneumothorax"], "Nodule or mass": ["Nodule", "Mass"],
                       "Airspace opacity": ["Consolidation", "Pneumonia", "Infiltration", "Atelectasis"]}[facts["category"]]
            assert bool(set(members) & set(stop.nih_labels)) == (category == "nih_overturned")
            assert facts["model_score"] == pytest.approx(max(stop.probabilities[f] for f in members), abs=1e-4)
    assert len(patients) == len(set(patients)), "one film per patient"
    # The radiologists' labels, where the label file is beside the checkout.
    file = SHARED_NIH / "extras" / "google2019_nih-chest-xray-labels.csv.gz"
    if file.is_file():
        table = read_expert_labels(file).set_index("image")
        for stop in shipped_tour.stops:
            if stop.expert_labels is not None:
                row = table.loc[stop.image]
                assert stop.expert_labels == {c: None if row[c] != row[c] else float(row[c]) for c in stop.expert_labels}
            elif stop.nih_labels is not None:
                assert stop.image not in table.index


def test_the_stored_heatmap_numbers_and_the_refusal_hold_when_the_model_runs_again(shipped_tour, demo_root):
    """The shipped model analyses the boxed stops again: the stored localisation numbers; and the photograph is refused."""
    from cxr_core.reporting.tour_file import resolve_image
    from cxr_core.serving import Predictor

    predictor = Predictor.from_bundle(SHIPPED_BUNDLE)
    dataset = NIHDataset(demo_root)
    paths = dict(zip(dataset.csv["image"], dataset.csv["path"]))
    boxed = [s for s in shipped_tour.stops if s.boxes and s.finding in {b.finding for b in s.boxes}][:3]
    for stop in boxed:
        analysis = predictor.analyze(paths[stop.image], explain=[stop.finding])
        h, w = analysis.image.pixels.shape
        truth = dataset.boxes_for(stop.image, width=w, height=h)
        truth = truth[truth["finding"] == stop.finding][["x", "y", "w", "h"]].to_numpy()
        again = box_scores(analysis.heatmaps[stop.finding], stop.finding, truth)
        stored = [b for b in stop.boxes if b.finding == stop.finding]
        for a, b in zip(again, stored):
            for key in ("iou", "iobb", "coverage", "peak_in_box", "box_share"):
                assert getattr(a, key) == pytest.approx(getattr(b, key), abs=2e-3), (stop.image, key)
    for stop in shipped_tour.stops:
        if stop.category == "refused":
            path = resolve_image(stop.source, stop.image)
            assert path is not None and predictor.analyze(path, explain=[]).reading.withheld


# -- the tiny bundle end to end: gathering, building, the page and the handout ------------------------------------------


@pytest.fixture(scope="module")
def tiny_tour_bundle(tmp_path_factory, demo_root):
    """A copy of the tiny evaluated bundle with its tour built (the shared bundle stays as it is)."""
    from cxr_core.jobs.tour import build_tour

    bundle = tmp_path_factory.mktemp("tour_bundle") / "tiny"
    shutil.copytree(tiny_app_bundle(tmp_path_factory, demo_root), bundle)
    build_tour(bundle, demo_root, log=lambda line: None)
    return bundle


def test_the_tiny_bundle_tour_keeps_the_rules(tiny_tour_bundle, demo_root):
    from cxr_core.jobs.tour_outputs import gather_outputs, package_photographs
    from cxr_core.serving import Predictor

    tour = read_tour(tiny_tour_bundle)
    predictor = Predictor.from_bundle(tiny_tour_bundle)
    dataset = NIHDataset(demo_root)
    assert tour.data["left_out_train_or_val"] == sum(predictor.split_of(n) in EXCLUDED_SPLITS for n in dataset.image_names) > 0
    assert tour.eligible_films == len(dataset) - tour.data["left_out_train_or_val"]
    assert {s.category for s in tour.stops} | {a.category for a in tour.absent} == set(CATEGORIES)
    assert tour.data["expert_labels"] is None and {"nih_overturned", "nih_missed"} <= {a.category for a in tour.absent}
    patients = [s.patient_id for s in tour.stops if s.patient_id is not None]
    assert len(patients) == len(set(patients))
    outputs = gather_outputs(predictor, dataset, extra_images=package_photographs())
    assert all(o.split not in EXCLUDED_SPLITS for o in outputs)
    by_image = {o.image: o for o in outputs}
    for stop in tour.stops:
        assert predictor.split_of(stop.image) not in EXCLUDED_SPLITS
        assert stop.caption == caption(stop.category, stop.facts)
        film = by_image[stop.image]
        assert stop.triage == film.reading.triage and stop.flagged == tuple(film.reading.flagged)
        for f, p in stop.probabilities.items():
            assert p == pytest.approx(film.probabilities[f], abs=1e-5)
    # Same outputs, same seed: the same stops.
    again = tour_from_document(select_tour(outputs, predictor.policy, seed=0))
    assert again.stops == tour.stops and again.absent == tour.absent


def test_the_handout_pdf_has_a_page_per_stop(tiny_tour_bundle, demo_root):
    from cxr_core.reporting.handout import tour_pdf
    from cxr_core.serving import Predictor
    from tests.reporting.test_report import _pdf_text

    tour = read_tour(tiny_tour_bundle)
    predictor = Predictor.from_bundle(tiny_tour_bundle)
    pdf = tour_pdf(tour, predictor.metadata, dataset=NIHDataset(demo_root), analyze=predictor.analyze)
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type /Page\b", pdf)) >= 1 + len(tour.stops)
    text = _pdf_text(pdf)
    for expected in ("guided tour", "NOT for clinical use", *(f"Stop {i + 1} of {len(tour.stops)}" for i in range(len(tour.stops)))):
        assert expected in text, expected
    if tour.absent:
        assert "Not on this tour" in text


def test_the_shipped_handout_names_every_stop(shipped_tour, demo_root):
    """The shipped tour's handout without the model (pictures and expert boxes only): every stop and absent category."""
    from cxr_core.reporting.handout import tour_pdf
    from tests.reporting.test_report import _pdf_text

    pdf = tour_pdf(shipped_tour, SHIPPED_META, dataset=NIHDataset(demo_root))
    assert len(re.findall(rb"/Type /Page\b", pdf)) >= 1 + len(shipped_tour.stops)
    text = _pdf_text(pdf)
    for stop in shipped_tour.stops:
        assert stop.image in text
    assert "Triage: ABNORMAL" in text and "Output withheld" in text


# -- the page ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")
    monkeypatch.delenv("CXR_ASSIST_DEMO", raising=False)
    monkeypatch.setenv("CXR_READER_STUDY_DB", str(tmp_path / "reader_study.sqlite3"))


def _tour_page(monkeypatch, bundle) -> AppTest:
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(bundle))
    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=180).run()
    at.switch_page("pages/tour.py").run()
    assert not at.exception, at.exception
    return at


def _heading(at) -> str:
    return next(h.value for h in at.subheader if h.value.startswith("Stop "))


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_the_page_walks_the_tour(_env, monkeypatch, which, tiny_tour_bundle, shipped_tour_or_none):
    bundle = tiny_tour_bundle if which == "tiny" else shipped_tour_or_none
    if bundle is None:
        pytest.skip("no shipped tour")
    tour = read_tour(bundle)
    at = _tour_page(monkeypatch, bundle)
    n = len(tour.stops)
    assert at.title[0].value == "Guided tour" and "not for clinical use" in at.caption[0].value
    if n == 0:
        assert any("no stop" in i.value for i in at.info)
        return
    assert _heading(at) == f"Stop 1 of {n}: {tour.stops[0].title}"
    assert at.info[0].value == tour.stops[0].caption
    assert at.button(key="tour_prev").disabled
    for k in range(1, min(n, 4)):
        at.button(key="tour_next").click().run()
        assert not at.exception, at.exception
        assert _heading(at) == f"Stop {k + 1} of {n}: {tour.stops[k].title}"
    if n > 1:
        at.button(key="tour_prev").click().run()
        assert _heading(at).startswith(f"Stop {min(n, 4) - 1} of {n}")
    at.selectbox(key="tour_stop").set_value(n - 1).run()
    assert _heading(at).startswith(f"Stop {n} of {n}") and at.button(key="tour_next").disabled
    for stop_index, stop in enumerate(tour.stops):  # the findings table of a stop with a reading
        if stop.probabilities and which == "shipped":
            at.selectbox(key="tour_stop").set_value(stop_index).run()
            table = next(d.value for d in at.dataframe if "NIH label" in d.value.columns)  # the findings table
            assert len(table) == 14 and table["probability"].iloc[0] == max(stop.probabilities.values())
            break
    if tour.absent:
        assert any("Not on this tour" in m.value for m in at.markdown)
    at.button(key="tour_pdf_prepare").click().run()
    assert not at.exception, at.exception
    assert at.get("download_button")[0].proto.label == "Download the tour handout (PDF)"


@pytest.fixture(scope="module")
def shipped_tour_or_none():
    return SHIPPED_BUNDLE if (SHIPPED_BUNDLE / TOUR_FILE).is_file() else None


def test_the_page_without_a_stored_tour_says_how_to_build_it(_env, monkeypatch, tmp_path_factory, demo_root):
    at = _tour_page(monkeypatch, tiny_app_bundle(tmp_path_factory, demo_root))
    assert any("python -m training.tour" in i.value for i in at.info)


# -- the command -----------------------------------------------------------------------------------------------------


def test_the_command_reports_bad_input_in_one_line(tmp_path, capsys, demo_root):
    from training.tour import main

    assert main(["--bundle", str(tmp_path / "does-not-exist"), "--data", str(demo_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no model bundle at {tmp_path / 'does-not-exist'} (a folder with bundle.json)"]
    assert main(["--bundle", str(SHIPPED_BUNDLE), "--data", str(tmp_path / "nowhere")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert main(["--bundle", str(SHIPPED_BUNDLE), "--data", str(demo_root), "--expert-labels", str(tmp_path / "x.csv")]) == 2
    assert "expert label file not found" in capsys.readouterr().err
