"""The not-a-frontal-chest-X-ray warning: the simple rules, the learned check, its fit command, where it shows.

Images named ``synthetic_*`` are made in the test (noise, blank, strips); the
in-distribution images are the demo set's real NIH films, and the cropped
ones are crops of them (a third of the side, enlarged back, as
benchmarks/ood.py makes them). The learned check runs on a tiny untrained
bundle (tests/app_bundle.py), so those tests check the plumbing and the
direction of the scores; the scale score needs no model and is tested on the
real films at the shipped model's 224 px; the shipped model's own check is
tested last (skipped without it). benchmarks/ood.py measures the rates.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_core.bundle.format import Bundle, read_metadata
from cxr_core.data import NIHDataset, decode_image
from cxr_core.jobs import predict_to_csv
from cxr_core.jobs.ood_fit import fit_ood
from cxr_core.reporting import json_report
from cxr_core.screening.ood import (
    OOD_KEY,
    OOD_WARNING,
    PPCA,
    conformal_threshold,
    fit_reference,
    global_average,
    load_reference,
    pooled,
    spectrum_profile,
)
from cxr_core.screening.rules import ASPECT_RANGE, MIN_SHORT_SIDE, rule_warnings
from cxr_core.serving import Predictor
from tests.app_bundle import build_tiny_bundle

# -- the simple rules on synthetic images ----------------------------------------


def _synthetic_film(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic film-like image: smooth gradient plus texture, full contrast."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = 0.5 + 0.3 * np.sin(x / max(width, 1) * 6) * np.cos(y / max(height, 1) * 4) + 0.1 * rng.random((height, width))
    return np.clip(image, 0, 1).astype(np.float32)


def test_rules_pass_a_synthetic_film_of_chest_proportions():
    assert rule_warnings(_synthetic_film(1024, 1024)) == []
    assert rule_warnings(_synthetic_film(320, 320)) == []  # the NIH copies here are 320 px
    assert rule_warnings(_synthetic_film(1000, 820)) == []  # 14 x 17 in portrait


@pytest.mark.parametrize(
    "name, shape, words",
    [
        ("synthetic_thumbnail", (128, 128), "only 128 × 128"),
        ("synthetic_strip", (300, 1200), "width/height 4.00"),
        ("synthetic_line", (1, 20_000), "only 20000 × 1"),
        ("synthetic_tall", (1200, 500), "width/height 0.42"),
    ],
)
def test_rules_warn_about_size_and_shape(name, shape, words):
    notes = rule_warnings(_synthetic_film(*shape))
    assert notes and any(words in n for n in notes), (name, notes)


def test_rules_warn_about_a_near_constant_synthetic_image():
    blank = np.full((512, 512), 0.6, dtype=np.float32)
    faint = blank + np.random.default_rng(0).normal(0, 0.003, blank.shape).astype(np.float32)
    for image in (blank, faint, np.zeros((400, 400), np.float32)):
        notes = rule_warnings(image)
        assert len(notes) == 1 and "nearly uniform" in notes[0]
    # The rules judge the stored shape, when given, not the array's.
    assert any("only" in n for n in rule_warnings(_synthetic_film(512, 512), shape=(100, 100)))
    assert MIN_SHORT_SIDE == 256 and ASPECT_RANGE == (0.6, 1.7)


# -- the learned check's fit, on synthetic features -------------------------------


def test_fit_reference_thresholds_on_validation_and_flags_far_points():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 40))
    train = rng.normal(size=(500, 6)) @ basis + 0.1 * rng.normal(size=(500, 40))
    val = rng.normal(size=(400, 6)) @ basis + 0.1 * rng.normal(size=(400, 40))
    reference, fit = fit_reference(train, val, components=6, false_alarm=0.01)
    # (n, D) features and no images: the feature score alone, with the whole budget.
    assert fit["alpha"] == 0.01 and set(fit["bounds"]) == {"feature"}
    assert fit["scores"]["layout"] is None and fit["scores"]["grid"] is None and fit["scores"]["scale"] is None
    assert reference.template is None and reference.grid is None and reference.scale is None
    # ceil(401 * 0.99) = 397th of 400: 3 validation values above it.
    assert np.sum(fit["scores"]["feature"] > reference.threshold) == 3
    # Off the training subspace (isotropic noise of the same size) and far along it are both flagged.
    off = rng.normal(size=(50, 40)) * np.linalg.norm(basis, axis=1).mean()
    along = rng.normal(size=(50, 6)) @ basis * 6
    assert reference.distance(off).min() > reference.threshold
    assert np.mean(reference.distance(along) > reference.threshold) > 0.9


def test_conformal_threshold_is_the_order_statistic_with_its_bound():
    values = np.random.default_rng(1).permutation(np.arange(1.0, 100.0))  # 1 .. 99
    assert conformal_threshold(values, 0.05) == (95.0, 0.05)  # ceil(100 * 0.95) = 95th smallest
    assert conformal_threshold(values, 0.05, below=True) == (5.0, 0.05)  # 95th largest
    assert conformal_threshold(values, 0.001) == (99.0, 0.01)  # capped at the maximum: bound 1 / (n + 1)
    assert conformal_threshold(values, 0.001, below=True) == (1.0, 0.01)
    with pytest.raises(ValueError):
        conformal_threshold([], 0.05)


def test_pooled_grid_averages_quarters_and_keeps_the_global_average():
    rng = np.random.default_rng(2)
    even = rng.random((3, 14, 14, 5))
    grid = pooled(even)
    assert grid.shape == (3, 2, 2, 5)
    assert np.allclose(grid[:, 0, 1], even[:, :7, 7:].mean(axis=(1, 2)))
    assert np.allclose(grid[:, 1, 0], even[:, 7:, :7].mean(axis=(1, 2)))
    for shape in ((5, 5), (7, 3), (1, 1)):  # sides not a multiple of 2: a pixel is split between cells
        odd = rng.random((2, *shape, 4))
        assert np.allclose(global_average(pooled(odd)), odd.mean(axis=(1, 2))), shape
    flat = rng.random((4, 5))
    assert pooled(flat) is not None and np.array_equal(global_average(pooled(flat)), flat)  # (n, D) passes through


def _crop(film: np.ndarray, side: float, rng) -> np.ndarray:
    """A ``side`` fraction of the film's side at a random place, enlarged back to the film's size (as benchmarks/ood.py)."""
    import cv2

    h, w = film.shape
    ch, cw = int(h * side), int(w * side)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.clip(cv2.resize(np.ascontiguousarray(film[y : y + ch, x : x + cw]), (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def test_scale_score_flags_cropped_real_films_and_passes_the_whole_ones(demo_root):
    """The scale score on the demo set's real NIH films at 224 px: fitted on 3 in 5 of them, thresholded on 1 in 5
    (budget 1%: the validation maximum), tried on the other 1 in 5, whole and cropped to a third of their side."""
    from cxr_core.data.preprocessing import resize_to_model

    films = [decode_image(p).pixels for p in sorted((demo_root / "images").glob("*.png"))]
    inputs = np.stack([resize_to_model(x, 224) for x in films])
    fold = np.arange(len(films)) % 5
    model = PPCA.fit(spectrum_profile(inputs[fold < 3]), 4)
    threshold, _ = conformal_threshold(model.distance(spectrum_profile(inputs[fold == 3])), 0.01)
    held_out = np.flatnonzero(fold == 4)
    whole = model.distance(spectrum_profile(inputs[held_out]))
    rng = np.random.default_rng(3)
    cropped = model.distance(spectrum_profile(np.stack([resize_to_model(_crop(films[i], 0.33, rng), 224) for i in held_out])))
    assert np.mean(whole > threshold) <= 0.05, whole.round(2)
    assert np.mean((cropped > threshold) & (whole <= threshold)) >= 0.6, cropped.round(2)  # cropped flagged, whole not
    assert np.mean(cropped > whole) >= 0.9 and np.median(cropped) > 2 * np.median(whole)


# -- the learned check on a tiny bundle ---------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, demo_root):
    """A tiny bundle with its reference fitted on the demo set's split."""
    bundle = build_tiny_bundle(tmp_path_factory.mktemp("ood") / "tiny", demo_root)
    fit_ood(bundle, demo_root, components=8, max_train=None, log=lambda line: None)
    return bundle


