"""The expert reference shown: the Model performance page, the Browse page, the model card and README block.

A tiny bundle is evaluated on a demo copy holding a named-synthetic expert file
(tests/expert_data.py), so its metrics.json has ``expert_reference`` and
``label_audit``; a copy without them stands for bundles evaluated before.
"""

from __future__ import annotations

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from cxr_core.data import EXPERT_CATEGORIES
from tests.app.test_app_pages import _quiet_env, app  # noqa: F401 - _quiet_env is an autouse fixture
from tests.expert_data import demo_copy_with_expert_file

LEFT_OUT = 3  # the first demo images have no expert row


@pytest.fixture(scope="module")
def expert_root(tmp_path_factory, demo_root):
    return demo_copy_with_expert_file(tmp_path_factory.mktemp("expert_demo"), demo_root, leave_out=LEFT_OUT)


@pytest.fixture(scope="module")
def expert_bundle(tmp_path_factory, expert_root):
    from cxr_core.jobs import evaluate_bundle
    from tests.app_bundle import build_tiny_bundle

    bundle = build_tiny_bundle(tmp_path_factory.mktemp("expert_bundle") / "tiny", expert_root)
    evaluate_bundle(bundle, expert_root, n_boot=20, localization=False, log=lambda line: None)
    return bundle


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory, expert_bundle):
    """The same bundle with metrics.json as written before the expert reference existed."""
    old = tmp_path_factory.mktemp("old_bundle") / "tiny"
    shutil.copytree(expert_bundle, old)
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["expert_reference"], metrics["label_audit"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    return old


#: A column that only the table named by the key has.
_MARKS = {"perf_expert": "AUROC vs experts", "perf_label_audit": "sensitivity of NIH label", "perf_table": "n_test_pos",
          "browse_expert": "radiologists", "browse_table": "finding_labels"}


def keyed(at: AppTest, key: str):
    """The dataframes of the table a page shows with ``key`` (found by a column only it has)."""
    return [d for d in at.dataframe if _MARKS[key] in d.value.columns]


def test_performance_page_shows_the_expert_table_and_audit(monkeypatch, expert_bundle):
    at = app(monkeypatch, expert_bundle, "performance")
    assert any("radiologists" in s.value for s in at.subheader)
    reference = keyed(at, "perf_expert")[0].value
    assert list(reference["category"]) == list(EXPERT_CATEGORIES)
    metrics = json.loads((expert_bundle / "metrics.json").read_text())
    first = metrics["expert_reference"]["per_category"][0]
    assert reference["AUROC vs experts"].iloc[0] == pytest.approx(first["auroc_expert"])
    assert reference["AUROC vs NIH"].iloc[0] == pytest.approx(first["auroc_nih"])
    assert "no fracture" in reference["note"].iloc[3]
    audit = keyed(at, "perf_label_audit")[0].value
    assert list(audit["category"]) == list(EXPERT_CATEGORIES)
    assert int(audit["TP"].iloc[0]) == metrics["label_audit"]["per_category"][0]["tp"]


def test_performance_page_says_nothing_without_the_block(monkeypatch, old_bundle):
    at = app(monkeypatch, old_bundle, "performance")
    assert not keyed(at, "perf_expert") and not keyed(at, "perf_label_audit")
    assert not any("radiologists" in s.value for s in at.subheader)
    assert keyed(at, "perf_table")  # the rest of the page is there


def test_browse_shows_the_experts_beside_nih(monkeypatch, expert_bundle, expert_root):
    monkeypatch.setenv("CXR_ASSIST_DATA_ROOTS", str(expert_root.parent))
    at = app(monkeypatch, expert_bundle, "browse")
    at.text_input(key="browse_root").input(str(expert_root)).run()
    assert not at.exception, at.exception
    assert any("with radiologists' labels" in c.value for c in at.caption)
    table = keyed(at, "browse_table")[0].value
    first = table["image"].iloc[0]  # left out of the expert file
    at.selectbox(key="browse_case").select(first).run()
    assert not keyed(at, "browse_expert")
    at.checkbox(key="browse_expert_only").check().run()
    table = keyed(at, "browse_table")[0].value
    assert first not in set(table["image"]) and len(table) == 260 - LEFT_OUT
    name = table["image"].iloc[0]
    at.selectbox(key="browse_case").select(name).run()
    assert not at.exception, at.exception
    shown = keyed(at, "browse_expert")[0].value
    expected = json.loads(json.dumps(_expert_row(expert_root, name)))
    assert list(shown["category"]) == list(EXPERT_CATEGORIES)
    assert list(shown["radiologists"]) == expected
    assert shown["NIH (mapped)"].iloc[3] == "—" and shown["model"].notna().sum() == 3


def _expert_row(root, name) -> list[str]:
    from cxr_core.data import find_expert_labels, read_expert_labels

    table = read_expert_labels(find_expert_labels(root)).set_index("image")
    return ["yes" if table.loc[name, c] == 1 else "no" for c in EXPERT_CATEGORIES]


def test_model_card_and_readme_block_with_and_without_the_expert_reference(expert_bundle, old_bundle):
    from tools.model_card import results_block

    meta = json.loads((expert_bundle / "bundle.json").read_text())
    with_block = results_block(json.loads((expert_bundle / "metrics.json").read_text()), meta)
    assert "Against radiologists' labels" in with_block and "| Nodule or mass | max of Nodule, Mass |" in with_block
    assert "NIH's text-mined labels audited against the experts" in with_block
    without = results_block(json.loads((old_bundle / "metrics.json").read_text()), meta)
    assert "radiologists" not in without and "| Atelectasis |" in without
