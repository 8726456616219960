"""Ensemble bundles: assembly, loading, logit averaging, explanations, calibration after averaging, batch prediction.

The members are untrained small CNNs (random weights, seeds 0 and 1) at 64 and
48 px with different normalisations, over one patient-wise demo split
(``tests/app_bundle.py``): these tests check that the ensemble computes what it
promises, member by member, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from cxr_core.bundle import Bundle, BundleError, EnsembleBundle, assemble_ensemble, describe_model, load_bundle
from cxr_core.data import NIHDataset, decode_image, preprocess
from cxr_core.evaluation import fit_calibration
from cxr_core.findings import FINDINGS
from cxr_core.jobs import predict_files
from cxr_core.serving import Predictor, gradcam_plus_plus_per_finding, resize_map
from tests.app_bundle import TINY_MEMBERS, build_tiny_bundle, build_tiny_ensemble, tiny_app_ensemble
from tests.bundle.test_bundle_paths import assert_portable

WEIGHTS = np.array([w for *_, w in TINY_MEMBERS])


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, demo_root) -> Path:
    """An assembled ensemble, not evaluated (no calibration yet)."""
    return build_tiny_ensemble(tmp_path_factory.mktemp("ensemble"), demo_root)


@pytest.fixture(scope="module")
def members(ensemble) -> list[Bundle]:
    """The member bundles the ensemble was assembled from (their original folders)."""
    return [Bundle.load(ensemble.parent / "runs" / name) for name, *_ in TINY_MEMBERS]


@pytest.fixture(scope="module")
def predictor(ensemble) -> Predictor:
    return Predictor.from_bundle(ensemble)


def _image(demo_root, with_box=True) -> str:
    ds = NIHDataset(demo_root)
    name = ds.boxes["image"].iloc[0] if with_box else ds.image_names[3]
    return ds.csv.loc[ds.csv.image == name, "path"].item()


def _logits(bundle: Bundle, path: str) -> np.ndarray:
    """A member's logits for one file, through its own preprocessing, computed outside the Predictor."""
    model = keras.Model(bundle.model.inputs[0], bundle.model.get_layer("logits").output)
    return np.asarray(model(preprocess(path, bundle.preprocessing)[np.newaxis], training=False), dtype=np.float64)[0]


def _by_hand(members: list[Bundle], path: str) -> np.ndarray:
    logits = sum(w * _logits(b, path) for w, b in zip(WEIGHTS, members))
    return 1.0 / (1.0 + np.exp(-logits))


def test_assembled_layout_and_metadata(ensemble, members):
    meta = json.loads((ensemble / "bundle.json").read_text())
    assert meta["format_version"] == 2 and meta["combine"] == "logit_mean" and meta["findings"] == list(FINDINGS)
    assert "input_size" not in meta and "preprocessing" not in meta  # one per member, never one for all
    assert [m["name"] for m in meta["members"]] == ["a64", "b48"]
    assert [m["input_size"] for m in meta["members"]] == [64, 48]
    np.testing.assert_allclose([m["weight"] for m in meta["members"]], WEIGHTS)
    assert meta["backbone"] == describe_model(meta) == "ensemble of 2: small_cnn 64 px + small_cnn 48 px"
    for entry, source in zip(meta["members"], members):
        folder = ensemble / entry["path"]
        # The model file is a byte copy; the member keeps its training provenance.
        assert (folder / "model.keras").read_bytes() == (source.path / "model.keras").read_bytes()
        member_meta = json.loads((folder / "bundle.json").read_text())
        assert member_meta["format_version"] == 1 and member_meta["input_size"] == entry["input_size"]
        source_meta = json.loads((source.path / "bundle.json").read_text())
        source_meta["split"].pop("file")  # splits.csv is the ensemble's
        for key in ("created", "code", "training", "split", "model", "data"):
            assert member_meta[key] == source_meta[key], key
        assert member_meta["preprocessing"] == entry["preprocessing"] == source.preprocessing.to_dict()
    shared = pd.read_csv(ensemble / "splits.csv")
    pd.testing.assert_frame_equal(shared[["image", "patient_id", "split"]], members[0].splits[["image", "patient_id", "split"]],
                                  check_dtype=False)
    # No path of the machine that assembled it, in the ensemble's or the members' bundle.json.
    assert_portable(meta, ensemble.parent)
    for entry in meta["members"]:
        assert_portable(json.loads((ensemble / entry["path"] / "bundle.json").read_text()), ensemble.parent)


