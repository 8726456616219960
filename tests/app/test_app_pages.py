"""Every page of the Streamlit app through AppTest, against a tiny evaluated bundle.

The page tests run once more against the shipped model (models/default) when
it is present. They check that pages render and behave (inputs, guards,
tables), not the model's accuracy.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.data import NIHDataset
from cxr_core.findings import FINDINGS
from tests.app_bundle import shipped_bundle_or_skip, shipped_with_serving_form, tiny_app_bundle
from tests.conftest import REPO_ROOT

TIMEOUT = 120


@pytest.fixture(scope="module", params=["tiny", "shipped"])
def bundle(request, tmp_path_factory, demo_root):
    if request.param == "shipped":
        return shipped_with_serving_form()  # as the app runs it once the form is built: LiteRT, no TensorFlow
    return tiny_app_bundle(tmp_path_factory, demo_root)  # no serving form: the Keras models


@pytest.fixture
def tiny(tmp_path_factory, demo_root):
    return tiny_app_bundle(tmp_path_factory, demo_root)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")  # no background model loading inside the test process
    monkeypatch.delenv("CXR_ASSIST_DATA_ROOTS", raising=False)
    monkeypatch.delenv("CXR_ASSIST_DEMO", raising=False)
    monkeypatch.setenv("CXR_READER_STUDY_DB", str(tmp_path / "reader_study.sqlite3"))


def app(monkeypatch, bundle_path, page: str | None = None) -> AppTest:
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(bundle_path))
    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, at.exception
    return at


def count(at: AppTest, element_type: str) -> int:
    def walk(node) -> int:
        children = getattr(node, "children", None)
        inner = sum(walk(c) for c in children.values()) if isinstance(children, dict) else 0
        return inner + (getattr(node, "type", None) == element_type)

    return walk(at._tree)


def demo_image(demo_root, *, with_box: bool = True) -> tuple[str, bytes]:
    dataset = NIHDataset(demo_root)
    name = dataset.boxes["image"].iloc[0] if with_box else dataset.image_names[0]
    return name, (demo_root / "images" / name).read_bytes()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_findings_shown(at: AppTest, name: str) -> None:
    assert not at.exception, at.exception
    assert any(name in c.value for c in at.caption), [c.value for c in at.caption]
    table = at.dataframe[0].value
    assert len(table) == 14 and set(table["band"]) <= {"⚑ flag", "possible", "", "no flag set"}
    assert "POSITIVE" not in set(table["band"])
    assert table["probability"].is_monotonic_decreasing
    assert any("Triage:" in m.value for m in at.markdown)  # the triage verdict comes first
    assert count(at, "image") == 6  # the windowed image, the chosen overlay, the top-4 grid
    assert [b.label for b in at.download_button] == ["Download PDF report", "Download JSON report"]


# -- home ---------------------------------------------------------------------


def test_home_shows_the_model_and_the_clinical_use_warning(monkeypatch, bundle):
    at = app(monkeypatch, bundle)
    assert any("Not for clinical use" in w.value for w in at.warning)
    metrics = {m.label: m.value for m in at.metric}
    meta = json.loads((bundle / "bundle.json").read_text())
    text = "\n".join(m.value for m in at.markdown)  # the model and every member's input size, as text: never cut
    assert "**Model:**" in text
    for member in meta.get("members") or [meta]:
        assert f"{member['input_size']} px" in text and member["backbone"] in text
    assert float(metrics["Test mean AUROC"]) > 0
    from pages.common import navigation_pages  # every page of the navigation is listed, the Guided tour included

    linked = {link.proto.page for link in at.get("page_link")}
    assert {page.url_path for page in navigation_pages() if page.url_path} == linked and "tour" in linked
    triage = (json.loads((bundle / "metrics.json").read_text()).get("reading") or {}).get("triage")
    assert metrics["Triage AUROC (test)"] == ("not fitted" if not triage else f"{triage['auroc']:.3f}")


# -- analyze ------------------------------------------------------------------


def test_analyze_a_demo_image_through_the_selectbox(monkeypatch, bundle, demo_root):
    at = app(monkeypatch, bundle, "analyze")
    assert any("Upload" in i.value for i in at.info)  # nothing chosen yet: a prompt, not an error
    at.radio(key="analyze_source").set_value("Demo image").run()
    name, _ = demo_image(demo_root)
    at.selectbox(key="analyze_demo").select(name).run()
    assert_findings_shown(at, name)
    # Every control re-renders without error.
    at.selectbox(key="analyze_finding").select("Mass").run()
    at.slider(key="analyze_alpha").set_value(0.8).run()
    at.slider(key="analyze_level").set_value(0.4).run()
    at.slider(key="analyze_width").set_value(0.3).run()
    assert_findings_shown(at, name)


def test_analyze_an_uploaded_demo_image(monkeypatch, bundle, demo_root):
    at = app(monkeypatch, bundle, "analyze")
    name, data = demo_image(demo_root, with_box=False)
    at.file_uploader(key="analyze_upload").upload(name, data, "image/png").run()
    assert_findings_shown(at, name)
    assert not at.error


@pytest.mark.parametrize("compute", ["bfloat16", "float32"])
def test_analyze_says_when_a_trunk_computes_in_bfloat16(monkeypatch, demo_root, compute):
    monkeypatch.setenv("CXR_ASSIST_COMPUTE", compute)
    monkeypatch.setenv("CXR_ASSIST_RUNTIME", "keras")  # the compute mode is the Keras models' (LiteRT: float32)
    at = app(monkeypatch, shipped_bundle_or_skip(), "analyze")
    name, data = demo_image(demo_root, with_box=False)
    at.file_uploader(key="analyze_upload").upload(name, data, "image/png").run()
    assert_findings_shown(at, name)
    said = [c.value for c in at.caption if name in c.value][0]
    # Only the VGG16 member of the shipped ensemble gains from bfloat16, so only it is named.
    assert ("vgg16_hed_ms_box in bfloat16" in said) == (compute == "bfloat16")
    assert ("Computed with" in said) == (compute == "bfloat16")
    assert "mobilenetv2" not in said.partition("Computed with")[2]


@pytest.mark.parametrize("runtime", ["auto", "litert", "keras"])
def test_analyze_runs_the_runtime_asked_for(monkeypatch, demo_root, runtime):
    """The shipped model with its serving form: LiteRT unless Keras is asked for; same findings either way."""
    from cxr_core.host import HOST

    monkeypatch.setenv("CXR_ASSIST_RUNTIME", runtime)
    monkeypatch.setenv("CXR_ASSIST_COMPUTE", "float32")
    at = app(monkeypatch, shipped_with_serving_form(), "analyze")
    name, data = demo_image(demo_root, with_box=False)
    at.file_uploader(key="analyze_upload").upload(name, data, "image/png").run()
    assert_findings_shown(at, name)
    assert not any("Computed with" in c.value for c in at.caption)
    assert [p.runtime for p in HOST.loaded()] == ["keras" if runtime == "keras" else "litert"]
    # LiteRT and the Keras models in float32 agree to about 1e-6 (tests/serving/test_shipped_model.py).
    np.testing.assert_allclose(at.dataframe[0].value["probability"].tolist(), _shipped_table(demo_root, name), atol=1e-4)


def _shipped_table(demo_root, name) -> list[float]:
    """The shipped model's calibrated probabilities of a demo film, most probable first, by the Keras models."""
    from cxr_core.serving import Predictor

    if name not in _KERAS_TABLES:
        analysis = Predictor.from_bundle(shipped_bundle_or_skip(), runtime="keras").analyze(demo_root / "images" / name)
        _KERAS_TABLES[name] = [analysis.probabilities[f] for f in analysis.ranked]
    return _KERAS_TABLES[name]


