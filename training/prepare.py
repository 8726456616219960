"""Build the preprocessed cache: every image decoded and resized once.

    python -m training.prepare --data ../shared/nih --size 256 --out cache/nih256 [--split-seed 0]

The cache stores ``cxr_core.data.preprocessing.to_model_uint8(image, size)`` of
every image as uint8 in TFRecord shards per split, with ``index.csv`` and
``manifest.json`` (see ``cxr_core/learn/cache.py`` and ``docs/build/training.md``).
"""

from __future__ import annotations

import argparse
import os
import sys

from training._command import command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("prepare", __doc__)
    parser.add_argument("--data", required=True, help="NIH dataset folder (official, Kaggle or resized layout)")
    parser.add_argument("--out", required=True, help="cache folder to create")
    parser.add_argument("--size", type=int, default=256, help="stored side in pixels (default 256: training crops 224 from it)")
    parser.add_argument("--split-strategy", default="auto", choices=["auto", "official", "patient"],
                        help="auto: NIH lists for the full release, patient-wise otherwise (default auto)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-wise split (default 0)")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                        help="split fractions (default 0.7 0.1 0.2)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), help="decode processes (default: CPU count, at most 8)")
    parser.add_argument("--shard-size", type=int, default=512, help="images per TFRecord shard (default 512)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _prepare, then=_print_summary, log=True)


def _prepare(args: argparse.Namespace):
    from cxr_core.learn import prepare_cache

    return prepare_cache(
        args.data, args.out, size=args.size, split_strategy=args.split_strategy, split_seed=args.split_seed,
        fractions=tuple(args.fractions), workers=args.workers, shard_size=args.shard_size, overwrite=args.overwrite,
    )


def _print_summary(args: argparse.Namespace, cache) -> None:
    manifest = cache.manifest
    print(f"cache written to {cache.root}: {manifest['count']} images at {manifest['size']} px "
          f"({', '.join(f'{k} {v}' for k, v in manifest['counts'].items())}) in {manifest['seconds']} s "
          f"with {manifest['workers']} workers; {len(manifest['skipped'])} unreadable images skipped")


if __name__ == "__main__":
    sys.exit(main())
