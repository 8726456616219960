"""Test-time augmentation of an ensemble member: the views, the averaged scores, unchanged maps, the bundle key.

The members are the untrained small CNNs of ``tests/app_bundle.py`` (64 and
48 px): the tests check what the Predictor computes, not accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from cxr_core.bundle import Bundle, BundleError, assemble_ensemble, describe_model
from cxr_core.data import NIHDataset, preprocess
from cxr_core.experiments.harness import read_recipe
from cxr_core.serving import Predictor
from cxr_core.serving.members import Member
from cxr_core.serving.tta import CROP_FRACTION, crop_views, mean_over_views
from tests.app_bundle import TINY_MEMBERS, build_tiny_ensemble

WEIGHTS = np.array([w for *_, w in TINY_MEMBERS])


@pytest.fixture(scope="module")
def tta_ensemble(tmp_path_factory, demo_root) -> Path:
    """The tiny ensemble re-assembled with test-time augmentation on its first member only."""
    directory = tmp_path_factory.mktemp("tta")
    build_tiny_ensemble(directory, demo_root)
    return assemble_ensemble([directory / "runs" / name for name, *_ in TINY_MEMBERS], directory / "tta",
                             weights=list(WEIGHTS), names=[name for name, *_ in TINY_MEMBERS], tta_views=[6, 1])


def _image(demo_root) -> str:
    ds = NIHDataset(demo_root)
    return ds.csv.loc[ds.csv.image == ds.boxes["image"].iloc[0], "path"].item()


def _logits(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    head = keras.Model(model.inputs[0], model.get_layer("logits").output)
    return np.asarray(head(batch, training=False), dtype=np.float64)


def test_crop_views_are_the_four_corners_and_the_centre():
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(2, 48, 48, 1)).astype(np.float32)
    views = crop_views(batch)
    assert views.shape == (10, 48, 48, 1) and views.dtype == np.float32
    crop = int(round(48 * CROP_FRACTION))
    centre = (48 - crop) // 2
    offsets = [(0, 0), (0, 48 - crop), (48 - crop, 0), (48 - crop, 48 - crop), (centre, centre)]
    for k, (y, x) in enumerate(offsets):
        for i in range(2):  # view-major order: all images' first crop, then the second ...
            expected = cv2.resize(batch[i, y:y + crop, x:x + crop, 0], (48, 48), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(views[k * 2 + i, ..., 0], expected, atol=1e-6)
    averaged = mean_over_views(np.zeros((2, 3)), np.arange(30, dtype=float).reshape(10, 3))
    np.testing.assert_allclose(averaged[0], np.arange(30, dtype=float).reshape(5, 2, 3)[:, 0].sum(0) / 6)


def test_member_scores_average_the_six_views_and_maps_do_not(tta_ensemble, demo_root):
    path = _image(demo_root)
    predictor = Predictor.from_bundle(tta_ensemble)
    assert [m.tta_views for m in predictor.members] == [6, 1]
    bundles = [m.bundle for m in predictor.bundle.members]
    first = preprocess(path, bundles[0].preprocessing)[np.newaxis]
    second = preprocess(path, bundles[1].preprocessing)[np.newaxis]
    views = np.concatenate([first, crop_views(first)])
    first_logits = _logits(bundles[0].model, views).mean(axis=0)
    expected = 1 / (1 + np.exp(-(WEIGHTS[0] * first_logits + WEIGHTS[1] * _logits(bundles[1].model, second)[0])))
    np.testing.assert_allclose(list(predictor.predict(path).values()), expected, atol=1e-5)
    analysis = predictor.analyze(path, explain=["Mass", "Effusion"])
    np.testing.assert_allclose(list(analysis.raw_probabilities.values()), expected, atol=1e-5)
    # Without the views the scores differ, but the maps are the same: they are drawn over the full image.
    plain = Predictor(members=[Member(model=b.model, preprocess=b.preprocessing, weight=w, name=m.name)
                               for b, w, m in zip(bundles, WEIGHTS, predictor.members)])
    plain_analysis = plain.analyze(path, explain=["Mass", "Effusion"])
    assert np.abs(np.array(list(plain_analysis.raw_probabilities.values())) - expected).max() > 1e-4
    for finding in ("Mass", "Effusion"):
        np.testing.assert_allclose(analysis.heatmaps[finding], plain_analysis.heatmaps[finding], atol=1e-6)


def test_bundle_records_views_and_refuses_bad_ones(tta_ensemble, tmp_path):
    meta = json.loads((tta_ensemble / "bundle.json").read_text())
    assert [m.get("tta_views", 1) for m in meta["members"]] == [6, 1]
    assert describe_model(meta) == "ensemble of 2: small_cnn 64 px x 6 views + small_cnn 48 px"
    from tools.model_card import network_text

    card = network_text(meta)  # the model card names the views of the member that has them, only
    assert card.count("scored over 6 views") == 1
    assert card.index("scored over 6 views") < card.index(f"`{meta['members'][1]['name']}`")
    sources = [tta_ensemble.parent / "runs" / name for name, *_ in TINY_MEMBERS]
    with pytest.raises(BundleError, match="test-time views must be one of"):
        assemble_ensemble(sources, tmp_path / "bad", tta_views=[3, 1])
    with pytest.raises(BundleError, match="one tta_views per member"):
        assemble_ensemble(sources, tmp_path / "short", tta_views=[6])
    with pytest.raises(ValueError, match="test-time views"):
        Member(model=Bundle.load(sources[0]).model, preprocess=Bundle.load(sources[0]).preprocessing, tta_views=2)
    meta["members"][0]["tta_views"] = 4  # a hand-edited bundle.json gets a clear message too
    edited = tmp_path / "edited"
    shutil.copytree(tta_ensemble, edited)
    (edited / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="test-time views must be one of"):
        Predictor.from_bundle(edited)


def test_recipes_carry_tta_views(tmp_path):
    recipe = tmp_path / "ens.toml"
    recipe.write_text('[experiment]\nkind = "ensemble"\nmembers = ["a", "b"]\ntta_views = [6, 1]\n')
    assert read_recipe(recipe).tta_views == (6, 1)
