"""Evaluate a model bundle: metrics with CIs, thresholds, calibration, localisation.

    python -m training.evaluate --bundle runs/shipped/bundle --data ../shared/nih
    python -m training.evaluate --bundle models/default --data data/demo --out runs/eval-demo

On the bundle's own data, calibration and thresholds are fitted on its
validation split and the test split is evaluated; results go into the bundle
(metrics.json, summary.md, bundle.json). On other data the fitted calibration
and thresholds are applied unchanged to the images the model did not train
on, and the report goes to --out. Where DATA/extras/ holds the radiologists'
labels of Majkowska et al. 2019 (or --expert-labels names them), the evaluated
images that have them are also scored against the experts and NIH's labels are
audited (metrics.json: expert_reference, label_audit; docs/build/expert_reference.md).
"""

from __future__ import annotations

import argparse
import sys

from training._command import add_bundle, command_parser, progress_bar, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("evaluate", __doc__)
    add_bundle(parser)
    parser.add_argument("--data", required=True, help="dataset folder in an NIH layout")
    parser.add_argument("--out", help="report folder (default: the bundle, on its own data)")
    parser.add_argument("--thresholds", default="youden", choices=["youden", "max_f1", "target_sensitivity"])
    parser.add_argument("--calibration", default="temperature", choices=["temperature", "platt"])
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--no-localization", action="store_true", help="skip Grad-CAM++ box scoring")
    expert = parser.add_mutually_exclusive_group()
    expert.add_argument("--expert-labels", metavar="PATH",
                        help="radiologists' labels (google2019_nih-chest-xray-labels.csv.gz); default: "
                             "DATA/extras/ when present")
    expert.add_argument("--no-expert-labels", action="store_true", help="skip the expert-reference evaluation")
    parser.add_argument("--fit-ood", action="store_true",
                        help="also fit the not-a-chest-X-ray check on the bundle's own data (as training.fit_ood)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _evaluate)


def _evaluate(args: argparse.Namespace) -> None:
    from cxr_core.jobs import evaluate_bundle

    evaluate_bundle(
        args.bundle, args.data, out_dir=args.out, n_boot=args.n_boot, threshold_method=args.thresholds,
        calibration_method=args.calibration, localization=not args.no_localization,
        expert_labels=False if args.no_expert_labels else args.expert_labels, fit_ood=args.fit_ood,
        progress=progress_bar("batch"),
    )


if __name__ == "__main__":
    sys.exit(main())
