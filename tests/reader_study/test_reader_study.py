"""Tests for cxr_core.reader_study.store: the study flow, idempotency, concurrency, crashes, bad input."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxr_core.data import NIHDataset
from cxr_core.evaluation import UndefinedMetricWarning
from cxr_core.findings import FINDINGS, to_multi_hot
from cxr_core.reader_study import (
    ALL_READERS,  # noqa: F401 (used as @ALL_READERS in DataFrame.query)
    DB_PATH_ENV,
    MAX_NAME_LENGTH,
    MissingCasesError,
    ReaderStudyStore,
    ReadOrderError,
    SchemaVersionError,
    UnknownReaderError,
    UnknownStudyError,
    default_db_path,
    reader_study_results,
    schema,
    select_cases,
)

K = len(FINDINGS)
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def demo(demo_root) -> NIHDataset:
    return NIHDataset(demo_root)


@pytest.fixture
def store(tmp_path) -> ReaderStudyStore:
    with ReaderStudyStore(tmp_path / "var" / "study.sqlite3") as opened:
        yield opened


def synthetic_cases(n: int, *, seed: int = 0) -> list[tuple[str, str, list[int]]]:
    """``n`` named case rows, one patient each, about a fifth positive per finding."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, K)) < 0.2).astype(int)
    return [(f"{i:08d}_000.png", str(i), labels[i].tolist()) for i in range(n)]


def answer(store: ReaderStudyStore, study_id: int, reader_id: int, position: int, phase: str, *, flip: int = 0) -> None:
    """Record a plausible read: the reference labels with ``flip`` findings changed."""
    ref = store.cases_frame(study_id).filter(like="ref_").to_numpy()[position]
    ticks = ref.copy()
    ticks[:flip] = 1 - ticks[:flip]
    extra = {"ai_probabilities": np.clip(0.2 + 0.6 * ref, 0, 1)} if phase == "aided" else {}
    store.record_read(study_id, reader_id, position, phase=phase, findings=ticks, confidence=3, seconds=12.5, **extra)


def count_reads(path: Path) -> int:
    with sqlite3.connect(path) as con:
        return con.execute("SELECT COUNT(*) FROM reads").fetchone()[0]


def assert_consistent(path: Path) -> None:
    """integrity_check ok, no dangling foreign key, no incomplete read row."""
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        required = ["study_id", "position", "reader_id", "phase", "confidence", "seconds", "created_at"]
        required += [f"read_{f}" for f in FINDINGS]
        incomplete = " OR ".join(f'"{c}" IS NULL' for c in required)
        assert con.execute(f"SELECT COUNT(*) FROM reads WHERE {incomplete}").fetchone()[0] == 0
        orphans = con.execute(
            "SELECT COUNT(*) FROM reads a WHERE a.phase = 'aided' AND NOT EXISTS (SELECT 1 FROM reads u WHERE "
            "u.study_id = a.study_id AND u.position = a.position AND u.reader_id = a.reader_id AND u.phase = 'unaided')"
        ).fetchone()[0]
        assert orphans == 0
    finally:
        con.close()


# ---------------------------------------------------------------- full flow


