"""Tests for cxr_core.reader_study.analysis: values checked by hand, against sklearn and by brute force."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cxr_core.evaluation import UndefinedMetricWarning, binary_report
from cxr_core.findings import FINDINGS
from cxr_core.reader_study import (
    ALL_FINDINGS,
    ALL_READERS,
    LABEL_NOISE_CAVEAT,
    MACRO,
    METRICS,
    ai_agreement,
    export_csv,
    paired_change,
    phase_metrics,
    reader_study_results,
    reading_time,
)

K = len(FINDINGS)


def make_frame(ref, unaided, aided, *, ai=None, thresholds=None, reader="A", seconds=(30.0, 10.0), study_id=1) -> pd.DataFrame:
    """A reads frame shaped like ReaderStudyStore.reads_frame: two rows per case.

    Args:
        ref, unaided, aided: 0/1, shape (n_cases, 14).
        ai: AI probabilities (n_cases, 14) stored with the aided reads, or None.
        thresholds: AI thresholds (n_cases, 14) or None.
        seconds: (unaided, aided) seconds, scalars or arrays of shape (n_cases,).
    """
    ref, unaided, aided = (np.asarray(a, dtype=int) for a in (ref, unaided, aided))
    n = ref.shape[0]
    rows = []
    for i in range(n):
        for phase, reads, secs in (("unaided", unaided, seconds[0]), ("aided", aided, seconds[1])):
            row = {
                "study_id": study_id, "position": i, "image": f"{i:08d}_000.png", "patient_id": str(i),
                "reader": reader, "phase": phase, "confidence": 3,
                "seconds": float(np.broadcast_to(secs, (n,))[i]),
            }
            row.update({f"read_{f}": int(reads[i, j]) for j, f in enumerate(FINDINGS)})
            row.update({f"ref_{f}": int(ref[i, j]) for j, f in enumerate(FINDINGS)})
            shown = ai is not None and phase == "aided"
            row.update({f"ai_{f}": float(ai[i, j]) if shown else np.nan for j, f in enumerate(FINDINGS)})
            has_cut = thresholds is not None and phase == "aided"
            row.update({f"ai_threshold_{f}": float(thresholds[i, j]) if has_cut else np.nan for j, f in enumerate(FINDINGS)})
            rows.append(row)
    return pd.DataFrame(rows)


def random_study(n_cases: int, *, seed: int = 0, unaided_error: float = 0.25, aided_error: float = 0.1):
    """Reference labels, two reads with different error rates, and an informative AI."""
    rng = np.random.default_rng(seed)
    ref = (rng.random((n_cases, K)) < 0.3).astype(int)
    unaided = np.where(rng.random((n_cases, K)) < unaided_error, 1 - ref, ref)
    aided = np.where(rng.random((n_cases, K)) < aided_error, 1 - ref, ref)
    ai = np.clip(0.25 + 0.5 * ref + rng.normal(0, 0.2, (n_cases, K)), 0, 1)
    return ref, unaided, aided, ai


def select(table: pd.DataFrame, **where) -> pd.DataFrame:
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        mask &= (table[column] == value).to_numpy()
    return table[mask]


# ---------------------------------------------------------------- hand-computed


def hand_study():
    """5 cases. Atelectasis and 12 others: unaided 1 TP, 1 FN, 1 FP, 2 TN; aided perfect.
    Cardiomegaly: both reads perfect."""
    ref = np.tile([[1], [1], [0], [0], [0]], (1, K))
    unaided = np.tile([[1], [0], [1], [0], [0]], (1, K))
    aided = ref.copy()
    unaided[:, 1] = ref[:, 1]
    return ref, unaided, aided


def test_phase_metrics_by_hand():
    frame = make_frame(*hand_study())
    table = phase_metrics(frame)
    row = select(table, reader="A", phase="unaided", finding="Atelectasis").iloc[0]
    assert (row.tp, row.fn, row.fp, row.tn, row.n_pos, row.n_cases) == (1, 1, 1, 2, 2, 5)
    assert row.sensitivity == pytest.approx(0.5)
    assert row.specificity == pytest.approx(2 / 3)
    assert row.f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    aided = select(table, reader="A", phase="aided", finding="Atelectasis").iloc[0]
    assert (aided.sensitivity, aided.specificity, aided.f1) == (1.0, 1.0, 1.0)
    cardio = select(table, reader="A", phase="unaided", finding="Cardiomegaly").iloc[0]
    assert (cardio.sensitivity, cardio.specificity, cardio.f1) == (1.0, 1.0, 1.0)
    macro = select(table, reader="A", phase="unaided", finding=MACRO).iloc[0]
    assert macro.sensitivity == pytest.approx((13 * 0.5 + 1.0) / 14)
    assert macro.specificity == pytest.approx((13 * 2 / 3 + 1.0) / 14)
    assert pd.isna(macro.tp)
    # One reader: the pooled rows are that reader's rows.
    pooled = select(table, reader=ALL_READERS).drop(columns="reader").reset_index(drop=True)
    single = select(table, reader="A").drop(columns="reader").reset_index(drop=True)
    pd.testing.assert_frame_equal(pooled, single)
    assert set(table["phase"]) == {"unaided", "aided"}  # no AI probabilities, no "ai" rows


def test_change_by_hand():
    frame = make_frame(*hand_study())
    # Of 5 cases, 2 positive: some resamples draw no positive case at all.
    with pytest.warns(UndefinedMetricWarning, match="left out"):
        change = paired_change(frame, n_boot=200, seed=0)
    row = select(change, reader="A", finding="Atelectasis", metric="sensitivity").iloc[0]
    assert (row.unaided, row.aided, row.change) == (0.5, 1.0, 0.5)
    assert select(change, reader="A", finding="Atelectasis", metric="specificity").iloc[0].change == pytest.approx(1 / 3)
    assert select(change, reader="A", finding="Atelectasis", metric="f1").iloc[0].change == pytest.approx(0.5)
    cardio = select(change, reader="A", finding="Cardiomegaly", metric="f1").iloc[0]
    assert (cardio.change, cardio.ci_low, cardio.ci_high) == (0.0, 0.0, 0.0)
    macro = select(change, reader="A", finding=MACRO, metric="sensitivity").iloc[0]
    assert macro.change == pytest.approx(13 * 0.5 / 14)


def test_metrics_match_binary_report_for_pooled_readers():
    ref, u1, a1, ai = random_study(60, seed=1)
    _, u2, a2, _ = random_study(60, seed=2)
    frame = pd.concat([make_frame(ref, u1, a1, ai=ai, reader="A"), make_frame(ref, u2, a2, ai=ai, reader="B")])
    table = phase_metrics(frame)
    for phase, reads in (("unaided", np.vstack([u1, u2])), ("aided", np.vstack([a1, a2]))):
        expected = binary_report(np.vstack([ref, ref]), reads)
        got = select(table, reader=ALL_READERS, phase=phase).set_index("finding").loc[list(FINDINGS)]
        for column in ("tp", "fp", "tn", "fn"):
            np.testing.assert_array_equal(got[column].to_numpy(dtype=int), expected[column].to_numpy())
        for metric in METRICS:
            np.testing.assert_allclose(got[metric].to_numpy(dtype=float), expected[metric].to_numpy(), rtol=1e-12)
        assert (got["n_cases"] == 60).all() and (got["n_reads"] == 120).all()
    # The AI alone, at 0.5, for context.
    ai_rows = select(table, reader="A", phase="ai").set_index("finding").loc[list(FINDINGS)]
    expected = binary_report(ref, (ai >= 0.5).astype(int))
    np.testing.assert_allclose(ai_rows["sensitivity"].to_numpy(dtype=float), expected["sensitivity"].to_numpy(), rtol=1e-12)


def test_undefined_metrics_are_nan_with_a_warning():
    ref, unaided, aided = hand_study()
    ref[:, 13] = 0  # no Hernia case at all
    aided[:, 13] = 0
    unaided[:, 13] = [1, 0, 0, 0, 0]  # one false call unaided
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = phase_metrics(make_frame(ref, unaided, aided))
    messages = [str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    assert any(m.startswith("sensitivity is undefined for Hernia (A, unaided)") for m in messages)
    assert any(m.startswith("f1 is undefined for Hernia (A, aided)") for m in messages)
    unaided_row = select(table, reader="A", phase="unaided", finding="Hernia").iloc[0]
    aided_row = select(table, reader="A", phase="aided", finding="Hernia").iloc[0]
    assert np.isnan(unaided_row.sensitivity) and unaided_row.f1 == 0.0  # a false call: F1 defined, 0
    assert np.isnan(aided_row.f1) and aided_row.specificity == 1.0  # no case, no call: F1 undefined
    with pytest.warns(UndefinedMetricWarning):
        change = paired_change(make_frame(ref, unaided, aided), n_boot=50)
    row = select(change, reader="A", finding="Hernia", metric="sensitivity").iloc[0]
    assert np.isnan(row.change) and np.isnan(row.ci_low) and np.isnan(row.ci_high)


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_ci_contains_the_change_and_is_reproducible():
    ref, unaided, aided, ai = random_study(80, seed=3)
    frame = make_frame(ref, unaided, aided, ai=ai)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        first = paired_change(frame, n_boot=500, seed=7)
        again = paired_change(frame, n_boot=500, seed=7)
        other = paired_change(frame, n_boot=500, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["ci_low"], other["ci_low"])
    assert ((first["ci_low"] <= first["change"]) & (first["change"] <= first["ci_high"])).all()
    assert (first["ci_low"] < first["ci_high"]).all()
    # Readers erred 25% unaided and 10% aided: the pooled macro gain is clear.
    macro = select(first, reader=ALL_READERS, finding=MACRO, metric="f1").iloc[0]
    assert macro.ci_low > 0


def test_bootstrap_matches_brute_force_case_resampling():
    ref, unaided, aided, _ = random_study(40, seed=4)
    n_boot, seed, j = 300, 11, 2  # Effusion
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        table = paired_change(make_frame(ref, unaided, aided), n_boot=n_boot, seed=seed)
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(40, np.full(40, 1 / 40), size=n_boot)
        deltas = []
        for counts in draws:
            rows = np.repeat(np.arange(40), counts)  # the materialised resample of cases
            before = binary_report(ref[rows], unaided[rows])["sensitivity"].iloc[j]
            after = binary_report(ref[rows], aided[rows])["sensitivity"].iloc[j]
            deltas.append(after - before)
    deltas = np.asarray(deltas)
    deltas = deltas[~np.isnan(deltas)]
    row = select(table, reader="A", finding=FINDINGS[j], metric="sensitivity").iloc[0]
    assert (row.ci_low, row.ci_high) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])), abs=1e-12)


def test_bootstrap_is_paired_and_resamples_cases_not_reads():
    ref, unaided, aided, _ = random_study(50, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        # Identical phases: every resample's change is exactly 0 when the two
        # phases share the draw (an unpaired bootstrap would give a wide interval).
        same = paired_change(make_frame(ref, unaided, unaided), n_boot=300)
        assert (same["change"] == 0).all() and (same["ci_low"] == 0).all() and (same["ci_high"] == 0).all()
        # A second reader reading exactly like the first adds no case: the
        # pooled interval equals the one reader's (read-level resampling would
        # shrink it by about 1/sqrt(2)), and each reader gets the same draws.
        one = paired_change(make_frame(ref, unaided, aided, reader="A"), n_boot=300, seed=1)
        two = paired_change(
            pd.concat([make_frame(ref, unaided, aided, reader="A"), make_frame(ref, unaided, aided, reader="B")]),
            n_boot=300, seed=1,
        )
    columns = ["finding", "metric", "unaided", "aided", "change", "ci_low", "ci_high"]
    for name in ("A", "B", ALL_READERS):
        got = select(two, reader=name)[columns].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, select(one, reader="A")[columns].reset_index(drop=True))


def test_bootstrap_arguments_are_checked():
    frame = make_frame(*hand_study())
    with pytest.raises(ValueError, match="alpha"):
        paired_change(frame, alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        paired_change(frame, n_boot=0)


# ---------------------------------------------------------------- agreement with the AI


def test_kappa_matches_sklearn_and_uses_recorded_thresholds():
    ref, unaided, aided, ai = random_study(70, seed=6)
    frame = make_frame(ref, unaided, aided, ai=ai)
    table = ai_agreement(frame)
    calls = (ai >= 0.5).astype(int)
    for phase, reads in (("unaided", unaided), ("aided", aided)):
        got = select(table, reader="A", phase=phase).set_index("finding")
        for j, finding in enumerate(FINDINGS):
            assert got.loc[finding, "kappa"] == pytest.approx(cohen_kappa_score(reads[:, j], calls[:, j]), abs=1e-12)
        assert got.loc[ALL_FINDINGS, "kappa"] == pytest.approx(cohen_kappa_score(reads.ravel(), calls.ravel()), abs=1e-12)
        assert got.loc["Mass", "ai_positive"] == calls[:, 4].sum()
    # Thresholds recorded with the aided reads are used; an explicit argument overrides them.
    cuts = np.tile(np.linspace(0.2, 0.8, K), (70, 1))
    recorded = ai_agreement(make_frame(ref, unaided, aided, ai=ai, thresholds=cuts))
    explicit = ai_agreement(frame, thresholds=np.linspace(0.2, 0.8, K))
    pd.testing.assert_frame_equal(recorded, explicit)
    j = 13
    expected = cohen_kappa_score(aided[:, j], (ai[:, j] >= 0.8).astype(int))
    assert select(recorded, reader="A", phase="aided", finding="Hernia").iloc[0].kappa == pytest.approx(expected)
    scalar = ai_agreement(frame, thresholds=0.5)
    pd.testing.assert_frame_equal(scalar, table)
    with pytest.raises(ValueError, match="thresholds"):
        ai_agreement(frame, thresholds=[0.5] * 3)


def test_kappa_undefined_is_nan_with_warning():
    ref, unaided, aided, ai = random_study(20, seed=7)
    unaided[:, 0] = 0
    ai[:, 0] = 0.1  # reader and AI both say "no Atelectasis" on every case
    with pytest.warns(UndefinedMetricWarning, match="kappa with the AI is undefined for Atelectasis"):
        table = ai_agreement(make_frame(ref, unaided, aided, ai=ai))
    assert np.isnan(select(table, reader="A", phase="unaided", finding="Atelectasis").iloc[0].kappa)
    assert not np.isnan(select(table, reader="A", phase="aided", finding="Atelectasis").iloc[0].kappa)
    with pytest.warns(UndefinedMetricWarning, match="no aided read recorded AI probabilities"):
        none = ai_agreement(make_frame(ref, unaided, aided))
    assert none["kappa"].isna().all() and (none["n_cases"] == 0).all()


# ---------------------------------------------------------------- time, pairing, export


def test_reading_time_medians():
    ref, unaided, aided = hand_study()
    a = make_frame(ref, unaided, aided, reader="A", seconds=([10, 20, 30, 40, 50], [1, 2, 3, 4, 100]))
    b = make_frame(ref, unaided, aided, reader="B", seconds=(60.0, 6.0))
    table = reading_time(pd.concat([a, b])).set_index("reader")
    assert table.loc["A", "median_seconds_unaided"] == 30 and table.loc["A", "median_seconds_aided"] == 3
    assert table.loc["A", "median_seconds_total"] == 33  # median of per-case sums (11, 22, 33, 44, 150)
    assert table.loc[ALL_READERS, "median_seconds_unaided"] == np.median([10, 20, 30, 40, 50] + [60] * 5)
    assert table.loc[ALL_READERS, "n_reads"] == 10 and table.loc[ALL_READERS, "n_cases"] == 5


def test_only_cases_with_both_reads_are_compared():
    ref, unaided, aided = hand_study()
    frame = make_frame(ref, unaided, aided)
    unfinished = frame.drop(index=frame.index[(frame["position"] == 4) & (frame["phase"] == "aided")])
    table = phase_metrics(unfinished)
    row = select(table, reader="A", phase="unaided", finding="Atelectasis").iloc[0]
    assert row.n_cases == 4 and row.tn == 1  # case 4 (a true negative) left out of both phases
    assert reading_time(unfinished)["n_cases"].tolist() == [4, 4]


def test_bad_frames_are_refused():
    frame = make_frame(*hand_study())
    with pytest.raises(ValueError, match="same read twice"):
        phase_metrics(pd.concat([frame, frame.iloc[:1]]))
    with pytest.raises(ValueError, match="missing columns"):
        phase_metrics(frame.drop(columns="ref_Mass"))
    with pytest.raises(ValueError, match="no case has both"):
        phase_metrics(frame[frame["phase"] == "unaided"])
    with pytest.raises(ValueError, match="unknown phase"):
        phase_metrics(frame.assign(phase="second look"))


def test_export_csv_round_trip_and_caveat(tmp_path):
    ref, unaided, aided, ai = random_study(30, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        results = reader_study_results(make_frame(ref, unaided, aided, ai=ai), n_boot=100)
    assert set(results) == {"metrics", "change", "agreement", "time"}
    written = export_csv(results, tmp_path / "out")
    assert [p.name for p in written] == ["metrics.csv", "change.csv", "agreement.csv", "time.csv", "README.txt"]
    back = pd.read_csv(tmp_path / "out" / "change.csv")
    pd.testing.assert_frame_equal(back, results["change"], check_dtype=False)
    assert LABEL_NOISE_CAVEAT in (tmp_path / "out" / "README.txt").read_text(encoding="utf-8")
    single = export_csv(results["time"], tmp_path / "deep" / "time.csv")
    assert single == [tmp_path / "deep" / "time.csv"] and single[0].is_file()
    with pytest.raises(TypeError):
        export_csv([1, 2], tmp_path / "x")
    with pytest.raises(ValueError, match="file name"):
        export_csv({"../escape": results["time"]}, tmp_path / "y")


def test_caveat_says_reference_not_ground_truth():
    text = LABEL_NOISE_CAVEAT.lower()
    assert "text-mined" in text and "not ground truth" in text and "reference" in text
