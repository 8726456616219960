"""Time to load the full 112,120-row Data_Entry table and build labels and splits.

    python -m benchmarks.data_loading [--data ../shared/nih] [--repeats 5]

Goal: under 5 s on the 2-core development machine. Reported in the README.
Image files are not checked here (``require_images=False``), as when a user
points cxr-assist at the label files of the full release.
"""

from __future__ import annotations

import argparse
import statistics
import time

from cxr_core.data import NIHDataset, make_split


def run_once(root: str, csv_name: str | None) -> tuple[float, float, int]:
    start = time.perf_counter()
    dataset = NIHDataset(root, csv_path=f"{root}/{csv_name}" if csv_name else None, require_images=False)
    loaded = time.perf_counter()
    splits = make_split(dataset, strategy="official", seed=0)
    done = time.perf_counter()
    assert len(splits) == len(dataset) == 112_120
    return loaded - start, done - start, len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/nih")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for csv_name in ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz"):
        runs = [run_once(args.data, csv_name) for _ in range(args.repeats)]
        load = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        print(f"{csv_name}: {runs[0][2]:,} rows; load+labels+boxes {load:.2f} s, "
              f"with official patient-wise split {total:.2f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
