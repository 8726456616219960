"""Pretrain a trunk without labels (SimCLR) on every image of a cache.

    python -m training.pretrain --config configs/pretrain/simclr_mnv2_w05.toml [--cache cache/nih192] [--set epochs=40]

Writes ``trunk.npz``, ``pretrain.json`` and ``log.csv`` into ``out``; a
training run starts from it with ``init_from = "<out>"`` (see
docs/build/training.md). Labels are never read.
"""

from __future__ import annotations

import argparse
import sys

from training._command import add_overrides, command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("pretrain", __doc__,
                            epilog="Configuration keys: cxr_core.learn.pretrain.PretrainConfig.")
    parser.add_argument("--config", help="TOML file with PretrainConfig keys")
    parser.add_argument("--cache", help="cache folder made by python -m training.prepare")
    parser.add_argument("--epochs", type=int, help="number of epochs")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a trunk already in the output folder")
    add_overrides(parser, "override any configuration key (repeatable), e.g. --set temperature=0.1")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _checked_config, then=_pretrain, log=True)


def _checked_config(args: argparse.Namespace):
    """The PretrainConfig of the options, checked before any training starts."""
    from cxr_core.learn.config import parse_override
    from cxr_core.learn.pretrain import PretrainConfig, check_pretraining

    overrides = {key: getattr(args, key) for key in ("cache", "epochs", "out") if getattr(args, key) is not None}
    overrides.update(parse_override(item) for item in args.set)
    config = PretrainConfig.from_toml(args.config, overrides)
    check_pretraining(config, overwrite=args.overwrite)
    return config


def _pretrain(args: argparse.Namespace, config) -> None:
    from cxr_core.learn.pretrain import pretrain_simclr

    out = pretrain_simclr(config, overwrite=args.overwrite)
    print(f"pretrained trunk written to {out}")


if __name__ == "__main__":
    sys.exit(main())
