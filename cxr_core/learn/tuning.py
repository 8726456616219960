"""Hyperparameter search with keras-tuner, in one process or in keras-tuner's distributed mode.

Objective: validation mean AUROC (max). Searched: learning rate (log scale),
backbone, input size, loss and augmentation strength; the ranges come from the
``[tune]`` table of the TOML file (:func:`load_space`), everything else from
the :class:`~cxr_core.learn.config.TrainConfig`.

Distributed mode is keras-tuner's own, chosen by three environment variables
(see docs/build/tuning.md): ``KERASTUNER_TUNER_ID`` (``chief`` for the process
that runs the oracle, ``tuner0``, ``tuner1`` ... for the workers),
``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` (where the chief's
gRPC service listens and the workers connect). The chief hands out trials and
records their results; each worker asks it for a trial, runs it, reports back
and asks again until the oracle has none left. Only the chief (or the single
process) writes ``results.csv``, ``results.md`` and ``best_config.json``, from
its oracle's records, so every trial is listed once with the worker that ran
it (``tuner``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cxr_core.learn.config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_SPACE = {
    "learning_rate": [1e-4, 3e-3],
    "backbones": ["small_cnn", "mobilenetv2"],
    "input_sizes": [128, 160],
    "losses": ["weighted_bce", "focal", "bce"],
    "augment_strengths": [0.0, 0.5, 1.0],
    "tuner": "random",
}
TUNERS = ("random", "hyperband")
#: keras-tuner's project folder inside the search folder (trials, oracle state).
PROJECT = "search"
ENV_ID, ENV_IP, ENV_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"
CHIEF = "chief"
#: How often the chief checks whether the search is over, and a worker told to wait asks again (seconds).
POLL_S = 0.5


class TuningError(ValueError):
    """A search that cannot run as asked (its settings, its distributed environment); the message says why."""


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's part in keras-tuner's distributed mode, read from its KERASTUNER_* variables."""

    tuner_id: str
    ip: str
    port: int

    @property
    def chief(self) -> bool:
        return self.tuner_id == CHIEF

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


def distributed_role(environ: Mapping[str, str] | None = None) -> Distributed | None:
    """The distributed part of this process, or None for a search in one process.

    ``environ`` defaults to ``os.environ``, which keras-tuner itself reads:
    pass another mapping only to check settings.

    Raises:
        TuningError: some of the three variables set but not all, an id that
            keras-tuner would take for a second chief, or a port that is not one.
    """
    env = os.environ if environ is None else environ
    names = (ENV_ID, ENV_IP, ENV_PORT)
    present = [name for name in names if name in env]
    if not present:
        return None
    missing = [name for name in names if not env.get(name, "").strip()]
    if missing:
        raise TuningError(
            f"distributed tuning needs {ENV_ID}, {ENV_IP} and {ENV_PORT} all set; "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing or empty. Set all three "
            f"({ENV_ID}=chief for the oracle's process, tuner0, tuner1 ... for the workers; the chief's address "
            "and port for every process), or none of them to search in one process. See docs/build/tuning.md."
        )
    tuner_id = env[ENV_ID].strip()
    if CHIEF in tuner_id and tuner_id != CHIEF:
        raise TuningError(f"{ENV_ID}={tuner_id!r}: keras-tuner takes every id containing 'chief' for the chief; "
                          "name the chief exactly 'chief' and the workers e.g. tuner0, tuner1")
    port = env[ENV_PORT].strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TuningError(f"{ENV_PORT}={port!r} is not a port number (1 to 65535)")
    return Distributed(tuner_id, env[ENV_IP].strip(), int(port))


def load_space(config_file: str | os.PathLike) -> dict:
    """The [tune] table of the TOML file over the defaults; unknown keys are refused."""
    with open(config_file, "rb") as handle:
        table = tomllib.load(handle).get("tune", {})
    unknown = sorted(set(table) - set(DEFAULT_SPACE))
    if unknown:
        raise TuningError(f"unknown [tune] keys {unknown}; valid: {', '.join(DEFAULT_SPACE)}")
    space = {**DEFAULT_SPACE, **table}
    low, high = space["learning_rate"]
    if not 0 < low < high:
        raise TuningError("[tune] learning_rate must be [low, high] with 0 < low < high")
    if space["tuner"] not in TUNERS:
        raise TuningError(f"[tune] tuner must be one of {', '.join(TUNERS)}, not {space['tuner']!r}")
    return space


