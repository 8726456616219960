"""The NIH data layer on real rows (the shared sample and the demo set) and on named synthetic tables."""

from __future__ import annotations

import csv
import gzip
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr_core.data import (
    NIH_RELEASE_SIDE,
    NIHDataset,
    clean_entries,
    index_images,
    labels_from_strings,
    read_bbox_list,
    read_data_entry,
    read_split_list,
    stored_image_size,
)
from cxr_core.errors import DataFormatError
from cxr_core.findings import FINDINGS, parse_finding_labels

HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def _assert_same_labels_where_text_agrees(a: pd.DataFrame, la: np.ndarray, b: pd.DataFrame, lb: np.ndarray) -> int:
    """Both formats must parse to the same labels for the same images, except
    where NIH's 2020 update changed the label text itself. Returns that count."""
    merged = a[["image", "finding_labels", "patient_id", "sex", "view"]].reset_index().merge(
        b[["image", "finding_labels", "patient_id", "sex", "view"]].reset_index(), on="image", suffixes=("_a", "_b")
    )
    assert len(merged) == len(a) == len(b)
    same_text = [
        parse_finding_labels(x)[0] == parse_finding_labels(y)[0]
        for x, y in zip(merged["finding_labels_a"], merged["finding_labels_b"])
    ]
    same_text = np.asarray(same_text)
    rows_a, rows_b = merged["index_a"].to_numpy(), merged["index_b"].to_numpy()
    np.testing.assert_array_equal(la[rows_a][same_text], lb[rows_b][same_text])
    assert (merged["patient_id_a"] == merged["patient_id_b"]).all()
    assert (merged["sex_a"] == merged["sex_b"]).all()
    assert (merged["view_a"] == merged["view_b"]).all()
    return int((~same_text).sum())


def test_both_csv_formats_parse_to_the_same_labels_on_real_rows(shared_nih):
    old = read_data_entry(shared_nih / "Data_Entry_2017.csv")
    new = read_data_entry(shared_nih / "Data_Entry_2017_v2020.csv.gz")
    assert old.attrs["source_format"] == "2017" and new.attrs["source_format"] == "2020"
    assert len(old) == len(new) == 112_120
    labels_old, _ = labels_from_strings(old["finding_labels"])
    labels_new, _ = labels_from_strings(new["finding_labels"])
    relabelled = _assert_same_labels_where_text_agrees(old, labels_old, new, labels_new)
    # PROVENANCE.md: NIH's 2020 update changed the labels of 181 images.
    assert relabelled == 181
    # The 2017 ages like "058Y" parse to numbers.
    assert old.loc[old["image"] == "00000001_000.png", "age"].item() == 58.0
    assert old["patient_id"].dtype.name == "Int64" and old["patient_id"].min() == 1


def test_both_csv_formats_agree_on_the_demo_set(demo_root):
    old = NIHDataset(demo_root, csv_path=demo_root / "Data_Entry_2017.csv")
    new = NIHDataset(demo_root, csv_path=demo_root / "Data_Entry_2017_v2020.csv")
    assert len(old) == len(new) > 200
    relabelled = _assert_same_labels_where_text_agrees(old.csv, old.labels, new.csv, new.labels)
    # The sample is rich in images NIH relabelled in 2020 (about 8% here, 181 of 112,120 overall).
    assert relabelled <= len(old) // 10


