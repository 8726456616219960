"""What a reader is shown on Browse and Performance (issue 22): the triage verdict first, findings in bands, output
withheld where the input check warns, and the triage and flags measured on the test split. AppTest, tiny bundle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxr_core.data import NIHDataset
from cxr_core.reporting.words import WITHHELD_NOTE
from tests.app.test_app_pages import _quiet_env, app, count, png_bytes  # noqa: F401 - _quiet_env is an autouse fixture
from tests.app_bundle import tiny_app_bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_root):
    return tiny_app_bundle(tmp_path_factory, demo_root)


def small_copy(root, demo_root, n: int = 12):
    """A dataset folder with the first ``n`` demo images; the first is replaced by a white square (not a chest film)."""
    (root / "images").mkdir(parents=True)
    names = NIHDataset(demo_root).image_names[:n]
    for name in names[1:]:
        shutil.copy(demo_root / "images" / name, root / "images" / name)
    (root / "images" / names[0]).write_bytes(png_bytes(np.full((256, 256), 255, dtype=np.uint8)))
    rows = (demo_root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows[:1] + [r for r in rows[1:] if r.split(",")[0] in names]) + "\n")
    return names


def test_browse_case_shows_the_triage_and_bands_not_the_youden_calls(monkeypatch, tiny, demo_root):
    at = app(monkeypatch, tiny, "browse")
    name = NIHDataset(demo_root).boxes["image"].iloc[0]
    at.selectbox(key="browse_case").select(name).run()
    assert not at.exception, at.exception
    verdict = [m.value for m in at.markdown if m.value.startswith("**Triage:")]
    assert len(verdict) == 1 and any(v in verdict[0] for v in ("abnormal", "no finding likely"))
    assert any("rule-out point" in c.value for c in at.caption)
    table = at.dataframe[1].value
    assert {"label", "probability", "band", "flag at", "outcome"} <= set(table.columns)
    assert not {"threshold", "predicted"} & set(table.columns)
    assert set(table["band"]) <= {"⚑ flag", "possible", "", "no flag set"}
    flagged = table["band"] == "⚑ flag"
    assert table.loc[flagged, "outcome"].isin(["TP", "FP"]).all() and table.loc[~flagged, "outcome"].isin(["TN", "FN"]).all()
    assert not any(WITHHELD_NOTE in e.value for e in at.error)


def test_browse_withholds_the_output_for_an_image_the_input_check_warns_on(monkeypatch, tiny, tmp_path, demo_root):
    root = tmp_path / "nih"
    names = small_copy(root, demo_root)
    monkeypatch.setenv("CXR_ASSIST_DATA_ROOTS", str(tmp_path))
    at = app(monkeypatch, tiny, "browse")
    at.text_input(key="browse_root").input(str(root)).run()
    at.selectbox(key="browse_case").select(names[0]).run()
    assert not at.exception, at.exception
    assert any(WITHHELD_NOTE in e.value for e in at.error) and at.warning
    assert len(at.dataframe) == 1  # the image list only: no findings table
    assert not any(m.value.startswith("**Triage:") for m in at.markdown) and count(at, "image") == 12 + 1  # no heatmap
    at.checkbox(key="browse_show_anyway").check().run()
    assert not at.exception, at.exception
    assert any("shown although the input check warned" in m.value for m in at.markdown)
    assert len(at.dataframe[1].value) == 14 and count(at, "image") == 12 + 2
    at.selectbox(key="browse_case").select(names[1]).run()  # a real film: shown as usual, no warning
    assert not any(WITHHELD_NOTE in e.value for e in at.error) and any(m.value.startswith("**Triage:") for m in at.markdown)


def test_performance_puts_the_triage_and_flags_first(monkeypatch, tiny):
    reading = json.loads((tiny / "metrics.json").read_text())["reading"]
    at = app(monkeypatch, tiny, "performance")
    titles = [s.value for s in at.subheader]
    assert titles[:2] == ["Normal/abnormal triage", "Flags"] and "Youden threshold" in titles[2]
    assert any(f"Test AUROC for abnormal vs No-Finding films **{reading['triage']['auroc']:.3f}**" in m.value for m in at.markdown)
    triage = at.dataframe[0].value
    assert [p.split(" ")[0] for p in triage["point"]] == ["rule-out", "balanced"]
    assert {"sensitivity", "specificity", "PPV", "NPV", "films set aside"} <= set(triage.columns)
    rule_out = reading["triage"]["at_rule_out"]
    assert triage["sensitivity"].iloc[0].startswith(f"{rule_out['sensitivity']:.2f} (")
    assert triage["films set aside"].iloc[0] == f"{rule_out['set_aside_share']:.0%}"
    assert any("Test split, NIH labels; points fitted on validation" in c.value for c in at.caption)
    flags, burden = at.dataframe[1].value, at.dataframe[2].value
    assert len(flags) == 14 and {"flag at", "validation PPV (95% CI)", "lift (validation)", "test PPV (95% CI)"} <= set(flags.columns)
    no_flag = [r["reason"] for r in reading["flags"]["per_finding"] if r["flag"] is None]
    assert sorted(flags.loc[flags["no flag because"] != "", "no flag because"]) == sorted(no_flag)
    assert list(burden.columns) == ["measure", "flags (validated specificity)", "Youden's J (earlier design)"]
    assert burden.iloc[0, 1] == f"{reading['burden']['flags']['flags_per_no_finding_film']:.2f}"
    assert count(at, "plotly_chart") == 4  # the triage ROC, then ROC, PR and reliability as before


def test_performance_of_a_bundle_evaluated_before_the_triage_says_so(monkeypatch, tiny, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny, old)
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["reading"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    at = app(monkeypatch, old, "performance")
    assert sum("has no triage yet" in i.value or "no flags at a validated specificity" in i.value for i in at.info) == 2
    assert "n_test_pos" in at.dataframe[0].value.columns  # the rest of the page is there
