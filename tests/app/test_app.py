"""The app's shared helpers (pages/common.py, its settings from cxr_core/host/settings.py): configuration from the
environment and the dataset-folder guard. The host itself (model loading, warm-up) is tested in tests/host/test_host.py.

The pages themselves are tested through AppTest in tests/app/test_app_pages.py and
in a real browser in tests/app/test_browser.py.
"""

from __future__ import annotations

import os

import pytest

from cxr_core.host import settings
from pages import common
from tests.conftest import DEMO_ROOT, REPO_ROOT


def test_defaults_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_ASSIST_BUNDLE", raising=False)
    monkeypatch.delenv("CXR_ASSIST_DEMO", raising=False)
    assert settings.bundle_dir() == REPO_ROOT / "models" / "default"
    assert settings.demo_root() == DEMO_ROOT
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(tmp_path / "b"))
    monkeypatch.setenv("CXR_ASSIST_DEMO", "data/demo")  # relative paths are the project's
    assert settings.bundle_dir() == tmp_path / "b" and settings.demo_root() == DEMO_ROOT
    assert not settings.bundle_present() and common.bundle_metadata() is None and common.bundle_metrics() is None


def test_dataset_root_guard(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_ASSIST_DEMO", raising=False)
    first, second = tmp_path / "one", tmp_path / "two"
    (first / "sub").mkdir(parents=True)
    second.mkdir()
    (first / "out").symlink_to(tmp_path)
    (first / "in").symlink_to(first / "sub")
    monkeypatch.setenv("CXR_ASSIST_DATA_ROOTS", os.pathsep.join([str(first), str(second), ""]))
    assert settings.allowed_roots() == [DEMO_ROOT.resolve(), first.resolve(), second.resolve()]
    assert settings.check_dataset_root(str(DEMO_ROOT)) == DEMO_ROOT.resolve()
    assert settings.check_dataset_root("data/demo/images") == (DEMO_ROOT / "images").resolve()
    assert settings.check_dataset_root(f"  {first / 'sub'}  ") == (first / "sub").resolve()
    assert settings.check_dataset_root(str(first / "in")) == (first / "sub").resolve()  # a link that stays inside
    for outside in ("/", "/etc", str(tmp_path), str(first / "out"), str(first / ".." / "two" / ".."), "data", "data/demo/../../.."):
        with pytest.raises(ValueError, match="outside the folders"):
            settings.check_dataset_root(outside)
    with pytest.raises(ValueError, match="Enter a dataset folder"):
        settings.check_dataset_root("  ")
    with pytest.raises(ValueError, match="not a folder"):
        settings.check_dataset_root(str(first / "missing"))
    with pytest.raises(ValueError, match="NUL"):
        settings.check_dataset_root("data/demo\x00")
    # A sibling whose name merely starts with an allowed root's name is outside.
    (tmp_path / "one-evil").mkdir()
    with pytest.raises(ValueError, match="outside"):
        settings.check_dataset_root(str(tmp_path / "one-evil"))
