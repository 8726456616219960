"""Agreement on the normal/abnormal decision (cxr_core.reader_study.normal_abnormal), and what the store keeps for it:
the AI panel's triage verdict with an aided read, and cases left out because the input check warned."""

from __future__ import annotations

import sqlite3
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cxr_core.data import NIHDataset
from cxr_core.evaluation.checks import UndefinedMetricWarning
from cxr_core.evaluation.triage import Triage
from cxr_core.findings import FINDINGS
from cxr_core.reader_study import ALL_READERS, ReaderStudyStore, schema, triage_agreement, triage_verdicts
from cxr_core.reader_study.normal_abnormal import AI_READER, AI_TRIAGE, NIH_LABELS


def read(reader, position, phase, ticks, refs, ai_triage=None, ai=None):
    row = {"study_id": 1, "position": position, "reader": reader, "phase": phase, "seconds": 1.0}
    row.update({f"read_{f}": int(f in ticks) for f in FINDINGS})
    row.update({f"ref_{f}": int(f in refs) for f in FINDINGS})
    row.update({f"ai_{f}": (np.nan if ai is None else ai) for f in FINDINGS})
    row["ai_triage"] = ai_triage
    return row


def case(reader, position, unaided, aided, refs, ai_triage, ai=0.1):
    return [read(reader, position, "unaided", unaided, refs), read(reader, position, "aided", aided, refs, ai_triage, ai)]


def frame(rows):
    return pd.DataFrame([r for pair in rows for r in pair])


