"""The reader-study pages through AppTest: a full study, stop and resume, results, bad input.

The study database is a fresh file under tmp_path (CXR_READER_STUDY_DB); the
AI panel comes from the tiny evaluated test bundle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.data import NIHDataset
from cxr_core.findings import FINDINGS
from cxr_core.reader_study import ReaderStudyStore
from tests.app_bundle import tiny_app_bundle
from tests.conftest import REPO_ROOT


@pytest.fixture
def db(tmp_path, monkeypatch, tmp_path_factory, demo_root):
    path = tmp_path / "reader_study.sqlite3"
    monkeypatch.setenv("CXR_READER_STUDY_DB", str(path))
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(tiny_app_bundle(tmp_path_factory, demo_root)))
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")
    monkeypatch.delenv("CXR_ASSIST_DEMO", raising=False)
    return path


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page(f"pages/{name}.py").run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, prefix: str):
    return next(b for b in at.button if b.label.startswith(prefix))


def create_study(at: AppTest, name: str, n_cases: int) -> None:
    at.text_input(key="rs_new_name").input(name)  # form widgets: set, then submit
    at.number_input(key="rs_new_cases").set_value(n_cases)
    button(at, "Create study").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def read(at: AppTest, phase: str, findings: list[str], confidence: int = 3) -> None:
    assert at.subheader[0].value.endswith(f"{phase} read"), at.subheader[0].value
    at.multiselect(key=f"rs_{phase}_findings").set_value(findings)
    at.slider(key=f"rs_{phase}_confidence").set_value(confidence)
    button(at, f"Save {phase} read").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def test_full_study_with_stop_and_resume_then_results(db):
    at = page("reader_study")
    assert "No study yet" in at.info[0].value
    create_study(at, "Page test", 4)
    assert "Enter your name" in at.info[0].value
    at.text_input(key="rs_reader").input("Dr Page").run()
    assert at.subheader[0].value == "Case 1 of 4: unaided read" and not at.dataframe  # no AI panel before the unaided read
    read(at, "unaided", ["Effusion"])
    assert at.success[0].value == "Saved the unaided read of case 1."
    assert at.multiselect(key="rs_aided_findings").value == ["Effusion"]  # the aided form starts from the unaided answers
    ai_table = at.dataframe[0].value  # the AI panel is shown for the aided read: the triage first, then the bands
    assert len(ai_table) == 14 and {"probability", "AI", "flag at"} <= set(ai_table.columns)
    assert "threshold" not in ai_table.columns and set(ai_table["AI"]) <= {"⚑ flag", "possible", "", "no flag set"}
    shown_verdict = next(m.value for m in at.markdown if "Triage:" in m.value)
    read(at, "aided", ["Effusion", "Atelectasis"], confidence=4)
    assert "1 of 4 cases read" in at.get("progress")[0].proto.text

    button(at, "Stop for now").click().run()
    assert any("Stopped" in i.value for i in at.info) and not at.subheader
    # A new browser session with the same name resumes at the next case.
    at = page("reader_study")
    at.selectbox(key="rs_study").select_index(0)
    at.text_input(key="rs_reader").input("dr  page").run()  # names are matched ignoring case and spaces
    assert at.subheader[0].value == "Case 2 of 4: unaided read"
    for _ in range(3):
        read(at, "unaided", [])
        read(at, "aided", ["Cardiomegaly"])
    assert any("read every case" in s.value for s in at.success)

    store = ReaderStudyStore(db)
    study = store.list_studies()[0]
    reads = store.reads_frame(study.id)
    assert len(reads) == 8 and set(reads["phase"]) == {"unaided", "aided"} and (reads["seconds"] > 0).all()
    assert reads["reader"].unique().tolist() == ["Dr Page"]
    first = reads[(reads["position"] == 0)].set_index("phase")
    assert first.loc["unaided", "read_Effusion"] == 1 and first.loc["aided", "read_Atelectasis"] == 1
    assert first.loc["aided", "confidence"] == 4
    ai = first.loc["aided", [f"ai_{f}" for f in FINDINGS]].astype(float).to_numpy()
    assert len(ai) == 14 and np.all((ai >= 0) & (ai <= 1))
    # Stored: the verdict shown, and the flag cuts the panel used (1.0 where the finding has no flag: never reached).
    assert f"**{first.loc['aided', 'ai_triage']}**" in shown_verdict and pd.isna(first.loc["unaided", "ai_triage"])
    flags = json.loads((Path(os.environ["CXR_ASSIST_BUNDLE"]) / "bundle.json").read_text())["flags"]["findings"]
    stored = first.loc["aided", [f"ai_threshold_{f}" for f in FINDINGS]].astype(float).to_numpy()
    assert stored == pytest.approx([1.0 if r["flag"] is None else r["flag"] for r in flags])

    results = page("reader_results")
    assert "text-mined" in results.warning[0].value  # the label-noise caveat
    macro, change = results.dataframe[0].value, results.dataframe[1].value
    assert "Dr Page" in set(macro["reader"]) and {"sensitivity unaided", "sensitivity aided", "f1 ai"} <= set(macro.columns)
    assert {"change", "ci_low", "ci_high"} <= set(change.columns)
    assert [b.label for b in results.download_button] == [
        "Download all tables (CSV, zipped, with the caveat)", "metrics.csv", "change.csv", "agreement.csv", "time.csv"]
    results.selectbox(key="rr_reader").select("all readers").run()
    assert not results.exception
    assert set(results.dataframe[2].value["finding"]) >= set(FINDINGS)
    decisions = next(d.value for d in results.dataframe if "against" in d.value.columns)  # normal/abnormal agreement
    assert set(decisions["against"]) == {"NIH labels", "AI triage"} and {"agreement", "kappa"} <= set(decisions.columns)
    unaided = decisions[(decisions["reader"] == "Dr Page") & (decisions["phase"] == "unaided") & (decisions["against"] == "NIH labels")]
    nih_abnormal = reads[reads["phase"] == "unaided"][[f"ref_{f}" for f in FINDINGS]].any(axis=1).to_numpy()
    said_abnormal = np.array([True, False, False, False])  # Effusion on case 1, nothing on the others
    assert unaided["agreement"].item() == pytest.approx((nih_abnormal == said_abnormal).mean())


def test_bad_reader_names_and_study_names(db):
    at = page("reader_study")
    at.text_input(key="rs_new_name").input("   ")
    button(at, "Create study").click().run()
    assert not at.exception and "empty" in at.error[0].value
    create_study(at, "Names", 2)
    for bad, message in (("   ", "empty"), ("all readers", "reserved"), ("x" * 200, "80")):
        at.text_input(key="rs_reader").input(bad).run()
        assert not at.exception and len(at.error) == 1 and message in at.error[0].value, (bad, at.error[0].value)
        assert not at.subheader


def test_a_study_whose_images_are_missing(db, tmp_path, demo_root):
    copy = tmp_path / "copy"
    (copy / "images").mkdir(parents=True)
    for name in NIHDataset(demo_root).image_names:
        shutil.copy(demo_root / "images" / name, copy / "images" / name)
    for name in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"):
        shutil.copy(demo_root / name, copy / name)
    store = ReaderStudyStore(db)
    study = store.create_study("Moved images", NIHDataset(copy), n_cases=4, seed=0)
    first = store.cases_frame(study.id)["image"].iloc[0]
    (copy / "images" / first).unlink()
    at = page("reader_study")
    at.text_input(key="rs_reader").input("Dr Page").run()
    assert not at.exception and len(at.error) == 1
    assert "missing" in at.error[0].value and first in at.error[0].value and not at.subheader


def test_a_case_the_input_check_warns_on_is_never_shown(db, tmp_path, demo_root):
    copy = tmp_path / "copy"
    (copy / "images").mkdir(parents=True)
    for name in NIHDataset(demo_root).image_names:
        shutil.copy(demo_root / "images" / name, copy / "images" / name)
    shutil.copy(demo_root / "Data_Entry_2017_v2020.csv", copy / "Data_Entry_2017_v2020.csv")
    store = ReaderStudyStore(db)
    study = store.create_study("With a non-chest image", NIHDataset(copy), n_cases=3, seed=0)
    first = store.cases_frame(study.id)["image"].iloc[0]
    white = Image.fromarray(np.full((256, 256), 255, dtype=np.uint8))
    white.save(copy / "images" / first, format="PNG")  # not a chest film
    at = page("reader_study")
    at.text_input(key="rs_reader").input("Dr Page").run()
    assert not at.exception, at.exception
    assert any("Case 1 was left out of this study" in i.value for i in at.info)
    assert at.subheader[0].value == "Case 2 of 3: unaided read"
    assert "0 of 2 cases read" in at.get("progress")[0].proto.text
    excluded = store.excluded_cases(study.id)
    assert excluded["image"].tolist() == [first] and excluded["reason"].item()


def test_results_page_before_any_read(db):
    at = page("reader_results")
    assert "No study yet" in at.info[0].value
    ReaderStudyStore(db).create_study("Empty", NIHDataset(REPO_ROOT / "data" / "demo"), n_cases=2, seed=0)
    at = page("reader_results")
    assert "No reads" in at.info[0].value and not at.exception
