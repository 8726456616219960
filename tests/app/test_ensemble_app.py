"""The app with an ensemble bundle (CXR_ASSIST_BUNDLE): home and Analyze pages through AppTest.

The tiny evaluated ensemble of ``tests/app_bundle.py`` (two untrained small
CNNs at 64 and 48 px): the pages must render its findings and maps and say
what the model is without claiming one backbone or one input size.
"""

from __future__ import annotations

import pytest

from tests.app.test_app_pages import _quiet_env, app, assert_findings_shown, demo_image  # noqa: F401 - _quiet_env is an autouse fixture
from tests.app_bundle import tiny_app_ensemble


@pytest.fixture
def ensemble(tmp_path_factory, demo_root):
    return tiny_app_ensemble(tmp_path_factory, demo_root)


def test_home_shows_every_member(monkeypatch, ensemble):
    at = app(monkeypatch, ensemble)
    # The model and every member with its input size, as text (a card would cut them); one table row per member.
    text = "\n".join(m.value for m in at.markdown)
    assert "**Model:** an ensemble of 2 networks" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 and "| small_cnn | 64 px |" in rows[0] and "| small_cnn | 48 px |" in rows[1]


def test_analyze_an_uploaded_image_with_an_ensemble(monkeypatch, ensemble, demo_root):
    at = app(monkeypatch, ensemble, "analyze")
    name, data = demo_image(demo_root)
    at.file_uploader(key="analyze_upload").upload(name, data, "image/png").run()
    assert_findings_shown(at, name)
    assert not at.error
    assert any("ensemble of 2" in c.value for c in at.caption)
    at.selectbox(key="analyze_finding").select("Mass").run()
    assert_findings_shown(at, name)
