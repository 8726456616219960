"""The typed reader of an evaluation's metrics.json (cxr_core.evaluation.metrics_file), on the shipped model's file."""

from __future__ import annotations

import json

import pytest

from cxr_core.evaluation.metrics_file import METRICS_FILE, metrics_from_document, metrics_path, read_metrics
from cxr_core.findings import FINDINGS
from tests.app_bundle import SHIPPED_BUNDLE

SHIPPED_METRICS = SHIPPED_BUNDLE / METRICS_FILE


@pytest.fixture(scope="module")
def document():
    if not SHIPPED_METRICS.is_file():
        pytest.skip("the shipped bundle's metrics.json is not here")
    return json.loads(SHIPPED_METRICS.read_text(encoding="utf-8"))


def test_the_shipped_evaluation_reads_into_its_records(document):
    metrics = read_metrics(SHIPPED_METRICS)
    assert metrics.test_images == document["counts"]["test_images"] and metrics.macro_auroc == document["macro"]["auroc"]
    assert [r.finding for r in metrics.per_finding] == list(FINDINGS) == [c.finding for c in metrics.roc]
    assert metrics.finding("Hernia").auroc_low == document["per_finding"][-1]["auroc_low"] and metrics.finding("x") is None
    assert metrics.roc[0].x == tuple(document["roc"][0]["fpr"]) and metrics.pr[0].area == document["pr"][0]["average_precision"]
    assert metrics.calibration.ece_after == tuple(document["calibration"]["ece_after"])
    triage, flags = metrics.reading.triage, metrics.reading.flags
    assert triage.rule_out == document["reading"]["triage"]["rule_out"]
    assert triage.at_rule_out["sensitivity"] == document["reading"]["triage"]["at_rule_out"]["sensitivity"]
    assert flags.target_specificity == document["reading"]["flags"]["target_specificity"]
    assert [f.finding for f in flags.per_finding] == list(FINDINGS)
    assert metrics.reading.burden["flags"] == document["reading"]["burden"]["flags"]


def test_blocks_an_older_evaluation_lacks_are_empty(document):
    old = {k: v for k, v in document.items() if k not in ("reading", "localization", "expert_reference", "label_audit")}
    metrics = metrics_from_document(old)
    assert metrics.reading.triage is None and metrics.reading.flags is None and metrics.reading.burden == {}
    assert metrics.localization == {} and metrics.expert_reference is None and metrics.label_audit is None
    note = metrics_from_document(old | {"reading": {"triage": None, "triage_note": "too few films"}}).reading
    assert note.triage is None and note.triage_note == "too few films"


def test_a_damaged_file_says_what_is_wrong(tmp_path, document):
    path = tmp_path / METRICS_FILE
    path.write_text(json.dumps({k: v for k, v in document.items() if k != "calibration"}))
    with pytest.raises(ValueError, match=r"metrics.json: not an evaluation this cxr-assist reads \(no 'calibration'\)"):
        read_metrics(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="is not a model evaluation"):
        read_metrics(path)
    with pytest.raises(ValueError, match="no such"):
        read_metrics(tmp_path / "none.json")


def test_the_file_a_bundle_names(tmp_path):
    assert metrics_path(tmp_path) == tmp_path / "metrics.json"
    assert metrics_path(tmp_path, {"metrics_file": "other.json"}) == tmp_path / "other.json"
