"""The expert reference: the category mapping, the label audit on a hand-checked table, the reader of
the real file, and ``evaluate_bundle`` writing the ``expert_reference`` and ``label_audit`` blocks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from cxr_core.data import EXPERT_CATEGORIES, find_expert_labels, read_expert_labels
from cxr_core.errors import DataFormatError
from cxr_core.evaluation import (
    UndefinedMetricWarning,
    bootstrap_ci,
    category_labels,
    category_scores,
    cohen_kappa,
    expert_auroc,
    expert_report,
    label_audit,
)
from cxr_core.findings import FINDINGS
from tests.expert_data import SYNTHETIC_EXPERT_FILE, demo_copy_with_expert_file, synthetic_expert_table

# --------------------------------------------------------------------------
# The mapping
# --------------------------------------------------------------------------


def _probs(**values) -> np.ndarray:
    row = np.zeros(len(FINDINGS))
    for name, value in values.items():
        row[FINDINGS.index(name)] = value
    return row


def test_category_scores_max_and_noisy_or_and_fracture_has_none():
    p = np.stack([
        _probs(Pneumothorax=0.9, Nodule=0.2, Mass=0.6, Consolidation=0.1, Pneumonia=0.3, Infiltration=0.2, Atelectasis=0.4),
        _probs(Pneumothorax=0.1, Nodule=0.5, Mass=0.5, Edema=0.99, Effusion=0.99),
    ])
    s = category_scores(p)
    assert list(EXPERT_CATEGORIES) == ["Pneumothorax", "Nodule or mass", "Airspace opacity", "Fracture"]
    np.testing.assert_allclose(s[:, :3], [[0.9, 0.6, 0.4], [0.1, 0.5, 0.0]])
    assert np.isnan(s[:, 3]).all()  # no model output for Fracture
    noisy = category_scores(p, combine="noisy_or")
    np.testing.assert_allclose(noisy[0, 1], 1 - 0.8 * 0.4)
    np.testing.assert_allclose(noisy[0, 2], 1 - 0.9 * 0.7 * 0.8 * 0.6)
    np.testing.assert_allclose(noisy[1, 1], 0.75)
    with pytest.raises(ValueError, match="combine"):
        category_scores(p, combine="mean")


def test_category_labels_are_the_or_of_the_findings():
    y = np.stack([_probs(Mass=1), _probs(Atelectasis=1), _probs(Pneumothorax=1, Nodule=1), _probs(Edema=1), _probs()])
    labels = category_labels(y)
    np.testing.assert_array_equal(labels[:, :3], [[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert np.isnan(labels[:, 3]).all()


# --------------------------------------------------------------------------
# The audit on a small table checked by hand
# --------------------------------------------------------------------------

#: Ten images: NIH says 1 1 1 1 0 0 0 0 0 0, the experts 1 1 1 0 1 1 0 0 0 0.
NIH_10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=float)
EXPERT_10 = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=float)


def test_audit_on_a_hand_checked_table():
    # By hand: tp 3 (images 1-3), fp 1 (image 4), fn 2 (images 5-6), tn 4.
    # sensitivity of NIH's label = 3/5, PPV = 3/4, specificity = 4/5, agreement = 7/10;
    # chance agreement = P(NIH 1) P(exp 1) + P(NIH 0) P(exp 0) = 0.4*0.5 + 0.6*0.5 = 0.5,
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    nih = np.column_stack([NIH_10, NIH_10, NIH_10, np.full(10, np.nan)])
    expert = np.column_stack([EXPERT_10, EXPERT_10, 1 - EXPERT_10, EXPERT_10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Fracture is NaN by design: a note, no warning
        audit = label_audit(nih, expert).set_index("category")
    first = audit.loc["Pneumothorax"]
    assert (first.tp, first.fp, first.fn, first.tn) == (3, 1, 2, 4)
    assert (first.n_images, first.expert_positives, first.nih_positives) == (10, 5, 4)
    assert first.sensitivity == pytest.approx(0.6) and first.ppv == pytest.approx(0.75)
    assert first.specificity == pytest.approx(0.8) and first.agreement == pytest.approx(0.7)
    assert first.kappa == pytest.approx(0.4)
    assert first.kappa == pytest.approx(cohen_kappa_score(NIH_10, EXPERT_10))
    # Against the opposite reference: tp 1, fp 3, fn 4, tn 2; kappa (0.3 - 0.5) / 0.5 = -0.4.
    third = audit.loc["Airspace opacity"]
    assert (third.tp, third.fp, third.fn, third.tn) == (1, 3, 4, 2)
    assert third.sensitivity == pytest.approx(0.2) and third.ppv == pytest.approx(0.25) and third.kappa == pytest.approx(-0.4)
    fracture = audit.loc["Fracture"]
    assert np.isnan(fracture.kappa) and np.isnan(fracture.sensitivity) and "no fracture" in fracture.note
    assert fracture.expert_positives == 5


def test_audit_leaves_out_unread_images_and_warns_where_undefined():
    expert = EXPERT_10.copy()
    expert[[0, 9]] = np.nan  # not read: tp 2, fp 1, fn 2, tn 3
    audit = label_audit(NIH_10, expert, categories=["Pneumothorax"]).iloc[0]
    assert audit.n_images == 8 and (audit.tp, audit.fp, audit.fn, audit.tn) == (2, 1, 2, 3)
    with pytest.warns(UndefinedMetricWarning, match="Pneumothorax"):
        none_positive = label_audit(NIH_10, np.zeros(10), categories=["Pneumothorax"]).iloc[0]
    assert np.isnan(none_positive.sensitivity) and none_positive.ppv == 0.0
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        label_audit(NIH_10, np.full(10, 0.5), categories=["Pneumothorax"])


def test_cohen_kappa_matches_sklearn_and_is_nan_when_undefined():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.3, rng.random(200) < 0.4
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(cohen_kappa(np.ones(5), np.ones(5)))


def test_expert_auroc_beside_nih_on_the_same_images():
    rng = np.random.default_rng(1)
    n = 120
    groups = np.repeat(np.arange(60), 2)
    expert = (rng.random((n, 4)) < 0.3).astype(float)
    nih = np.where(rng.random((n, 4)) < 0.8, expert, 1 - expert)
    nih[:, 3] = np.nan
    scores = np.clip(expert * 0.3 + rng.random((n, 4)) * 0.7, 0, 1)
    scores[:, 3] = np.nan
    expert[5, 1] = np.nan  # one image not read for Nodule or mass
    table = expert_auroc(scores, nih, expert, groups=groups, n_boot=100, seed=3).set_index("category")
    row = table.loc["Pneumothorax"]
    assert row.auroc_expert == pytest.approx(roc_auc_score(expert[:, 0], scores[:, 0]))
    assert row.auroc_nih == pytest.approx(roc_auc_score(nih[:, 0], scores[:, 0]))
    ci = bootstrap_ci(expert[:, 0], scores[:, 0], groups=groups, n_boot=100, seed=3)
    assert (row.auroc_expert_low, row.auroc_expert_high) == pytest.approx((ci.low[0], ci.high[0]))
    assert row.n_images == 120 and row.n_patients == 60 and row.expert_positives == int(expert[:, 0].sum())
    read = ~np.isnan(expert[:, 1])
    nodule = table.loc["Nodule or mass"]
    assert nodule.n_images == 119
    assert nodule.auroc_nih == pytest.approx(roc_auc_score(nih[read, 1], scores[read, 1]))
    fracture = table.loc["Fracture"]
    assert np.isnan(fracture.auroc_expert) and np.isnan(fracture.auroc_nih) and "no fracture" in fracture.note


def test_expert_report_uses_only_labelled_images_and_is_json_ready():
    images = [f"{i:08d}_000.png" for i in range(8)]
    y = np.zeros((8, 14))
    y[:4, FINDINGS.index("Pneumothorax")] = 1
    p = np.full((8, 14), 0.1)
    p[:, FINDINGS.index("Pneumothorax")] = np.linspace(0.9, 0.1, 8)
    table = pd.DataFrame({"image": images[2:] + ["99999999_000.png"], "patient_id": range(7), "set_id": "test",
                          "nih_finding_labels": ""})
    for category in EXPERT_CATEGORIES:
        table[category] = 0.0
    table.loc[:2, "Pneumothorax"] = 1.0  # images 2, 3, 4
    table.loc[0, "Airspace opacity"] = 1.0
    report = expert_report(images, p, y, np.arange(8), table, n_boot=20)
    json.dumps(report, allow_nan=False)
    ref = report["expert_reference"]
    assert (ref["images_offered"], ref["images"], ref["patients"]) == (8, 6, 6)
    pneumothorax = ref["per_category"][0]
    assert pneumothorax["expert_positives"] == 3 and pneumothorax["nih_positives"] == 2
    assert pneumothorax["auroc_expert"] == pytest.approx(1.0) and pneumothorax["auroc_nih"] == pytest.approx(1.0)
    assert ref["per_category"][3]["auroc_expert"] is None and ref["per_category"][3]["note"]
    assert [m["model_findings"] for m in ref["mapping"]][1] == ["Nodule", "Mass"]
    audit = {row["category"]: row for row in report["label_audit"]["per_category"]}
    assert (audit["Pneumothorax"]["tp"], audit["Pneumothorax"]["fn"], audit["Pneumothorax"]["tn"]) == (2, 1, 3)
    assert audit["Fracture"]["tp"] is None


# --------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------


def test_reader_of_the_real_file(shared_nih):
    path = find_expert_labels(shared_nih)
    assert path is not None and path.parent.name == "extras"
    table = read_expert_labels(path)
    assert len(table) == 4376 and table["image"].is_unique
    assert list(table.columns[-4:]) == list(EXPERT_CATEGORIES)
    assert table[list(EXPERT_CATEGORIES)].sum().astype(int).to_dict() == {
        "Pneumothorax": 238, "Nodule or mass": 605, "Airspace opacity": 2166, "Fracture": 186}
    assert table["set_id"].value_counts().to_dict() == {"val": 2414, "test": 1962}
    present = set(p.name for p in (shared_nih / "images").glob("*.png"))
    assert table["image"].isin(present).sum() == 773


def test_reader_refuses_what_is_not_the_expert_table(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Patient ID,Pneumothorax,Nodule or mass,Airspace opacity,Fracture\n"
                   "00000001_000.png,1,YES,NO,MAYBE,NO\n")
    with pytest.raises(DataFormatError, match="MAYBE"):
        read_expert_labels(bad)
    bad.write_text("Image Index,Patient ID,Pneumothorax\n00000001_000.png,1,YES\n")
    with pytest.raises(DataFormatError, match="Fracture"):
        read_expert_labels(bad)
    assert find_expert_labels(tmp_path) is None


# --------------------------------------------------------------------------
# evaluate_bundle writes the blocks
# --------------------------------------------------------------------------

@pytest.fixture()
def demo_with_expert_file(tmp_path, demo_root):
    return demo_copy_with_expert_file(tmp_path, demo_root)


def test_evaluate_bundle_writes_the_expert_blocks(tmp_path, demo_with_expert_file):
    from cxr_core.jobs import evaluate_bundle
    from tests.app_bundle import build_tiny_bundle

    bundle = build_tiny_bundle(tmp_path / "bundle", demo_with_expert_file)
    lines = []
    report = evaluate_bundle(bundle, demo_with_expert_file, n_boot=20, localization=False, log=lines.append)
    metrics = json.loads((bundle / "metrics.json").read_text())
    for key in ("per_finding", "macro", "counts", "calibration", "roc", "data"):
        assert key in metrics
    ref, audit = metrics["expert_reference"], metrics["label_audit"]
    n_test = metrics["counts"]["test_images"]
    assert ref["images"] == n_test == ref["images_offered"] and ref["split"] == "test"  # every demo image is labelled
    assert [row["category"] for row in ref["per_category"]] == list(EXPERT_CATEGORIES)
    assert all(row["n_images"] == n_test for row in ref["per_category"])
    assert ref["per_category"][0]["auroc_expert"] is not None and ref["per_category"][0]["auroc_nih"] is not None
    assert ref["per_category"][3]["auroc_expert"] is None
    assert [row["category"] for row in audit["per_category"]] == list(EXPERT_CATEGORIES)
    row = audit["per_category"][2]
    assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == n_test
    assert report["expert_reference"] == ref
    assert any("expert reference" in line for line in lines)
    assert "| Nodule or mass |" in (bundle / "summary.md").read_text()


def test_expert_file_given_by_path_and_failures_never_break_evaluation(tmp_path, demo_root):
    from cxr_core.jobs import evaluate_bundle
    from tests.app_bundle import build_tiny_bundle
    from training.evaluate import main

    bundle = build_tiny_bundle(tmp_path / "bundle", demo_root)
    with pytest.raises(FileNotFoundError, match="expert label file"):
        evaluate_bundle(bundle, demo_root, expert_labels=tmp_path / "missing.csv", log=lambda line: None)
    expert_file = tmp_path / SYNTHETIC_EXPERT_FILE
    synthetic_expert_table(demo_root, expert_file)
    assert main(["--bundle", str(bundle), "--data", str(demo_root), "--n-boot", "10", "--no-localization",
                 "--expert-labels", str(expert_file)]) == 0
    assert "label_audit" in json.loads((bundle / "metrics.json").read_text())

    broken = tmp_path / "broken.csv"
    broken.write_text("Image Index,Patient ID,Pneumothorax,Nodule or mass,Airspace opacity,Fracture\nx.png,1,MAYBE,NO,NO,NO\n")
    lines = []
    # The RuntimeWarning is not asserted: image decoding records warnings with catch_warnings in worker
    # threads, which is not thread-safe and can swallow later warnings; the log line is the contract.
    report = evaluate_bundle(bundle, demo_root, n_boot=10, localization=False, expert_labels=broken, log=lines.append)
    assert any(line.startswith("expert reference skipped") and "MAYBE" in line for line in lines)
    assert "expert_reference" not in report and report["macro"]["auroc"] is not None
    assert "expert_reference" not in json.loads((bundle / "metrics.json").read_text())