def test_loading(ensemble):
    with pytest.raises(BundleError, match="ensemble bundle of 2 members"):
        Bundle.load(ensemble)
    loaded = load_bundle(ensemble)
    assert isinstance(loaded, EnsembleBundle) and loaded.input_sizes == [64, 48]
    assert [m.bundle.model is not None for m in loaded.members] == [True, True]
    member = Bundle.load(ensemble / "members" / "a64", load_model=False)
    assert loaded.split_of("nope.png") is None and member.splits is None  # the split is the ensemble's
    image = loaded.splits["image"].iloc[0]
    assert loaded.split_of(image) == Bundle.load(ensemble.parent / "runs" / "a64", load_model=False).split_of(image)
    assert isinstance(load_bundle(ensemble / "members" / "a64", load_model=False), Bundle)
    # A member whose model does not match the size the ensemble records is refused.
    meta = json.loads((ensemble / "bundle.json").read_text())
    broken = ensemble.parent / "broken"
    broken.mkdir()
    for name in ("members", "splits.csv"):
        (broken / name).symlink_to(ensemble / name)
    meta["members"][1]["input_size"] = 64
    (broken / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="input size"):
        load_bundle(broken)


def test_predict_is_the_sigmoid_of_the_weighted_mean_logit(predictor, members, demo_root):
    assert predictor.is_ensemble and predictor.input_sizes == (64, 48) and predictor.calibration is None
    for path in (_image(demo_root), _image(demo_root, with_box=False)):
        expected = _by_hand(members, path)
        got = predictor.predict(path)
        assert list(got) == list(FINDINGS)
        np.testing.assert_allclose(list(got.values()), expected, atol=1e-5)
        # The members disagree enough that averaging probabilities instead would be caught.
        probability_mean = sum(w / (1.0 + np.exp(-_logits(b, path))) for w, b in zip(WEIGHTS, members))
        assert np.abs(probability_mean - expected).max() > 1e-3
        analysis = predictor.analyze(path, explain=[])
        np.testing.assert_allclose(list(analysis.raw_probabilities.values()), expected, atol=1e-5)


def test_explain_averages_each_members_tf_keras_vis_map(predictor, members, demo_root):
    path = _image(demo_root)
    wanted = ["Mass", "Effusion", "Nodule"]
    maps = predictor.analyze(path, explain=wanted).heatmaps
    shape = decode_image(path).pixels.shape
    informative = 0
    for finding in wanted:
        index = FINDINGS.index(finding)
        member_maps = []
        for bundle in members:
            reference = gradcam_plus_plus_per_finding(bundle.model, preprocess(path, bundle.preprocessing), index)
            informative += reference.max() > 0.5
            resized = resize_map(reference, shape)
            # Each member's own fast map equals tf-keras-vis on that member's whole model.
            alone = Predictor(bundle.model, preprocess=bundle.preprocessing).analyze(path, explain=[finding]).heatmaps[finding]
            np.testing.assert_allclose(alone, resized, atol=1e-4, err_msg=f"{finding} {bundle.input_size} px")
            member_maps.append(resized)
        expected = sum(w * m for w, m in zip(WEIGHTS, member_maps))
        assert maps[finding].shape == shape and maps[finding].dtype == np.float32
        np.testing.assert_allclose(maps[finding], expected, atol=1e-4, err_msg=finding)
    assert informative >= 3  # real maps are compared, not empty ones