@pytest.fixture(scope="module")
def predictor(fitted):
    return Predictor.from_bundle(fitted)


def _test_images(demo_root, predictor, n: int = 12) -> list[str]:
    dataset = NIHDataset(demo_root)
    return [p for name, p in zip(dataset.csv["image"], dataset.csv["path"]) if predictor.split_of(name) == "test"][:n]


def test_demo_films_pass_and_noise_and_turned_films_warn(predictor, demo_root):
    assert predictor.ood is not None and predictor.ood.template is not None
    films = [decode_image(p).pixels for p in _test_images(demo_root, predictor)]
    passed = [OOD_WARNING not in predictor.analyze(x, explain=[]).warnings for x in films]
    assert np.mean(passed) >= 0.9
    rng = np.random.default_rng(0)
    synthetic_noise = [rng.random((320, 320)).astype(np.float32) for _ in range(6)]
    upside_down = [np.ascontiguousarray(x[::-1]) for x in films[:6]]
    inverted = [1.0 - x for x in films[:6]]
    rotated = [np.ascontiguousarray(np.rot90(x)) for x in films[:6]]
    for what, images, rate in (("noise", synthetic_noise, 1.0), ("upside down", upside_down, 1.0),
                               ("inverted", inverted, 1.0), ("rotated 90°", rotated, 0.5)):
        analyses = [predictor.analyze(x, explain=[]) for x in images]
        warned = [OOD_WARNING in a.warnings for a in analyses]
        assert np.mean(warned) >= rate, (what, [a.input_check for a in analyses])
        assert all(a.probabilities for a in analyses)  # warned, never blocked


