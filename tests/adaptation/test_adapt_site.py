"""A site's films and labels (cxr_core.adaptation.site_data): the two label formats, bad input named by row, the split.

Real NIH films and their Data_Entry labels from ../shared/nih, laid out as a
site would (nested folders); no model is loaded.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from cxr_core.adaptation import SiteDataError, read_site, split_site
from cxr_core.data import NIHDataset
from cxr_core.findings import FINDINGS


@pytest.fixture(scope="module")
def nih_rows(shared_nih):
    """24 real NIH films (sorted names) with their labels, patients and files."""
    dataset = NIHDataset(shared_nih)
    rows = dataset.csv.sort_values("image").head(24).reset_index(drop=True)
    labels = dataset.labels[dataset.csv.sort_values("image").index[:24]]
    return rows, labels


def _site(tmp_path, rows, *, nested: bool = True):
    """The films linked into a site folder: half in ``ward_a/2024/``, half in ``ward_b/`` (any layout)."""
    folder = tmp_path / "site"
    for i, (name, path) in enumerate(zip(rows["image"], rows["path"])):
        where = folder / ("ward_a/2024" if i % 2 and nested else "ward_b")
        where.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(path), where / name)
    return folder


def _write(tmp_path, table: pd.DataFrame, name: str = "labels.csv"):
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path


def _data_entry(rows) -> pd.DataFrame:
    return pd.DataFrame({"Image Index": rows["image"], "Patient ID": rows["patient_id"],
                         "Finding Labels": rows["finding_labels"], "Patient Age": rows["age"]})


def test_finding_labels_format_reads_the_nih_labels_from_any_layout(tmp_path, nih_rows):
    rows, labels = nih_rows
    site = read_site(_site(tmp_path, rows), _write(tmp_path, _data_entry(rows)), name="Ward test")
    assert site.name == "Ward test" and len(site) == 24 and site.label_format == "Finding Labels"
    np.testing.assert_array_equal(site.labels, labels)
    assert site.complete.all() and site.findings == FINDINGS
    assert all(os.path.samefile(p, q) for p, q in zip(site.paths, rows["path"]))


def test_finding_columns_format_takes_a_subset_and_leaves_empty_cells_unknown(tmp_path, nih_rows):
    rows, labels = nih_rows
    effusion, thickening = FINDINGS.index("Effusion"), FINDINGS.index("Pleural_Thickening")
    table = pd.DataFrame({"Image Index": rows["image"], "Patient ID": rows["patient_id"],
                          "Effusion": labels[:, effusion].astype(int).astype(str),
                          "pleural thickening": labels[:, thickening].astype(int).astype(str)})
    table.loc[[0, 5], "Effusion"] = ""  # unknown for these two films
    site = read_site(_site(tmp_path, rows), _write(tmp_path, table))
    assert site.label_format == "finding columns" and site.findings == ("Effusion", "Pleural_Thickening")
    assert np.isnan(site.labels[[0, 5], effusion]).all()
    np.testing.assert_array_equal(site.labels[1:5, effusion], labels[1:5, effusion])
    np.testing.assert_array_equal(site.labels[:, thickening], labels[:, thickening])
    assert np.isnan(site.labels[:, FINDINGS.index("Mass")]).all() and not site.complete.any()


def test_a_patient_with_two_ages_is_fine_and_few_positives_are_a_note(tmp_path, nih_rows):
    rows, labels = nih_rows
    table = _data_entry(rows)
    patient = table["Patient ID"].iloc[0]
    table.loc[table["Patient ID"] == patient, "Patient Age"] = [40 + i for i in range((table["Patient ID"] == patient).sum())]
    table.loc[len(table) - 1, "Patient ID"] = patient
    table.loc[len(table) - 1, "Patient Age"] = 99
    site = read_site(_site(tmp_path, rows), _write(tmp_path, table))
    assert len(site) == 24
    cardiomegaly = int(labels[:, FINDINGS.index("Cardiomegaly")].sum())
    assert site.notes and "few positive films" in site.notes[0] and f"Cardiomegaly {cardiomegaly} of 24" in site.notes[0]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.assign(**{"Finding Labels": t["Finding Labels"].where(t.index != 3, "Effusion|Pneumonitis")}),
     r"unknown finding names in 'Finding Labels' at row 5 \(Pneumonitis\)"),
    (lambda t: t.assign(**{"Finding Labels": t["Finding Labels"].where(t.index != 2, "No Finding|Mass")}),
     r"row 4 \(No Finding\|Mass \(No Finding with findings\)\)"),
    (lambda t: pd.concat([t, t.iloc[[6]]], ignore_index=True), r"the same image in more than one row: rows 8 \("),
    (lambda t: t.assign(**{"Patient ID": t["Patient ID"].astype(str).where(t.index != 1, "")}),
     r"no 'Patient ID' at row 3"),
    (lambda t: t.assign(**{"Image Index": t["Image Index"].where(t.index != 4, "00099999_000.png")}),
     r"no image in .* for row 6 \(00099999_000.png\)"),
    (lambda t: t.drop(columns=["Patient ID"]), r"needs the columns 'Image Index' and 'Patient ID'"),
])
def test_bad_labels_are_refused_naming_the_rows(tmp_path, nih_rows, change, message):
    rows, _ = nih_rows
    folder = _site(tmp_path, rows)
    with pytest.raises(SiteDataError, match=message):
        read_site(folder, _write(tmp_path, change(_data_entry(rows))))


@pytest.mark.parametrize("columns, values, message", [
    ({"Effusion": "1", "Lung Lesion": "0"}, None, r"columns that are not findings: Lung Lesion"),
    ({"Effusion": "1"}, {2: "yes"}, r"column 'Effusion' holds values other than 1, 0 or empty at row 4 \('yes'\)"),
    ({"Effusion": "1", "effusion": "0"}, None, r"more than one column for Effusion"),
])
def test_bad_finding_columns_are_refused_naming_them(tmp_path, nih_rows, columns, values, message):
    rows, _ = nih_rows
    table = pd.DataFrame({"Image Index": rows["image"], "Patient ID": rows["patient_id"], **columns})
    for row, value in (values or {}).items():
        table.loc[row, "Effusion"] = value
    with pytest.raises(SiteDataError, match=message):
        read_site(_site(tmp_path, rows), _write(tmp_path, table))


def test_two_files_of_one_name_need_the_relative_path(tmp_path, nih_rows):
    rows, _ = nih_rows
    folder = _site(tmp_path, rows)
    (folder / "copy").mkdir()
    os.symlink(os.path.abspath(rows["path"].iloc[0]), folder / "copy" / rows["image"].iloc[0])
    with pytest.raises(SiteDataError, match=r"more than one file of that name .* row 2 "):
        read_site(folder, _write(tmp_path, _data_entry(rows)))
    table = _data_entry(rows)
    table.loc[0, "Image Index"] = f"copy/{rows['image'].iloc[0]}"
    assert read_site(folder, _write(tmp_path, table)).paths[0] == str(folder / "copy" / rows["image"].iloc[0])


def test_split_is_patient_wise_seeded_and_blind_to_the_labels(tmp_path, nih_rows):
    rows, _ = nih_rows
    folder = _site(tmp_path, rows)
    site = read_site(folder, _write(tmp_path, _data_entry(rows)))
    parts = split_site(site, check_share=0.5, seed=3)
    assert set(parts) == {"fit", "check"}
    fit_patients, check_patients = set(site.patient_ids[parts == "fit"]), set(site.patient_ids[parts == "check"])
    assert fit_patients and check_patients and not fit_patients & check_patients
    np.testing.assert_array_equal(parts, split_site(site, check_share=0.5, seed=3))
    assert not np.array_equal(parts, split_site(site, check_share=0.5, seed=4))
    relabelled = _data_entry(rows).assign(**{"Finding Labels": "No Finding"})
    np.testing.assert_array_equal(parts, split_site(read_site(folder, _write(tmp_path, relabelled, "other.csv")),
                                                    check_share=0.5, seed=3))
    with pytest.raises(ValueError, match="check_share"):
        split_site(site, check_share=1.0)
