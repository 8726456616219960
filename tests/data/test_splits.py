"""Patient-wise splits: on the real sample, the full label table, and named synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_core.data import (
    NIHDataset,
    PatientLeakError,
    assert_patient_disjoint,
    clean_entries,
    make_split,
    official_split,
    patient_split,
    read_data_entry,
    read_split_list,
)


def test_seeded_patient_split_of_the_real_sample(shared_nih):
    ds = NIHDataset(shared_nih)
    splits = make_split(ds, seed=0)  # a subset, so "auto" means patient-wise
    # No patient in two splits, checked independently of assert_patient_disjoint.
    per_patient = pd.Series(splits).groupby(ds.patient_ids).nunique()
    assert per_patient.max() == 1
    shares = pd.Series(splits).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.03)
    assert shares["val"] == pytest.approx(0.1, abs=0.03)
    assert shares["test"] == pytest.approx(0.2, abs=0.03)
    # Stratified: every finding, Hernia (65 images) included, is in every split near its share.
    for name in ("train", "val", "test"):
        positives = ds.labels[splits == name].sum(axis=0)
        assert (positives > 0).all(), name
        assert np.allclose(positives / ds.labels.sum(axis=0), shares[name], atol=0.06)


def test_split_is_reproducible_and_seed_dependent(demo_root):
    ds = NIHDataset(demo_root)
    a = make_split(ds, strategy="patient", seed=3)
    b = make_split(ds, strategy="patient", seed=3)
    c = make_split(ds, strategy="patient", seed=4)
    assert (a == b).all()
    assert (a != c).any()


def test_official_split_on_the_full_label_table(shared_nih):
    table, labels, _ = clean_entries(read_data_entry(shared_nih / "Data_Entry_2017.csv"))
    official = {n: "train_val" for n in read_split_list(shared_nih / "train_val_list.txt")}
    official.update({n: "test" for n in read_split_list(shared_nih / "test_list.txt")})
    splits = official_split(table["image"], table["patient_id"], labels, official, val_fraction=0.1, seed=0)
    test_names = set(table["image"][splits == "test"])
    assert test_names == {n for n, s in official.items() if s == "test"}
    assert_patient_disjoint(table["patient_id"], splits)
    assert (splits == "val").mean() == pytest.approx(0.1 * 86_524 / 112_120, abs=0.01)


def test_leak_is_detected():
    with pytest.raises(PatientLeakError, match="1 patient"):
        assert_patient_disjoint([1, 1, 2, 3], ["train", "test", "train", "val"])
    assert_patient_disjoint([1, 1, 2, 3], ["train", "train", "val", "test"])


def test_named_synthetic_patients_with_many_follow_ups_stay_together():
    """Synthetic: 300 patients with 1-40 images each and random labels."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 41, size=300)
    patients = np.repeat(np.arange(300), counts)
    labels = (rng.random((len(patients), 14)) < 0.08).astype(np.float32)
    splits = patient_split(patients, labels, fractions=(0.6, 0.2, 0.2), seed=1)
    assert_patient_disjoint(patients, splits)
    assert pd.Series(splits).value_counts(normalize=True)["train"] == pytest.approx(0.6, abs=0.05)


@pytest.mark.parametrize("fractions", [(0.5, 0.2, 0.2), (0.8, 0.3, -0.1), (1.0,)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError):
        patient_split([1, 2, 3], np.zeros((3, 14)), fractions=fractions)
