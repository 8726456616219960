"""Predictor, batch prediction and bundle evaluation on a tiny bundle over the real demo images.

The bundle's network is an untrained small CNN (random weights): these tests
check the plumbing (shapes, files, fitted values stored, errors), not accuracy.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from cxr_core.data import NIHDataset
from cxr_core.errors import ImageReadError
from cxr_core.findings import FINDINGS
from cxr_core.serving import Predictor
from tests.app_bundle import build_tiny_bundle


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, demo_root):
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", demo_root)


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    return Predictor.from_bundle(tiny_bundle)


def _demo_image(demo_root, with_box=False):
    ds = NIHDataset(demo_root)
    name = ds.boxes["image"].iloc[0] if with_box else ds.image_names[0]
    return ds.csv.loc[ds.csv.image == name, "path"].item()


def test_predict_and_explain(predictor, demo_root):
    path = _demo_image(demo_root, with_box=True)
    probabilities = predictor.predict(path)
    assert list(probabilities) == list(FINDINGS)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    maps = predictor.analyze(path, explain=["Mass", "Infiltrate"]).heatmaps
    assert list(maps) == ["Mass", "Infiltration"]
    assert all(m.shape == (512, 512) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in maps.values())
    analysis = predictor.analyze(path)
    assert len(analysis.heatmaps) == 14 and analysis.ranked[0] == max(probabilities, key=probabilities.get)
    np.testing.assert_allclose(list(analysis.probabilities.values()), list(probabilities.values()), atol=1e-6)


def test_predictor_is_safe_to_share_between_threads(predictor, demo_root):
    path = _demo_image(demo_root)
    expected = predictor.predict(path)
    results, errors = [], []

    def work():
        try:
            results.append(predictor.analyze(path, explain=["Effusion"]).probabilities)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results:
        np.testing.assert_allclose(list(r.values()), list(expected.values()), atol=1e-6)


def test_predictor_refuses_bad_images(predictor, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageReadError):
        predictor.predict(bad)


def folder_with_a_broken_file(demo_root, tmp_path, n: int):
    """A folder of the first ``n`` demo images and ``broken.png`` (not an image); ``(folder, image names)``."""
    folder = tmp_path / "images"
    folder.mkdir()
    names = sorted(p.name for p in (demo_root / "images").glob("*.png"))[:n]
    for name in names:
        (folder / name).write_bytes((demo_root / "images" / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    return folder, names


def test_predict_command_lists_unreadable_files(tiny_bundle, demo_root, tmp_path):
    from training.predict import main

    folder, names = folder_with_a_broken_file(demo_root, tmp_path, 5)
    out = tmp_path / "preds.csv"
    assert main(["--bundle", str(tiny_bundle), "--images", str(folder), "--out", str(out), "--heatmaps", str(tmp_path / "maps")]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["Image Index", *FINDINGS, "abnormal", "triage", "flagged", "warning", "error"]
    assert sorted(table["Image Index"]) == sorted(names + ["broken.png"])
    broken = table[table["Image Index"] == "broken.png"].iloc[0]
    assert broken["error"] and broken["Atelectasis"] == "" and broken["triage"] == "not assessed" and broken["abnormal"] == ""
    good = table[table["error"] == ""]
    assert len(good) == 5 and good[list(FINDINGS)].astype(float).apply(lambda c: c.between(0, 1)).all().all()
    assert pd.read_csv(tmp_path / "preds.errors.csv")["Image Index"].tolist() == ["broken.png"]
    maps = np.load(tmp_path / "maps" / f"{names[0][:-4]}.npz")
    assert len(maps.files) == 14 and maps["Pleural_Thickening"].shape == (64, 64)
    assert (tmp_path / "maps" / f"{names[0][:-4]}_heatmap.png").is_file()


def test_evaluate_fits_on_validation_then_applies_elsewhere(tiny_bundle, demo_root, tmp_path):
    from cxr_core.jobs import evaluate_bundle

    report = evaluate_bundle(tiny_bundle, demo_root, n_boot=50, log=lambda line: None)
    assert report["data"]["mode"] == "fit"
    stored = json.loads((tiny_bundle / "bundle.json").read_text())
    assert len(stored["thresholds"]["values"]) == 14 and stored["calibration"]["method"] == "temperature"
    assert stored["intensity_reference"]["n_images"] > 50
    # The flags and the triage fitted on validation; the raw probabilities they were fitted and measured on kept.
    assert len(stored["flags"]["findings"]) == 14 and stored["flags"]["fitted_on"] == "validation"
    assert "reading" in json.loads((tiny_bundle / "metrics.json").read_text())
    stored_predictions = pd.read_csv(tiny_bundle / "predictions.csv.gz")
    assert set(stored_predictions["split"]) == {"val", "test"} and list(FINDINGS) <= list(stored_predictions.columns)
    metrics = json.loads((tiny_bundle / "metrics.json").read_text())
    assert metrics["localization"]["n_boxes"] > 0 and len(metrics["roc"]) == 14
    assert "| Atelectasis |" in (tiny_bundle / "summary.md").read_text()

    # Other data: the bundle's own report must not be replaced without --out.
    other = tmp_path / "other"
    other.mkdir()
    names = NIHDataset(demo_root).image_names[:80]
    (other / "images").mkdir()
    for name in names:
        (other / "images" / name).write_bytes((demo_root / "images" / name).read_bytes())
    rows = (demo_root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    (other / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows[:1] + [r for r in rows[1:] if r.split(",")[0] in names]) + "\n")
    with pytest.raises(ValueError, match="--out"):
        evaluate_bundle(tiny_bundle, other, n_boot=20, log=lambda line: None)
    applied = evaluate_bundle(tiny_bundle, other, out_dir=tmp_path / "eval", n_boot=20, localization=False, log=lambda line: None)
    assert applied["data"]["mode"] == "apply"
    assert applied["thresholds"]["values"] == stored["thresholds"]["values"]


def test_predict_writes_the_reading_columns_and_a_worklist(tiny_bundle, demo_root, tmp_path):
    """abnormal/triage/flagged follow the bundle's reading policy; the worklist puts not-assessed films first, then
    the most abnormal."""
    from cxr_core.evaluation.reading import ReadingPolicy
    from cxr_core.jobs import evaluate_bundle
    from training.predict import main

    if "triage" not in json.loads((tiny_bundle / "bundle.json").read_text()):  # run alone: fit what evaluation fits
        evaluate_bundle(tiny_bundle, demo_root, n_boot=20, localization=False, log=lambda line: None)
    folder, _ = folder_with_a_broken_file(demo_root, tmp_path, 12)
    out, worklist = tmp_path / "preds.csv", tmp_path / "worklist.csv"
    assert main(["--bundle", str(tiny_bundle), "--images", str(folder), "--out", str(out), "--worklist", str(worklist)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assessed = table[table["triage"] != "not assessed"]
    policy = ReadingPolicy.from_metadata(json.loads((tiny_bundle / "bundle.json").read_text()))
    cuts = policy.cuts().flag
    for row in assessed.itertuples(index=False):
        probabilities = [float(getattr(row, f)) for f in FINDINGS]
        reading = policy.read(probabilities)
        assert float(row.abnormal) == pytest.approx(reading.triage_probability, abs=1e-5)
        # The CSV holds 6 decimals; an untrained model's outputs sit close together, so skip findings at their cut.
        clear = {f for f, p, cut in zip(FINDINGS, probabilities, cuts) if not abs(p - cut) < 1e-5}
        assert set(row.flagged.split("|")) & clear == set(reading.flagged) & clear
    assert set(table["triage"]) <= {"abnormal", "no finding likely", "not assessed"}
    ordered = pd.read_csv(worklist, keep_default_na=False)
    assert sorted(ordered["Image Index"]) == sorted(table["Image Index"])
    assert ordered["Image Index"].iloc[0] == "broken.png" and ordered["triage"].iloc[0] == "not assessed"
    scores = pd.to_numeric(ordered.loc[ordered["triage"] != "not assessed", "abnormal"])
    assert scores.is_monotonic_decreasing
    # The Youden operating point flags at the bundle's per-finding cuts.
    youden = tmp_path / "youden.csv"
    assert main(["--bundle", str(tiny_bundle), "--images", str(folder), "--out", str(youden), "--operating-point", "youden"]) == 0
    cuts = json.loads((tiny_bundle / "bundle.json").read_text())["thresholds"]["values"]
    for row in pd.read_csv(youden, keep_default_na=False).query("triage != 'not assessed'").itertuples(index=False):
        clear = {f for f, cut in zip(FINDINGS, cuts) if not abs(float(getattr(row, f)) - cut) < 1e-5}
        expected = {f for f, cut in zip(FINDINGS, cuts) if float(getattr(row, f)) >= cut}
        assert set(filter(None, row.flagged.split("|"))) & clear == expected & clear


def test_worklist_refuses_a_file_that_is_not_a_prediction_csv(tmp_path):
    from training.predict import main

    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    # --merge of a non-shard fails first with its own message; the worklist reader is tested directly
    from cxr_core.errors import DataFormatError
    from cxr_core.jobs import write_worklist

    with pytest.raises(DataFormatError, match="not a prediction CSV"):
        write_worklist(other, tmp_path / "w.csv")
    assert main(["--images", str(tmp_path / "missing"), "--out", str(tmp_path / "p.csv"), "--worklist", str(tmp_path / "w.csv")]) == 2


def test_an_older_bundle_loads_falls_back_to_youden_and_evaluation_fits_what_is_missing(tiny_bundle, demo_root, tmp_path):
    """A bundle evaluated before triage and flags existed (no ``triage``/``flags`` in bundle.json) still serves, and
    evaluating it on its own data adds them."""
    import shutil

    from cxr_core.jobs import evaluate_bundle

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    meta = json.loads((old / "bundle.json").read_text())
    if "thresholds" not in meta:  # run alone: evaluate once so the copy has calibration and Youden cuts
        evaluate_bundle(old, demo_root, n_boot=20, localization=False, log=lambda line: None)
        meta = json.loads((old / "bundle.json").read_text())
    for key in ("triage", "flags", "predictions_file"):
        meta.pop(key, None)
    (old / "bundle.json").write_text(json.dumps(meta))
    (old / "predictions.csv.gz").unlink(missing_ok=True)
    analysis = Predictor.from_bundle(old).analyze(_demo_image(demo_root))
    assert analysis.reading.operating_point == "youden" and analysis.reading.triage == "not assessed"
    cuts = meta["thresholds"]["values"]
    assert set(analysis.reading.flagged) == {f for f, cut in zip(FINDINGS, cuts) if analysis.probabilities[f] >= cut}
    evaluate_bundle(old, demo_root, n_boot=20, localization=False, log=lambda line: None)
    refitted = json.loads((old / "bundle.json").read_text())
    assert "flags" in refitted and (old / "predictions.csv.gz").is_file()
    assert Predictor.from_bundle(old).policy.default_operating_point == "specificity"
