"""A named-synthetic expert label file for the demo images, and a demo copy that holds it under extras/.

data/demo does not ship the radiologists' labels of Majkowska et al. (their redistribution terms are
Google's, unchecked: ../shared/nih/PROVENANCE.md), so tests that need an expert file over the demo
images write this synthetic one, in the released file's format, to a temporary folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data import EXPERT_CATEGORIES, NIHDataset
from cxr_core.evaluation import category_labels

SYNTHETIC_EXPERT_FILE = "synthetic_expert_labels.csv"


def synthetic_expert_table(demo_root, path, *, seed: int = 0, leave_out: int = 0) -> pd.DataFrame:
    """A named-synthetic expert file for the demo images: NIH's category labels with 15% flipped, Fracture at random.

    Written in the released file's format (YES/NO columns) so the real reader reads it; the first
    ``leave_out`` demo images get no row (not read by the "experts").
    """
    ds = NIHDataset(demo_root)
    rng = np.random.default_rng(seed)
    nih = category_labels(ds.labels)
    expert = np.where(rng.random(nih.shape) < 0.15, 1 - nih, nih)
    expert[:, 3] = rng.random(len(ds.csv)) < 0.1
    table = pd.DataFrame({"Image Index": ds.csv["image"], "Finding Labels": ds.csv["finding_labels"],
                          "Patient ID": ds.csv["patient_id"]})
    for k, category in enumerate(EXPERT_CATEGORIES):
        table[category] = np.where(expert[:, k] > 0.5, "YES", "NO")
    table["Set Id"] = "test"
    table = table.iloc[leave_out:]
    table.to_csv(path, index=False)
    return table


def demo_copy_with_expert_file(tmp_path: Path, demo_root: Path, *, leave_out: int = 0) -> Path:
    """data/demo's tables and (linked) images in ``tmp_path/demo``, plus a synthetic expert file under extras/ in the released name."""
    root = tmp_path / "demo"
    root.mkdir()
    (root / "images").symlink_to(demo_root / "images", target_is_directory=True)
    for name in ("Data_Entry_2017_v2020.csv", "BBox_List_2017.csv"):
        shutil.copy(demo_root / name, root / name)
    (root / "extras").mkdir()
    plain = tmp_path / SYNTHETIC_EXPERT_FILE
    synthetic_expert_table(demo_root, plain, leave_out=leave_out)
    pd.read_csv(plain).to_csv(root / "extras" / "google2019_nih-chest-xray-labels.csv.gz", index=False)
    return root