_KERAS_TABLES: dict = {}


def test_analyze_refuses_an_unknown_runtime_with_a_message(monkeypatch, tiny):
    monkeypatch.setenv("CXR_ASSIST_RUNTIME", "onnx")
    at = app(monkeypatch, tiny, "analyze")
    assert any("runtime must be one of keras, litert, auto" in e.value for e in at.error), [e.value for e in at.error]


def test_analyze_refuses_an_unknown_compute_mode_with_a_message(monkeypatch, tiny):
    monkeypatch.setenv("CXR_ASSIST_COMPUTE", "half")
    at = app(monkeypatch, tiny, "analyze")
    assert not at.exception
    assert len(at.error) == 1 and "unknown compute mode 'half'" in at.error[0].value
    assert not at.file_uploader


@pytest.mark.parametrize(
    "filename, data, message",
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR broken", "broken.png"),
        ("notes.txt", b"patient notes, not an image\n" * 20, "text file"),
        ("empty.dcm", b"", "empty"),
    ],
    ids=["truncated-png", "text", "empty"],
)
def test_analyze_refuses_bad_files_with_a_message(monkeypatch, tiny, filename, data, message):
    at = app(monkeypatch, tiny, "analyze")
    at.file_uploader(key="analyze_upload").upload(filename, data).run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and "Traceback" not in at.error[0].value
    assert not at.dataframe and not at.download_button


