"""Adapt a bundle to a site: local validation, refitted operating points, an optional never-worse fine-tune.

    python -m training.adapt --bundle models/default --site DIR --labels labels.csv --out runs/site-a
    python -m training.adapt --bundle models/default --site DIR --labels labels.csv --out runs/site-a --fine-tune heads

The site's films (PNG, JPEG or DICOM, any layout under DIR) and its labels CSV
(``Image Index``, ``Patient ID`` and ``Finding Labels`` or one column per
finding with 1, 0 or empty; docs/use/site.md) are split patient-wise into a fit
part and a check part. The shipped bundle is measured on the check part (the
report training.evaluate writes), the calibration, cuts, flags and triage are
refitted on the fit part (and, with --fine-tune, the members' heads or last
block trained on it), and the adapted bundle is written to OUT/bundle only
where, on the check part, it is not worse than the shipped one. OUT receives
report.json and report.md in every case.
"""

from __future__ import annotations

import argparse
import sys

from training._command import add_bundle, command_parser, progress_bar, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("adapt", __doc__)
    add_bundle(parser, "the bundle to adapt (default models/default)")
    parser.add_argument("--site", required=True, help="the folder of the site's images (any layout)")
    parser.add_argument("--labels", required=True, help="the site's labels CSV (docs/use/site.md)")
    parser.add_argument("--out", required=True, help="report folder; the adapted bundle goes to OUT/bundle")
    parser.add_argument("--fine-tune", default="none", choices=["none", "heads", "last-block"],
                        help="also train the members' heads, or their last block and heads, on the fit part "
                             "(default none: refit the operating points only)")
    parser.add_argument("--recalibrate", default="auto", choices=["auto", "refit", "intercept"],
                        help="auto (default): per finding, the shipped calibration, an intercept shift or a full refit, "
                             "chosen by patient-grouped cross-validation inside the fit part (a change only where it "
                             "beats the simpler one by more than a standard error); refit: every finding with enough "
                             "films refitted by the shipped method (the rule of NIH validation); intercept: every such "
                             "finding's shipped map kept, only its intercept moved")
    parser.add_argument("--triage", default="auto", choices=["auto", "refit"],
                        help="auto (default): the shipped triage and rule-out point kept unless, out of fold inside the "
                             "fit part, a refitted one misses no more abnormal films and reaches the 0.95 Wilson bound; "
                             "refit: always refitted when the fit part has the films")
    parser.add_argument("--seed", type=int, default=0, help="the split's and the fine-tuning's seed (default 0)")
    parser.add_argument("--check-share", type=float, default=0.5,
                        help="share of the films in the check part (default 0.5)")
    parser.add_argument("--site-name", help="the site's name in the adapted bundle (default: the folder's name)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 10 for heads, 5 for last-block)")
    parser.add_argument("--n-boot", type=int, default=1000, help="patient-bootstrap resamples (default 1000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _adapt, then=_status)


def _adapt(args: argparse.Namespace) -> dict:
    from cxr_core.adaptation import adapt_bundle

    return adapt_bundle(args.bundle, args.site, args.labels, args.out, fine_tune=args.fine_tune, seed=args.seed,
                        check_share=args.check_share, site_name=args.site_name, epochs=args.epochs,
                        n_boot=args.n_boot, recalibration=args.recalibrate, triage=args.triage,
                        progress=progress_bar("batch"))


def _status(args: argparse.Namespace, report: dict) -> int:
    """0 when the adapted bundle was written or rightly refused, 1 otherwise."""
    return 0 if report["decision"] in ("written", "refused") else 1


if __name__ == "__main__":
    sys.exit(main())
