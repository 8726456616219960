"""Multi-worker training for real (issue 12, item 1): two MultiWorkerMirroredStrategy workers on 127.0.0.1.

Each worker is a ``python -m training.train`` process with its own TF_CONFIG,
reading a 64 px cache of the demo set made by ``training.prepare`` (one
TFRecord file per split: the case tf.distribute's FILE auto-sharding refused).
``CXR_WORKER_DEBUG_DIR`` makes each worker write its part of the training
images, the sums of its first batch and its final weights there.

The two cluster tests are slow (TensorFlow start-up and collectives on 2
cores, about 2.5 minutes together): marked ``slow``, still run by ``pytest``
and so by .ci/run. The sharding and learning-rate rules are checked in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, demo_root) -> Path:
    out = tmp_path_factory.mktemp("mw") / "cache64"
    result = subprocess.run([sys.executable, "-m", "training.prepare", "--data", str(demo_root), "--size", "64",
                             "--out", str(out), "--workers", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.parametrize("shard_size", [512, 40])
def test_workers_divide_a_cached_split_exactly(demo_cache, demo_root, tmp_path, shard_size):
    """One file per split: records divided k::n; several files (shard_size 40): whole files divided."""
    from cxr_core.data import PreprocessConfig
    from cxr_core.findings import FINDINGS
    from cxr_core.learn.cache import open_cache, prepare_cache
    from cxr_core.learn.pipeline import cache_shard, dataset_from_cache

    if shard_size == 512:
        cache = open_cache(demo_cache)
    else:
        cache = prepare_cache(demo_root, tmp_path / "c", size=64, workers=1, shard_size=shard_size, progress=False)
    files = cache.files("train")
    parts = [cache_shard(cache, "train", (k, 3)) for k in range(3)]
    names = [set(p.images) for p in parts]
    assert set().union(*names) == set(cache.split_index("train")["image"]) and sum(map(len, names)) == len(cache.split_index("train"))
    if len(files) >= 3:
        assert all(p.records is None for p in parts) and [p.files for p in parts] == [files[k::3] for k in range(3)]
    else:
        assert [p.records for p in parts] == [(3, k) for k in range(3)]
    for k, part in enumerate(parts):
        dataset = dataset_from_cache(cache, "train", preprocess=PreprocessConfig(size=64), batch_size=1000, shard=(k, 3))
        _, labels = next(iter(dataset))
        index = cache.split_index("train").set_index("image")
        expected = index.loc[part.images, list(FINDINGS)].to_numpy()
        np.testing.assert_array_equal(np.sort(labels.numpy(), axis=0), np.sort(expected, axis=0))


def test_learning_rate_rules():
    from cxr_core.learn import TrainConfig
    from cxr_core.learn.engine import lr_scale

    assert lr_scale(TrainConfig(), 8) == 8.0 and lr_scale(TrainConfig(), 1) == 1.0
    assert lr_scale(TrainConfig(lr_scaling="sqrt"), 4) == 2.0 and lr_scale(TrainConfig(lr_scaling="none"), 4) == 1.0
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig(lr_scaling="cubic")


class Cluster:
    """Two workers of one training run; worker 0 is the chief."""

    def __init__(self, tmp_path: Path, cache: Path, *, epochs: int, steps: int | None = None) -> None:
        self.out = tmp_path / "run"
        self.debug = tmp_path / "debug"
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)
        ports = _free_ports(2)
        self.cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        self.args = [sys.executable, "-m", "training.train", "--config", str(REPO_ROOT / "configs" / "cpu_small.toml"),
                     "--cache", str(cache), "--backbone", "small_cnn", "--input-size", "64", "--epochs", str(epochs),
                     "--batch-size", "8", "--out", str(self.out), "--set", "verbose=2", "--set", "tensorboard=false",
                     "--set", "early_stopping_patience=0"]
        if steps:
            self.args += ["--set", f"steps_per_epoch={steps}"]
        self.procs: dict[int, subprocess.Popen] = {}
        self.starts = 0

    def start(self, task: int) -> None:
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": self.cluster, "task": {"type": "worker", "index": task}}),
               "CXR_WORKER_DEBUG_DIR": str(self.debug),
               "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "TF_NUM_INTRAOP_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.starts += 1
        log = open(self.logs / f"worker{task}-{self.starts}.log", "w")
        self.procs[task] = subprocess.Popen(self.args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, task: int, timeout: float) -> int:
        try:
            return self.procs[task].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"worker {task} did not finish in {timeout} s:\n{self.tail()}")

    def run_to_the_end(self) -> None:
        """Start both workers and check both exit 0."""
        self.start(0)
        self.start(1)
        codes = [self.wait(0, 150), self.wait(1, 60)]
        assert codes == [0, 0], self.tail()

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-2500:] for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_two_workers_train_one_model_on_different_data(demo_cache, tmp_path):
    cluster = Cluster(tmp_path, demo_cache, epochs=2)
    try:
        cluster.run_to_the_end()
    finally:
        cluster.stop()
    out = cluster.out
    assert (out / "bundle" / "bundle.json").is_file()
    assert sorted(p.name for p in out.iterdir() if (p / "bundle.json").is_file()) == ["bundle"], "one bundle"
    assert not list(out.glob("worker-*-tmp")), "workers remove their temporary folders"
    assert not (out / "backup").exists(), "the chief removes the backup when training ends"
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    training = meta["training"]
    assert training["replicas"] == 2 and training["global_batch"] == 16
    assert training["learning_rate"] == {"configured": 1e-3, "scaling": "linear", "multiplier": 2.0}
    assert training["history"]["epochs_run"] == 2

    parts = [json.loads((cluster.debug / f"worker-{k}.json").read_text()) for k in (0, 1)]
    assert [p["worker"] for p in parts] == [0, 1] and all(p["per_replica_batch"] == 8 for p in parts)
    first, second = (set(p["images"]) for p in parts)
    assert first and second and not first & second, "each worker reads its own images"
    index = pd.read_csv(demo_cache / "index.csv")
    assert first | second == set(index.loc[index["split"] == "train", "image"]), "together they read the whole train split"
    assert parts[0]["first_batch_sums"] != parts[1]["first_batch_sums"], "their first batches differ"

    weights = [np.load(cluster.debug / f"worker-{k}.weights.npz") for k in (0, 1)]
    assert weights[0].files == weights[1].files
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])


@pytest.mark.slow
def test_a_killed_worker_restarted_continues_from_the_backup(demo_cache, tmp_path):
    """SIGKILL worker 1 during epoch 2; the chief's collectives fail; both restart and finish from epoch 1's backup."""
    cluster = Cluster(tmp_path, demo_cache, epochs=3, steps=30)
    metadata = cluster.out / "backup" / "training_metadata.json"
    try:
        cluster.start(0)
        cluster.start(1)
        deadline = time.monotonic() + 150
        while not metadata.is_file():
            assert time.monotonic() < deadline, f"no backup after epoch 1:\n{cluster.tail()}"
            assert cluster.procs[0].poll() is None and cluster.procs[1].poll() is None, cluster.tail()
            time.sleep(0.2)
        time.sleep(0.5)  # into epoch 2 (30 steps of ~0.1 s)
        assert json.loads(metadata.read_text())["epoch"] == 1
        cluster.procs[1].send_signal(signal.SIGKILL)
        cluster.procs[1].wait()
        # The chief's next collective fails (the peer's socket closed) and it exits with an error;
        # a cluster manager would then restart both failed tasks, as here.
        assert cluster.wait(0, 90) != 0, cluster.tail()
        cluster.run_to_the_end()
    finally:
        cluster.stop()
    restarted = (cluster.logs / "worker0-3.log").read_text()
    assert "restored from the backup" in restarted and "continuing at epoch 2" in restarted, cluster.tail()
    log_rows = pd.read_csv(cluster.out / "log.csv")
    assert log_rows["epoch"].tolist() == [0, 1, 2], "epoch 1 is not run again; epochs 2 and 3 follow it"
    assert (cluster.out / "bundle" / "bundle.json").is_file() and not list(cluster.out.glob("worker-*-tmp"))