def test_analyze_withholds_the_output_for_an_unusual_image_until_asked(monkeypatch, tiny):
    at = app(monkeypatch, tiny, "analyze")
    white = np.full((256, 256), 255, dtype=np.uint8)
    at.file_uploader(key="analyze_upload").upload("white.png", png_bytes(white), "image/png").run()
    assert any("unlike the chest X-rays" in w.value for w in at.warning)
    assert any("withheld" in e.value for e in at.error)
    assert not at.dataframe and count(at, "image") == 1  # the image itself, no heatmap, no findings
    assert not any("Triage:" in m.value for m in at.markdown)
    assert [b.label for b in at.download_button] == ["Download PDF report", "Download JSON report"]  # they say withheld
    at.checkbox(key="analyze_show_anyway").check().run()
    assert_findings_shown(at, "white.png")


# -- browse -------------------------------------------------------------------


def test_browse_filters_and_case_view(monkeypatch, bundle, demo_root):
    at = app(monkeypatch, bundle, "browse")
    assert len(at.dataframe[0].value) == 260
    at.selectbox(key="browse_finding").select("Hernia").run()
    shown = at.dataframe[0].value
    assert len(shown) >= 5 and shown["finding_labels"].str.contains("Hernia").all()
    at.selectbox(key="browse_finding").select("Any").run()
    at.multiselect(key="browse_sex").select("F").run()
    at.multiselect(key="browse_view").select("AP").run()
    at.slider(key="browse_age").set_value((40, 60)).run()
    shown = at.dataframe[0].value
    assert len(shown) > 0 and (shown["sex"] == "F").all() and (shown["view"] == "AP").all() and shown["age"].between(40, 60).all()
    at.slider(key="browse_age").set_value((5, 91)).run()
    at.multiselect(key="browse_view").unselect("AP").run()
    at.multiselect(key="browse_sex").unselect("F").run()
    patient = str(NIHDataset(demo_root).csv["patient_id"].value_counts().index[0])
    at.text_input(key="browse_patient").input(patient).run()
    shown = at.dataframe[0].value
    assert len(shown) >= 3 and (shown["patient_id"].astype(str) == patient).all()
    assert not at.exception


def test_browse_case_marks_outcomes_and_boxes(monkeypatch, bundle, demo_root):
    at = app(monkeypatch, bundle, "browse")
    name, _ = demo_image(demo_root)
    at.selectbox(key="browse_case").select(name).run()
    assert not at.exception, at.exception
    outcomes = at.dataframe[1].value
    assert list(outcomes["finding"])[:2] == ["Atelectasis", "Cardiomegaly"] and len(outcomes) == 14
    assert set(outcomes["outcome"]) <= {"TP", "FP", "FN", "TN"}
    labelled = outcomes["label"] == 1
    assert outcomes.loc[labelled, "outcome"].isin(["TP", "FN"]).all() and outcomes.loc[~labelled, "outcome"].isin(["FP", "TN"]).all()
    assert any("IoU" in m.value for m in at.markdown)
    assert count(at, "image") == 12 + 2  # a page of thumbnails, the boxed image and the heatmap


def test_browse_notes_training_images(monkeypatch, tiny):
    import pandas as pd

    splits = pd.read_csv(tiny / "splits.csv")
    train_image = splits.loc[splits["split"] == "train", "image"].iloc[0]
    test_image = splits.loc[splits["split"] == "test", "image"].iloc[0]
    at = app(monkeypatch, tiny, "browse")
    at.selectbox(key="browse_case").select(train_image).run()
    assert any("training** split" in w.value for w in at.warning)
    at.selectbox(key="browse_case").select(test_image).run()
    assert not any("split" in w.value for w in at.warning)
    assert any("test split" in c.value for c in at.caption)


def test_browse_refuses_folders_outside_the_allowed_roots(monkeypatch, tiny, tmp_path, demo_root):
    allowed = tmp_path / "allowed"
    (allowed / "empty").mkdir(parents=True)
    (allowed / "escape").symlink_to("/etc")
    monkeypatch.setenv("CXR_ASSIST_DATA_ROOTS", str(allowed))
    at = app(monkeypatch, tiny, "browse")
    for outside in ("/etc", str(allowed / "escape"), str(allowed / ".." ), str(demo_root / ".." / "..")):
        at.text_input(key="browse_root").input(outside).run()
        assert not at.exception and len(at.error) == 1 and "outside the folders" in at.error[0].value, outside
    at.text_input(key="browse_root").input(str(allowed / "empty")).run()
    assert not at.exception and "Data_Entry" in at.error[0].value
    at.text_input(key="browse_root").input(str(allowed / "missing")).run()
    assert not at.exception and "not a folder" in at.error[0].value


