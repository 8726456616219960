"""AppTest smoke tests for each page."""

from streamlit.testing.v1 import AppTest

from tests.conftest import REPO_ROOT


def test_home_page_renders():
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Not for clinical use" in w.value for w in at.warning)


def test_browse_filter_by_finding():
    at = AppTest.from_file(str(REPO_ROOT / "pages" / "browse.py"), default_timeout=60).run()
    assert not at.exception
    at.selectbox(key="browse_finding").select("Hernia").run()
    assert not at.exception
    shown = at.dataframe[0].value
    assert len(shown) >= 10 and shown["finding_labels"].str.contains("Hernia").all()
