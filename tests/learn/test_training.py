"""End-to-end training on real demo images and on synthetic bright-square images."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_core.bundle import Bundle
from cxr_core.data import NIHDataset, PatientLeakError, assert_patient_disjoint, make_split, preprocess
from cxr_core.findings import FINDINGS
from cxr_core.learn import (
    TrainConfig,
    WarmupCosine,
    choose_strategy,
    dataset_from_files,
    load_training_data,
    mean_auroc,
    parse_override,
    positive_weights,
    prepare_cache,
    train,
)

REPO = Path(__file__).resolve().parents[2]
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")


def make_bright_square_set(root: Path, *, patients: int = 40, per_patient: int = 2, size: int = 96, seed: int = 0) -> Path:
    """Named synthetic set "bright-square images", in the NIH layout.

    Gray noise films; every other image carries a bright square at a random
    place and is labelled "Mass", the others "No Finding". A model that
    learns anything from the pixels separates them.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(1, patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            pixels = rng.normal(90, 12, size=(size, size))
            mass = (p + k) % 2 == 0
            if mass:
                side = size // 4
                y, x = rng.integers(0, size - side, size=2)
                pixels[y : y + side, x : x + side] = 225
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images" / name)
            rows.append(f"{name},{'Mass' if mass else 'No Finding'},{k:03d},{p:08d},045Y,M,PA,{size},{size},0.143,0.143")
    (root / "Data_Entry_2017.csv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    return make_bright_square_set(tmp_path_factory.mktemp("synthetic") / "bright_squares")


def quick(**values) -> TrainConfig:
    base = {"backbone": "small_cnn", "input_size": 64, "batch_size": 8, "epochs": 1, "steps_per_epoch": 2,
            "verbose": 0, "tensorboard": False, "augment_strength": 0.5}
    return TrainConfig(**{**base, **values})


def test_train_on_demo_images_writes_a_usable_bundle(demo_root, tmp_path):
    config = quick(data=str(demo_root), out=str(tmp_path / "run"), limit_per_split=8)
    folder = train(config)
    assert folder == tmp_path / "run" / "bundle"
    bundle = Bundle.load(folder, expected_input_size=64)
    dataset = NIHDataset(demo_root)
    images = np.stack([preprocess(p, bundle.preprocessing) for p in dataset.csv["path"][:5]])
    probabilities = bundle.predict(images)
    assert probabilities.shape == (5, 14) and np.all((probabilities >= 0) & (probabilities <= 1))

    assert bundle.data["counts"] == {"train": 8, "val": 8, "test": 8}
    assert bundle.training["history"]["epochs_run"] == 1
    assert bundle.split["resolved_strategy"] == "patient" and bundle.split["seed"] == 0
    # The split in the bundle is make_split's, patient-disjoint, and covers every demo image.
    splits = pd.read_csv(folder / "splits.csv")
    assert len(splits) == len(dataset) and splits["used"].sum() == 24
    assert_patient_disjoint(splits["patient_id"], splits["split"])
    expected = dict(zip(dataset.csv["image"], make_split(dataset, seed=0)))
    assert all(expected[i] == s for i, s in zip(splits["image"], splits["split"]))
    # Positive weights come from the training images only.
    train_rows = np.flatnonzero(dataset.csv["image"].map(expected).to_numpy() == "train")[:8]
    np.testing.assert_allclose(bundle.training["positive_weights"], positive_weights(dataset.labels[train_rows]), rtol=1e-6)
    for name in ("log.csv", "config.json", "checkpoints/last.keras", "checkpoints/state.json"):
        assert (tmp_path / "run" / name).is_file(), name


def test_bright_squares_are_learned_through_the_cache(squares, tmp_path):
    cache = prepare_cache(squares, tmp_path / "cache", size=80, workers=1, progress=False)
    config = quick(cache=str(cache.root), out=str(tmp_path / "run"), epochs=8, steps_per_epoch=None,
                   learning_rate=1e-2, warmup_epochs=0.5, early_stopping_patience=0)
    bundle = Bundle.load(train(config))
    assert bundle.data["source"] == "cache" and bundle.data["counts"]["train"] == cache.manifest["counts"]["train"]
    history = bundle.training["history"]
    assert history["epochs_run"] == 8 and history["best_epoch"] is not None

    # Judge on the test split, read from the files through the one preprocessing.
    test = bundle.splits[bundle.splits["split"] == "test"]
    paths = [str(squares / "images" / name) for name in test["image"]]
    truth = np.array([[1.0 if int(name[:8]) % 2 == int(name[9:12]) % 2 else 0.0] for name in test["image"]])
    scores = bundle.model.predict(dataset_from_files(paths, preprocess=bundle.preprocessing, batch_size=16), verbose=0)
    mass = FINDINGS.index("Mass")
    auroc, _ = mean_auroc(truth, scores[:, [mass]])
    # Ranking alone would not prove learning: even an untrained CNN ranks the
    # brighter films higher (AUROC 1.0 here). Untrained, the probabilities
    # sit at 0.5 for every finding (gap ~0.01); trained, they must separate
    # Mass from no Mass and fall for the 13 findings that never occur.
    gap = scores[truth[:, 0] == 1, mass].mean() - scores[truth[:, 0] == 0, mass].mean()
    absent = np.delete(scores, mass, axis=1).mean()
    assert auroc > 0.9, f"test AUROC for the bright square was {auroc:.3f}"
    assert gap > 0.3, f"mean P(Mass) differs by only {gap:.3f} between films with and without a square"
    assert absent < 0.1, f"mean probability of findings absent from the data is {absent:.3f}"


def test_resume_continues_from_the_saved_epoch_with_optimizer_state(squares, tmp_path):
    out = tmp_path / "run"
    train(quick(data=str(squares), out=str(out), epochs=1))
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1
    first = keras.models.load_model(out / "checkpoints" / "last.keras")
    assert int(first.optimizer.iterations.numpy()) == 2

    train(quick(data=str(squares), out=str(out), epochs=3, resume=True))
    log = pd.read_csv(out / "log.csv")
    assert log["epoch"].tolist() == [0, 1, 2]
    resumed = keras.models.load_model(out / "checkpoints" / "last.keras")
    # 2 steps before the resume + 2 x 2 after: the optimizer state was carried over, not restarted.
    assert int(resumed.optimizer.iterations.numpy()) == 6
    assert json.loads((out / "checkpoints" / "state.json").read_text())["epoch"] == 3
    assert Bundle.load(out / "bundle").training["history"]["epochs_run"] == 3
    with pytest.raises(ValueError, match="cannot resume"):
        train(quick(data=str(squares), out=str(out), epochs=4, resume=True, input_size=48))


def test_training_checks_the_split_is_patient_disjoint(squares, monkeypatch):
    import cxr_core.data.splits as splits

    def leaky(dataset, **kwargs):
        out = np.array(["train"] * len(dataset), dtype=object)
        out[1] = "val"  # 00000001_001 is in val, 00000001_000 of the same patient in train
        return out

    monkeypatch.setattr(splits, "make_split", leaky)
    with pytest.raises(PatientLeakError):
        load_training_data(quick(data=str(squares)))


def test_a_cache_made_with_another_split_is_refused(squares, tmp_path):
    cache = prepare_cache(squares, tmp_path / "cache", size=64, workers=1, progress=False)
    with pytest.raises(ValueError, match="split with"):
        load_training_data(quick(cache=str(cache.root), split_seed=1))
    with pytest.raises(ValueError, match="exactly one of data"):
        load_training_data(quick())


def test_config_from_toml_with_overrides():
    config = TrainConfig.from_toml(REPO / "configs" / "cpu_small.toml", {"epochs": 3, "learning_rate": 1})
    assert (config.backbone, config.epochs, config.learning_rate, config.weights) == ("mobilenetv2", 3, 1.0, None)
    assert TrainConfig.from_toml(REPO / "configs" / "gpu_densenet121.toml").weights == "imagenet"
    assert parse_override("learning_rate=3e-4") == ("learning_rate", 3e-4)
    assert parse_override("split_fractions=[0.8, 0.1, 0.1]") == ("split_fractions", [0.8, 0.1, 0.1])
    assert parse_override("weights=imagenet") == ("weights", "imagenet")
    assert parse_override("focal_alpha=none") == ("focal_alpha", None)
    assert TrainConfig.from_dict({"split_fractions": [0.8, 0.1, 0.1]}).split_fractions == (0.8, 0.1, 0.1)
    with pytest.raises(ValueError, match="unknown configuration keys"):
        TrainConfig.from_dict({"learning_rte": 1e-3})
    with pytest.raises(ValueError, match="not a valid int"):
        TrainConfig.from_dict({"epochs": "many"})
    with pytest.raises(ValueError, match="backbone"):
        TrainConfig(backbone="vgg")


def test_warmup_cosine_schedule_and_mean_auroc_values():
    schedule = WarmupCosine(1e-3, total_steps=110, warmup_steps=10, floor=0.1)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(9)) == pytest.approx(1e-3)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(schedule(110)) == pytest.approx(1e-4)

    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 1, 1]])
    s = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.4, 0.2, 0.5], [0.5, 0.8, 0.5]])
    mean, per = mean_auroc(y, s)
    # column 0: positives 0.9, 0.4 vs negatives 0.2, 0.5 -> 3 of 4 pairs ordered; column 1: 1.0; column 2: no negatives
    assert per[0] == pytest.approx(0.75) and per[1] == pytest.approx(1.0) and math.isnan(per[2])
    assert mean == pytest.approx(0.875)


def test_strategy_on_this_machine_is_the_default_one():
    assert choose_strategy().num_replicas_in_sync == 1


@pytest.mark.parametrize("module", ["training.train", "training.prepare", "training.tune"])
def test_command_line_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: python -m " + module in result.stdout