def test_a_bundle_without_a_reference_skips_the_learned_check_but_keeps_the_rules(fitted, tmp_path, demo_root):
    old = tmp_path / "old"
    shutil.copytree(fitted, old)
    meta = json.loads((old / "bundle.json").read_text())
    for name in list(old.glob("ood_reference-*.npz")):
        name.unlink()
    del meta[OOD_KEY]
    (old / "bundle.json").write_text(json.dumps(meta))
    predictor = Predictor.from_bundle(old)
    assert predictor.ood is None
    film = decode_image(_test_images(demo_root, predictor, 1)[0]).pixels
    analysis = predictor.analyze(np.ascontiguousarray(film[::-1]), explain=[])
    assert analysis.input_check is None and OOD_WARNING not in analysis.warnings
    small = predictor.analyze(np.ascontiguousarray(film[:100, :100]), explain=[])
    assert any("only 100 × 100" in w for w in small.warnings)
    # A key whose file is gone is skipped the same way, silently.
    meta[OOD_KEY] = read_metadata(fitted)[OOD_KEY]
    (old / "bundle.json").write_text(json.dumps(meta))
    assert load_reference(old, meta) is None and Predictor.from_bundle(old).ood is None


def test_a_reference_fitted_before_the_grid_and_scale_scores_still_loads(fitted, tmp_path, demo_root):
    """An "ood" entry without "grid" and "scale" (as fitted before they existed) loads with those two scores skipped."""
    old = tmp_path / "old"
    shutil.copytree(fitted, old)
    meta = json.loads((old / "bundle.json").read_text())
    for key in ("grid", "scale"):
        del meta[OOD_KEY][key]
    (old / "bundle.json").write_text(json.dumps(meta))
    predictor = Predictor.from_bundle(old)
    assert predictor.ood is not None and predictor.ood.grid is None and predictor.ood.scale is None
    film = decode_image(_test_images(demo_root, predictor, 1)[0]).pixels
    check = predictor.analyze(np.ascontiguousarray(film[::-1]), explain=[]).input_check
    assert check["grid_distance"] is None and check["scale_distance"] is None and check["grid_threshold"] is None
    assert check["layout_margin"] is not None and check["unlike_training"] and "layout" in check["beyond"]
    assert set(check["beyond"]) <= {"feature", "layout"}