def test_full_study_on_demo_with_resume(tmp_path, demo):
    path = tmp_path / "study.sqlite3"
    store = ReaderStudyStore(path)
    study = store.create_study("Demo study", demo, n_cases=20, seed=0, description="first run")
    assert study.n_cases == 20 and Path(study.data_root) == Path(demo.root).resolve()
    assert store.list_studies() == [study]
    assert store.check_cases_present(study.id) == []

    reader = store.get_or_create_reader("Dr Ada")
    assert store.progress(study.id, reader.id) == (0, 20)
    first = store.next_case(study.id, reader.id)
    assert (first.position, first.phase) == (0, "unaided")
    assert not hasattr(first, "labels")  # the reader must never be handed the reference
    assert store.case_image_path(study.id, first.position).is_file()

    # Read 7 cases and the unaided half of the 8th, then "close the browser".
    for position in range(7):
        answer(store, study.id, reader.id, position, "unaided", flip=1)
        answer(store, study.id, reader.id, position, "aided")
    answer(store, study.id, reader.id, 7, "unaided", flip=2)
    store.close()
    del store

    store = ReaderStudyStore(path)
    assert store.get_or_create_reader("dr  ada") == reader  # same reader, however typed
    assert store.progress(study.id, reader.id) == (7, 20)
    resumed = store.next_case(study.id, reader.id)
    assert (resumed.position, resumed.phase) == (7, "aided")
    while (case := store.next_case(study.id, reader.id)) is not None:
        answer(store, study.id, reader.id, case.position, case.phase, flip=1 if case.phase == "unaided" else 0)
    assert store.progress(study.id, reader.id) == (20, 20)

    frame = store.reads_frame(study.id)
    assert len(frame) == 40 and set(frame["phase"]) == {"unaided", "aided"}
    assert frame.groupby("phase").size().to_dict() == {"aided": 20, "unaided": 20}
    assert frame.loc[frame["phase"] == "unaided", [f"ai_{f}" for f in FINDINGS]].isna().all().all()
    cases = store.cases_frame(study.id)
    merged = frame.merge(cases, on=["position", "image"], suffixes=("", "_case"))
    for f in FINDINGS:  # reference labels joined to the right case
        assert (merged[f"ref_{f}"] == merged[f"ref_{f}_case"]).all()

    # 20 cases hold few positives per finding: some resamples draw none.
    with pytest.warns(UndefinedMetricWarning, match="undefined in some bootstrap resamples"):
        results = reader_study_results(frame, n_boot=200)
    macro = results["change"].query("reader == @ALL_READERS and finding == 'macro average' and metric == 'f1'")
    assert float(macro["change"].iloc[0]) > 0  # aided reads copied the reference exactly
    assert_consistent(path)


def test_demo_selection_is_stratified_deterministic_and_one_per_patient(demo):
    names = np.asarray(demo.image_names)
    patients = [str(p) for p in demo.patient_ids]
    labels = demo.labels.astype(int)
    picked = select_cases(names, patients, labels, n_cases=30, seed=0)
    assert len(picked) == 30 and len(set(np.asarray(patients)[picked])) == 30
    assert (labels[picked].sum(axis=0) >= 1).all(), "every finding represented, Hernia included"
    assert (labels[picked].sum(axis=1) == 0).sum() == round(0.25 * 30)  # No Finding cases

    again = select_cases(names, patients, labels, n_cases=30, seed=0)
    np.testing.assert_array_equal(picked, again)
    # Same data in another row order: the same cases in the same reading order.
    order = np.random.default_rng(1).permutation(len(names))
    shuffled = select_cases(names[order], [patients[i] for i in order], labels[order], n_cases=30, seed=0)
    np.testing.assert_array_equal(names[order][shuffled], names[picked])
    other = select_cases(names, patients, labels, n_cases=30, seed=1)
    assert list(names[other]) != list(names[picked])


def test_create_study_rerun_is_idempotent_and_name_clash_refused(store, demo):
    study = store.create_study("S", demo, n_cases=15, seed=3)
    assert store.create_study("S", demo, n_cases=15, seed=3) == study  # a re-run page
    with pytest.raises(ValueError, match="already exists with other cases"):
        store.create_study("s", demo, n_cases=15, seed=4)
    assert len(store.list_studies()) == 1
    for bad in (0, 217, 2.5):
        with pytest.raises(ValueError, match="n_cases must be a whole number from 1 to 216"):
            store.create_study("T", demo, n_cases=bad, seed=0)


def test_create_study_from_plain_rows(store):
    rows = synthetic_cases(40)
    study = store.create_study("rows", rows, n_cases=40, seed=0, data_root="")
    cases = store.cases_frame(study.id)
    assert sorted(cases["image"]) == sorted(r[0] for r in rows)
    by_name = {r[0]: r[2] for r in rows}
    for _, case in cases.iterrows():
        assert [case[f"ref_{f}"] for f in FINDINGS] == by_name[case["image"]]
    with pytest.raises(ValueError, match="records no image folder"):
        store.check_cases_present(study.id)
    with pytest.raises(ValueError, match="one value per finding"):
        store.create_study("bad", [("a.png", "1", [0] * 13)], n_cases=1, seed=0)


