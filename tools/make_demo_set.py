"""Build data/demo/ from the real NIH sample in ../shared/nih.

Run once by a maintainer (the result is committed):

    python -m tools.make_demo_set --source ../shared/nih --out data/demo

The demo images come only from the TEST patients of the seeded patient-wise
split that the shipped model uses (seed 0, 70/10/20), so a demo session shows
the model on patients it never saw. Selection: up to 12 images with an
expert box for each of the 8 boxed findings, then enough images for at least
12 positives of every finding (fewer where the test split has fewer), 45
"No Finding" images, and random test images up to the target count.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data import NIHDataset, make_split
from cxr_core.findings import FINDINGS

SPLIT_SEED = 0
FRACTIONS = (0.7, 0.1, 0.2)


def select(dataset: NIHDataset, *, target: int, per_box_finding: int, per_finding: int, no_finding: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    splits = make_split(dataset, strategy="patient", fractions=FRACTIONS, seed=SPLIT_SEED)
    test = dataset.csv.loc[splits == "test", "image"].tolist()
    test_set = set(test)
    labels = pd.DataFrame(dataset.labels, columns=FINDINGS, index=dataset.csv["image"])
    chosen: list[str] = []

    def take(candidates, count):
        candidates = [c for c in candidates if c not in chosen]
        count = max(0, min(count, len(candidates)))
        chosen.extend(rng.permutation(np.asarray(candidates, dtype=object))[:count].tolist())

    boxes = dataset.boxes[dataset.boxes["image"].isin(test_set)]
    for finding in sorted(boxes["finding"].unique()):
        take(sorted(set(boxes.loc[boxes["finding"] == finding, "image"])), per_box_finding)
    for finding in FINDINGS:
        have = int(labels.loc[chosen, finding].sum()) if chosen else 0
        positives = [n for n in test if labels.at[n, finding] == 1 and n not in set(boxes["image"])]
        take(positives, per_finding - have)
    take([n for n in test if labels.loc[n].sum() == 0], no_finding)
    take(test, target - len(chosen))
    return sorted(chosen)


def _copy_rows(src: Path, dest: Path, wanted: set[str]) -> None:
    """Copy the header and the lines whose first field is a wanted image name (src may be .gz)."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = [line for line in lines[1:] if line.split(",", 1)[0] in wanted]
    dest.write_text("\n".join([lines[0]] + kept) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/nih")
    parser.add_argument("--out", default="data/demo")
    parser.add_argument("--target", type=int, default=260)
    args = parser.parse_args()
    source, out = Path(args.source), Path(args.out)
    dataset = NIHDataset(source)
    names = select(dataset, target=args.target, per_box_finding=12, per_finding=12, no_finding=45, seed=0)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for old in (out / "images").glob("*.png"):
        old.unlink()
    for name in names:
        shutil.copy2(source / "images" / name, out / "images" / name)
    wanted = set(names)
    # Both label-file formats and the boxes, rows copied verbatim so that the demo reads like the release.
    _copy_rows(source / "Data_Entry_2017.csv", out / "Data_Entry_2017.csv", wanted)
    _copy_rows(source / "Data_Entry_2017_v2020.csv.gz", out / "Data_Entry_2017_v2020.csv", wanted)
    _copy_rows(source / "BBox_List_2017.csv", out / "BBox_List_2017.csv", wanted)
    demo = NIHDataset(out)
    print(f"{len(demo)} images of {demo.csv['patient_id'].nunique()} patients, {len(demo.boxes)} boxes")
    print(demo.finding_counts().to_string())


if __name__ == "__main__":
    main()
