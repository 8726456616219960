"""Batch prediction: calibrated probabilities for a folder or a CSV of images.

    python -m training.predict --images DIR_OR_CSV --out preds.csv [--bundle models/default] [--heatmaps OUTDIR]
    python -m training.predict --images DIR_OR_CSV --out shard0.csv --shard 0/4      # every 4th image from the 1st
    python -m training.predict --merge shard0.csv shard1.csv shard2.csv shard3.csv --out preds.csv [--images DIR_OR_CSV]
    python -m training.predict --images DIR --out preds.csv --worklist worklist.csv [--operating-point youden]

preds.csv has ``Image Index`` (the file name), one column per finding named
as in Data_Entry_2017.csv (calibrated probabilities), ``abnormal`` (the
triage: calibrated probability of any of the 14 findings), ``triage``
(``abnormal``, ``no finding likely``, or ``not assessed`` where the input
check warned or the file could not be read; ``abnormal`` is then empty),
``flagged`` (findings flagged at the bundle's operating point, most probable
first, joined by ``|``), ``warning`` (why the image may not be a frontal chest
X-ray, as the app warns; empty when none) and ``error``. ``--worklist PATH``
also writes the rows as a reading worklist: not-assessed films first, then
the most abnormal first. Files
that cannot be read keep their row with the reason in ``error`` and are also
listed in ``<out>.errors.csv``; they never stop the run. Rows are written as
they come (memory does not grow with the number of images); ``<out>.run.json``
records the shard, the listing's size and fingerprint, and images/s (also
printed on stderr).

``--shard K/N`` takes every N-th image from offset K of the images sorted by
their relative path, so N machines (or processes) given the same folder share
it without overlap. ``--merge`` joins the N outputs in that order and refuses,
naming what is wrong, unless every shard is there once and every image once
(``--images`` lets it name the images of a missing shard).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training._command import add_bundle, command_parser
from training._errors import USER_ERRORS, report_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("predict", __doc__)
    add_bundle(parser)
    parser.add_argument("--images", help="a folder of images (NIH or Kaggle layout, or flat) or a CSV")
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--heatmaps", help="folder for Grad-CAM++ maps (.npz) and overlays (.png)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compute", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="float32 (default: the evaluated numerics), or bfloat16 trunks where the backbone gains "
                             "(auto: only on a CPU with native bfloat16); see cxr_core.serving.precision")
    parser.add_argument("--shard", metavar="K/N", help="predict only every N-th image from offset K (0 <= K < N)")
    parser.add_argument("--merge", nargs="+", metavar="SHARD_CSV", help="join the outputs of --shard 0/N ... N-1/N into --out")
    parser.add_argument("--worklist", metavar="PATH", help="also write the rows sorted for reading: not-assessed films "
                                                             "first, then the most abnormal first")
    parser.add_argument("--operating-point", choices=["specificity", "youden"],
                        help="flags at the validated specificity (the default where the bundle has them) or at Youden's "
                             "J (the earlier per-finding cuts)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merge and args.shard:
        parser.error("--merge joins shard outputs; it takes no --shard")
    if not args.merge and not args.images:
        parser.error("--images is required (or --merge SHARD_CSV ...)")
    from cxr_core.jobs import merge_shards

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if args.merge and args.operating_point:
        parser.error("--merge joins finished shards; give --operating-point when predicting them")
    if args.merge:
        try:
            merge_shards(args.merge, args.out, images=args.images, log=log)
        except USER_ERRORS as exc:
            return report_user_error(exc)
        return _worklist(args)
    code = _predict(args, log)
    return code if code else _worklist(args)


def _worklist(args) -> int:
    if not args.worklist:
        return 0
    from cxr_core.jobs import write_worklist

    try:
        rows = write_worklist(args.out, args.worklist)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    print(f"worklist of {rows} films, most abnormal first (not-assessed films at the top) -> {args.worklist}")
    return 0


def _predict(args, log) -> int:
    from tqdm import tqdm

    from cxr_core.jobs import errors_path, list_image_files, parse_shard, predict_to_csv, stable_listing
    from cxr_core.serving import Predictor

    try:
        shard = parse_shard(args.shard) if args.shard else (0, 1)
        listing = stable_listing(args.images) if args.shard else None
        files = listing.shard(*shard) if listing is not None else list_image_files(args.images)
        predictor = Predictor.from_bundle(args.bundle, compute=args.compute)
        predictor.policy.cuts(args.operating_point)  # a bundle without fitted flags: say so before reading images
    except USER_ERRORS as exc:
        return report_user_error(exc)
    if not files and (listing is None or not listing.total):
        print(f"error: no PNG, JPEG or DICOM files found in {args.images}", file=sys.stderr)
        return 2
    record = predict_to_csv(
        predictor, files, args.out, batch_size=args.batch_size, heatmap_dir=args.heatmaps, shard=shard, listing=listing,
        operating_point=args.operating_point,
        progress=lambda rows: tqdm(rows, unit="img", total=len(files), desc=f"{len(files)} images"), log=log,
    )
    out, errors = Path(args.out), record["errors"]
    print(f"{record['rows'] - errors} images predicted -> {out}" + (f"; {errors} unreadable -> {errors_path(out)}" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