# ---------------------------------------------------------------- idempotency


def test_same_read_twice_is_one_row(store):
    study = store.create_study("idem", synthetic_cases(5), n_cases=5, seed=0)
    reader = store.get_or_create_reader("R")
    ticks = to_multi_hot(["Effusion", "Mass"])
    first = store.record_read(study.id, reader.id, 0, phase="unaided", findings=ticks, confidence=4, seconds=20)
    again = store.record_read(study.id, reader.id, 0, phase="unaided", findings=ticks, confidence=4, seconds=23)
    assert first.created and not again.created and not again.differs
    assert again.read == first.read and "already saved" in again.message
    changed = store.record_read(study.id, reader.id, 0, phase="unaided", findings=[0] * K, confidence=1, seconds=5)
    assert not changed.created and changed.differs and "kept" in changed.message
    assert changed.read == first.read  # a read is final: the first answers stay
    assert count_reads(store.path) == 1


def test_two_tabs_on_one_file_store_one_read(tmp_path):
    path = tmp_path / "tabs.sqlite3"
    tab1, tab2 = ReaderStudyStore(path), ReaderStudyStore(path)
    study = tab1.create_study("tabs", synthetic_cases(3), n_cases=3, seed=0)
    reader = tab2.get_or_create_reader("R")
    assert tab1.get_or_create_reader("R") == reader
    a = tab1.record_read(study.id, reader.id, 1, phase="unaided", findings=[1] * K, confidence=2, seconds=9)
    b = tab2.record_read(study.id, reader.id, 1, phase="unaided", findings=[1] * K, confidence=2, seconds=9)
    assert a.created and not b.created and b.read.id == a.read.id
    c = tab2.record_read(study.id, reader.id, 1, phase="aided", findings=[1] * K, confidence=2, seconds=4, ai_probabilities=[0.5] * K)
    d = tab1.record_read(study.id, reader.id, 1, phase="aided", findings=[1] * K, confidence=2, seconds=4, ai_probabilities=[0.5] * K)
    assert c.created and not d.created
    assert count_reads(path) == 2
    assert tab1.next_case(study.id, reader.id) == tab2.next_case(study.id, reader.id)
    tab1.close(), tab2.close()


# ---------------------------------------------------------------- concurrency


def _write_reads(path: str, study_id: int, reader_name: str, n_cases: int, resubmit: bool) -> int:
    """Worker: one reader reads ``n_cases`` cases, both phases; returns reads created."""
    store = ReaderStudyStore(path)
    reader = store.get_or_create_reader(reader_name)
    created = 0
    for position in range(n_cases):
        for phase in ("unaided", "aided"):
            extra = {"ai_probabilities": [0.3] * K} if phase == "aided" else {}
            kwargs = dict(phase=phase, findings=[position % 2] * K, confidence=1 + position % 5, seconds=1.0, **extra)
            created += store.record_read(study_id, reader.id, position, **kwargs).created
            if resubmit:  # a page re-run: must not add a row
                created += store.record_read(study_id, reader.id, position, **kwargs).created
    store.close()
    return created


def _context():
    # fork is quick (no re-import); spawn where fork does not exist.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def test_eight_writer_processes_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "busy.sqlite3"
    store = ReaderStudyStore(path)
    study = store.create_study("busy", synthetic_cases(100), n_cases=100, seed=0)
    store.close()
    started = time.perf_counter()
    with _context().Pool(8) as pool:
        jobs = [(str(path), study.id, f"reader {k}", 100, k % 2 == 0) for k in range(8)]
        created = pool.starmap(_write_reads, jobs)
    elapsed = time.perf_counter() - started
    assert created == [200] * 8
    assert count_reads(path) == 1600
    with sqlite3.connect(path) as con:
        keys = con.execute("SELECT COUNT(DISTINCT study_id || '/' || position || '/' || reader_id || '/' || phase) FROM reads").fetchone()[0]
        assert keys == 1600
        assert con.execute("SELECT COUNT(*) FROM readers").fetchone()[0] == 8
    assert_consistent(path)
    store = ReaderStudyStore(path)
    for reader in store.list_readers():
        assert store.progress(study.id, reader.id) == (100, 100)
        assert store.next_case(study.id, reader.id) is None
    assert elapsed < 45, f"8 x 200 reads took {elapsed:.1f} s"