def test_calibration_is_fitted_after_averaging(tmp_path_factory, demo_root):
    evaluated = tiny_app_ensemble(tmp_path_factory, demo_root)
    meta = json.loads((evaluated / "bundle.json").read_text())
    assert meta["calibration"] and len(meta["thresholds"]["values"]) == 14 and meta["members"]
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["localization"]["n_boxes"] > 0 and not Path(metrics["data"]["root"]).is_absolute()
    member_bundles = [Bundle.load(evaluated / m["path"]) for m in meta["members"]]

    # Refit on the validation images' averaged outputs, computed by hand: the same calibration.
    dataset = NIHDataset(demo_root)
    split = dataset.csv["image"].map(pd.read_csv(evaluated / "splits.csv").set_index("image")["split"]).to_numpy()
    val = np.flatnonzero(split == "val")
    raw_val = np.stack([_by_hand(member_bundles, p) for p in dataset.csv["path"].to_numpy()[val]])
    refit = fit_calibration(dataset.labels[val], raw_val, method=meta["calibration"]["method"])
    stored = Predictor.from_bundle(evaluated)
    np.testing.assert_allclose(refit.apply(raw_val), stored.calibration.apply(raw_val), atol=1e-4)
    # And the Predictor applies it to the averaged output.
    path = dataset.csv["path"].iloc[val[0]]
    np.testing.assert_allclose(list(stored.predict(path).values()), stored.calibration.apply(raw_val[:1])[0], atol=1e-5)


