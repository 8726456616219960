"""Hyperparameter search with keras-tuner; objective: validation mean AUROC (max).

    python -m training.tune --config configs/cpu_small.toml --cache cache/nih256 --trials 8 --out runs/tune

Searched: learning rate (log scale), backbone, input size, loss and
augmentation strength. The ranges come from the ``[tune]`` table of the TOML
file (see docs/build/training.md); everything else from its flat keys. Writes
``results.csv`` and ``results.md`` (one row per trial, best first) and
``best_config.json`` into ``--out``. An interrupted search resumes where it
stopped when run again with the same ``--out`` (``--overwrite`` restarts).

Distributed (keras-tuner's own mode, docs/build/tuning.md): the same command in a
chief process (KERASTUNER_TUNER_ID=chief) and in workers (tuner0, tuner1 ...),
all with KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT; only the chief
writes the results. The logic is in ``cxr_core.learn.tuning``.
"""

from __future__ import annotations

import argparse
import sys

from training._command import add_overrides, command_parser, run_command

EPILOG = ("Distributed search: set KERASTUNER_TUNER_ID (chief, or tuner0, tuner1 ... on the workers), "
          "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT; see docs/build/tuning.md.")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("tune", __doc__, epilog=EPILOG)
    parser.add_argument("--config", required=True, help="TOML file: TrainConfig keys plus an optional [tune] table")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="NIH dataset folder")
    source.add_argument("--cache", help="cache folder made by python -m training.prepare")
    parser.add_argument("--trials", type=int, default=8, help="number of trials (random search; default 8; the chief's counts)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (hyperband: the most epochs of a trial)")
    parser.add_argument("--out", required=True, help="search folder (trials, results.csv, results.md)")
    parser.add_argument("--tuner", choices=["random", "hyperband"], help="search algorithm (default from [tune], else random)")
    parser.add_argument("--overwrite", action="store_true", help="start the search afresh instead of resuming it (not on a worker)")
    parser.add_argument("--wait-for-workers", type=int, default=0, metavar="N",
                        help="distributed chief only: hand out the first trial once N workers have asked (default: at once)")
    parser.add_argument("--eager", action="store_true",
                        help="run trials eagerly (no graph tracing): faster for trials of a few steps only (smoke runs)")
    add_overrides(parser, "override a TrainConfig key")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _search, then=_report, log=True)


def _search(args: argparse.Namespace):
    from cxr_core.learn.tuning import distributed_role, load_space, run_search
    from training.train import config_from_args

    distributed_role()  # checked before TensorFlow loads (TrainConfig does): a bad setting is told at once
    space = load_space(args.config)
    args.backbone = args.weights = args.input_size = args.batch_size = None
    args.resume = False
    config = config_from_args(args).with_overrides(out=args.out)
    return run_search(config, space, trials=args.trials, tuner=args.tuner, overwrite=args.overwrite,
                      wait_for_workers=args.wait_for_workers, eager=args.eager)


def _report(args: argparse.Namespace, outcome) -> int:
    from cxr_core.learn.tuning import to_markdown

    if outcome.table is None:
        print(f"worker {outcome.role.tuner_id} done: ran trials {', '.join(outcome.trials_run) or 'none'}; "
              "the chief writes the results")
        return 0
    print(to_markdown(outcome.table))
    print(f"results written to {', '.join(str(f) for f in outcome.files)}")
    if not outcome.completed:
        print("error: no trial completed; see the messages above" + (" (the workers' logs)" if outcome.role else ""),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