def test_processes_racing_on_the_same_reads_store_each_once(tmp_path):
    path = tmp_path / "race.sqlite3"
    store = ReaderStudyStore(path)
    study = store.create_study("race", synthetic_cases(25), n_cases=25, seed=0)
    store.close()
    with _context().Pool(4) as pool:
        created = pool.starmap(_write_reads, [(str(path), study.id, "same reader", 25, False)] * 4)
    assert sum(created) == 50  # every read created by exactly one of the four
    assert count_reads(path) == 50
    assert_consistent(path)


# ---------------------------------------------------------------- crash


_CRASH_WRITER = """
import sys
from cxr_core.reader_study.store import ReaderStudyStore
path, study_id, reader_id, n_cases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = ReaderStudyStore(path)
for position in range(n_cases):
    for phase in ("unaided", "aided"):
        extra = {"ai_probabilities": [0.4] * 14} if phase == "aided" else {}
        store.record_read(study_id, reader_id, position, phase=phase, findings=[1] * 14, confidence=5, seconds=2.0, **extra)
        print(position, phase, flush=True)
"""


def test_writer_killed_mid_study_leaves_a_consistent_resumable_database(tmp_path):
    path = tmp_path / "crash.sqlite3"
    store = ReaderStudyStore(path)
    n_cases = 400
    study = store.create_study("crash", synthetic_cases(n_cases), n_cases=n_cases, seed=0)
    reader = store.get_or_create_reader("crashy")
    store.close()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_WRITER, str(path), str(study.id), str(reader.id), str(n_cases)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    acknowledged = 0
    try:
        while acknowledged < 31:  # odd: the kill lands somewhere after an unaided read
            line = child.stdout.readline()
            assert line, f"writer ended early: {child.stderr.read()}"
            acknowledged += 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close(), child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    assert_consistent(path)
    stored = count_reads(path)
    assert acknowledged <= stored < 2 * n_cases  # nothing confirmed was lost; killed before the end
    store = ReaderStudyStore(path)
    frame = store.reads_frame(study.id)
    # Reads were made strictly in order, so the stored ones are a prefix of it.
    expected = [(p, ph) for p in range(n_cases) for ph in ("unaided", "aided")][:stored]
    assert list(zip(frame["position"], frame["phase"])) == expected
    resume = store.next_case(study.id, reader.id)
    assert resume.position == stored // 2
    assert resume.phase == ("aided" if stored % 2 else "unaided")
    assert store.progress(study.id, reader.id) == (stored // 2, n_cases)
    answer(store, study.id, reader.id, resume.position, resume.phase)  # and writing goes on
    assert count_reads(path) == stored + 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "empty"),
        ("   \t ", "empty"),
        ("x" * (MAX_NAME_LENGTH + 1), f"at most {MAX_NAME_LENGTH}"),
        ("bad\x00name", "control characters"),
        ("All Readers", "reserved"),
        (None, "must be text"),
    ],
)
def test_bad_reader_names_are_refused_clearly(store, name, message):
    with pytest.raises(ValueError, match=message):
        store.get_or_create_reader(name)
    assert store.list_readers() == []


def test_longest_reader_name_is_accepted(store):
    assert store.get_or_create_reader("y" * MAX_NAME_LENGTH).name == "y" * MAX_NAME_LENGTH


