"""python -m training.adapt end to end: the report, the check part never fitted on, the never-worse refusal, the bundle.

Sites are real NIH films of the shipped model's TEST split (../shared/nih)
with NIH's labels. Two bundles: the tiny untrained small_cnn of the app tests
(plumbing), and one real trained member of the shipped ensemble (MobileNetV2
at 160 px, 0.69 validation mean AUROC alone), evaluated here on 80 of its
validation films so that it has its own calibration, cuts, flags and triage:
a model with something to lose for the never-worse test.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr_core.adaptation import SiteDataError, adapt_bundle, read_site, split_site
from tests.app_bundle import SHIPPED_BUNDLE, tiny_app_bundle

MEMBER = SHIPPED_BUNDLE / "members" / "mobilenetv2_scratch"


def _quiet(_line: str) -> None:
    pass


def _split_of_shipped() -> pd.Series:
    return pd.read_csv(SHIPPED_BUNDLE / "splits.csv", dtype={"image": str}).set_index("image")["split"]


def _nih_films(shared_nih, split: str, count: int) -> pd.DataFrame:
    """The first ``count`` films (by name) of the shipped model's ``split``, with NIH's Data_Entry row."""
    entries = pd.read_csv(shared_nih / "Data_Entry_2017.csv", dtype=str)
    entries = entries[entries["Image Index"].map(_split_of_shipped()) == split]
    entries = entries[entries["Image Index"].map(lambda n: (shared_nih / "images" / n).is_file())]
    return entries.sort_values("Image Index").head(count).reset_index(drop=True)


def _make_site(folder, shared_nih, films: pd.DataFrame):
    """A site folder (links to the films, in two sub-folders) and its labels CSV (Data_Entry style)."""
    for i, name in enumerate(films["Image Index"]):
        where = folder / "images" / ("a" if i % 2 else "b")
        where.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(shared_nih / "images" / name), where / name)
    labels = folder / "labels.csv"
    films[["Image Index", "Patient ID", "Finding Labels"]].to_csv(labels, index=False)
    return folder / "images", labels


@pytest.fixture(scope="module")
def site40(tmp_path_factory, shared_nih):
    return _make_site(tmp_path_factory.mktemp("site40"), shared_nih, _nih_films(shared_nih, "test", 40))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_root):
    return tiny_app_bundle(tmp_path_factory, demo_root)


@pytest.fixture(scope="module")
def real_member(tmp_path_factory, shared_nih):
    """The shipped MobileNetV2 member as a bundle of its own, evaluated on 80 validation and 40 test films."""
    if not (MEMBER / "bundle.json").is_file():
        pytest.skip("the shipped model's members are not there")
    from cxr_core.jobs import evaluate_bundle

    root = tmp_path_factory.mktemp("member")
    bundle = root / "bundle"
    shutil.copytree(MEMBER, bundle)
    shutil.copyfile(SHIPPED_BUNDLE / "splits.csv", bundle / "splits.csv")
    data = root / "nih"
    (data / "images").mkdir(parents=True)
    os.symlink(os.path.abspath(shared_nih / "Data_Entry_2017.csv"), data / "Data_Entry_2017.csv")
    for name in pd.concat([_nih_films(shared_nih, "val", 80), _nih_films(shared_nih, "test", 40)])["Image Index"]:
        os.symlink(os.path.abspath(shared_nih / "images" / name), data / "images" / name)
    evaluate_bundle(bundle, data, n_boot=50, localization=False, expert_labels=False, log=_quiet)
    return bundle


def _report(out) -> dict:
    return json.loads((out / "report.json").read_text())


def test_report_holds_the_split_the_shipped_and_adapted_numbers_and_a_decision(tmp_path, tiny, site40):
    site_dir, labels = site40
    report = adapt_bundle(tiny, site_dir, labels, tmp_path / "out", n_boot=50, min_positives=2, log=_quiet)
    assert _report(tmp_path / "out") == report
    fit, check = set(report["split"]["fit"]), set(report["split"]["check"])
    names = set(pd.read_csv(labels)["Image Index"])
    assert fit | check == names and not fit & check
    patients = pd.read_csv(labels).set_index("Image Index")["Patient ID"]
    assert not set(patients[list(fit)]) & set(patients[list(check)])  # patient-wise
    for block in ("shipped", "adapted"):
        assert report[block]["films"] == len(check) and len(report[block]["per_finding"]) == 14
        assert 0 <= report[block]["mean_ece"] <= 1 and 0 <= report[block]["mean_auroc"] <= 1
    assert report["decision"] in ("written", "refused") and report["reason"]
    assert (tmp_path / "out" / "bundle").is_dir() == (report["decision"] == "written")
    local = report["local_validation"]["shipped"]  # the report training.evaluate writes, on the check part
    assert local["counts"]["test_images"] == len(check) and {"macro", "per_finding", "calibration", "reading"} <= set(local)
    assert "Site adaptation" in (tmp_path / "out" / "report.md").read_text()


def test_an_unreadable_image_is_named_by_its_row(tmp_path, tiny, shared_nih):
    films = _nih_films(shared_nih, "test", 6)
    site_dir, labels = _make_site(tmp_path, shared_nih, films)
    broken = next(site_dir.rglob(films["Image Index"][2]))
    broken.unlink()
    broken.write_text("not an image")
    with pytest.raises(SiteDataError, match=rf"1 image\(s\) could not be read: rows 4 \({films['Image Index'][2]}"):
        adapt_bundle(tiny, site_dir, labels, tmp_path / "out", n_boot=20, log=_quiet)


def test_the_check_part_is_never_used_for_fitting(tmp_path, tiny, site40):
    """Changing every check-part label changes the check numbers and no fitted value (calibration, cuts, flags,
    triage, the fine-tuned weights)."""
    site_dir, labels = site40
    options = {"n_boot": 50, "min_positives": 2, "fine_tune": "heads", "epochs": 1, "log": _quiet}
    first = adapt_bundle(tiny, site_dir, labels, tmp_path / "a", **options)
    table = pd.read_csv(labels, dtype=str)  # the patients spelled as given ("00000004"): the same split
    check = table["Image Index"].isin(first["split"]["check"]).to_numpy()
    rolled = table["Finding Labels"].to_numpy().copy()
    rolled[check] = np.roll(rolled[check], 3)
    rolled[np.flatnonzero(check)[:4]] = "Effusion|Mass"
    changed = tmp_path / "changed.csv"
    table.assign(**{"Finding Labels": rolled}).to_csv(changed, index=False)
    second = adapt_bundle(tiny, site_dir, changed, tmp_path / "b", **options)
    assert second["split"] == first["split"]
    assert [r["auroc"] for r in second["shipped"]["per_finding"]] != [r["auroc"] for r in first["shipped"]["per_finding"]]
    assert any(s["source"] == "site" for s in first["fitted"]["sources"])  # something was fitted on the fit part
    assert first["fitted"]["fine_tune"] and first["fitted"]["fine_tune"][0]["weights_sha256"]
    assert json.dumps(second["fitted"], sort_keys=True) == json.dumps(first["fitted"], sort_keys=True)


def test_a_fine_tune_on_shuffled_fit_labels_is_refused_and_writes_no_bundle(tmp_path, real_member, shared_nih):
    films = _nih_films(shared_nih, "test", 120).tail(70).reset_index(drop=True)
    site_dir, labels = _make_site(tmp_path / "site", shared_nih, films)
    parts = split_site(read_site(site_dir, labels), seed=0)
    shuffled = films.copy()
    fit = np.flatnonzero(parts == "fit")
    shuffled.loc[fit, "Finding Labels"] = films["Finding Labels"].to_numpy()[np.random.default_rng(1).permutation(fit)]
    shuffled_csv = tmp_path / "shuffled.csv"
    shuffled[["Image Index", "Patient ID", "Finding Labels"]].to_csv(shuffled_csv, index=False)
    report = adapt_bundle(real_member, site_dir, shuffled_csv, tmp_path / "out", fine_tune="heads", epochs=40,
                          learning_rate=0.01, select_epoch=False, n_boot=200, log=_quiet)
    assert report["split"]["check"] == films["Image Index"][parts == "check"].tolist()  # the check part is intact
    assert report["fitted"]["fine_tune"][0]["best_epoch"] > 0  # the heads did learn the shuffled labels
    assert report["adapted"]["mean_auroc"] < report["shipped"]["mean_auroc"]
    assert report["decision"] == "refused" and report["reason"].startswith("refused")
    assert not (tmp_path / "out" / "bundle").exists() and not (tmp_path / "out" / ".candidate").exists()


def test_a_written_bundle_is_a_normal_bundle_that_records_its_site(tmp_path, real_member, shared_nih):
    from cxr_core.bundle import Bundle
    from cxr_core.serving import Predictor
    from training.predict import main as predict_main

    films = _nih_films(shared_nih, "test", 120).head(70)
    site_dir, labels = _make_site(tmp_path / "site", shared_nih, films)
    report = adapt_bundle(real_member, site_dir, labels, tmp_path / "out", site_name="Ward 7", min_positives=4,
                          n_boot=200, log=_quiet)
    assert report["decision"] == "written", report["reason"]
    bundle = tmp_path / "out" / "bundle"
    predictor = Predictor.from_bundle(bundle)
    site = predictor.metadata["site"]
    assert site["name"] == "Ward 7" and site["films"] == 70 and site["patients"] == films["Patient ID"].nunique()
    assert site["parent"]["sha256"] == report["parent"]["sha256"] and len(site["parent"]["sha256"]) == 64
    assert site["split"]["fit"]["films"] + site["split"]["check"]["films"] == 70
    split = pd.read_csv(bundle / "site_split.csv")
    assert split.set_index("image")["part"].to_dict() == {
        **dict.fromkeys(report["split"]["fit"], "fit"), **dict.fromkeys(report["split"]["check"], "check")}
    assert predictor.calibration.to_dict() == report["fitted"]["calibration"]
    assert "## At Ward 7: adapted from" in (bundle / "MODEL_CARD.md").read_text()
    assert Bundle.load(bundle).splits is not None  # the NIH split stays: the app still says which films it trained on
    listing = tmp_path / "films.csv"
    pd.DataFrame({"path": [str(p) for p in sorted(site_dir.rglob("*.png"))]}).to_csv(listing, index=False)
    assert predict_main(["--bundle", str(bundle), "--images", str(listing), "--out", str(tmp_path / "preds.csv")]) == 0
    predictions = pd.read_csv(tmp_path / "preds.csv", keep_default_na=False)
    assert len(predictions) == 70 and (predictions["error"] == "").all()


def test_the_command_line_reports_bad_input_in_one_line(tmp_path, tiny, site40, capsys):
    from training.adapt import main

    site_dir, labels = site40
    bad = tmp_path / "bad.csv"
    pd.read_csv(labels, dtype=str).assign(**{"Finding Labels": "Effusion|Lung Lesion"}).to_csv(bad, index=False)
    assert main(["--bundle", str(tiny), "--site", str(site_dir), "--labels", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "error: bad.csv: unknown finding names in 'Finding Labels' at rows 2 (Lung Lesion)" in capsys.readouterr().err
    assert main(["--bundle", str(tiny), "--site", str(site_dir), "--labels", str(labels), "--out", str(tmp_path / "o"),
                 "--n-boot", "20"]) == 0
    assert (tmp_path / "o" / "report.json").is_file()


def test_last_block_fine_tunes_above_the_cut_only(tmp_path, tiny, site40):
    from cxr_core.adaptation.finetune import _weights_digest
    from cxr_core.bundle import Bundle

    site_dir, labels = site40
    report = adapt_bundle(tiny, site_dir, labels, tmp_path / "out", fine_tune="last-block", epochs=2, learning_rate=1e-2,
                          select_epoch=False, n_boot=20, log=_quiet)
    [member] = report["fine_tune"]["members"]
    assert member["cut"] == "block3_relu" and member["films_train"] == report["split"]["fit_films"]
    assert member["best_epoch"] > 0 and member["weights_sha256"] != _weights_digest(Bundle.load(tiny).model)


def test_finding_columns_with_unknown_cells_run_end_to_end(tmp_path, tiny, site40):
    site_dir, labels = site40
    table = pd.read_csv(labels, dtype=str)
    columns = pd.DataFrame({"Image Index": table["Image Index"], "Patient ID": table["Patient ID"],
                            "Effusion": table["Finding Labels"].str.contains("Effusion").astype(int).astype(str),
                            "Infiltration": table["Finding Labels"].str.contains("Infiltration").astype(int).astype(str)})
    columns.loc[::4, "Infiltration"] = ""  # unknown: left out of Infiltration
    path = tmp_path / "columns.csv"
    columns.to_csv(path, index=False)
    report = adapt_bundle(tiny, site_dir, path, tmp_path / "out", min_positives=2, n_boot=20, log=_quiet)
    rows = {r["finding"]: r for r in report["shipped"]["per_finding"]}
    check = columns["Image Index"].isin(report["split"]["check"])
    assert rows["Infiltration"]["films"] == int((check & (columns["Infiltration"] != "")).sum())
    assert rows["Effusion"]["films"] == int(check.sum()) and rows["Mass"]["films"] == 0
    assert report["site"]["findings"] == ["Effusion", "Infiltration"] and report["shipped"]["triage"] is None
    assert report["local_validation"]["shipped"] is None  # no check film is labelled for all 14 findings
    assert report["fitted"]["triage_source"] == "shipped" and "No-Finding" in report["fitted"]["triage_note"]
