"""Patient-wise splits: no patient's images ever appear in two splits.

An image-wise random split of ChestX-ray14 leaks patients (30,805 patients
have 112,120 images; some have over 100 follow-ups) and inflates test AUROC.
Every split here is made over patients, and :func:`assert_patient_disjoint`
checks it; training calls that check before it starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "val", "test")


class PatientLeakError(ValueError):
    """A patient has images in more than one split."""


def assert_patient_disjoint(patient_ids: Sequence, splits: Sequence[str]) -> None:
    """Raise :class:`PatientLeakError` if any patient appears in two splits.

    Args:
        patient_ids: patient id of each image, shape (n,).
        splits: split name of each image, shape (n,).
    """
    frame = pd.DataFrame({"patient": np.asarray(patient_ids), "split": np.asarray(splits)})
    if len(frame) == 0:
        return
    per_patient = frame.groupby("patient")["split"].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        examples = ", ".join(str(p) for p in leaking.index[:5])
        raise PatientLeakError(f"{len(leaking)} patient(s) have images in more than one split (e.g. {examples})")


def patient_split(
    patient_ids: Sequence,
    labels: np.ndarray,
    *,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    names: Sequence[str] = SPLIT_NAMES,
    seed: int = 0,
) -> np.ndarray:
    """Seeded patient-wise split, stratified over the 14 findings.

    Iterative stratification (Sechidis et al. 2011) applied to patients: each
    patient carries the positive counts of all their images; patients are
    placed rarest-finding first into the split that most lacks that finding,
    so rare findings (Hernia) land in every split in proportion. Patients
    with no finding fill the splits by image count.

    Args:
        patient_ids: patient id of each image, shape (n,).
        labels: multi-hot labels, shape (n, k).
        fractions: share of images per split; must sum to 1.
        names: split names, same length as ``fractions``.
        seed: random seed; the same data and seed give the same split.

    Returns:
        array of split names, shape (n,).
    """
    fractions = np.asarray(fractions, dtype=float)
    if len(fractions) != len(names) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative, one per split name, and sum to 1; got {fractions.tolist()}")
    labels = np.asarray(labels, dtype=np.float64)
    patient_ids = np.asarray(patient_ids)
    if labels.ndim != 2 or labels.shape[0] != patient_ids.shape[0]:
        raise ValueError(f"labels must be (n, k) with n = {patient_ids.shape[0]}, got {labels.shape}")
    if len(patient_ids) == 0:
        return np.asarray([], dtype=object)

    patients, inverse = np.unique(patient_ids, return_inverse=True)
    per_patient = np.zeros((len(patients), labels.shape[1]))
    np.add.at(per_patient, inverse, labels)
    images = np.bincount(inverse, minlength=len(patients)).astype(float)

    rng = np.random.default_rng(seed)
    label_need = fractions[:, None] * per_patient.sum(axis=0)[None, :]
    image_need = fractions * images.sum()

    # Each patient's rarest finding decides its place in the queue.
    totals = per_patient.sum(axis=0)
    rarity = np.where(per_patient > 0, totals[None, :], np.inf)
    rarest = np.argmin(rarity, axis=1)
    has_label = np.isfinite(rarity.min(axis=1))
    order = rng.permutation(len(patients))
    key = np.where(has_label[order], totals[rarest[order]], np.inf)
    order = order[np.argsort(key, kind="stable")]

    assignment = np.empty(len(patients), dtype=np.int64)
    for p in order:
        if has_label[p]:
            need = label_need[:, rarest[p]]
            candidates = np.flatnonzero(need == need.max())
            if len(candidates) > 1:  # break ties by image demand, then at random
                img = image_need[candidates]
                candidates = candidates[img == img.max()]
        else:
            candidates = np.flatnonzero(image_need == image_need.max())
        k = candidates[0] if len(candidates) == 1 else rng.choice(candidates)
        assignment[p] = k
        label_need[k] -= per_patient[p]
        image_need[k] -= images[p]
    return np.asarray(names, dtype=object)[assignment[inverse]]


def official_split(
    image_names: Sequence[str],
    patient_ids: Sequence,
    labels: np.ndarray,
    official: Mapping[str, str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """NIH's official test list as ``test``; its train_val list split patient-wise into train and val.

    Args:
        image_names: file name of each image, shape (n,).
        patient_ids: patient id of each image, shape (n,).
        labels: multi-hot labels, shape (n, k).
        official: ``{image name: "train_val" | "test"}`` from the NIH lists.
        val_fraction: share of the train_val images held out for validation.
        seed: random seed of the train/val cut.

    Raises:
        ValueError: an image is in neither official list.
    """
    assigned = np.asarray([official.get(n, "") for n in image_names], dtype=object)
    if (assigned == "").any():
        missing = np.asarray(image_names)[assigned == ""][:3]
        raise ValueError(f"{int((assigned == '').sum())} images are in neither official list (e.g. {', '.join(missing)})")
    out = assigned.copy()
    train_val = np.flatnonzero(assigned == "train_val")
    if len(train_val):
        out[train_val] = patient_split(
            np.asarray(patient_ids)[train_val],
            np.asarray(labels)[train_val],
            fractions=(1.0 - val_fraction, val_fraction),
            names=("train", "val"),
            seed=seed,
        )
    assert_patient_disjoint(patient_ids, out)
    return out


def make_split(dataset, *, strategy: str = "auto", fractions=(0.7, 0.1, 0.2), seed: int = 0) -> np.ndarray:
    """Split an :class:`~cxr_core.data.dataset.NIHDataset` into train/val/test.

    Args:
        dataset: the dataset (uses ``image_names``, ``patient_ids``, ``labels``,
            ``official_split``, ``is_full_release``).
        strategy: ``"official"`` (NIH lists; val carved from train_val),
            ``"patient"`` (seeded stratified patient-wise split), or ``"auto"``:
            official for the full release, patient-wise for any subset.
        fractions: train/val/test shares for ``"patient"``; val share of the
            whole for ``"official"``.
        seed: random seed.

    Returns:
        split name of each image, shape (n,); checked to be patient-disjoint.
    """
    if strategy not in {"auto", "official", "patient"}:
        raise ValueError(f"unknown split strategy {strategy!r}; use auto, official or patient")
    if strategy == "auto":
        strategy = "official" if dataset.is_full_release else "patient"
    if strategy == "official":
        if not dataset.official_split:
            raise ValueError("the official split needs train_val_list.txt and test_list.txt in the dataset folder")
        train_val_share = fractions[0] + fractions[1]
        splits = official_split(
            dataset.image_names, dataset.patient_ids, dataset.labels, dataset.official_split,
            val_fraction=fractions[1] / train_val_share, seed=seed,
        )
    else:
        splits = patient_split(dataset.patient_ids, dataset.labels, fractions=fractions, seed=seed)
    assert_patient_disjoint(dataset.patient_ids, splits)
    return splits