def test_missing_case_images_are_listed_not_crashed_on(tmp_path, demo_root):
    root = tmp_path / "nih"
    shutil.copytree(demo_root, root)
    store = ReaderStudyStore(tmp_path / "db.sqlite3")
    study = store.create_study("moved", NIHDataset(root), n_cases=12, seed=0)
    names = store.cases_frame(study.id)["image"].tolist()
    for name in (names[2], names[9]):
        (root / "images" / name).unlink()
    assert store.check_cases_present(study.id) == [names[2], names[9]]
    with pytest.raises(MissingCasesError) as info:
        store.require_cases_present(study.id)
    assert info.value.missing == [names[2], names[9]]
    assert names[2] in str(info.value) and names[9] in str(info.value) and "2 of the 12" in str(info.value)
    with pytest.raises(MissingCasesError, match="is not under"):
        store.case_image_path(study.id, 2)
    gone = tmp_path / "nowhere"
    assert store.check_cases_present(study.id, gone) == names
    with pytest.raises(MissingCasesError, match="does not exist"):
        store.require_cases_present(study.id, gone)
    # Another layout of the same images (Kaggle's images_001/images/) is found.
    kaggle = tmp_path / "kaggle" / "images_001" / "images"
    kaggle.mkdir(parents=True)
    for name in names:
        if (root / "images" / name).exists():
            shutil.copy(root / "images" / name, kaggle / name)
    assert store.check_cases_present(study.id, tmp_path / "kaggle") == [names[2], names[9]]


def test_aided_read_before_unaided_is_refused(store):
    study = store.create_study("order", synthetic_cases(3), n_cases=3, seed=0)
    reader = store.get_or_create_reader("R")
    with pytest.raises(ReadOrderError, match="unaided read must be saved before"):
        store.record_read(study.id, reader.id, 0, phase="aided", findings=[0] * K, confidence=3, seconds=1, ai_probabilities=[0.1] * K)
    assert count_reads(store.path) == 0
    # The database itself refuses it too (trigger), whoever writes.
    with sqlite3.connect(store.path) as con, pytest.raises(sqlite3.IntegrityError, match="unaided read"):
        columns = ", ".join(f'"read_{f}"' for f in FINDINGS)
        con.execute(
            f"INSERT INTO reads (study_id, position, reader_id, phase, {columns}, confidence, seconds, created_at) "
            f"VALUES (?, 0, ?, 'aided', {', '.join('0' * K)}, 3, 1.0, 'now')",
            (study.id, reader.id),
        )


def test_unknown_study_reader_and_case_are_clear_errors(store):
    study = store.create_study("known", synthetic_cases(3), n_cases=3, seed=0)
    reader = store.get_or_create_reader("R")
    read = dict(phase="unaided", findings=[0] * K, confidence=3, seconds=1)
    for call in (
        lambda: store.get_study(999),
        lambda: store.next_case(999, reader.id),
        lambda: store.progress(999, reader.id),
        lambda: store.record_read(999, reader.id, 0, **read),
        lambda: store.reads_frame(999),
        lambda: store.check_cases_present(999),
        lambda: store.get_study("1"),
    ):
        with pytest.raises(UnknownStudyError, match="no study with id"):
            call()
    with pytest.raises(UnknownReaderError, match="no reader with id 42"):
        store.record_read(study.id, 42, 0, **read)
    with pytest.raises(UnknownStudyError, match="no case at position 3"):
        store.record_read(study.id, reader.id, 3, **read)
    with pytest.raises(UnknownStudyError, match="no case at position -1"):
        store.record_read(study.id, reader.id, -1, **read)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"confidence": 0}, "confidence must be a whole number from 1"),
        ({"confidence": 6}, "confidence must be a whole number from 1"),
        ({"confidence": 2.5}, "confidence must be a whole number from 1"),
        ({"confidence": True}, "confidence must be a whole number from 1"),
        ({"findings": [0] * (K - 1)}, "one value per finding"),
        ({"findings": [0] * (K + 1)}, "one value per finding"),
        ({"findings": [2] + [0] * (K - 1)}, "only 0 and 1"),
        ({"findings": "Effusion"}, "14 values of 0 or 1"),
        ({"seconds": -1}, "non-negative"),
        ({"seconds": float("nan")}, "non-negative"),
        ({"phase": "second look"}, "phase must be"),
        ({"ai_probabilities": [0.5] * K}, "without the AI"),
    ],
)
def test_bad_read_values_are_refused(store, change, message):
    study = store.create_study("values", synthetic_cases(2), n_cases=2, seed=0)
    reader = store.get_or_create_reader("R")
    read = dict(phase="unaided", findings=[0] * K, confidence=3, seconds=1.0) | change
    with pytest.raises(ValueError, match=message):
        store.record_read(study.id, reader.id, 0, **read)
    assert count_reads(store.path) == 0


