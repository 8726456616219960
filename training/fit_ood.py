"""Fit the learned not-a-chest-X-ray check of a bundle and store it in the bundle.

    python -m training.fit_ood --bundle models/default --data ../shared/nih

Run it again whenever models/default is replaced (then python -m benchmarks.ood
to measure it). It reads the bundle's TRAINING images (of its recorded split;
a random 1,000 by default) for the reference and its VALIDATION images for
the thresholds, never its test images. From the first member's forward pass
(for an ensemble) and its 8-bit input, four scores: the distance of the
globally pooled features and of the 2 x 2 pooled features to the training
images' (a probabilistic PCA of each), the layout margin (the thumbnail
matches the mean training film upright better than turned) and the scale
distance (the radial power spectrum's shape: a heavily cropped, enlarged film
has its detail at lower frequencies). Each score's threshold: the false-alarm
budget (--false-alarm, default 1.2%) is split evenly over the four, and the
threshold is the ceil((n + 1)(1 - alpha))-th of the n validation values: a
film like the validation films is beyond it with probability <= alpha. Both
go into the bundle: an .npz file named by its content and the "ood" key of
bundle.json, updated atomically, every other key kept. The app, the reports
and training.predict then warn about images beyond any threshold; a bundle
without the key gets the simple rules only. See cxr_core/screening/ood.py.
"""

from __future__ import annotations

import argparse
import sys

from training._command import add_bundle, command_parser, progress_bar, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("fit_ood", __doc__)
    add_bundle(parser)
    parser.add_argument("--data", required=True, help="the dataset the bundle was trained on (NIH layout)")
    parser.add_argument("--components", type=int, default=32,
                        help="principal components kept for the pooled and the 2 x 2 pooled features (default 32)")
    parser.add_argument("--false-alarm", type=float, default=0.012,
                        help="false-alarm budget on films like the validation films, split evenly over the four scores "
                             "(default 0.012: with 342 validation films each threshold is the validation extreme)")
    parser.add_argument("--max-train", type=int, default=1000,
                        help="at most this many training images, a seeded random choice (default 1000; 0: all)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _fit)


def _fit(args: argparse.Namespace) -> None:
    from cxr_core.jobs.ood_fit import fit_ood

    fit_ood(args.bundle, args.data, components=args.components, false_alarm=args.false_alarm,
            max_train=args.max_train or None, seed=args.seed, progress=progress_bar("batch"))


if __name__ == "__main__":
    sys.exit(main())