def row(table, reader, phase, against):
    hit = table[(table["reader"] == reader) & (table["phase"] == phase) & (table["against"] == against)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_agreement_and_kappa_by_hand():
    # Four cases read by A: NIH abnormal on 0 and 1; the AI says abnormal on 0 and 2.
    rows = [
        case("A", 0, ["Effusion"], ["Effusion"], ["Effusion"], "abnormal"),
        case("A", 1, [], ["Mass"], ["Nodule"], "no finding likely"),
        case("A", 2, [], ["Hernia"], [], "abnormal"),
        case("A", 3, [], [], [], "no finding likely"),
    ]
    table = triage_agreement(frame(rows))
    unaided = row(table, "A", "unaided", NIH_LABELS)  # A: 1, 0, 0, 0 against NIH 1, 1, 0, 0
    assert unaided["agreement"] == pytest.approx(0.75) and unaided["n_cases"] == 4
    assert unaided["kappa"] == pytest.approx(cohen_kappa_score([1, 0, 0, 0], [1, 1, 0, 0]))
    aided = row(table, "A", "aided", AI_TRIAGE)  # A aided: 1, 1, 1, 0 against the AI 1, 0, 1, 0
    assert aided["agreement"] == pytest.approx(0.75) and aided["reader_abnormal"] == pytest.approx(0.75)
    assert aided["other_abnormal"] == pytest.approx(0.5) and aided["ai_verdicts_derived"] == 0
    assert aided["kappa"] == pytest.approx(cohen_kappa_score([1, 1, 1, 0], [1, 0, 1, 0]))
    ai = row(table, AI_READER, "—", NIH_LABELS)  # the AI 1, 0, 1, 0 against NIH 1, 1, 0, 0
    assert ai["agreement"] == pytest.approx(0.5) and ai["n_cases"] == 4
    assert list(dict.fromkeys(table["reader"])) == ["A", ALL_READERS, AI_READER]


def test_readers_are_pooled_and_the_ai_counts_each_case_once():
    rows = [case("A", 0, ["Effusion"], ["Effusion"], ["Effusion"], "abnormal"),
            case("B", 0, [], [], ["Effusion"], "abnormal"),
            case("B", 1, [], [], [], "no finding likely")]
    table = triage_agreement(frame(rows))
    pooled = row(table, ALL_READERS, "unaided", NIH_LABELS)
    assert pooled["n_reads"] == 3 and pooled["n_cases"] == 2 and pooled["agreement"] == pytest.approx(2 / 3)
    assert row(table, AI_READER, "—", NIH_LABELS)["n_reads"] == 2


def test_a_verdict_not_recorded_is_derived_with_the_given_triage_and_not_assessed_is_left_out():
    triage = Triage(method="noisy_or", intercept=0.0, weights=(1.0,), rule_out=0.5, balanced=0.7)
    rows = [case("A", 0, ["Effusion"], ["Effusion"], ["Effusion"], None, ai=0.2),  # noisy-OR of 14 x 0.2: abnormal
            case("A", 1, [], [], [], None, ai=0.001),  # no finding likely
            case("A", 2, [], [], [], "not assessed")]
    data = frame(rows)
    verdicts, derived = triage_verdicts(data, triage)
    aided = data["phase"] == "aided"
    assert list(verdicts[aided]) == ["abnormal", "no finding likely", "not assessed"]
    assert list(derived[aided]) == [True, True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        without = triage_agreement(data)  # old reads, no triage to derive with: nothing to compare with the AI
    assert row(without, "A", "aided", AI_TRIAGE)["n_reads"] == 0
    table = triage_agreement(data, triage=triage)
    compared = row(table, "A", "aided", AI_TRIAGE)
    assert compared["n_reads"] == 2 and compared["ai_verdicts_derived"] == 2 and compared["agreement"] == 1.0
    assert row(table, "A", "aided", NIH_LABELS)["n_reads"] == 3  # the NIH comparison keeps the not-assessed case


def test_unpaired_reads_do_not_count_and_constant_answers_warn():
    rows = [case("A", 0, [], [], [], "no finding likely"), [read("A", 1, "unaided", ["Mass"], ["Mass"])]]
    with pytest.warns(UndefinedMetricWarning, match="same single answer"):
        table = triage_agreement(frame(rows))
    assert row(table, "A", "unaided", NIH_LABELS)["n_reads"] == 1 and np.isnan(row(table, "A", "unaided", NIH_LABELS)["kappa"])
    assert triage_agreement(frame([[read("A", 0, "unaided", [], [])]])).empty
    with pytest.raises(ValueError, match="missing"):
        triage_agreement(pd.DataFrame({"position": [0]}))


# -- the store ------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    with ReaderStudyStore(tmp_path / "rs.sqlite3") as s:
        yield s


def test_the_store_keeps_the_ai_triage_and_the_frame_feeds_the_agreement(store, demo_root):
    study = store.create_study("Triage", NIHDataset(demo_root), n_cases=3, seed=0)
    reader = store.get_or_create_reader("Dr T")
    store.record_read(study.id, reader.id, 0, phase="unaided", findings=[0] * 14, confidence=3, seconds=1.0)
    with pytest.raises(ValueError, match="ai_triage"):
        store.record_read(study.id, reader.id, 0, phase="aided", findings=[0] * 14, confidence=3, seconds=1.0,
                          ai_probabilities=[0.1] * 14, ai_triage="maybe")
    with pytest.raises(ValueError, match="ai_triage"):
        store.record_read(study.id, reader.id, 0, phase="aided", findings=[0] * 14, confidence=3, seconds=1.0, ai_triage="abnormal")
    saved = store.record_read(study.id, reader.id, 0, phase="aided", findings=[1] + [0] * 13, confidence=3, seconds=1.0,
                              ai_probabilities=[0.1] * 14, ai_thresholds=[1.0] * 14, ai_triage="abnormal")
    assert saved.read.ai_triage == "abnormal" and store.get_read(study.id, reader.id, 0, "unaided").ai_triage is None
    reads = store.reads_frame(study.id)
    assert reads["ai_triage"].isna().tolist() == [True, False] and reads["ai_triage"].iloc[1] == "abnormal"
    table = triage_agreement(reads)
    assert row(table, "Dr T", "aided", AI_TRIAGE)["agreement"] == 1.0


def test_an_excluded_case_is_nobodys_next_case_and_leaves_progress_and_results(store, demo_root):
    study = store.create_study("Excluded", NIHDataset(demo_root), n_cases=3, seed=0)
    reader = store.get_or_create_reader("Dr X")
    store.record_read(study.id, reader.id, 0, phase="unaided", findings=[0] * 14, confidence=3, seconds=1.0)
    assert store.next_case(study.id, reader.id).position == 0
    with pytest.raises(ValueError, match="why"):
        store.exclude_case(study.id, 0, "  ")
    assert store.exclude_case(study.id, 0, "This may not be a chest X-ray.") is True
    assert store.exclude_case(study.id, 0, "again") is False  # idempotent: the first reason stays
    assert store.next_case(study.id, reader.id).position == 1
    assert store.progress(study.id, reader.id) == (0, 2)
    assert store.reads_frame(study.id).empty  # its earlier read leaves the results
    excluded = store.excluded_cases(study.id)
    assert excluded["position"].tolist() == [0] and excluded["reason"].item() == "This may not be a chest X-ray."
    assert excluded["image"].item() == store.cases_frame(study.id)["image"].iloc[0]


def test_a_version_2_database_is_migrated_to_3(tmp_path, demo_root):
    path = tmp_path / "v2.sqlite3"
    store = ReaderStudyStore(path)
    study = store.create_study("Old", NIHDataset(demo_root), n_cases=2, seed=0)
    reader = store.get_or_create_reader("Dr Old")
    store.record_read(study.id, reader.id, 0, phase="unaided", findings=[0] * 14, confidence=3, seconds=1.0)
    store.record_read(study.id, reader.id, 0, phase="aided", findings=[0] * 14, confidence=3, seconds=1.0, ai_probabilities=[0.2] * 14)
    store.close()
    with sqlite3.connect(path) as con:  # back to what the code before version 3 wrote
        con.execute("DROP TABLE excluded_cases")
        con.execute("ALTER TABLE reads DROP COLUMN ai_triage")
        con.execute("DELETE FROM schema_version WHERE version = 3")
    store = ReaderStudyStore(path)
    assert store.schema_version() == schema.SCHEMA_VERSION == 3
    reads = store.reads_frame(study.id)
    assert len(reads) == 2 and reads["ai_triage"].isna().all()
    assert store.progress(study.id, reader.id) == (1, 2)