@pytest.mark.parametrize(
    "probabilities, message",
    [([0.5] * (K - 1), "one value per finding"), ([1.5] + [0.5] * (K - 1), r"in \[0, 1\]"), ({"Mass": 0.2}, "exactly the 14")],
)
def test_bad_ai_probabilities_are_refused(store, probabilities, message):
    study = store.create_study("ai", synthetic_cases(1), n_cases=1, seed=0)
    reader = store.get_or_create_reader("R")
    store.record_read(study.id, reader.id, 0, phase="unaided", findings=[0] * K, confidence=3, seconds=1)
    with pytest.raises(ValueError, match=message):
        store.record_read(study.id, reader.id, 0, phase="aided", findings=[0] * K, confidence=3, seconds=1, ai_probabilities=probabilities)


def test_ai_values_by_name_and_thresholds_round_trip(store):
    study = store.create_study("named", synthetic_cases(1), n_cases=1, seed=0)
    reader = store.get_or_create_reader("R")
    store.record_read(study.id, reader.id, 0, phase="unaided", findings=[0] * K, confidence=3, seconds=1)
    probs = {f: round(0.05 * (i + 1), 2) for i, f in enumerate(FINDINGS)}
    result = store.record_read(
        study.id, reader.id, 0, phase="aided", findings=[0] * K, confidence=3, seconds=1,
        ai_probabilities=probs, ai_thresholds=[0.3] * K,
    )
    assert result.read.ai_probabilities == tuple(probs[f] for f in FINDINGS)
    frame = store.reads_frame(study.id)
    aided = frame[frame["phase"] == "aided"].iloc[0]
    assert [aided[f"ai_{f}"] for f in FINDINGS] == [probs[f] for f in FINDINGS]
    assert [aided[f"ai_threshold_{f}"] for f in FINDINGS] == [0.3] * K


# ---------------------------------------------------------------- schema and settings


def test_connection_settings(store):
    with store._connection() as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert store.schema_version() == schema.SCHEMA_VERSION


def test_newer_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "future.sqlite3"
    ReaderStudyStore(path).close()
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO schema_version VALUES (?, 'later')", (schema.SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match="newer cxr-assist.*Upgrade cxr-assist"):
        ReaderStudyStore(path)


def test_older_schema_is_migrated_in_place(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    ReaderStudyStore(path).close()

    def add_site(con):
        con.execute("ALTER TABLE readers ADD COLUMN site TEXT NOT NULL DEFAULT ''")

    current = schema.SCHEMA_VERSION  # a future version: one more than this code's, with its migration
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(schema.MIGRATIONS, current, add_site)
    store = ReaderStudyStore(path)
    assert store.schema_version() == current + 1
    with store._connection() as con:
        assert "site" in [row[1] for row in con.execute("PRAGMA table_info(readers)")]
    store.close()
    monkeypatch.delitem(schema.MIGRATIONS, current)
    path2 = tmp_path / "old2.sqlite3"
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current)
    ReaderStudyStore(path2).close()
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    with pytest.raises(SchemaVersionError, match="no migration"):
        ReaderStudyStore(path2)


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (x)")
    with pytest.raises(SchemaVersionError, match="not a cxr-assist reader-study database"):
        ReaderStudyStore(other)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SchemaVersionError, match="not a readable SQLite database"):
        ReaderStudyStore(junk)
    with pytest.raises(ValueError, match="memory"):
        ReaderStudyStore(":memory:")


def test_default_location(tmp_path, monkeypatch):
    monkeypatch.delenv(DB_PATH_ENV, raising=False)
    assert default_db_path() == REPO_ROOT / "var" / "reader_study.sqlite3"
    monkeypatch.setenv(DB_PATH_ENV, str(tmp_path / "elsewhere" / "rs.sqlite3"))
    store = ReaderStudyStore()
    assert store.path == tmp_path / "elsewhere" / "rs.sqlite3" and store.path.is_file()
    store.close()


def test_refused_files_are_left_untouched(tmp_path):
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (x)")
    before = other.read_bytes()
    with pytest.raises(SchemaVersionError):
        ReaderStudyStore(other)
    assert other.read_bytes() == before  # not even switched to WAL
    with sqlite3.connect(other) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