def test_cleaning_report_counts_the_impossible_ages(shared_nih):
    # Count independently of the parser: the 2017 file writes ages as digits plus a unit.
    with open(shared_nih / "Data_Entry_2017.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    impossible = sum(1 for r in rows if r[4].endswith("Y") and int(r[4][:-1]) > 120)
    assert impossible > 0
    table, labels, report = clean_entries(read_data_entry(shared_nih / "Data_Entry_2017.csv"))
    assert report.count("impossible age (over 120 or negative)") == impossible
    assert table["age"].max() <= 120
    assert len(table) == 112_120  # an impossible age keeps its row
    assert "impossible age" in report.to_markdown()
    assert labels.shape == (112_120, 14)


def test_dataset_on_the_real_sample(shared_nih):
    ds = NIHDataset(shared_nih)
    assert len(ds) == 3426 and ds.csv["patient_id"].nunique() == 2181
    assert ds.labels.shape == (3426, 14) and ds.pathologies == FINDINGS
    assert ds.report.count("image file missing") == 112_120 - 3426
    assert not ds.is_full_release
    assert set(ds.boxes["finding"]) <= set(FINDINGS) and "Infiltration" in set(ds.boxes["finding"])
    # "No Finding" is the all-zero row, not a class.
    no_finding = ds.csv["finding_labels"] == "No Finding"
    assert (ds.labels[no_finding.to_numpy()].sum(axis=1) == 0).all()


def test_boxes_scale_to_the_stored_512_and_320_copies(shared_nih, tmp_path):
    ds = NIHDataset(shared_nih)
    raw = read_bbox_list(shared_nih / "BBox_List_2017.csv")
    manifest = pd.read_csv(shared_nih / "images_manifest.csv").set_index("Image Index")
    image = ds.boxes["image"].iloc[0]
    assert manifest.at[image, "stored_px"] == "512x512"
    scaled = ds.boxes_for(image)
    expected = raw[raw["image"] == image][["x", "y", "w", "h"]].to_numpy() * 512 / NIH_RELEASE_SIDE
    np.testing.assert_allclose(scaled[["x", "y", "w", "h"]].to_numpy(), expected)
    # A 320 px copy of the same image: the boxes follow the stored size.
    import cv2

    small = tmp_path / "images"
    small.mkdir()
    cv2.imwrite(str(small / image), cv2.resize(cv2.imread(str(ds.csv.loc[ds.csv.image == image, "path"].item())), (320, 320)))
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv"):
        shutil.copy(shared_nih / name, tmp_path / name)
    copy = NIHDataset(tmp_path)
    assert stored_image_size(small / image) == (320, 320)
    np.testing.assert_allclose(
        copy.boxes_for(image)[["x", "y", "w", "h"]].to_numpy(), expected * 320 / 512, rtol=1e-9
    )


def test_boxes_on_the_demo_set_lie_inside_the_image(demo_root):
    ds = NIHDataset(demo_root)
    assert len(ds.boxes) > 50
    for image in ds.boxes["image"].unique()[:20]:
        width, height = stored_image_size(ds.csv.loc[ds.csv.image == image, "path"].item())
        boxes = ds.boxes_for(image)
        assert ((boxes.x >= 0) & (boxes.x + boxes.w <= width + 1) & (boxes.y >= 0) & (boxes.y + boxes.h <= height + 1)).all()


def test_kaggle_layout_is_found(demo_root, tmp_path):
    names = sorted(p.name for p in (demo_root / "images").glob("*.png"))[:6]
    for i, name in enumerate(names):
        folder = tmp_path / f"images_{1 + i % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_root / "images" / name, folder / name)
    shutil.copy(demo_root / "Data_Entry_2017.csv", tmp_path)
    index = index_images(tmp_path)
    assert sorted(index) == names
    ds = NIHDataset(tmp_path)
    assert sorted(ds.image_names) == names
    assert all(p.parent.name == "images" and p.parent.parent.name.startswith("images_0") for p in map(__import__("pathlib").Path, ds.csv["path"]))


def test_official_split_lists(shared_nih):
    train_val = read_split_list(shared_nih / "train_val_list.txt")
    test = read_split_list(shared_nih / "test_list.txt")
    assert len(train_val) == 86_524 and len(test) == 25_596
    assert not set(train_val) & set(test)


def _write_entries(path, rows, header=HEADER_2017):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_cleaning_of_a_named_synthetic_table(tmp_path):
    """Synthetic rows (not real NIH data) exercising each cleaning rule."""
    rows = [
        "00000001_000.png,Cardiomegaly,000,00000001,058Y,M,PA,2682,2749,0.143,0.143",
        "00000001_000.png,Cardiomegaly,000,00000001,058Y,M,PA,2682,2749,0.143,0.143",  # duplicate
        "00000002_000.png,No Finding,000,00000002,414Y,F,AP,2500,2048,0.168,0.168",  # impossible age
        "00000003_000.png,Mass|Fracture,000,00000003,040Y,F,PA,2500,2048,0.168,0.168",  # unknown label
        "00000004_000.png,Infiltration,000,00000004,006M,M,AP,2500,2048,0.168,0.168",  # age in months
        "not_an_image.png,Nodule,000,00000005,030Y,M,PA,2500,2048,0.168,0.168",  # malformed name
        "00000006_000.png,Edema,000,00000006,070Y,F,PA,2500,2048,0.168,0.168",  # image missing
    ]
    entries = read_data_entry(_write_entries(tmp_path / "Data_Entry_2017.csv", rows))
    available = {"00000001_000.png", "00000002_000.png", "00000003_000.png", "00000004_000.png", "not_an_image.png"}
    table, labels, report = clean_entries(entries, available_images=available)
    assert report.count("duplicate image name") == 1
    assert report.count("impossible age (over 120 or negative)") == 1
    assert report.count("unknown label") == 1
    assert report.count("malformed image name or patient id") == 1
    assert report.count("image file missing") == 1
    assert table["image"].tolist() == ["00000001_000.png", "00000002_000.png", "00000004_000.png"]
    assert np.isnan(table.loc[1, "age"]) and table.loc[2, "age"] == pytest.approx(0.5)
    assert labels.tolist()[1] == [0.0] * 14
    assert report.rows_in == 7 and report.rows_out == 3

    pa_only, _, report = clean_entries(entries, views=("PA",), age_range=(18, 120))
    assert set(pa_only["view"]) == {"PA"} and pa_only["age"].min() >= 18


@pytest.mark.parametrize(
    "content",
    [
        "",  # empty file
        "just,some,columns\n1,2,3\n",  # not a Data_Entry table
        "Image Index,Finding Labels\n00000001_000.png,Mass\n",  # too few columns
        "\x00\x01\x02\xff\xfe binary junk",
    ],
    ids=["empty", "other-table", "too-few-columns", "binary"],
)
def test_malformed_data_entry_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataFormatError):
        read_data_entry(path)