def test_fit_command_updates_bundle_json_in_place_keeping_other_keys(fitted, tmp_path, demo_root, monkeypatch):
    from training import fit_ood as command

    bundle = tmp_path / "b"
    shutil.copytree(fitted, bundle)
    before = read_metadata(bundle)
    old_file = before[OOD_KEY]["file"]
    assert command.main(["--bundle", str(bundle), "--data", str(demo_root), "--components", "6", "--max-train", "50"]) == 0
    after = read_metadata(bundle)
    assert {k: v for k, v in after.items() if k != OOD_KEY} == {k: v for k, v in before.items() if k != OOD_KEY}
    entry = after[OOD_KEY]
    assert entry["components"] == 6 and entry["train_images"] == 50 and entry["val_images"] > 20
    assert entry["file"] != old_file and not (bundle / old_file).exists() and (bundle / entry["file"]).is_file()
    assert "/" not in entry["file"] and (bundle / entry["file"]).stat().st_size < 100_000
    assert not list(bundle.glob(".*")), "no temporary files are left"
    # A failure while writing bundle.json leaves the bundle as it was: old key, old file, no new file.
    files = sorted(p.name for p in bundle.iterdir())

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Bundle, "update_metadata", staticmethod(fail))
    with pytest.raises(OSError):
        fit_ood(bundle, demo_root, components=5, max_train=40, log=lambda line: None)
    assert read_metadata(bundle) == after and sorted(p.name for p in bundle.iterdir()) == files
    # Not the bundle's data: a plain error from the command.
    assert command.main(["--bundle", str(bundle), "--data", str(tmp_path / "nowhere")]) == 2


# -- where the warning shows: the predict column, the JSON report ------------------


def test_predict_output_has_a_warning_column(predictor, demo_root, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    films = _test_images(demo_root, predictor, 3)
    for path in films:
        shutil.copy(path, folder)
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((320, 320)) * 255).astype(np.uint8)).save(folder / "synthetic_noise.png")
    Image.fromarray((rng.random((300, 1200)) * 255).astype(np.uint8)).save(folder / "synthetic_strip.png")
    (folder / "synthetic_broken.png").write_bytes(b"not an image")
    out = tmp_path / "preds.csv"
    predict_to_csv(predictor, sorted(str(p) for p in folder.iterdir()), out)
    table = pd.read_csv(out, keep_default_na=False).set_index("Image Index")
    assert list(table.columns[-2:]) == ["warning", "error"]
    assert OOD_WARNING in table.at["synthetic_noise.png", "warning"]
    assert "width/height 4.00" in table.at["synthetic_strip.png", "warning"]
    assert table.at["synthetic_broken.png", "warning"] == "" and table.at["synthetic_broken.png", "error"]
    passed = [table.at[Path(p).name, "warning"] == "" for p in films]
    assert sum(passed) >= 2, table["warning"].to_dict()


def test_json_report_carries_the_check(predictor):
    noise = np.random.default_rng(2).random((320, 320)).astype(np.float32)
    doc = json.loads(json.dumps(json_report(predictor.analyze(noise, explain=[]), predictor.metadata, source_name="synthetic_noise.png")))
    assert OOD_WARNING in doc["warnings"]
    check = doc["input_check"]
    assert check["warned"] and check["learned"]["unlike_training"]
    assert check["learned"]["feature_threshold"] == pytest.approx(predictor.ood.threshold, abs=1e-3)
    assert set(check["learned"]) == {"feature_distance", "feature_threshold", "grid_distance", "grid_threshold",
                                     "layout_margin", "layout_threshold", "scale_distance", "scale_threshold",
                                     "beyond", "unlike_training"}
    assert check["learned"]["beyond"] and set(check["learned"]["beyond"]) <= {"feature", "grid", "layout", "scale"}


