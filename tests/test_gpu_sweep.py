"""tools/gpu_sweep.py: the GPU exploration's pack, augmentation, training step and scoring, on the demo set.

The sweep runs on a machine without TensorFlow (Keras on JAX); here it runs on
the TensorFlow backend, which exercises the same Keras code path.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import numpy as np
import pytest

from cxr_core.learn.augment import AugmentConfig
from tools import gpu_sweep, sweep_score


@pytest.fixture(scope="module")
def pack_file(demo_root, tmp_path_factory):
    from cxr_core.learn.cache import prepare_cache

    root = tmp_path_factory.mktemp("sweep")
    prepare_cache(demo_root, root / "cache", size=gpu_sweep.STORED_SIZE, workers=1, progress=False)
    return root, gpu_sweep.pack(str(root / "cache"), str(root / "pack.npz"))


def test_pack_keeps_test_labels_home(pack_file):
    _, path = pack_file
    data = gpu_sweep.load_pack(str(path))
    assert data["images"].shape[1:] == (gpu_sweep.STORED_SIZE, gpu_sweep.STORED_SIZE)
    assert set(data["split"]) == {"train", "val", "test"}
    # The test split travels for self-supervised pretraining only, without its labels.
    assert (data["labels"][data["split"] == "test"] == -1).all()
    assert set(np.unique(data["labels"][data["split"] != "test"])) <= {0.0, 1.0}


def test_augment_without_strength_is_a_plain_resize():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, gpu_sweep.STORED_SIZE, dtype=np.float32), (gpu_sweep.STORED_SIZE, 1))
    images = np.stack([ramp, ramp.T]).astype(np.uint8)
    out = gpu_sweep.augment(images, rng, AugmentConfig(strength=0.0))
    reference = gpu_sweep.eval_views(images, tta=False)[0]
    assert out.shape == (2, gpu_sweep.INPUT_SIZE, gpu_sweep.INPUT_SIZE)
    assert np.abs(out - reference).mean() < 1.5
    strong = gpu_sweep.augment(images, rng, AugmentConfig(strength=2.0))
    assert np.abs(strong - reference).mean() > 5


def test_cutmix_labels_follow_the_pasted_area():
    rng = np.random.default_rng(1)
    x = np.zeros((64, 16, 16), np.float32)
    x[32:] = 1.0
    y = np.zeros((64, 14), np.float32)
    y[32:, 0] = 1.0
    mixed_x, mixed_y = gpu_sweep.mix(x, y, rng, mixup=0.0, cutmix=1.0)
    # Each label is the fraction of the image that came from a positive image.
    np.testing.assert_allclose(mixed_y[:, 0], mixed_x.mean(axis=(1, 2)), atol=1e-6)


def test_one_recipe_trains_and_scores(pack_file, tmp_path):
    root, path = pack_file
    data = gpu_sweep.load_pack(str(path))
    recipe = replace(gpu_sweep.RECIPES["sweep_ema"], backbone="small_cnn", epochs=2, batch_size=8)
    messages = []
    row = gpu_sweep.train_recipe(recipe, data, messages.append)
    assert [m.split()[2] for m in messages if ": epoch " in m] == ["1", "2"]  # a long run can be followed
    n_val = int((data["split"] == "val").sum())
    assert np.asarray(row["val_logits"]).shape == (n_val, 14)
    assert np.asarray(row["val_logits_tta"]).shape == (n_val, 14)
    assert not np.allclose(row["val_logits"], row["val_logits_tta"])
    assert 1 <= row["best_epoch"] <= row["epochs_run"] == 2
    (tmp_path / "results_w0.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.warns(Warning):  # findings absent from the tiny validation split are NaN, with a warning
        rows = sweep_score.score(str(tmp_path), str(root / "cache"), n_boot=20)
    # An EMA run also returns its own raw weights' scores, the paired reference.
    assert [r["recipe"] for r in rows] == ["sweep_ema", "sweep_ema+tta", "sweep_ema_raw", "sweep_ema_raw+tta"]
    assert not np.allclose(row["val_logits"], row["val_logits_raw"])
    assert all(0.0 <= r["val_mean_auroc"] <= 1.0 for r in rows)
    stored = tmp_path / "stored"  # the repository keeps a run's results merged and gzipped
    stored.mkdir()
    (stored / "results.jsonl.gz").write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    with pytest.warns(Warning):
        again = sweep_score.score(str(stored), str(root / "cache"), n_boot=20)
    assert [(r["recipe"], r["val_mean_auroc"]) for r in again] == [(r["recipe"], r["val_mean_auroc"]) for r in rows]
    doc = tmp_path / "experiments.md"
    doc.write_text("# Experiments\n")
    sweep_score.write_sweep_table(rows, str(doc), "a test CPU")
    sweep_score.write_sweep_table(rows, str(doc), "a test CPU")  # rewritten between its markers, not appended twice
    sweep_score.write_sweep_table(rows, str(doc), "a test CPU", table="cpu-sweep", reference="sweep_ema_raw")
    text = doc.read_text()
    assert text.count("<!-- gpu-sweep:start -->") == 1 and text.count("<!-- cpu-sweep:start -->") == 1
    assert "sweep_ema+tta" in text
    raw = next(r["val_mean_auroc"] for r in rows if r["recipe"] == "sweep_ema_raw")
    assert f"baseline = sweep_ema_raw, {raw:.3f}" in text


def test_weight_average_is_the_moving_average_of_every_step():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append([np.array(v.numpy()) for v in model.trainable_variables]))
    average = gpu_sweep.weight_average(0.5)
    rng = np.random.default_rng(0)
    model.fit(rng.random((16, 3)), rng.random((16, 2)), batch_size=4, epochs=1, verbose=0, callbacks=[record, average])
    expected = seen[0]
    for step in seen[1:]:
        expected = [0.5 * e + 0.5 * s for e, s in zip(expected, step)]
    raw = average.swap_in()
    # The averages are in the model now, the last step's weights were handed back.
    for var, want, last, back in zip(model.trainable_variables, expected, seen[-1], raw):
        np.testing.assert_allclose(var.numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(back, last)
    assert not np.allclose(expected[0], seen[-1][0])
    average.restore(raw)
    np.testing.assert_allclose(model.trainable_variables[0].numpy(), seen[-1][0])
    with pytest.raises(ValueError, match="momentum"):
        gpu_sweep.weight_average(1.0)
