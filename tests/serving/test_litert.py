"""The LiteRT serving form: same numbers and maps as the Keras models, no TensorFlow, never stale or half-built.

The tiny ensemble's members are untrained small CNNs (synthetic random
weights, ``tests/app_bundle.py``) at 64 and 48 px, one with test-time views;
the real demo films go through them. Each test builds its forms in its own
cache folder. Last, the forms a bundle ships (recipes over its own weights,
put together without TensorFlow), the shipped model's included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_core.serving import HeadGradcamPlusPlus, Inputs, Predictor, split_model
from cxr_core.serving.litert import (
    ServingFormError,
    build_serving_form,
    find_serving_form,
    member_digest,
    ship_serving_form,
)
from cxr_core.serving.maps import linear_head_cams
from cxr_core.serving.shipped_form import recipe_digest
from tests.app_bundle import TINY_MEMBERS, build_tiny_bundle
from tests.conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "default"


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, demo_root) -> Path:
    """The tiny two-member ensemble, its 48 px member with six test-time views."""
    from cxr_core.bundle import assemble_ensemble

    root = tmp_path_factory.mktemp("litert")
    members = [build_tiny_bundle(root / "runs" / name, demo_root, size=size, seed=seed, mean=mean, logit_scale=40.0)
               for name, size, seed, mean, _ in TINY_MEMBERS]
    return assemble_ensemble(members, root / "ensemble", weights=[w for *_, w in TINY_MEMBERS],
                             names=[name for name, *_ in TINY_MEMBERS], tta_views=[1, 6])


@pytest.fixture(scope="module")
def cache(tmp_path_factory, ensemble) -> Path:
    folder = tmp_path_factory.mktemp("serving-cache")
    build_serving_form(ensemble, cache=folder)
    return folder


def _films(demo_root, n=3) -> list[str]:
    return sorted(str(p) for p in (demo_root / "images").glob("*.png"))[:n]


@pytest.mark.parametrize("method", ["gradcam++", "gradcam"])
@pytest.mark.parametrize("signed", [False, True], ids=["after-relu", "signed"])
def test_closed_form_maps_equal_the_tensorflow_engine(ensemble, method, signed):
    """Features after a ReLU (the members') and signed ones; a zero kernel column (no gradient) and an all-negative
    one (no positive evidence) among the 14: the closed form and the TensorFlow engine give the same maps."""
    from cxr_core.bundle import Bundle

    model = Bundle.load(ensemble / "members" / "a64").model
    kernel = np.asarray(model.get_layer("logits").kernel).copy()
    kernel[:, 2] = 0.0
    kernel[:, 3] = -np.abs(kernel[:, 3])
    model.get_layer("logits").kernel.assign(kernel)
    _, head = split_model(model)
    engine = HeadGradcamPlusPlus(head, method=method)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1,) + tuple(head.inputs[0].shape[1:])).astype(np.float32)
    if not signed:
        features = np.maximum(features, 0)
    indices = list(range(14))
    expected = engine(features, indices)
    got = linear_head_cams(features, kernel, indices, method=method)
    assert got.shape == expected.shape == (14,) + features.shape[1:3]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.all(expected[2] == 0) and np.all(got[2] == 0)  # no gradient: no map
    assert got[0].max() == pytest.approx(1.0, abs=1e-5)  # a finding with evidence: scaled to [0, 1]
    if not signed:  # non-negative features, a negative kernel: no positive evidence anywhere
        assert np.all(expected[3] == 0) and np.all(got[3] == 0)


def test_a_head_the_closed_form_does_not_cover_is_refused(ensemble, tmp_path):
    import keras

    from cxr_core.bundle import Bundle
    from cxr_core.serving.litert import export_member

    model = Bundle.load(ensemble / "members" / "a64").model
    model.get_layer("logits").activation = keras.activations.relu
    with pytest.raises(ServingFormError, match="linear Dense 'logits'"):
        export_member(model, tmp_path / "form")
    assert not (tmp_path / "form").exists()


def test_closed_form_maps_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="kernel must be"):
        linear_head_cams(np.zeros((1, 4, 4, 8)), np.zeros((6, 14)), [0])
    with pytest.raises(ValueError, match="one image"):
        linear_head_cams(np.zeros((2, 4, 4, 8)), np.zeros((8, 14)), [0])
    with pytest.raises(ValueError, match="method"):
        linear_head_cams(np.zeros((1, 4, 4, 8)), np.zeros((8, 14)), [0], method="saliency")


def test_litert_analysis_equals_keras_float32(ensemble, cache, demo_root):
    lite = Predictor.from_bundle(ensemble, runtime="litert", serving_cache=cache)
    keras_ = Predictor.from_bundle(ensemble, runtime="keras", compute="float32")
    assert lite.runtime == "litert" and keras_.runtime == "keras"
    assert all(m.model is None and m.serving is not None for m in lite.members)
    assert [m.tta_views for m in lite.members] == [1, 6]
    for film in _films(demo_root):
        a, b = lite.analyze(film), keras_.analyze(film)
        np.testing.assert_allclose([a.raw_probabilities[f] for f in a.probabilities],
                                   [b.raw_probabilities[f] for f in b.probabilities], atol=1e-5)
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
        assert a.positive == b.positive and a.reading == b.reading
        for finding in a.heatmaps:
            np.testing.assert_allclose(a.heatmaps[finding], b.heatmaps[finding], atol=1e-4)
    # Batches (the Browse page, the input check's features) go through the same interpreters at any batch size.
    films = [Inputs(resized={64: np.full((64, 64), 90, np.uint8), 48: np.full((48, 48), 90, np.uint8)})] * 5
    for batch in (films, films[:1]):
        np.testing.assert_allclose([list(a.raw_probabilities.values()) for a in lite.analyze(batch, explain=[])],
                                   [list(a.raw_probabilities.values()) for a in keras_.analyze(batch, explain=[])], atol=1e-5)


def test_forms_are_named_by_the_model_they_came_from(ensemble, tmp_path, demo_root):
    """A member replaced after its conversion is never served by the old form: auto runs Keras until it is rebuilt."""
    import shutil

    from cxr_core.bundle import Bundle
    from cxr_core.bundle.ensemble import load_bundle

    copy = Path(shutil.copytree(ensemble, tmp_path / "ensemble"))
    cache = tmp_path / "cache"
    with pytest.raises(ServingFormError, match="a64 has no serving form yet"):
        find_serving_form(load_bundle(copy, load_model=False), cache=cache)
    assert Predictor.from_bundle(copy, runtime="auto", serving_cache=cache).runtime == "keras"
    built = build_serving_form(copy, cache=cache)
    assert sorted(built) == ["a64", "b48"]
    assert Predictor.from_bundle(copy, runtime="auto", serving_cache=cache).runtime == "litert"
    assert not [p for p in cache.iterdir() if p.name.startswith(".building")]  # nothing half-written left behind

    member = Bundle.load(copy / "members" / "a64")
    kernel, bias = member.model.get_layer("logits").get_weights()
    member.model.get_layer("logits").set_weights([kernel * 2, bias])
    member.model.save(copy / "members" / "a64" / "model.keras")
    assert member_digest(copy / "members" / "a64" / "model.keras")[:32] not in {p.name.split("-")[0] for p in built.values()}
    with pytest.raises(ServingFormError, match="a64 has no serving form yet"):
        find_serving_form(load_bundle(copy, load_model=False), cache=cache)
    retrained = Predictor.from_bundle(copy, runtime="auto", serving_cache=cache)
    assert retrained.runtime == "keras"
    build_serving_form(copy, cache=cache)
    film = _films(demo_root, 1)[0]
    np.testing.assert_allclose(list(Predictor.from_bundle(copy, runtime="litert", serving_cache=cache).analyze(film)
                                    .raw_probabilities.values()),
                               list(retrained.analyze(film).raw_probabilities.values()), atol=1e-5)


def _damage_flatbuffer(form: Path) -> None:
    data = (form / "model.tflite").read_bytes()
    (form / "model.tflite").write_bytes(data[:5000])


@pytest.mark.parametrize("damage, message", [
    (_damage_flatbuffer, "cannot be opened by LiteRT"),
    (lambda form: (form / "head.npz").write_bytes((form / "head.npz").read_bytes()[:100]), "damaged"),
    (lambda form: (form / "head.npz").write_bytes(b""), "damaged"),
    (lambda form: (form / "serving.json").write_text("[1, 2]"), "damaged"),
    (lambda form: (form / "serving.json").write_text(json.dumps({"format": 1, "input_size": 48})), "damaged"),
    (lambda form: (form / "serving.json").write_text(json.dumps({"format": 999, "input_size": 48,
                                                                 "features_shape": [1, 1, 8]})), "another format"),
    (lambda form: (form / "model.tflite").unlink(), "no model.tflite"),
], ids=["flatbuffer-truncated", "head-truncated", "head-empty", "info-not-a-dict", "info-incomplete",
        "info-other-format", "flatbuffer-missing"])
def test_a_damaged_form_is_refused_then_converted_again(ensemble, tmp_path, demo_root, damage, message):
    """Damaged forms: "litert" says what is wrong, "auto" runs the Keras models, and the next build sets the damaged
    form aside and converts the member again (the app's background build does this after a Keras start)."""
    cache = tmp_path / "cache"
    forms = build_serving_form(ensemble, cache=cache)
    damage(forms["b48"])
    with pytest.raises(ServingFormError, match=message):
        Predictor.from_bundle(ensemble, runtime="litert", serving_cache=cache)
    assert Predictor.from_bundle(ensemble, runtime="auto", serving_cache=cache).runtime == "keras"
    lines = []
    assert build_serving_form(ensemble, cache=cache, progress=lines.append) == forms
    assert any(line.startswith("b48: its serving form was damaged, moved to") for line in lines), lines
    assert any(line.startswith("a64: already built") for line in lines), lines
    assert len(list(cache.glob(".damaged-*"))) == 1  # set aside, not deleted
    repaired = Predictor.from_bundle(ensemble, runtime="litert", serving_cache=cache)
    film = _films(demo_root, 1)[0]
    np.testing.assert_allclose(list(repaired.analyze(film).raw_probabilities.values()),
                               list(Predictor.from_bundle(ensemble, runtime="keras").analyze(film)
                                    .raw_probabilities.values()), atol=1e-5)


def test_an_unknown_runtime_is_refused(ensemble):
    with pytest.raises(ValueError, match="runtime must be one of"):
        Predictor.from_bundle(ensemble, runtime="onnx")


def test_litert_analysis_imports_no_tensorflow(ensemble, cache, demo_root):
    code = ("import sys\n"
            "from cxr_core.serving import Predictor\n"
            f"p = Predictor.from_bundle({str(ensemble)!r}, runtime='litert', serving_cache={str(cache)!r})\n"
            f"a = p.analyze({_films(demo_root, 1)[0]!r})\n"
            "assert len(a.heatmaps) == 14 and a.reading is not None\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras_vis') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_export_command(ensemble, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "training.export_serving", "--cache", str(cache)]
    done = subprocess.run([*command, "--bundle", str(ensemble)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "a64: converted" in done.stdout and "b48: converted" in done.stdout and "ready in" in done.stdout
    again = subprocess.run([*command, "--bundle", str(ensemble)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "a64: already built" in again.stdout
    missing = subprocess.run([*command, "--bundle", str(tmp_path / "nowhere")], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


def test_a_stopped_build_resumes_where_it_was(ensemble, tmp_path):
    """The server stopped while its background build ran: the member converted before is kept, only the other is
    converted at the next build; a build killed outright (no ``finally`` ran) leaves a scratch folder, removed then,
    while a scratch folder of a process still running is left alone."""
    cache = tmp_path / "cache"
    lines = []

    def stop_after_the_first_member(line):
        lines.append(line)
        raise KeyboardInterrupt  # what stopping the server does to its build

    with pytest.raises(KeyboardInterrupt):
        build_serving_form(ensemble, cache=cache, progress=stop_after_the_first_member)
    assert lines[0].startswith("a64: converted")
    killed = cache / ".building-999999999-killed"  # beyond any pid: a dead process's
    (killed / "form").mkdir(parents=True)
    (killed / "form" / "model.tflite").write_bytes(b"half-written")
    running = cache / f".building-{os.getpid()}-running"
    running.mkdir()
    lines.clear()
    build_serving_form(ensemble, cache=cache, progress=lines.append)
    assert lines[0].startswith("a64: already built") and lines[1].startswith("b48: converted"), lines
    assert not killed.exists() and running.is_dir()


@pytest.fixture(scope="module")
def shipped(ensemble, tmp_path_factory) -> Path:
    """A copy of the tiny ensemble that ships its serving form (``ship_serving_form``)."""
    import shutil

    copy = Path(shutil.copytree(ensemble, tmp_path_factory.mktemp("shipped") / "ensemble"))
    sizes = ship_serving_form(copy)
    assert sorted(sizes) == ["a64", "b48"]
    assert all(size["kept_bytes"] == 0 and size["patched_bytes"] > 0 for size in sizes.values()), sizes
    return copy


def _first_start(bundle: Path, cache: Path, films: list[str]) -> dict:
    """A machine's first start in a fresh process: the bundle's Predictor (``auto``) on an empty serving cache, and
    its raw (``analyze``) and calibrated (``predict``) probabilities for ``films``, its runtime, and whether TensorFlow or Keras got imported."""
    code = ("import json, sys\n"
            "from cxr_core.serving import Predictor\n"
            f"p = Predictor.from_bundle({str(bundle)!r}, runtime='auto', serving_cache={str(cache)!r})\n"
            f"a = {{film: p.analyze(film) for film in {films!r}}}\n"
            "print(json.dumps({'runtime': p.runtime, 'raw': {f: x.raw_probabilities for f, x in a.items()},\n"
            "                  'calibrated': {f: p.predict(f) for f in a},\n"
            "                  'tf': sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_shipped_form_runs_from_a_fresh_cache_without_tensorflow(shipped, tmp_path, demo_root):
    """A machine that never converted anything: the forms are put together from the bundle's recipes (no TensorFlow,
    byte for byte the converter's flatbuffer, checked by its SHA-256) and give the Keras models' numbers."""
    cache = tmp_path / "fresh"
    film = _films(demo_root, 1)[0]
    served = _first_start(shipped, cache, [film])
    assert served["runtime"] == "litert" and served["tf"] == []
    assert len(list(cache.glob("*-v1"))) == 2 and not list(cache.glob(".building-*"))
    evaluated = Predictor.from_bundle(shipped, runtime="keras", compute="float32").analyze(film).raw_probabilities
    np.testing.assert_allclose([served["raw"][film][f] for f in evaluated], list(evaluated.values()), atol=1e-5)


def test_a_shipped_form_of_a_replaced_member_is_not_used(shipped, tmp_path):
    """Retrained after shipping: the recipe names the old model.keras, so the member is converted, never assembled
    from weights it was not cut for."""
    import shutil

    from cxr_core.bundle import Bundle
    from cxr_core.bundle.ensemble import load_bundle

    copy = Path(shutil.copytree(shipped, tmp_path / "ensemble"))
    member = Bundle.load(copy / "members" / "a64")
    kernel, bias = member.model.get_layer("logits").get_weights()
    member.model.get_layer("logits").set_weights([kernel * 2, bias])
    member.model.save(copy / "members" / "a64" / "model.keras")
    cache = tmp_path / "cache"
    with pytest.raises(ServingFormError, match="a64 has no serving form yet"):
        find_serving_form(load_bundle(copy, load_model=False), cache=cache)
    lines = []
    build_serving_form(copy, cache=cache, progress=lines.append)
    assert lines[0].startswith("a64: converted") and lines[1].startswith("b48: put together from the form the bundle "
                                                                          "ships"), lines


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "skeleton.bin").write_bytes((folder / "skeleton.bin").read_bytes()[:-10]), "damaged"),
    (lambda folder: (folder / "skeleton.bin").write_bytes(bytes(len((folder / "skeleton.bin").read_bytes()))),
     "SHA-256"),
    (lambda folder: (folder / "recipe.json").write_text("{"), "damaged"),
    (lambda folder: (folder / "scales.npz").write_bytes(b"not a zip"), "damaged"),
    (lambda folder: (folder / "skeleton.bin").unlink(), "damaged"),
], ids=["skeleton-truncated", "skeleton-zeroed", "recipe-unreadable", "scales-damaged", "skeleton-missing"])
def test_a_damaged_shipped_form_is_refused_then_converted(shipped, tmp_path, damage, message):
    import shutil

    from cxr_core.bundle.ensemble import load_bundle

    copy = Path(shutil.copytree(shipped, tmp_path / "ensemble"))
    damage(copy / "members" / "b48" / "serving")
    cache = tmp_path / "cache"
    with pytest.raises(ServingFormError, match=message):
        find_serving_form(load_bundle(copy, load_model=False), cache=cache)
    assert Predictor.from_bundle(copy, runtime="auto", serving_cache=cache).runtime == "keras"
    lines = []
    build_serving_form(copy, cache=cache, progress=lines.append)
    assert any(line.startswith("b48: the form the bundle ships is not usable") for line in lines), lines
    assert lines[-1].startswith("b48: converted")
    assert Predictor.from_bundle(copy, runtime="litert", serving_cache=cache).runtime == "litert"


def test_the_shipped_model_ships_the_serving_form_of_each_member():
    """models/default carries every member's recipe, cut from the model.keras it holds now (after retraining a
    member: python -m training.export_serving --ship), in well under the 40 MB the repository may grow by."""
    from cxr_core.bundle.ensemble import load_bundle

    bundle = load_bundle(SHIPPED, load_model=False)
    stale = [m.name for m in bundle.members
             if recipe_digest(m.bundle.path) != member_digest(Path(m.bundle.path) / "model.keras")]
    assert not stale, f"shipped serving forms missing or stale: {stale} (python -m training.export_serving --ship)"
    shipped_bytes = sum(f.stat().st_size for f in SHIPPED.glob("members/*/serving/*"))
    assert 0 < shipped_bytes < 2_000_000


def test_the_shipped_model_on_a_fresh_machine_gives_its_stored_probabilities(tmp_path):
    """A fresh process with an empty serving cache (a machine's first start): LiteRT from the shipped recipes, no
    TensorFlow imported, the probabilities stored in tests/fixtures/default_probs.json to within 1e-4."""
    from tests.serving.test_default_probs import IMAGES, STORED

    films = [str(REPO_ROOT / "data" / "demo" / "images" / name) for name in IMAGES]
    served = _first_start(SHIPPED, tmp_path / "cache", films)
    assert served["runtime"] == "litert" and served["tf"] == []
    stored = json.loads(STORED.read_text())
    for name, film in zip(IMAGES, films):
        assert list(served["calibrated"][film]) == list(stored[name])
        np.testing.assert_allclose(list(served["calibrated"][film].values()), list(stored[name].values()), atol=1e-4,
                                   err_msg=name)


def test_a_server_start_puts_the_shipped_forms_in_place_before_any_page(shipped, tmp_path, monkeypatch):
    """app.py's start (warm_up_at_start) puts the shipped forms into an empty cache at once, while the server and the
    browser start, not after the first page: a first start then answers as fast as a second (APP_RESULTS.md)."""
    import threading

    from cxr_core.host import ModelHost

    cache = tmp_path / "cache"
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(shipped))
    monkeypatch.setenv("CXR_ASSIST_SERVING_CACHE", str(cache))
    monkeypatch.delenv("CXR_ASSIST_WARM", raising=False)
    monkeypatch.delenv("CXR_ASSIST_RUNTIME", raising=False)
    host = ModelHost()
    host.page_started.set()  # a browser's first page came: no warm-up from the start, only the forms
    host.warm_up_at_start(grace_s=0.0)
    putting = [t for t in threading.enumerate() if t.name == "cxr-assist-serving-form"]
    assert putting, "the server start did not put the shipped forms in place"
    for thread in putting:
        thread.join(timeout=120)
    assert len(list(cache.glob("*-v1"))) == 2
    assert host.serving_form_ready()
