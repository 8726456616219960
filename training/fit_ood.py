"""Fit the learned not-a-chest-X-ray check of a bundle and store it in the bundle.

    python -m training.fit_ood --bundle models/default --data ../shared/nih

The global-average-pooled backbone features of the bundle's TRAINING images
(of its first member, for an ensemble) give the reference distribution (a
probabilistic PCA: mean, top components, residual variance) and their
thumbnails the mean layout of a chest film; the thresholds are percentiles of
the VALIDATION images' distances and layout margins. Both go into the bundle:
an .npz file named by its content and the "ood" key of bundle.json, updated
atomically, every other key kept. The app, the reports and training.predict
then warn about images whose features are beyond the threshold; a bundle
without the key gets the simple rules only. See cxr_core/serving/ood.py.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.fit_ood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="models/default", help="model bundle folder (default models/default)")
    parser.add_argument("--data", required=True, help="the dataset the bundle was trained on (NIH layout)")
    parser.add_argument("--components", type=int, default=32, help="principal components kept (default 32)")
    parser.add_argument("--percentile", type=float, default=99.75,
                        help="percentile of the validation distances used as the threshold; the layout threshold is "
                             "the (100 - P)-th of their layout margins (default 99.75)")
    parser.add_argument("--max-train", type=int, default=1000,
                        help="at most this many training images, a seeded random choice (default 1000; 0: all)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from cxr_core.errors import DataFormatError
    from cxr_core.learn import BundleError
    from cxr_core.serving.ood import fit_ood

    try:
        fit_ood(args.bundle, args.data, components=args.components, percentile=args.percentile,
                max_train=args.max_train or None, seed=args.seed,
                progress=lambda items: tqdm(items, unit="batch", leave=False))
    except (BundleError, DataFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
