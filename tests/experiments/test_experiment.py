"""The experiment harness on the demo set: two tiny recipes and their ensemble, one table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_core.experiments.harness import read_recipe, run_grid, write_table
from cxr_core.serving import Predictor, gradcam_plus_plus_per_finding, resize_map

TINY = """data = "{data}"
out = "{out}"
backbone = "small_cnn"
input_size = {size}
train_mode = "linear_head"
head_steps = 40
box_loss_weight = {box}
explanation = "{explanation}"
feature_cache_dir = "{cache}"
batch_size = 16
verbose = 0
tensorboard = false

[experiment]
name = "{name}"
description = "tiny {name}"
"""


@pytest.fixture(scope="module")
def grid(demo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    files = []
    for name, size, box, explanation in (("tiny_box", 64, 0.3, "gradcam"), ("tiny_plain", 48, 0.0, "gradcam++")):
        path = root / f"{name}.toml"
        path.write_text(TINY.format(data=demo_root.as_posix(), out=(root / "runs" / name).as_posix(), size=size, box=box,
                                    explanation=explanation, cache=(root / "features").as_posix(), name=name))
        files.append(path)
    ensemble = root / "tiny_ensemble.toml"
    ensemble.write_text('[experiment]\nname = "tiny_ensemble"\nkind = "ensemble"\n'
                        'members = ["tiny_box", "tiny_plain"]\nweights = [0.5, 0.5]\nmap_weights = [1, 0]\n'
                        'description = "both tiny recipes; maps from tiny_box only"\n')
    files.append(ensemble)
    results = run_grid(files, data_root=demo_root, runs=root / "runs")
    return root, files, results


def test_one_row_per_recipe_with_the_validation_columns(grid):
    root, _, results = grid
    assert sorted(results["recipe"]) == ["tiny_box", "tiny_ensemble", "tiny_plain"]
    for row in results.to_dict(orient="records"):
        assert 0.0 <= row["val_mean_auroc"] <= 1.0
        assert row["val_auroc_ci_low"] <= row["val_mean_auroc"] <= row["val_auroc_ci_high"]
        assert row["val_boxes"] > 0 and 0.0 <= row["val_t_iobb_0.1"] <= 1.0  # demo validation images carry boxes
        assert row["parameters"] > 0 and row["wall_s"] > 0 and row["train_images_per_s"] > 0
    ensemble = results.set_index("recipe").loc["tiny_ensemble"]
    members = results.set_index("recipe").loc[["tiny_box", "tiny_plain"]]
    assert ensemble["parameters"] == members["parameters"].sum()
    assert pd.read_csv(root / "runs" / "results.csv").shape[0] == 3


def test_the_table_is_written_between_markers_and_a_rerun_skips_measured_recipes(grid, demo_root):
    root, files, results = grid
    doc = root / "experiments.md"
    doc.write_text("# Experiments\n\nintro stays\n\n<!-- experiments:start -->\nold\n<!-- experiments:end -->\n\nend stays\n")
    write_table(results, doc)
    text = doc.read_text()
    assert "intro stays" in text and "end stays" in text and "old" not in text
    assert text.count("| tiny_") == 3 and "val mean AUROC (95% CI)" in text
    before = (root / "runs" / "results.csv").stat().st_mtime_ns
    again = run_grid(files, data_root=demo_root, runs=root / "runs")
    assert (root / "runs" / "results.csv").stat().st_mtime_ns == before and len(again) == 3


def test_rows_measured_elsewhere_stay_in_the_table_and_measured_recipes_replace_theirs(grid):
    """results.csv is not committed: a run on a fresh machine adds to the document's record, never erases it."""
    root, _, results = grid
    doc = root / "record.md"
    header = "| recipe | what | val mean AUROC (95% CI) | x |\n|---|---|---|---|\n"
    doc.write_text("<!-- experiments:start -->\n" + header
                   + "| earlier_recipe | measured on another machine | 0.999 (0.9–1.0) | x |\n"
                   + "| tiny_box | a stale row | 0.001 (0.0–0.1) | x |\n<!-- experiments:end -->\n")
    write_table(results, doc)
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0].startswith("| earlier_recipe |")  # best validation AUROC first, whoever measured it
    assert sum(r.startswith("| tiny_box |") for r in rows) == 1 and "a stale row" not in doc.read_text()
    assert len(rows) == 4


def test_ensemble_maps_follow_the_map_weights_and_each_members_method(grid, demo_root):
    root, _, _ = grid
    predictor = Predictor.from_bundle(root / "runs" / "tiny_ensemble" / "bundle")
    assert [m.explanation for m in predictor.members] == ["gradcam", "gradcam++"]
    np.testing.assert_allclose(predictor.map_weights, [1.0, 0.0])
    np.testing.assert_allclose(predictor.weights, [0.5, 0.5])
    image = sorted((demo_root / "images").glob("*.png"))[0]
    analysis = predictor.analyze(image, explain=["Effusion"])
    member = predictor.members[0]
    from cxr_core.data import preprocess

    x = preprocess(image, member.preprocess)
    reference = gradcam_plus_plus_per_finding(member.model, x, 2, method="gradcam")
    expected = resize_map(reference, analysis.image.pixels.shape)
    np.testing.assert_allclose(analysis.heatmaps["Effusion"], expected, atol=1e-4)


def test_bad_recipes_get_plain_messages(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nkind = "ensemble"\nmembers = ["only_one"]\n')
    with pytest.raises(ValueError, match="at least two"):
        read_recipe(bad)
    bad.write_text("not toml = = =")
    with pytest.raises(ValueError, match="cannot read recipe"):
        read_recipe(bad)
