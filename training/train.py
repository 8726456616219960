"""Train a chest X-ray model and write its bundle.

    python -m training.train --config configs/cpu_small.toml --cache cache/nih256 [--epochs 5] [--set learning_rate=3e-4]

Settings come from the TOML file (flat keys, see docs/build/training.md), then the
named options, then each ``--set key=value`` in order. The run folder gets
checkpoints, log.csv and ``bundle/``; ``--resume`` continues from
``checkpoints/last.keras`` with its optimizer state.
"""

from __future__ import annotations

import argparse
import sys

from training._command import add_overrides, command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("train", __doc__,
                            epilog="Configuration keys: see docs/build/training.md or cxr_core.learn.config.TrainConfig.")
    parser.add_argument("--config", help="TOML file with TrainConfig keys")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="NIH dataset folder (decode files on the fly)")
    source.add_argument("--cache", help="cache folder made by python -m training.prepare (faster)")
    parser.add_argument("--backbone", help="densenet121, efficientnetb0, mobilenetv2, resnet50, densenet169 or small_cnn")
    parser.add_argument("--weights", help="None (from scratch), imagenet, or a keras.applications weights file")
    parser.add_argument("--input-size", type=int, help="model input side in pixels")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--epochs", type=int, help="number of epochs")
    parser.add_argument("--out", help="run folder (default runs/train)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.keras")
    add_overrides(parser, "override any configuration key (repeatable), e.g. --set loss=focal")
    return parser


def config_from_args(args: argparse.Namespace):
    """TrainConfig from the TOML file, the named options and the --set overrides."""
    from cxr_core.learn import TrainConfig, parse_override

    overrides: dict = {}
    for key in ("data", "cache", "backbone", "weights", "input_size", "batch_size", "epochs", "out"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.data is not None:
        overrides["cache"] = None
    if args.cache is not None:
        overrides["data"] = None
    if args.weights is not None and args.weights.lower() == "none":
        overrides["weights"] = None
    if args.resume:
        overrides["resume"] = True
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    return TrainConfig.from_toml(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _checked_config, then=_train, log=True)


def _checked_config(args: argparse.Namespace):
    """The TrainConfig of the options, and its pretrained trunk checked, before any training starts."""
    config = config_from_args(args)
    if config.init_from:
        from cxr_core.learn.pretrain import read_record

        read_record(config.init_from)  # a missing or unfinished trunk is the user's to fix, before any training
    return config


def _train(args: argparse.Namespace, config) -> None:
    from cxr_core.learn import train

    bundle = train(config)
    print(f"bundle written to {bundle}" if bundle is not None else "worker done (the chief writes the bundle)")


if __name__ == "__main__":
    sys.exit(main())