def test_browse_opens_another_allowed_dataset(monkeypatch, tiny, tmp_path, demo_root):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    names = NIHDataset(demo_root).image_names[:20]
    for name in names:
        shutil.copy(demo_root / "images" / name, root / "images" / name)
    rows = (demo_root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows[:1] + [r for r in rows[1:] if r.split(",")[0] in names]) + "\n")
    monkeypatch.setenv("CXR_ASSIST_DATA_ROOTS", str(tmp_path))
    at = app(monkeypatch, tiny, "browse")
    at.text_input(key="browse_root").input(str(root)).run()
    assert not at.exception and not at.error
    assert sorted(at.dataframe[0].value["image"]) == sorted(names)
    assert any("20 images" in c.value for c in at.caption)


# -- performance --------------------------------------------------------------


def test_performance_tables_and_charts(monkeypatch, bundle):
    at = app(monkeypatch, bundle, "performance")
    tables = [d.value for d in at.dataframe]
    # A bundle evaluated with the radiologists' labels (the shipped one) adds
    # their two tables after localisation (tests/app/test_expert_app.py checks them).
    metrics = json.loads((bundle / "metrics.json").read_text())
    expert_tables = 2 if metrics.get("expert_reference") else 0
    # The triage (one table) and the flags (two) come first, when the evaluation has them (tests/app/test_reading_pages.py).
    reading = metrics.get("reading") or {}
    first = bool(reading.get("triage")) + 2 * bool(reading.get("flags"))
    assert len(tables) == first + 5 + expert_tables
    per_finding, calibration, localization = tables[first:first + 3]
    subgroups, published = tables[-2:]
    assert list(per_finding["finding"]) == list(FINDINGS)
    assert {"auroc", "AUROC 95% CI", "auprc", "threshold", "precision", "recall", "f1"} <= set(per_finding.columns)
    assert len(calibration) == 14 and "ECE after" in calibration.columns
    assert any(c.startswith("T(IoBB)") for c in localization.columns)
    assert {"attribute", "group", "images"} <= set(subgroups.columns)
    assert any("Wang" in c for c in published.columns) and any("CheXNet" in c for c in published.columns)
    assert published["finding"].iloc[-1] == "mean"
    assert count(at, "plotly_chart") == 3 + bool(reading.get("triage"))
    assert any("Not a like-for-like comparison" in i.value for i in at.info)
    at.multiselect(key="perf_findings").set_value(["Effusion", "Mass"]).run()
    at.selectbox(key="perf_cal_finding").select("Effusion").run()
    assert not at.exception


# -- no bundle ----------------------------------------------------------------


@pytest.mark.parametrize("page", [None, "analyze", "performance", "browse"])
def test_pages_without_a_bundle_say_how_to_get_one(monkeypatch, tmp_path, page):
    at = app(monkeypatch, tmp_path / "no-bundle-here", page)
    shown = " ".join(e.value for e in [*at.error, *at.info])
    if page == "browse":  # labels and boxes still work, with a note
        assert len(at.dataframe[0].value) == 260 and "No model" in shown
    else:
        assert "No model bundle" in shown and "training.train" in shown


def test_a_broken_bundle_gives_a_message(monkeypatch, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text("{\"format\": \"cxr-assist-bundle\"}")
    at = app(monkeypatch, broken, "analyze")
    assert len(at.error) == 1 and "could not be loaded" in at.error[0].value


def test_analyze_an_uploaded_dicom_without_extension(monkeypatch, tiny, shared_dicom):
    at = app(monkeypatch, tiny, "analyze")
    data = (shared_dicom / "siim_example_monochrome2.dcm").read_bytes()
    at.file_uploader(key="analyze_upload").upload("chest_study", data).run()  # DICOM files often have no extension
    assert_findings_shown(at, "chest_study")
    assert any("DICOM" in c.value for c in at.caption)


def test_pages_say_the_model_is_getting_ready_instead_of_waiting(monkeypatch, tiny):
    """While the background warm-up is still loading the model, Analyze shows the step and a progress bar (and no
    error); once it is done the page works as usual."""
    from cxr_core.host import HOST, WarmState

    at = app(monkeypatch, tiny)
    monkeypatch.setattr(HOST, "_state", WarmState(running=True, stage="loading the model", step=1))
    at.switch_page("pages/analyze.py").run()
    assert not at.exception, at.exception
    shown = [p.proto.text for p in at.get("progress")]
    assert shown and "Getting the model ready: loading the model" in shown[0]
    assert not at.error and at.file_uploader and not at.dataframe  # an image can be chosen meanwhile; no findings yet
    monkeypatch.setattr(HOST, "_state", WarmState(stage="ready"))
    at.run()
    assert not at.get("progress") and at.file_uploader and not at.exception
