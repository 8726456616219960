"""Train recipes on one seeded split and write one validation row per recipe.

    python -m training.experiment --grid configs/experiments/*.toml --data ../shared/nih
    python -m training.experiment --grid configs/experiments/*.toml --only vgg16_hed_ms_box --retrain

Each recipe is a training TOML with an ``[experiment]`` table (see
``cxr_core.experiments.harness``). Rows are measured on the VALIDATION split
only and appended to ``<runs>/results.csv`` as each finishes (a cut-off grid
resumes: measured recipes are skipped); the table in ``--doc`` (default
``docs/evidence/experiments.md``) is rewritten between its markers.
"""

from __future__ import annotations

import argparse
import sys

from training._command import command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("experiment", __doc__)
    parser.add_argument("--grid", nargs="+", required=True, help="recipe TOML files")
    parser.add_argument("--data", required=True, help="NIH folder with the validation images and boxes")
    parser.add_argument("--runs", default="runs/exp", help="folder of ensemble bundles and results.csv (default runs/exp)")
    parser.add_argument("--doc", default="docs/evidence/experiments.md", help="Markdown file whose table is rewritten")
    parser.add_argument("--only", nargs="+", help="recipe names to run (default all)")
    parser.add_argument("--retrain", action="store_true", help="train and measure again recipes already measured")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _run_grid, then=_write_table, log=True)


def _run_grid(args: argparse.Namespace) -> list:
    from cxr_core.experiments.harness import run_grid

    return run_grid(args.grid, data_root=args.data, runs=args.runs, retrain=args.retrain, only=args.only)


def _write_table(args: argparse.Namespace, results: list) -> None:
    from cxr_core.experiments.harness import write_table

    print(f"{len(results)} recipes measured -> {write_table(results, args.doc)}")


if __name__ == "__main__":
    sys.exit(main())