def make_hypermodel(base: TrainConfig, data, space: dict, *, eager: bool = False):
    """A keras-tuner HyperModel whose ``fit`` builds the datasets of each trial (size and augmentation vary).

    ``eager``: run each trial's model eagerly, without tracing its training
    and prediction graphs: seconds faster for a trial of a few steps (smoke
    runs, tests), much slower for a real one.
    """
    import keras_tuner as kt

    from cxr_core.learn.callbacks import EpochStats, ValidationAUROC
    from cxr_core.learn.engine import compile_model, make_datasets

    class CXRHyperModel(kt.HyperModel):
        def trial_config(self, hp) -> TrainConfig:
            return base.with_overrides(
                learning_rate=hp.Float("learning_rate", space["learning_rate"][0], space["learning_rate"][1], sampling="log"),
                backbone=hp.Choice("backbone", list(space["backbones"])),
                input_size=hp.Choice("input_size", [int(s) for s in space["input_sizes"]]),
                loss=hp.Choice("loss", list(space["losses"])),
                augment_strength=hp.Choice("augment_strength", [float(s) for s in space["augment_strengths"]]),
            )

        def declare_hyperparameters(self, hp):
            self.trial_config(hp)

        def build(self, hp):
            config = self.trial_config(hp)
            steps = config.steps_per_epoch or max(1, math.ceil(len(data.rows("train")) / config.batch_size))
            model = compile_model(config, data.split_labels("train"), steps)
            model.run_eagerly = eager
            return model

        def fit(self, hp, model, *args, callbacks=None, **kwargs):
            config = self.trial_config(hp)
            train_ds, val_ds, steps = make_datasets(data, config)
            # The AUROC callback goes first: the tuner's own callbacks read val_mean_auroc from the logs.
            first = [ValidationAUROC(val_ds, data.split_labels("val"), loss=model.loss), EpochStats()]
            return model.fit(train_ds, steps_per_epoch=steps, epochs=kwargs.get("epochs", config.epochs),
                             initial_epoch=kwargs.get("initial_epoch", 0), callbacks=first + list(callbacks or []),
                             verbose=config.verbose, shuffle=False)

    return CXRHyperModel()


