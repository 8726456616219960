"""Batch prediction: calibrated probabilities for a folder or a CSV of images.

    python -m training.predict --images DIR_OR_CSV --out preds.csv [--bundle models/default] [--heatmaps OUTDIR]

preds.csv has ``Image Index`` (the file name), one column per finding named
as in Data_Entry_2017.csv (calibrated probabilities), and ``error``. Files
that cannot be read keep their row with the reason in ``error`` and are also
listed in ``<out>.errors.csv``; they never stop the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="models/default", help="model bundle folder (default models/default)")
    parser.add_argument("--images", required=True, help="a folder of images (NIH or Kaggle layout, or flat) or a CSV")
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--heatmaps", help="folder for Grad-CAM++ maps (.npz) and overlays (.png)")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from cxr_core.errors import DataFormatError
    from cxr_core.learn import BundleError
    from cxr_core.serving import ERROR_COLUMN, IMAGE_COLUMN, Predictor, list_image_files, predict_files

    try:
        files = list_image_files(args.images)
        predictor = Predictor.from_bundle(args.bundle)
    except (BundleError, DataFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        print(f"error: no PNG, JPEG or DICOM files found in {args.images}", file=sys.stderr)
        return 2
    table = predict_files(
        predictor, files, batch_size=args.batch_size, heatmap_dir=args.heatmaps,
        progress=lambda batches: tqdm(batches, unit="batch", desc=f"{len(files)} images"),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6f")
    errors = table.loc[table[ERROR_COLUMN] != "", [IMAGE_COLUMN, ERROR_COLUMN]]
    errors_file = out.with_suffix(".errors.csv")
    if len(errors):
        errors.to_csv(errors_file, index=False)
    elif errors_file.exists():
        errors_file.unlink()  # a stale list from an earlier run would mislead
    print(f"{len(table) - len(errors)} images predicted -> {out}" + (f"; {len(errors)} unreadable -> {errors_file}" if len(errors) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