def test_gzip_data_entry_is_read(tmp_path, demo_root):
    with open(demo_root / "Data_Entry_2017_v2020.csv", "rb") as src, gzip.open(tmp_path / "Data_Entry_2017_v2020.csv.gz", "wb") as dst:
        dst.write(src.read())
    plain = read_data_entry(demo_root / "Data_Entry_2017_v2020.csv")
    packed = read_data_entry(tmp_path / "Data_Entry_2017_v2020.csv.gz")
    pd.testing.assert_frame_equal(plain, packed)


def test_malformed_bbox_list(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Infiltrate,10,20,abc,40,,,\n")
    with pytest.raises(DataFormatError, match="non-positive"):
        read_bbox_list(path)
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Fracture,10,20,30,40,,,\n")
    with pytest.raises(DataFormatError, match="Fracture"):
        read_bbox_list(path)
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Infiltrate,10,20,30,40,,,\n")
    assert read_bbox_list(path)["finding"].tolist() == ["Infiltration"]


def test_missing_dataset_folder_and_missing_csv(tmp_path):
    with pytest.raises(FileNotFoundError):
        NIHDataset(tmp_path / "nope")
    with pytest.raises(DataFormatError, match="Data_Entry"):
        NIHDataset(tmp_path)


def test_demo_set_covers_every_finding_and_no_finding(demo_root):
    ds = NIHDataset(demo_root)
    counts = ds.finding_counts()
    assert 200 <= len(ds) <= 300
    assert (counts[list(FINDINGS)] >= 10).all() and counts["No Finding"] >= 20
    assert all(re.match(r"^\d{8}_\d{3}\.png$", n) for n in ds.image_names)
    assert sum(p.stat().st_size for p in (demo_root / "images").glob("*.png")) < 30 * 2**20
