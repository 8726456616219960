"""The Model performance page of an adapted bundle: "at your site" beside "on NIH test", and the few-films warning.

The adapted bundle is the tiny app bundle (an untrained small_cnn, plumbing
only) adapted by ``training.adapt``'s engine to 40 real NIH test films with
NIH's labels; the page must show the report it wrote, not a number of its own.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from cxr_core.adaptation import adapt_bundle
from tests.app.test_app_pages import _quiet_env, app  # noqa: F401 - _quiet_env is an autouse fixture
from tests.app_bundle import tiny_app_bundle


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, demo_root, shared_nih):
    """The tiny bundle adapted to 40 NIH films (refitted where a finding has 2 positive and negative fit films)."""
    root = tmp_path_factory.mktemp("site_page")
    entries = pd.read_csv(shared_nih / "Data_Entry_2017.csv", dtype=str).sort_values("Image Index").head(40)
    (root / "images").mkdir()
    for name in entries["Image Index"]:
        os.symlink(os.path.abspath(shared_nih / "images" / name), root / "images" / name)
    entries[["Image Index", "Patient ID", "Finding Labels"]].to_csv(root / "labels.csv", index=False)
    report = adapt_bundle(tiny_app_bundle(tmp_path_factory, demo_root), root / "images", root / "labels.csv",
                          root / "out", site_name="Ward 7", min_positives=2, n_boot=50, log=lambda line: None)
    assert report["decision"] == "written", report["reason"]
    return root / "out" / "bundle"


def test_the_page_shows_the_site_beside_nih_and_warns_of_few_films(monkeypatch, adapted):
    at = app(monkeypatch, adapted, "performance")
    report = json.loads((adapted / "site_report.json").read_text())
    assert any(h.value == "At your site: Ward 7" for h in at.subheader)
    summary, findings = (d.value for d in at.dataframe[:2])  # the site's two tables come first
    assert list(summary.columns) == ["measure", "at your site (this bundle)", "at your site (before adaptation)", "on NIH test"]
    assert summary["at your site (this bundle)"].iloc[0].startswith(f"{report['adapted']['mean_auroc']:.3f}")
    assert summary["at your site (before adaptation)"].iloc[0].startswith(f"{report['shipped']['mean_auroc']:.3f}")
    metrics = json.loads((adapted / "metrics.json").read_text())
    assert summary["on NIH test"].iloc[0].startswith(f"{metrics['macro']['auroc']:.3f}")
    assert len(findings) == 14 and (findings["note"] == "few films").all()  # 20 check films: every finding is few-film
    assert any(f"only {report['split']['check_films']} films" in w.value for w in at.warning)
    assert any("parent bundle's, on NIH test" in c.value for c in at.caption)


def test_a_bundle_without_a_site_shows_no_site_section(monkeypatch, tmp_path_factory, demo_root):
    at = app(monkeypatch, tiny_app_bundle(tmp_path_factory, demo_root), "performance")
    assert not any(h.value.startswith("At your site") for h in at.subheader)
