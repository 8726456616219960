"""Reader-study cases: a seeded, stratified choice of images (:func:`select_cases`) and finding a case's file."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.findings import FINDINGS
from cxr_core.reader_study.validation import check_bits

__all__ = ["READER_CATEGORIES", "case_table", "expert_case_labels", "select_cases", "find_image"]

#: The expert categories a reader's answers can be scored on: those some of the
#: 14 findings a reader ticks map to (Fracture is not among the findings).
READER_CATEGORIES: tuple[str, ...] = ("Pneumothorax", "Nodule or mass", "Airspace opacity")


def case_table(dataset) -> tuple[list[str], list[str], np.ndarray]:
    """(images, patient ids as text, labels (n, 14) int) of an NIHDataset or a list of rows."""
    if hasattr(dataset, "csv") and hasattr(dataset, "labels"):
        images = [str(v) for v in dataset.csv["image"]]
        patients = [str(v) for v in dataset.csv["patient_id"]]
        labels = np.asarray(dataset.labels)
    else:
        rows = list(dataset)
        for i, row in enumerate(rows):
            if len(row) != 3:
                raise ValueError(f"case row {i} must be (image, patient_id, labels), got {len(row)} items")
        images = [str(r[0]) for r in rows]
        patients = [str(r[1]) for r in rows]
        labels = np.asarray([check_bits(r[2], what=f"labels of case {r[0]!r}") for r in rows], dtype=float).reshape(-1, len(FINDINGS))
    if labels.shape != (len(images), len(FINDINGS)) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 of shape ({len(images)}, {len(FINDINGS)}), got {labels.shape}")
    if len(set(images)) != len(images):
        raise ValueError("image names must be unique within a dataset")
    if any(not name.strip() for name in images):
        raise ValueError("every case needs an image name")
    return images, patients, labels.astype(int)


def expert_case_labels(images: Sequence[str], expert_labels: pd.DataFrame | None) -> np.ndarray:
    """The radiologists' labels of ``images``, shape (n, 4) in EXPERT_CATEGORIES order, NaN where absent.

    Args:
        images: image names.
        expert_labels: :func:`cxr_core.data.expert_labels.read_expert_labels`'s
            table (column ``image``, or indexed by image).

    Raises:
        ValueError: no table, or one without the category columns.
    """
    if expert_labels is None:
        raise ValueError("an expert reference needs the radiologists' labels (expert_labels=read_expert_labels(path))")
    table = expert_labels.set_index("image") if "image" in expert_labels.columns else expert_labels
    missing = [c for c in EXPERT_CATEGORIES if c not in table.columns]
    if missing:
        raise ValueError(f"expert_labels has no column {', '.join(missing)}")
    return table.reindex(list(images))[list(EXPERT_CATEGORIES)].to_numpy(dtype=float)


def select_cases(
    images: Sequence[str],
    patient_ids: Sequence[str],
    labels: np.ndarray,
    *,
    n_cases: int,
    seed: int,
    no_finding_fraction: float = 0.25,
    one_per_patient: bool = True,
) -> np.ndarray:
    """Pick a seeded, stratified set of cases, in a seeded reading order.

    ``round(no_finding_fraction * n_cases)`` cases are "No Finding" images,
    so specificity is also measured on real normals. The others are picked
    one at a time for the finding with the fewest cases so far (an image
    counts for all of its findings; ties go to the rarer finding), each time
    the next image of a seeded shuffle; so every finding is represented as
    soon as there are enough positive cases (14 or more), Hernia included.
    If a pool runs dry, the rest is filled from the remaining images.

    Args:
        images: image names, shape (n,). The selection depends on names, not
            row order, so the same data in another order gives the same study.
        patient_ids: patient of each image, shape (n,).
        labels: multi-hot reference labels, shape (n, 14).
        n_cases: cases to pick.
        seed: seed of the shuffle and of the reading order.
        no_finding_fraction: share of cases without any finding, in [0, 1).
        one_per_patient: at most one image per patient, so cases are
            independent (follow-up films of the same lungs are correlated and
            a reader would recognise them).

    Returns:
        row indices into ``images``, shape (n_cases,), in reading order.

    Raises:
        ValueError: ``n_cases`` is not between 1 and the available cases.
    """
    labels = np.asarray(labels, dtype=int)
    n = len(images)
    if not 0 <= no_finding_fraction < 1:
        raise ValueError(f"no_finding_fraction must be in [0, 1), got {no_finding_fraction}")
    available = len(set(patient_ids)) if one_per_patient else n
    if isinstance(n_cases, bool) or int(n_cases) != n_cases or not 1 <= n_cases <= available:
        per = " (one image per patient)" if one_per_patient else ""
        raise ValueError(f"n_cases must be a whole number from 1 to {available}{per}, got {n_cases!r}")
    n_cases = int(n_cases)

    rng = np.random.default_rng(seed)
    by_name = np.argsort(np.asarray(images, dtype=object), kind="stable")
    shuffled = by_name[rng.permutation(n)]
    normal = labels.sum(axis=1) == 0
    taken = np.zeros(n, dtype=bool)
    used_patients: set[str] = set()
    chosen: list[int] = []

    def free(i: int) -> bool:
        return not taken[i] and not (one_per_patient and patient_ids[i] in used_patients)

    def take(i: int) -> None:
        taken[i] = True
        used_patients.add(patient_ids[i])
        chosen.append(int(i))

    n_normal = int(round(no_finding_fraction * n_cases))
    # Positives first: they are the constrained ones (a patient taken as a
    # normal could block the only Hernia image). Each step serves the finding
    # with the fewest cases so far; ties go to the rarer finding.
    pools = [deque(shuffled[labels[shuffled, j] == 1].tolist()) for j in range(len(FINDINGS))]
    sizes = np.array([len(p) for p in pools])
    counts = np.zeros(len(FINDINGS))
    while len(chosen) < n_cases - n_normal:
        for pool in pools:
            while pool and not free(pool[0]):
                pool.popleft()
        open_findings = [j for j in range(len(FINDINGS)) if pools[j]]
        if not open_findings:
            break
        j = min(open_findings, key=lambda k: (counts[k], sizes[k], k))
        pick = pools[j].popleft()
        take(pick)
        counts += labels[pick]
    # Then the normals, then (if a pool ran dry) anything left, in shuffled order.
    for i in shuffled[normal[shuffled]]:
        if len(chosen) >= n_cases:
            break
        if free(i):
            take(i)
    for i in shuffled:
        if len(chosen) >= n_cases:
            break
        if free(i):
            take(i)
    order = rng.permutation(len(chosen))  # reading order: mixed, not grouped by stratum
    return np.asarray(chosen, dtype=int)[order]




def find_image(root: Path, name: str) -> Path | None:
    """The file of one case under a dataset folder, in the layouts NIHDataset reads."""
    for candidate in (root / "images" / name, root / name):
        if candidate.is_file():
            return candidate
    for folder in sorted(root.glob("images_*")):
        for candidate in (folder / "images" / name, folder / name):
            if candidate.is_file():
                return candidate
    return None