def test_pdf_report_shows_the_learned_warning(predictor):
    from cxr_core.reporting import pdf_report
    from tests.reporting.test_report import _pdf_text

    noise = np.random.default_rng(4).random((320, 320)).astype(np.float32)
    analysis = predictor.analyze(noise, explain=[])
    assert OOD_WARNING in analysis.warnings
    text = " ".join(_pdf_text(pdf_report(analysis, predictor.metadata, source_name="synthetic_noise.png")).split())
    assert "Warning" in text and "does not look like the chest X-rays" in text


def test_analyze_page_shows_the_learned_warning_and_withholds_the_findings_until_asked(monkeypatch, tmp_path_factory, demo_root):
    from tests.app.test_app_pages import app, assert_findings_shown, png_bytes
    from tests.app_bundle import tiny_app_bundle

    bundle = tmp_path_factory.mktemp("ood_app") / "tiny"
    shutil.copytree(tiny_app_bundle(tmp_path_factory, demo_root), bundle)
    fit_ood(bundle, demo_root, components=8, max_train=None, log=lambda line: None)
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")  # as tests/app/test_app_pages.py runs the app
    monkeypatch.delenv("CXR_ASSIST_DATA_ROOTS", raising=False)
    monkeypatch.delenv("CXR_ASSIST_DEMO", raising=False)
    monkeypatch.setenv("CXR_READER_STUDY_DB", str(tmp_path_factory.mktemp("ood_app_env") / "reader_study.sqlite3"))
    at = app(monkeypatch, bundle, "analyze")
    noise = (np.random.default_rng(5).random((320, 320)) * 255).astype(np.uint8)
    at.file_uploader(key="analyze_upload").upload("synthetic_noise.png", png_bytes(noise), "image/png").run()
    assert not at.exception, at.exception
    assert any("does not look like the chest X-rays" in w.value for w in at.warning)
    assert any("withheld" in e.value for e in at.error) and not at.dataframe  # the output is withheld ...
    at.checkbox(key="analyze_show_anyway").check().run()
    assert_findings_shown(at, "synthetic_noise.png")  # ... until the reader asks for it


def test_evaluate_fits_the_check_only_when_asked(tmp_path, demo_root):
    from cxr_core.jobs import evaluate_bundle

    bundle = build_tiny_bundle(tmp_path / "b", demo_root)
    evaluate_bundle(bundle, demo_root, n_boot=10, localization=False, expert_labels=False, log=lambda line: None)
    assert OOD_KEY not in read_metadata(bundle)  # today's default: unchanged
    evaluate_bundle(bundle, demo_root, n_boot=10, localization=False, expert_labels=False, fit_ood=True, log=lambda line: None)
    meta = read_metadata(bundle)
    assert meta[OOD_KEY]["val_images"] > 20 and "calibration" in meta and Predictor.from_bundle(bundle).ood is not None


def test_the_shipped_model_passes_demo_films_and_warns_turned_ones(demo_root):
    from tests.app_bundle import shipped_bundle_or_skip

    predictor = Predictor.from_bundle(shipped_bundle_or_skip())
    if predictor.ood is None:
        pytest.skip("the shipped bundle has no fitted reference yet (python -m training.fit_ood)")
    paths = sorted((demo_root / "images").glob("*.png"))[:30]
    films = [decode_image(p).pixels for p in paths]
    warned = [OOD_WARNING in predictor.analyze(x, explain=[]).warnings for x in films]
    assert sum(warned) <= 2, [p.name for p, w in zip(paths, warned) if w]
    for turned in (np.rot90(films[0]), films[1][::-1], 1.0 - films[2]):
        assert OOD_WARNING in predictor.analyze(np.ascontiguousarray(turned), explain=[]).warnings
    # Cropped to a third of the side and enlarged back: a real film whose whole passes is warned once cropped.
    rng = np.random.default_rng(0)
    cropped = [predictor.analyze(_crop(x, 0.33, rng), explain=[]) for x in films[:10]]
    warned_cropped = [OOD_WARNING in a.warnings for a in cropped]
    assert sum(warned_cropped) >= 8, [(p.name, a.input_check) for p, a in zip(paths, cropped)]
    assert paths[0].name == "00000007_000.png" and not warned[0] and warned_cropped[0]
