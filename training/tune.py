"""Hyperparameter search with keras-tuner; objective: validation mean AUROC (max).

    python -m training.tune --config configs/cpu_small.toml --cache cache/nih256 --trials 8 --out runs/tune

Searched: learning rate (log scale), backbone, input size, loss and
augmentation strength. The ranges come from the ``[tune]`` table of the TOML
file (see docs/training.md); everything else from its flat keys. Writes
``results.csv`` and ``results.md`` (one row per trial, best first) and
``best_config.json`` into ``--out``. An interrupted search resumes where it
stopped when run again with the same ``--out`` (``--overwrite`` restarts).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import tomllib
from pathlib import Path

DEFAULT_SPACE = {
    "learning_rate": [1e-4, 3e-3],
    "backbones": ["small_cnn", "mobilenetv2"],
    "input_sizes": [128, 160],
    "losses": ["weighted_bce", "focal", "bce"],
    "augment_strengths": [0.0, 0.5, 1.0],
    "tuner": "random",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="TOML file: TrainConfig keys plus an optional [tune] table")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="NIH dataset folder")
    source.add_argument("--cache", help="cache folder made by python -m training.prepare")
    parser.add_argument("--trials", type=int, default=8, help="number of trials (random search; default 8)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (hyperband: the most epochs of a trial)")
    parser.add_argument("--out", required=True, help="search folder (trials, results.csv, results.md)")
    parser.add_argument("--tuner", choices=["random", "hyperband"], help="search algorithm (default from [tune], else random)")
    parser.add_argument("--overwrite", action="store_true", help="start the search afresh instead of resuming it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig key")
    return parser


def load_space(config_file: str) -> dict:
    """The [tune] table of the TOML file over the defaults; unknown keys are refused."""
    with open(config_file, "rb") as handle:
        table = tomllib.load(handle).get("tune", {})
    unknown = sorted(set(table) - set(DEFAULT_SPACE))
    if unknown:
        raise ValueError(f"unknown [tune] keys {unknown}; valid: {', '.join(DEFAULT_SPACE)}")
    space = {**DEFAULT_SPACE, **table}
    low, high = space["learning_rate"]
    if not 0 < low < high:
        raise ValueError("[tune] learning_rate must be [low, high] with 0 < low < high")
    return space


def make_hypermodel(base, data, space):
    """A keras-tuner HyperModel whose ``fit`` builds the datasets of each trial (size and augmentation vary)."""
    import keras_tuner as kt

    from cxr_core.learn import EpochStats, ValidationAUROC, compile_model, make_datasets

    class CXRHyperModel(kt.HyperModel):
        def trial_config(self, hp):
            return base.with_overrides(
                learning_rate=hp.Float("learning_rate", space["learning_rate"][0], space["learning_rate"][1], sampling="log"),
                backbone=hp.Choice("backbone", list(space["backbones"])),
                input_size=hp.Choice("input_size", [int(s) for s in space["input_sizes"]]),
                loss=hp.Choice("loss", list(space["losses"])),
                augment_strength=hp.Choice("augment_strength", [float(s) for s in space["augment_strengths"]]),
            )

        def build(self, hp):
            config = self.trial_config(hp)
            steps = config.steps_per_epoch or max(1, math.ceil(len(data.rows("train")) / config.batch_size))
            return compile_model(config, data.split_labels("train"), steps)

        def fit(self, hp, model, *args, callbacks=None, **kwargs):
            config = self.trial_config(hp)
            train_ds, val_ds, steps = make_datasets(data, config)
            # The AUROC callback goes first: the tuner's own callbacks read val_mean_auroc from the logs.
            first = [ValidationAUROC(val_ds, data.split_labels("val"), loss=model.loss), EpochStats()]
            return model.fit(train_ds, steps_per_epoch=steps, epochs=kwargs.get("epochs", config.epochs),
                             initial_epoch=kwargs.get("initial_epoch", 0), callbacks=first + list(callbacks or []),
                             verbose=config.verbose, shuffle=False)

    return CXRHyperModel()


def tuner_class(base):
    """``base`` (a keras-tuner Tuner class) that runs without the tensorboard package.

    keras-tuner 1.4 imports tensorboard in every trial on the TensorFlow
    backend, even when no TensorBoard callback is used, and tensorflow-cpu
    2.21 does not install it; every trial then fails.
    """

    class Tuner(base):
        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            if importlib.util.find_spec("tensorboard") is None:
                return None
            return super()._configure_tensorboard_dir(callbacks, trial, execution)

    Tuner.__name__ = base.__name__
    return Tuner


def results_table(tuner):
    """One row per trial: id, status, score, epochs, hyperparameters; best first."""
    import pandas as pd

    rows = []
    for trial in tuner.oracle.trials.values():
        rows.append({"trial": trial.trial_id, "status": str(trial.status), "val_mean_auroc": trial.score,
                     "best_step": trial.best_step, **trial.hyperparameters.values})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values("val_mean_auroc", ascending=False, na_position="last").reset_index(drop=True)


def to_markdown(frame) -> str:
    columns = list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = []
        for value in row:
            cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from training.train import config_from_args

    try:
        space = load_space(args.config)
        args.backbone = args.weights = args.input_size = args.batch_size = None
        args.resume = False
        config = config_from_args(args).with_overrides(out=args.out)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.trials < 1:
        print("error: --trials must be >= 1", file=sys.stderr)
        return 2

    import keras
    import keras_tuner as kt

    from cxr_core.learn import MONITOR, load_training_data

    keras.utils.set_random_seed(config.seed)
    data = load_training_data(config)
    hypermodel = make_hypermodel(config, data, space)
    objective = kt.Objective(MONITOR, direction="max")
    common = {"objective": objective, "directory": args.out, "project_name": "search", "seed": config.seed,
              "overwrite": args.overwrite}
    if (args.tuner or space["tuner"]) == "hyperband":
        tuner = tuner_class(kt.Hyperband)(hypermodel, max_epochs=config.epochs, factor=3, **common)
    else:
        tuner = tuner_class(kt.RandomSearch)(hypermodel, max_trials=args.trials, **common)
    tuner.search(epochs=config.epochs)

    out = Path(args.out)
    table = results_table(tuner)
    table.to_csv(out / "results.csv", index=False)
    header = (f"# Hyperparameter search\n\nObjective: validation mean AUROC (max) on {len(data.rows('val'))} "
              f"validation images; {len(data.rows('train'))} training images; {config.epochs} epochs per trial.\n\n")
    (out / "results.md").write_text(header + to_markdown(table), encoding="utf-8")
    best = tuner.get_best_hyperparameters(1)
    if best:
        best_config = hypermodel.trial_config(best[0]).to_dict()
        (out / "best_config.json").write_text(json.dumps(best_config, indent=2) + "\n", encoding="utf-8")
    print(to_markdown(table))
    print(f"results written to {out / 'results.csv'} and {out / 'results.md'}")
    if table.empty or not (table["status"] == "COMPLETED").any():
        print("error: no trial completed; see the messages above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