def test_batch_prediction_feeds_each_member_its_size(predictor, demo_root, tmp_path):
    from training.predict import main

    folder = tmp_path / "images"
    folder.mkdir()
    names = sorted(p.name for p in (demo_root / "images").glob("*.png"))[:4]
    for name in names:
        (folder / name).write_bytes((demo_root / "images" / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    table = predict_files(predictor, sorted(folder.iterdir()), batch_size=3, heatmap_dir=tmp_path / "maps")
    assert table["Image Index"].tolist() == sorted(names + ["broken.png"])
    for row in table[table["error"] == ""].itertuples(index=False):
        expected = predictor.predict(folder / row[0])
        np.testing.assert_allclose([getattr(row, f) for f in FINDINGS], list(expected.values()), atol=1e-6)
    maps = np.load(tmp_path / "maps" / f"{names[0][:-4]}.npz")
    assert len(maps.files) == 14 and maps["Mass"].shape == (64, 64)  # the largest member's size

    out = tmp_path / "preds.csv"
    assert main(["--bundle", str(predictor.bundle.path), "--images", str(folder), "--out", str(out)]) == 0
    written = pd.read_csv(out, keep_default_na=False)
    assert len(written) == 5 and written.loc[written["Image Index"] == "broken.png", "error"].item()


def test_members_on_different_splits_are_refused(ensemble, demo_root, tmp_path):
    first = ensemble.parent / "runs" / "a64"
    other = build_tiny_bundle(tmp_path / "other_split", demo_root, size=48, split_seed=1)
    with pytest.raises(BundleError, match="trained on different splits"):
        assemble_ensemble([first, other], tmp_path / "ens")
    assert not (tmp_path / "ens" / "bundle.json").exists()
    no_splits = tmp_path / "no_splits"
    build_tiny_bundle(no_splits, demo_root, size=48)
    (no_splits / "splits.csv").unlink()
    with pytest.raises(BundleError, match="has no splits.csv"):
        assemble_ensemble([first, no_splits], tmp_path / "ens")


def test_assembly_arguments_are_checked(ensemble, tmp_path):
    runs = [ensemble.parent / "runs" / name for name, *_ in TINY_MEMBERS]
    with pytest.raises(BundleError, match="at least two"):
        assemble_ensemble(runs[:1], tmp_path / "e1")
    with pytest.raises(BundleError, match="weights"):
        assemble_ensemble(runs, tmp_path / "e2", weights=[1.0])
    with pytest.raises(BundleError, match="non-negative"):
        assemble_ensemble(runs, tmp_path / "e3", weights=[1.0, -1.0])
    with pytest.raises(BundleError, match="distinct"):
        assemble_ensemble(runs, tmp_path / "e4", names=["x", "x"])
    with pytest.raises(BundleError, match="already holds"):
        assemble_ensemble(runs, ensemble)
    with pytest.raises(BundleError, match="ensemble bundle"):
        assemble_ensemble([ensemble, runs[0]], tmp_path / "e5")


def test_ensemble_command_and_float16(ensemble, tmp_path, capsys):
    from training.ensemble import main

    runs = [str(ensemble.parent / "runs" / name) for name, *_ in TINY_MEMBERS]
    out = tmp_path / "ens16"
    assert main(["--members", *runs, "--weights", "1", "3", "--float16", "--out", str(out)]) == 0
    assert "ensemble of 2: small_cnn 64 px + small_cnn 48 px" in capsys.readouterr().out
    meta = json.loads((out / "bundle.json").read_text())
    np.testing.assert_allclose([m["weight"] for m in meta["members"]], [0.25, 0.75])
    assert {m["weights_dtype"] for m in meta["members"]} == {"float16"}
    assert [m["name"] for m in meta["members"]] == ["m1_small_cnn_64", "m2_small_cnn_48"]
    assert Predictor.from_bundle(out).predict(np.full((80, 80), 0.5, dtype=np.float32))
    assert main(["--members", runs[0], "--out", str(tmp_path / "one")]) == 2
    assert "at least two members" in capsys.readouterr().err


def test_reports_describe_the_ensemble(tmp_path_factory, demo_root):
    from cxr_core.reporting import json_report, model_summary, pdf_report

    evaluated = tiny_app_ensemble(tmp_path_factory, demo_root)
    predictor = Predictor.from_bundle(evaluated)
    analysis = predictor.analyze(_image(demo_root), explain=["Mass", "Effusion"])
    summary = model_summary(predictor.metadata)
    assert summary["backbone"] == "ensemble of 2: small_cnn 64 px + small_cnn 48 px" and summary["input_size"] == [64, 48]
    doc = json_report(analysis, predictor.metadata, source_name="x.png", thresholds=predictor.thresholds)
    assert "ensemble of 2" in json.dumps(doc)
    assert pdf_report(analysis, predictor.metadata, source_name="x.png", thresholds=predictor.thresholds)[:4] == b"%PDF"


def test_an_eager_start_gives_the_compiled_numbers_and_maps_and_switches_once_traced(ensemble, predictor, demo_root):
    """compiled=False (the app's start): the first analyses run op by op, with the same numbers and maps as the
    compiled calls; warm_up traces every member and switches it to its graphs, and an analysis running meanwhile
    on another thread still answers."""
    import threading

    path = _image(demo_root)
    eager = Predictor.from_bundle(ensemble, compiled=False)
    assert not eager.is_compiled and predictor.is_compiled
    first = eager.analyze(path)
    assert not eager.is_compiled  # an analysis alone does not trace
    eager.compile_member(0)  # the app traces one member at a time between analyses
    assert [r.compiled for r in eager._runners] == [True, False]
    np.testing.assert_allclose(list(eager.analyze(path).raw_probabilities.values()),
                               list(first.raw_probabilities.values()), rtol=1e-5, atol=1e-6)
    reference = predictor.analyze(path)
    np.testing.assert_allclose(list(first.raw_probabilities.values()), list(reference.raw_probabilities.values()),
                               rtol=1e-5, atol=1e-6)
    for finding in FINDINGS:
        np.testing.assert_allclose(first.heatmaps[finding], reference.heatmaps[finding], atol=1e-4)
    answers, errors = [], []

    def analyse_meanwhile():
        try:
            answers.extend(eager.analyze(_image(demo_root, with_box=False)).probabilities for _ in range(3))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=analyse_meanwhile)
    thread.start()
    steps: list[str] = []
    eager.warm_up(steps.append)
    thread.join()
    assert not errors and len(answers) == 3
    assert eager.is_compiled and steps[0].startswith("compiling 2 members")
    again = eager.analyze(path)
    np.testing.assert_allclose(list(again.raw_probabilities.values()), list(first.raw_probabilities.values()),
                               rtol=1e-5, atol=1e-6)


def test_a_member_kept_out_of_the_maps_is_not_explained(ensemble, tmp_path, demo_root):
    """Map weight 0 (as the EfficientNet-Lite members of the shipped model): its heatmap head is never run, and the
    maps are the other member's."""
    from dataclasses import replace

    members = Predictor.from_bundle(ensemble).members
    kept_out = Predictor(members=[replace(members[0], map_weight=1.0), replace(members[1], map_weight=0.0)])
    only_first = Predictor(members=[members[0]])

    def refuse(*_args, **_kwargs):
        raise AssertionError("the member kept out of the maps was explained")

    kept_out._runners[1].explainer.__class__ = type("Refusing", (type(kept_out._runners[1].explainer),), {"__call__": refuse})
    path = _image(demo_root)
    maps = kept_out.analyze(path).heatmaps
    alone = only_first.analyze(path).heatmaps
    for finding in FINDINGS:
        np.testing.assert_allclose(maps[finding], alone[finding], atol=1e-6)
