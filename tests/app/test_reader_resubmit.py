"""Reads survive a double-click on Save and a page run cut short: the answers stored are those the reader ticked.

Found by ``benchmarks/load.py`` (sessions that double-click Save now and then):

* the read form cleared itself on submit (``clear_on_submit``), so the second
  click of a double-click submitted the form again with nothing ticked; that
  submission interrupted the first page run before it saved, and the unaided
  read was stored empty while the page said "Saved";
* the aided form started from the unaided answers kept in the browser
  session's memory, set after the save; a page run stopped between the two (a
  double-click again) or another browser (stop, resume elsewhere) had none, and
  the aided form started empty.

The browser test uses tests/app/test_browser.py's server (its scripted example
study, 24 cases) and chromium, and skips like it when chromium is missing.
"""

from __future__ import annotations

import pytest

from cxr_core.findings import FINDINGS, to_multi_hot
from cxr_core.reader_study import ReaderStudyStore
from tests.app.test_browser import VIEWPORT, browser, server, settle  # noqa: F401 - the fixtures
from tests.app.test_reader_pages import button, create_study, db, page, read  # noqa: F401 - the fixture

TICKED = ("Effusion", "Pleural Thickening")


def test_get_read_returns_the_stored_read_or_none(tmp_path):
    with ReaderStudyStore(tmp_path / "study.sqlite3") as store:
        study = store.create_study("s", [(f"{i:08d}_000.png", str(i), [0] * len(FINDINGS)) for i in range(4)], n_cases=4, seed=0)
        reader = store.get_or_create_reader("R")
        assert store.get_read(study.id, reader.id, 0, "unaided") is None
        saved = store.record_read(study.id, reader.id, 0, phase="unaided", findings=to_multi_hot(["Mass"]), confidence=2, seconds=3)
        assert store.get_read(study.id, reader.id, 0, "unaided") == saved.read
        assert store.get_read(study.id, reader.id, 0, "aided") is None
        assert store.get_read(study.id, reader.id, 1, "unaided") is None
        with pytest.raises(ValueError, match="phase"):
            store.get_read(study.id, reader.id, 0, "both")


def test_aided_form_starts_from_the_stored_unaided_answers_in_a_new_session(db):  # noqa: F811
    at = page("reader_study")
    create_study(at, "Resume aided", 4)
    at.text_input(key="rs_reader").input("Dr Resume").run()
    read(at, "unaided", ["Effusion", "Mass"])
    # Another browser (or a session whose run stopped right after the save) resumes at the aided read.
    at = page("reader_study")
    at.text_input(key="rs_reader").input("Dr Resume").run()
    assert at.subheader[0].value == "Case 1 of 4: aided read"
    assert at.multiselect(key="rs_aided_findings").value == ["Effusion", "Mass"]
    button(at, "Save aided read").click().run()
    aided = ReaderStudyStore(db).reads_frame().set_index("phase").loc["aided"]
    assert {f for f in FINDINGS if aided[f"read_{f}"]} == {"Effusion", "Mass"}


def test_double_clicked_save_keeps_the_ticked_findings(server, browser):  # noqa: F811
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/reader_study", timeout=60_000)
        name = page.get_by_label("Your name (as reader)")
        name.fill("Double click reader")
        name.press("Enter")
        for case in (1, 2, 3):
            page.get_by_role("heading", name=f"Case {case} of 24: unaided read").wait_for(timeout=60_000)
            settle(page)
            assert page.locator('[data-testid="stMultiSelect"] [data-baseweb="tag"]').count() == 0  # a new case starts with nothing ticked
            for finding in TICKED:
                page.locator('[data-testid="stMultiSelect"] input').first.click()
                page.keyboard.type(finding)
                page.get_by_role("option", name=finding, exact=True).click()
                page.keyboard.press("Escape")
                page.locator('[role="listbox"]').wait_for(state="hidden")  # its fade-out would take the clicks
                page.locator('[data-testid="stMultiSelect"] input').first.blur()  # a focused box is taller: blurring it on the click would move the button
            page.get_by_role("button", name="Save unaided read").dblclick()
            page.get_by_role("heading", name=f"Case {case} of 24: aided read").wait_for(timeout=90_000)
            settle(page, timeout_ms=90_000)
            page.get_by_role("button", name="Save aided read").dblclick()
        page.get_by_role("heading", name="Case 4 of 24: unaided read").wait_for(timeout=90_000)
        settle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        page.close()
    with ReaderStudyStore(server["log"].parent / "reader_study.sqlite3") as store:
        reads = store.reads_frame(store.list_studies()[0].id)
    reads = reads[reads["reader"] == "Double click reader"]
    assert len(reads) == 6  # one unaided and one aided read per case, no duplicate
    expected = {f for f in FINDINGS if f.replace("_", " ") in TICKED}
    for _, row in reads.iterrows():
        assert {f for f in FINDINGS if row[f"read_{f}"]} == expected, (row["position"], row["phase"])