def _oracle_class(base, wait_for_workers: int):
    """``base`` (a keras-tuner Oracle class) that records which tuner ran each trial (``tuner_of``, kept with
    its state) and, given ``wait_for_workers``, hands out no trial before that many workers have asked."""
    import keras_tuner as kt
    from keras_tuner.engine.trial import Trial, TrialStatus

    class Oracle(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tuner_of: dict[str, str] = {}
            self.asked: set[str] = set()

        @kt.synchronized
        def create_trial(self, tuner_id):
            self.asked.add(tuner_id)
            if len(self.asked) < wait_for_workers:
                return Trial(self.get_space(), status=TrialStatus.IDLE)
            trial = super().create_trial(tuner_id)
            if trial.status == TrialStatus.RUNNING:
                self.tuner_of[trial.trial_id] = tuner_id
            return trial

        def get_state(self):
            return {**super().get_state(), "tuner_of": dict(self.tuner_of)}

        def set_state(self, state):
            super().set_state(state)
            self.tuner_of = dict(state.get("tuner_of", {}))

    Oracle.__name__ = base.__name__
    return Oracle


def _tuner_class(base, role: Distributed | None):
    """``base`` (a keras-tuner Tuner class) given its oracle, for this process's ``role``.

    - It runs without the tensorboard package: keras-tuner 1.4 imports
      tensorboard in every trial on the TensorFlow backend, even when no
      TensorBoard callback is used, and every trial would then fail.
    - The search space is declared without building a model (there are no
      conditional hyperparameters), so the chief needs no model at all.
    - On the chief, ``search`` serves the oracle (:func:`serve_oracle`).
    - A worker told to wait (an IDLE trial) asks again after ``POLL_S``
      instead of at once, in a loop.
    - A worker logs the error of a trial that failed (keras-tuner keeps it
      on the worker: the chief gets only the status).
    """
    import importlib.util

    import keras_tuner as kt
    from keras_tuner.engine.trial import TrialStatus

    class Tuner(base):
        def __init__(self, oracle, hypermodel, **kwargs):
            # base.__init__ (RandomSearch, Hyperband) only builds its own oracle, then calls this.
            kt.Tuner.__init__(self, oracle, hypermodel, **kwargs)
            self.trials_run: list[str] = []
            self._waiting = False

        def _populate_initial_space(self):
            hp = self.oracle.get_space()
            self.hypermodel.declare_hyperparameters(hp)
            self.oracle.update_space(hp)

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            if importlib.util.find_spec("tensorboard") is None:
                return None
            return super()._configure_tensorboard_dir(callbacks, trial, execution)

        def search(self, *args, **kwargs):
            if role is not None and role.chief:
                self.save()
                serve_oracle(self.oracle, role)
                return
            super().search(*args, **kwargs)

        def pre_create_trial(self):
            if self._waiting:  # the oracle's last answer was IDLE: no trial yet
                time.sleep(POLL_S)
            self._waiting = True

        def on_trial_begin(self, trial):
            self._waiting = False
            self.trials_run.append(trial.trial_id)
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            if role is not None and not role.chief and trial.status != TrialStatus.COMPLETED:
                # keras-tuner does not send a trial's error to the chief: say it here, in the worker's log.
                log.error("worker %s: trial %s %s:\n%s", role.tuner_id, trial.trial_id, trial.status, trial.message)
            super().on_trial_end(trial)

    Tuner.__name__ = base.__name__
    return Tuner


def serve_oracle(oracle, role: Distributed, *, poll_s: float = POLL_S) -> None:
    """Serve ``oracle`` to the workers at ``role.address`` until every trial has ended and every worker was told to stop.

    keras-tuner's own ``oracle_chief.start_server`` with three changes: it
    checks for the end every ``poll_s`` instead of every 20 s once the first
    worker has been stopped, it says plainly when the port cannot be had, and
    it does not share its port with another process (no SO_REUSEPORT).

    Raises:
        TuningError: the address cannot be listened on.
    """
    from concurrent import futures

    import grpc

    # No SO_REUSEPORT (gRPC's default): a second chief on the same port must fail, not share the workers.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)])
    try:
        bound = server.add_insecure_port(role.address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise TuningError(f"the chief cannot listen on {role.address} ({ENV_IP}, {ENV_PORT}): "
                          "the port is taken, or the address is not one of this machine's")
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    server.start()
    log.info("chief: the oracle serves trials at %s; waiting for the workers", role.address)
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=5).wait()
    log.info("chief: every trial has ended and every worker has been stopped")


def results_table(oracle) -> pd.DataFrame:
    """One row per trial of ``oracle``: id, status, score, epochs, the tuner that ran it, hyperparameters; best first."""
    tuner_of = getattr(oracle, "tuner_of", {})
    rows = []
    for trial in oracle.trials.values():
        rows.append({"trial": trial.trial_id, "status": str(trial.status), "val_mean_auroc": trial.score,
                     "best_step": trial.best_step, "tuner": tuner_of.get(trial.trial_id, ""),
                     **trial.hyperparameters.values})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values("val_mean_auroc", ascending=False, na_position="last").reset_index(drop=True)


def to_markdown(frame: pd.DataFrame) -> str:
    columns = list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = [f"{value:.4g}" if isinstance(value, float) else str(value) for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class SearchOutcome:
    """What :func:`run_search` did in this process."""

    role: Distributed | None
    #: This process's trials (a worker's; all of them in one process).
    trials_run: list[str]
    #: The results table (chief or single process); None on a worker, which writes none.
    table: pd.DataFrame | None = None
    #: The files written (chief or single process).
    files: list[Path] = dataclasses.field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.table is not None and not self.table.empty and bool((self.table["status"] == "COMPLETED").any())


def run_search(config: TrainConfig, space: dict, *, trials: int, tuner: str | None = None, overwrite: bool = False,
               wait_for_workers: int = 0, eager: bool = False) -> SearchOutcome:
    """Run this process's part of the search in ``config.out``.

    In one process (no KERASTUNER_* variable set): the whole search. As the
    chief: serve the oracle until the workers have run every trial, then write
    the results. As a worker: run trials until the chief has none left; write
    no results. ``trials`` (random search) and ``wait_for_workers`` matter on
    the chief; ``overwrite`` (start afresh) is ignored on a worker, which must
    never delete the chief's records. An interrupted search resumes from
    ``config.out`` when run again without ``overwrite``. ``eager``: see
    :func:`make_hypermodel`.

    Raises:
        TuningError: bad settings or distributed environment, a chief that
            cannot listen, a worker that lost the chief.
    """
    role = distributed_role()
    if trials < 1:
        raise TuningError("the number of trials must be at least 1")
    kind = tuner or space["tuner"]
    if kind not in TUNERS:
        raise TuningError(f"tuner must be one of {', '.join(TUNERS)}, not {kind!r}")
    worker = role is not None and not role.chief
    if worker and overwrite:
        log.warning("worker %s: --overwrite is for the chief (or a single process); ignored", role.tuner_id)
    if wait_for_workers and (role is None or worker):
        log.warning("waiting for workers is for the chief; ignored")

    import keras
    import keras_tuner as kt

    from cxr_core.learn.callbacks import MONITOR
    from cxr_core.learn.training_data import load_training_data

    keras.utils.set_random_seed(config.seed)
    data = load_training_data(config)
    hypermodel = make_hypermodel(config, data, space, eager=eager)
    # In distributed mode a failing streak must not stop the oracle: keras-tuner raises inside the
    # chief's gRPC handler, the worker gets an error and the chief waits for that trial forever.
    failures = {"max_consecutive_failed_trials": None} if role is not None else {}
    common = {"objective": kt.Objective(MONITOR, direction="max"), "seed": config.seed, **failures}
    if kind == "hyperband":
        oracle = _oracle_class(kt.oracles.HyperbandOracle, wait_for_workers)(max_epochs=config.epochs, factor=3, **common)
        base = kt.Hyperband
    else:
        oracle = _oracle_class(kt.oracles.RandomSearchOracle, wait_for_workers)(max_trials=trials, **common)
        base = kt.RandomSearch
    search = _tuner_class(base, role)(oracle, hypermodel, directory=str(config.out), project_name=PROJECT,
                                      overwrite=overwrite and not worker)
    if worker:
        log.info("worker %s: asking the chief at %s for trials (waits for it to start)", role.tuner_id, role.address)
        import grpc

        try:
            search.search(epochs=config.epochs)
        except grpc.RpcError as exc:
            raise TuningError(f"worker {role.tuner_id}: the chief oracle at {role.address} failed or went away "
                              f"({exc.code().name}: {exc.details()})") from exc
        return SearchOutcome(role, list(search.trials_run))
    search.search(epochs=config.epochs)

    out = Path(config.out)
    table = results_table(search.oracle)
    files = [out / "results.csv", out / "results.md"]
    table.to_csv(files[0], index=False)
    tuners = sorted({t for t in table["tuner"] if t}) if role is not None and not table.empty else []
    header = (f"# Hyperparameter search\n\nObjective: validation mean AUROC (max) on {len(data.rows('val'))} "
              f"validation images; {len(data.rows('train'))} training images; {config.epochs} epochs per trial"
              + (f"; trials run by {', '.join(tuners)} (distributed)" if tuners else "") + ".\n\n")
    files[1].write_text(header + to_markdown(table), encoding="utf-8")
    # keras-tuner ranks unfinished and failed trials after the completed ones: only a completed one is "best".
    best = [t for t in search.oracle.get_best_trials(1) if t.status == kt.engine.trial.TrialStatus.COMPLETED]
    best_file = out / "best_config.json"
    if best:
        files.append(best_file)
        best_file.write_text(json.dumps(hypermodel.trial_config(best[0].hyperparameters).to_dict(), indent=2) + "\n",
                             encoding="utf-8")
    else:
        best_file.unlink(missing_ok=True)  # an earlier search's, in the same folder
    return SearchOutcome(role, list(search.trials_run), table, files)
