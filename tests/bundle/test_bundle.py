"""Model bundles: save/load round trip, metadata updates, refusal of mismatched bundles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_core.bundle import Bundle, BundleError, load_weights_into
from cxr_core.data import PreprocessConfig
from cxr_core.findings import FINDINGS
from cxr_core.learn import build_model

SIZE = 48


def make_bundle(size=SIZE, width=16) -> Bundle:
    model = build_model("small_cnn", size, small_cnn_width=width)
    # Non-trivial weights so that a failed copy would show in the predictions.
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in model.get_weights()])
    splits = pd.DataFrame({"image": ["00000001_000.png", "00000002_000.png", "00000003_000.png"],
                           "patient_id": [1, 2, 3], "split": ["train", "val", "test"]})
    return Bundle(model=model, input_size=size, preprocessing=PreprocessConfig(size), backbone="small_cnn",
                  model_config={"backbone": "small_cnn", "input_size": size}, data={"counts": {"train": 1}},
                  split={"strategy": "patient", "seed": 0, "fractions": [0.7, 0.1, 0.2]}, splits=splits,
                  training={"history": {"epochs_run": 1}})


@pytest.fixture()
def inputs():
    return np.random.default_rng(1).normal(size=(4, SIZE, SIZE, 1)).astype(np.float32)


def test_save_and_load_round_trip(tmp_path, inputs):
    bundle = make_bundle()
    folder = bundle.save(tmp_path / "bundle")
    assert {p.name for p in folder.iterdir()} == {"model.keras", "bundle.json", "splits.csv"}
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["findings"] == list(FINDINGS) and meta["input_size"] == SIZE
    assert meta["preprocessing"] == PreprocessConfig(SIZE).to_dict()
    assert meta["split"]["file"] == "splits.csv" and meta["code"]["cxr_core"]
    assert meta["created"] and meta["weights_dtype"] == "float32"

    loaded = Bundle.load(folder, expected_input_size=SIZE)
    predictions = loaded.predict(inputs)
    assert predictions.shape == (4, 14) and np.all((predictions >= 0) & (predictions <= 1))
    np.testing.assert_allclose(predictions, bundle.model.predict(inputs, verbose=0), atol=1e-6)
    assert loaded.model.get_layer("features") is not None
    assert loaded.split_of("00000001_000.png") == "train"
    assert loaded.split_of("/uploads/00000003_000.png") == "test"
    assert loaded.split_of("99999999_000.png") is None
    with pytest.raises(BundleError, match="already holds"):
        bundle.save(folder)


def test_update_metadata_adds_keys_and_keeps_unknown_ones(tmp_path):
    folder = make_bundle().save(tmp_path / "bundle")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["written_by_a_newer_version"] = {"x": 1}
    (folder / "bundle.json").write_text(json.dumps(meta))

    Bundle.update_metadata(folder, thresholds={"Effusion": 0.31}, metrics={"auroc": float("nan")})
    stored = json.loads((folder / "bundle.json").read_text())
    assert stored["thresholds"] == {"Effusion": 0.31}
    assert stored["metrics"] == {"auroc": None}  # strict JSON: NaN is stored as null
    assert stored["written_by_a_newer_version"] == {"x": 1}
    assert stored["training"] == {"history": {"epochs_run": 1}}
    with pytest.raises(BundleError, match="cannot change findings"):
        Bundle.update_metadata(folder, findings=list(reversed(FINDINGS)))

    # Loading and saving again keeps the extra keys too.
    loaded = Bundle.load(folder)
    assert loaded.get("thresholds") == {"Effusion": 0.31}
    resaved = json.loads((loaded.save(tmp_path / "again") / "bundle.json").read_text())
    assert resaved["written_by_a_newer_version"] == {"x": 1} and resaved["thresholds"] == {"Effusion": 0.31}


def test_load_refuses_other_findings_order_or_input_size(tmp_path):
    folder = make_bundle().save(tmp_path / "bundle")
    meta_file = folder / "bundle.json"
    original = json.loads(meta_file.read_text())

    swapped = dict(original)
    swapped["findings"] = [FINDINGS[1], FINDINGS[0], *FINDINGS[2:]]
    meta_file.write_text(json.dumps(swapped))
    with pytest.raises(BundleError, match="findings order"):
        Bundle.load(folder)

    resized = dict(original, input_size=SIZE * 2, preprocessing={**original["preprocessing"], "size": SIZE * 2})
    meta_file.write_text(json.dumps(resized))
    with pytest.raises(BundleError, match="takes 48 px images but the bundle says 96 px"):
        Bundle.load(folder)

    meta_file.write_text(json.dumps(original))
    with pytest.raises(BundleError, match="expected 224 px"):
        Bundle.load(folder, expected_input_size=224)
    assert Bundle.load(folder, expected_input_size=SIZE).input_size == SIZE


def test_load_weights_into_checks_size_and_architecture(tmp_path, inputs):
    bundle = make_bundle()
    folder = bundle.save(tmp_path / "bundle")
    target = build_model("small_cnn", SIZE)
    load_weights_into(target, folder)
    np.testing.assert_allclose(target.predict(inputs, verbose=0), bundle.model.predict(inputs, verbose=0), atol=1e-6)
    with pytest.raises(BundleError, match="takes 64 px"):
        load_weights_into(build_model("small_cnn", 64), folder)
    with pytest.raises(BundleError, match="architecture does not match"):
        load_weights_into(build_model("small_cnn", SIZE, small_cnn_width=8), folder)
    with pytest.raises(BundleError, match="findings order"):
        load_weights_into(target, Bundle.load(folder), expected_findings=tuple(reversed(FINDINGS)))


def test_float16_storage_halves_the_weights_and_loads_as_float32(tmp_path, inputs):
    bundle = make_bundle(width=32)
    full = bundle.save(tmp_path / "full")
    half = bundle.save(tmp_path / "half", float16=True)
    full_size, half_size = (full / "model.keras").stat().st_size, (half / "model.keras").stat().st_size
    assert half_size < 0.6 * full_size
    loaded = Bundle.load(half)
    assert loaded.get("weights_dtype") == "float16"
    assert {w.dtype for w in loaded.model.weights} == {"float32"}
    np.testing.assert_allclose(loaded.predict(inputs), bundle.model.predict(inputs, verbose=0), atol=5e-3)


def test_a_folder_without_bundle_json_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="preprocessing size"):
        Bundle(model=None, input_size=64, preprocessing=PreprocessConfig(48), backbone="small_cnn")
