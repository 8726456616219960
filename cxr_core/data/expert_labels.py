"""Reading the radiologist-adjudicated labels of Majkowska et al. (Radiology 2019).

Google Health had 4,376 NIH ChestX-ray14 images re-read by radiologists for
four categories and released the adjudicated result as
``google2019_nih-chest-xray-labels.csv.gz`` (torchxrayvision re-hosts it; in
``../shared/nih`` it sits under ``extras/``). The file has the 11 Data_Entry
columns of each image (``Finding Labels`` is NIH's text-mined label), then one
column per category holding ``YES`` or ``NO``, and ``Set Id`` (``val`` or
``test``: Google's own split, not NIH's and not ours). Only the adjudicated
label is released, not the individual readers' reads.

:func:`read_expert_labels` gives one tidy row per image; the mapping of the
model's 14 outputs onto these categories is evaluation's business
(:mod:`cxr_core.evaluation.expert`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import DataFormatError

#: The expert categories, in the order of the file's columns as used everywhere in cxr-assist.
EXPERT_CATEGORIES: tuple[str, ...] = ("Pneumothorax", "Nodule or mass", "Airspace opacity", "Fracture")

#: The file's name as released by Google and re-hosted by torchxrayvision.
EXPERT_LABELS_FILE = "google2019_nih-chest-xray-labels.csv.gz"

#: Where :func:`find_expert_labels` looks, relative to a dataset folder.
EXPERT_LABELS_LOCATIONS: tuple[str, ...] = (
    f"extras/{EXPERT_LABELS_FILE}", EXPERT_LABELS_FILE, EXPERT_LABELS_FILE.removesuffix(".gz"),
)

#: Columns of the tidy table: image, patient, Google's set, NIH's label text, then one 0/1 column per category.
EXPERT_COLUMNS: tuple[str, ...] = ("image", "patient_id", "set_id", "nih_finding_labels", *EXPERT_CATEGORIES)

_YES = {"YES", "Y", "TRUE", "1", "1.0"}
_NO = {"NO", "N", "FALSE", "0", "0.0"}


def find_expert_labels(root: str | os.PathLike) -> Path | None:
    """The expert label file under a dataset folder (``extras/`` first), or None."""
    root = Path(root)
    for relative in EXPERT_LABELS_LOCATIONS:
        if (root / relative).is_file():
            return root / relative
    return None


def read_expert_labels(path: str | os.PathLike) -> pd.DataFrame:
    """The expert labels as one row per image, indexed by nothing (column ``image`` is the key).

    Columns :data:`EXPERT_COLUMNS`; each category column is float 1.0 (YES),
    0.0 (NO) or NaN (blank: not read for that category). ``.attrs["source_file"]``
    holds the file's name.

    Args:
        path: the CSV, plain or ``.gz``.

    Raises:
        DataFormatError: not the expert label table (missing columns, values
            other than YES/NO, an image named twice).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataFormatError(f"{path.name} could not be read as a CSV table: {exc}") from exc
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("Image Index", "Patient ID", *EXPERT_CATEGORIES) if c not in table.columns]
    if missing:
        raise DataFormatError(f"{path.name} is not the expert label table: it has no column {', '.join(missing)}")
    out = pd.DataFrame({
        "image": table["Image Index"].str.strip(),
        "patient_id": pd.to_numeric(table["Patient ID"], errors="coerce").astype("Int64"),
        "set_id": table["Set Id"].str.strip() if "Set Id" in table.columns else "",
        "nih_finding_labels": table["Finding Labels"].str.strip() if "Finding Labels" in table.columns else "",
    })
    for category in EXPERT_CATEGORIES:
        text = table[category].str.strip().str.upper()
        bad = sorted(set(text) - _YES - _NO - {""})
        if bad:
            raise DataFormatError(f"{path.name}: column {category!r} holds {bad[:5]}, expected YES or NO")
        out[category] = np.where(text.isin(_YES), 1.0, np.where(text.isin(_NO), 0.0, np.nan))
    duplicated = out["image"][out["image"].duplicated()]
    if len(duplicated):
        raise DataFormatError(f"{path.name} names {len(duplicated)} images twice, e.g. {duplicated.iloc[0]}")
    out.attrs["source_file"] = path.name
    return out
