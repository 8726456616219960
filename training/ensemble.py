"""Assemble an ensemble bundle from trained single-model bundles.

    python -m training.ensemble --members runs/a/bundle runs/b/bundle [--weights 2 1] --out runs/ens/bundle [--float16]
    python -m training.evaluate --bundle runs/ens/bundle --data ../shared/nih   # then calibrate and test it as one model

Each member's model and training provenance are copied into
``<out>/members/<name>/``; the members must have been trained on the same
split (refused otherwise). The ensemble averages the members' logits with the
given weights (default equal); evaluation fits its calibration and thresholds
after averaging. See ``cxr_core.bundle.format`` for the format.
"""

from __future__ import annotations

import argparse
import sys

from training._command import command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("ensemble", __doc__)
    parser.add_argument("--members", nargs="+", required=True, help="the members' bundle folders (at least two)")
    parser.add_argument("--out", required=True, help="the ensemble bundle folder to write")
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per member (normalised to sum 1; default equal)")
    parser.add_argument("--map-weights", nargs="+", type=float,
                        help="one weight per member for the averaged heatmaps (default: --weights; 0 leaves a member out)")
    parser.add_argument("--tta-views", nargs="+", type=int,
                        help="one per member: 1, or 6 to average its scores over the image and five crops (default 1)")
    parser.add_argument("--names", nargs="+", help="one folder name per member (default m1_<backbone>_<size> ...)")
    parser.add_argument("--float16", action="store_true", help="store float32 member weights as float16 (about half the size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _assemble, then=_print_summary)


def _assemble(args: argparse.Namespace):
    from cxr_core.bundle import assemble_ensemble

    return assemble_ensemble(args.members, args.out, weights=args.weights, names=args.names, float16=args.float16,
                             overwrite=args.overwrite, map_weights=args.map_weights, tta_views=args.tta_views)


def _print_summary(args: argparse.Namespace, out) -> None:
    from cxr_core.bundle import describe_model, read_metadata

    meta = read_metadata(out)
    weights = ", ".join(f"{m['name']} {m['weight']:.3f}" for m in meta["members"])
    print(f"{describe_model(meta)} -> {out} (weights: {weights}); "
          f"next: python -m training.evaluate --bundle {out} --data <the members' dataset>")


if __name__ == "__main__":
    sys.exit(main())
