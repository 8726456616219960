"""The reader study with the radiologists' labels as its reference standard.

Created with ``reference="expert"``, a study picks its cases among the images
the radiologists labelled, stores their labels with the cases (schema version
2, migrated in place from version 1 without losing a study) and is analysed
over the expert categories; the results page says which reference was used.
The expert file is the named-synthetic one of tests/expert_data.py.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from cxr_core.data import EXPERT_CATEGORIES, NIHDataset, read_expert_labels
from cxr_core.evaluation import UndefinedMetricWarning
from cxr_core.findings import FINDINGS
from cxr_core.reader_study import (
    EXPERT_REFERENCE_NOTE,
    LABEL_NOISE_CAVEAT,
    READER_CATEGORIES,
    ReaderStudyStore,
    expert_reference_frame,
    reader_study_results,
    reference_caveat,
    schema,
)
from cxr_core.reader_study.analysis import phase_metrics
from tests.app import test_reader_pages
from tests.app.test_reader_pages import button, page
from tests.expert_data import SYNTHETIC_EXPERT_FILE, demo_copy_with_expert_file, synthetic_expert_table

db = test_reader_pages.db  # the page tests' database fixture (a fresh file, the tiny bundle)

LEFT_OUT = 150  # demo images without an expert row: cases must never come from them


@pytest.fixture(scope="module")
def expert_table(tmp_path_factory, demo_root) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("expert") / SYNTHETIC_EXPERT_FILE
    synthetic_expert_table(demo_root, path, leave_out=LEFT_OUT)
    return read_expert_labels(path)


def _read_everything(store, study, reader_name="Dr Expert", *, seed=0):
    reader = store.get_or_create_reader(reader_name)
    rng = np.random.default_rng(seed)
    for position in range(study.n_cases):
        ticks = rng.integers(0, 2, len(FINDINGS))
        store.record_read(study.id, reader.id, position, phase="unaided", findings=ticks, confidence=3, seconds=2.0)
        store.record_read(study.id, reader.id, position, phase="aided", findings=ticks, confidence=4, seconds=3.0,
                          ai_probabilities=rng.random(len(FINDINGS)), ai_thresholds=[0.5] * len(FINDINGS))
    return reader


def test_expert_study_picks_labelled_cases_and_stores_their_labels(tmp_path, demo_root, expert_table):
    store = ReaderStudyStore(tmp_path / "db.sqlite3")
    dataset = NIHDataset(demo_root)
    study = store.create_study("Expert", dataset, n_cases=20, seed=1, reference="expert", expert_labels=expert_table)
    assert study.reference == "expert" and store.get_study(study.id).reference == "expert"
    cases = store.cases_frame(study.id)
    labelled = expert_table.set_index("image")
    assert cases["image"].isin(labelled.index).all()  # none of the left-out images
    for category in EXPERT_CATEGORIES:
        np.testing.assert_array_equal(cases[f"expert_{category}"].to_numpy(dtype=float),
                                      labelled.loc[cases["image"], category].to_numpy(dtype=float))
    # Idempotent re-run; the same name with another reference is refused.
    again = store.create_study("Expert", dataset, n_cases=20, seed=1, reference="expert", expert_labels=labelled)
    assert again.id == study.id
    with pytest.raises(ValueError, match="another reference"):
        store.create_study("Expert", dataset, n_cases=20, seed=1)
    with pytest.raises(ValueError, match="needs the radiologists' labels"):
        store.create_study("No table", dataset, n_cases=5, seed=0, reference="expert")
    with pytest.raises(ValueError, match="none of this dataset's images"):
        store.create_study("None labelled", dataset, n_cases=5, seed=0, reference="expert",
                           expert_labels=expert_table.assign(image="x" + expert_table["image"]))
    with pytest.raises(ValueError, match="reference must be"):
        store.create_study("Odd", dataset, n_cases=5, seed=0, reference="doctor")
    nih = store.create_study("NIH", dataset, n_cases=5, seed=0)
    assert nih.reference == "nih" and store.cases_frame(nih.id)[list(schema.EXPERT_COLUMNS)].isna().all().all()


def test_a_version_1_database_is_migrated_without_losing_a_study(tmp_path, demo_root):
    path = tmp_path / "v1.sqlite3"
    images = NIHDataset(demo_root).image_names[:2]
    with sqlite3.connect(path) as con:  # a file written by the code before schema version 2
        for statement in schema.split_sql(schema.SCHEMA_V1):
            con.execute(statement)
        con.execute("INSERT INTO schema_version VALUES (1, 'then')")
        con.execute("INSERT INTO studies (id, name, data_root, seed, created_at, n_cases, description) "
                    "VALUES (1, 'Old', ?, 0, 'then', 2, 'demo set')", (str(demo_root),))
        refs = ", ".join(f'"ref_{f}"' for f in FINDINGS)
        for position, image in enumerate(images):
            con.execute(f"INSERT INTO cases (study_id, position, image, patient_id, {refs}) VALUES (1, ?, ?, '1', "
                        + ", ".join(["1"] + ["0"] * (len(FINDINGS) - 1)) + ")", (position, image))
        con.execute("INSERT INTO readers (id, name, created_at) VALUES (1, 'Dr Old', 'then')")
        reads = ", ".join(f'"read_{f}"' for f in FINDINGS)
        con.execute(f"INSERT INTO reads (study_id, position, reader_id, phase, {reads}, confidence, seconds, created_at) "
                    "VALUES (1, 0, 1, 'unaided', " + ", ".join(["1"] * len(FINDINGS)) + ", 2, 5.0, 'then')")
    store = ReaderStudyStore(path)
    assert store.schema_version() == schema.SCHEMA_VERSION == 3
    study = store.list_studies()[0]
    assert (study.name, study.reference, study.n_cases) == ("Old", "nih", 2)
    frame = store.reads_frame(study.id)
    assert len(frame) == 1 and frame["reader"].item() == "Dr Old" and frame["read_Hernia"].item() == 1
    assert frame["reference"].item() == "nih" and frame[list(schema.EXPERT_COLUMNS)].isna().all().all()
    assert store.cases_frame(study.id)["image"].tolist() == list(images)
    store.close()
    assert ReaderStudyStore(path).schema_version() == 3  # opening again changes nothing


def test_expert_reference_frame_maps_ticks_and_ai_calls_by_hand():
    def row(phase, ticks, ai=None):
        values = {"study_id": 1, "position": 0, "reader": "A", "phase": phase, "seconds": 1.0, "reference": "expert"}
        values.update({f"read_{f}": int(f in ticks) for f in FINDINGS})
        values.update({f"ref_{f}": 0 for f in FINDINGS})
        values.update({f"expert_{c}": v for c, v in zip(EXPERT_CATEGORIES, (1.0, 0.0, 1.0, 0.0))})
        ai = ai or {}
        values.update({f"ai_{f}": (ai.get(f, 0.1) if ai else np.nan) for f in FINDINGS})
        values.update({f"ai_threshold_{f}": (0.5 if ai else np.nan) for f in FINDINGS})
        return values

    frame = pd.DataFrame([row("unaided", {"Mass"}), row("aided", {"Mass", "Atelectasis"}, {"Nodule": 0.7, "Pneumonia": 0.4})])
    out = expert_reference_frame(frame).set_index("phase")
    assert [c for c in out.columns if c.startswith("read_")] == [f"read_{c}" for c in READER_CATEGORIES]
    # Unaided: Mass ticked -> Nodule or mass. Aided: + Atelectasis -> Airspace opacity.
    assert out.loc["unaided", [f"read_{c}" for c in READER_CATEGORIES]].tolist() == [0, 1, 0]
    assert out.loc["aided", [f"read_{c}" for c in READER_CATEGORIES]].tolist() == [0, 1, 1]
    assert out.loc["aided", [f"ref_{c}" for c in READER_CATEGORIES]].tolist() == [1, 0, 1]
    # The AI called Nodule (0.7 >= 0.5), not Pneumonia (0.4): calls 0, 1, 0; none recorded for the unaided read.
    assert out.loc["aided", [f"ai_{c}" for c in READER_CATEGORIES]].tolist() == [0.0, 1.0, 0.0]
    assert np.isnan(out.loc["unaided", "ai_Pneumothorax"])
    with pytest.warns(UndefinedMetricWarning):  # one case: no negative Pneumothorax, no positive Nodule or mass
        metrics = phase_metrics(expert_reference_frame(frame))
    metrics = metrics[metrics["reader"] == "A"].set_index(["phase", "finding"])
    assert metrics.loc[("aided", "Airspace opacity"), "tp"] == 1 and metrics.loc[("unaided", "Airspace opacity"), "fn"] == 1
    assert metrics.loc[("ai", "Nodule or mass"), "fp"] == 1
    with pytest.raises(ValueError, match="radiologists' labels"):
        expert_reference_frame(frame.assign(**{"expert_Nodule or mass": np.nan}))


def test_results_follow_the_study_reference(tmp_path, demo_root, expert_table):
    store = ReaderStudyStore(tmp_path / "db.sqlite3")
    dataset = NIHDataset(demo_root)
    expert = store.create_study("E", dataset, n_cases=12, seed=0, reference="expert", expert_labels=expert_table)
    nih = store.create_study("N", dataset, n_cases=12, seed=0)
    for study in (expert, nih):
        _read_everything(store, study)
    with pytest.warns():  # small studies leave some values undefined
        by_expert = reader_study_results(store.reads_frame(expert.id), n_boot=50)
        by_nih = reader_study_results(store.reads_frame(nih.id), n_boot=50)
    assert set(by_expert["metrics"]["finding"]) == {*READER_CATEGORIES, "macro average"}
    assert set(by_nih["metrics"]["finding"]) >= set(FINDINGS)
    assert reference_caveat("expert") == EXPERT_REFERENCE_NOTE and reference_caveat("nih") == LABEL_NOISE_CAVEAT


def test_pages_create_an_expert_study_and_results_say_so(db, tmp_path, demo_root, monkeypatch):
    root = demo_copy_with_expert_file(tmp_path, demo_root, leave_out=LEFT_OUT)
    monkeypatch.setenv("CXR_ASSIST_DATA_ROOTS", str(root))
    at = page("reader_study")
    at.text_input(key="rs_new_name").input("Expert page study")
    at.text_input(key="rs_new_root").input(str(root))
    at.radio(key="rs_new_reference").set_value("expert")
    at.number_input(key="rs_new_cases").set_value(6)
    button(at, "Create study").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    store = ReaderStudyStore(db)
    study = store.list_studies()[0]
    assert study.reference == "expert" and study.description == "demo"
    labelled = set(read_expert_labels(root / "extras" / "google2019_nih-chest-xray-labels.csv.gz")["image"])
    assert set(store.cases_frame(study.id)["image"]) <= labelled
    assert "radiologists' labels as reference" in at.selectbox(key="rs_study").format_func(study.id)
    # Reading works as for any study: one unaided read through the page.
    at.text_input(key="rs_reader").input("Dr Expert").run()
    at.multiselect(key="rs_unaided_findings").set_value(["Mass"])
    button(at, "Save unaided read").click().run()
    assert not at.exception and "Saved the unaided read" in at.success[0].value
    reader = store.get_or_create_reader("Dr Expert")
    rng = np.random.default_rng(0)
    for position in range(study.n_cases):
        if position:
            store.record_read(study.id, reader.id, position, phase="unaided", findings=rng.integers(0, 2, 14), confidence=3, seconds=1.0)
        store.record_read(study.id, reader.id, position, phase="aided", findings=rng.integers(0, 2, 14), confidence=3, seconds=1.0,
                          ai_probabilities=rng.random(14), ai_thresholds=[0.5] * 14)

    results = page("reader_results")
    assert any("Reference standard:** Radiologists' labels" in m.value for m in results.markdown)
    assert "radiologists' labels" in results.warning[0].value and "Majkowska" in results.warning[0].value
    per_category = results.dataframe[2].value
    assert set(per_category["finding"]) == {*READER_CATEGORIES, "macro average"}
    # An expert file refused where the folder has none (the demo set itself).
    at = page("reader_study")
    at.text_input(key="rs_new_name").input("No file")
    at.radio(key="rs_new_reference").set_value("expert")
    button(at, "Create study").click().run()
    assert not at.exception and "no radiologists' label file" in at.error[0].value
