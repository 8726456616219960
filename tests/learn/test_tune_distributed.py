"""Distributed tuning for real (issue 12, item 2): keras-tuner's chief oracle and two workers on 127.0.0.1.

Three ``python -m training.tune`` processes, the same command line with
other KERASTUNER_* variables, run 4 tiny trials (small CNN, 64 px, one step,
eager) on the demo set. The chief writes the results; the table must list
each trial once, and both workers must have run some. Settings that cannot
work are refused with a message, in-process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cxr_core.learn.tuning import CHIEF, Distributed, TuningError, distributed_role
from tests.conftest import REPO_ROOT
from tests.learn.test_multi_worker import _free_ports

TINY = """
backbone = "small_cnn"
weights = "none"
input_size = 64
batch_size = 8
epochs = 1
steps_per_epoch = 1
augment_strength = 0.0
tensorboard = false
verbose = 2

[tune]
backbones = ["small_cnn"]
input_sizes = [64]
losses = ["weighted_bce", "bce"]
augment_strengths = [0.0]
"""
WORKERS = ("tuner0", "tuner1")


def _tune(config: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.tune", "--config", str(config), "--data", str(source), "--trials", "4",
            "--out", str(out), "--eager", *extra]


def _env(tuner_id: str, port: int) -> dict:
    return {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port), "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_a_chief_and_two_workers_run_every_trial_once(demo_root, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "search"
    port = _free_ports(1)[0]
    logs = {name: tmp_path / f"{name}.log" for name in (CHIEF, *WORKERS)}
    procs: dict[str, subprocess.Popen] = {}

    def tail() -> str:
        return "\n".join(f"--- {name}\n" + log.read_text()[-3000:] for name, log in logs.items() if log.exists())

    try:
        for name, log in logs.items():
            extra = ("--wait-for-workers", "2") if name == CHIEF else ()
            with open(log, "w") as handle:
                procs[name] = subprocess.Popen(_tune(config, demo_root, out, *extra), cwd=REPO_ROOT, env=_env(name, port),
                                               stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        codes = {}
        for name, proc in procs.items():
            try:
                codes[name] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish in time:\n{tail()}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == {CHIEF: 0, "tuner0": 0, "tuner1": 0}, tail()

    table = pd.read_csv(out / "results.csv", dtype={"trial": str})
    assert sorted(table["trial"]) == ["0", "1", "2", "3"], "every trial exactly once"
    assert (table["status"] == "COMPLETED").all(), tail()
    assert set(table["tuner"]) == set(WORKERS), "both workers ran trials; the chief none"
    assert (out / "best_config.json").is_file()
    assert (out / "results.md").read_text().count("| COMPLETED |") == 4
    for name in WORKERS:
        ran = table.loc[table["tuner"] == name, "trial"]
        text = logs[name].read_text()
        assert f"worker {name} done: ran trials {', '.join(sorted(ran, key=int))};" in text, tail()
        assert "results written" not in text, "workers write no results"
    assert "results written" in logs[CHIEF].read_text()


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "10.0.0.5", "KERASTUNER_ORACLE_PORT": "8000"},
     Distributed("chief", "10.0.0.5", 8000)),
    ({"KERASTUNER_TUNER_ID": "tuner1", "KERASTUNER_ORACLE_IP": "10.0.0.5", "KERASTUNER_ORACLE_PORT": " 8000 "},
     Distributed("tuner1", "10.0.0.5", 8000)),
])
def test_distributed_role_from_the_environment(env, expected):
    assert distributed_role(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"KERASTUNER_TUNER_ID": "tuner0"}, "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT are missing"),
    ({"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1"}, "KERASTUNER_ORACLE_PORT is missing"),
    ({"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}, "KERASTUNER_TUNER_ID is missing"),
    ({"KERASTUNER_TUNER_ID": "", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"},
     "KERASTUNER_TUNER_ID is missing"),
    ({"KERASTUNER_TUNER_ID": "chief2", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"},
     "exactly 'chief'"),
    ({"KERASTUNER_TUNER_ID": "tuner0", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "http"},
     "not a port number"),
])
def test_incomplete_distributed_settings_are_refused_plainly(env, message):
    with pytest.raises(TuningError, match=message):
        distributed_role(env)


def test_the_command_line_says_what_is_missing(tmp_path):
    """A worker without the chief's address: a one-line error and exit 2 before TensorFlow starts, no traceback."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")} | {"KERASTUNER_TUNER_ID": "tuner0"}
    result = subprocess.run(_tune(config, REPO_ROOT / "data" / "demo", tmp_path / "out"), cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: distributed tuning needs" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_chief_refuses_a_port_in_use():
    from cxr_core.learn.tuning import serve_oracle

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        role = Distributed(CHIEF, "127.0.0.1", busy.getsockname()[1])
        with pytest.raises(TuningError, match="cannot listen on 127.0.0.1"):
            serve_oracle(object(), role)
