"""cxr_core.reporting.report: findings rows, the JSON report and the PDF report of one analysis."""

from __future__ import annotations

import base64
import json
import re
import zlib

import numpy as np
import pytest

from cxr_core.data import DecodedImage
from cxr_core.findings import FINDINGS
from cxr_core.reporting import DISCLAIMER, findings_rows, json_report, model_summary, pdf_report
from cxr_core.serving import Analysis


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    rng = np.random.default_rng(0)
    pixels = rng.random((300, 240)).astype(np.float32)
    probabilities = dict(zip(FINDINGS, np.linspace(0.05, 0.9, 14).tolist()))
    heatmaps = {}
    for i, finding in enumerate(FINDINGS):
        heat = np.zeros((300, 240), dtype=np.float32)
        heat[100 + i : 160 + i, 50:120] = 1.0
        heatmaps[finding] = heat
    return Analysis(
        probabilities=probabilities,
        raw_probabilities={f: p * 0.9 for f, p in probabilities.items()},
        positive={f: p >= 0.5 for f, p in probabilities.items()},
        heatmaps=heatmaps,
        image=DecodedImage(pixels=pixels, source_format="PNG", original_shape=(300, 240), bit_depth=8),
        warnings=("This image's brightness and contrast are very unlike the chest X-rays the model was trained on.",),
        ranked=tuple(sorted(FINDINGS, key=lambda f: -probabilities[f])),
    )


METADATA = {
    "backbone": "mobilenetv2", "input_size": 160, "created": "2026-01-01T00:00:00+0000",
    "data": {"counts": {"train": 2400, "val": 342, "test": 684}, "patients": {"train": 1497}},
    "thresholds": {"method": "youden", "values": [0.5] * 14},
    "operating_points": [
        {"finding": f, "threshold": 0.5, "val_sensitivity": 0.8, "val_specificity": 0.7, "test_sensitivity": 0.75, "test_specificity": 0.72}
        for f in FINDINGS
    ],
    "test_summary": {"mean_auroc": 0.71, "test_images": 684},
}


def fitted_metadata() -> dict:
    """METADATA plus a triage and flags fitted on named synthetic validation scores (tests/evaluation/test_reading_fit.py)."""
    from cxr_core.evaluation.flags import fit_flags
    from cxr_core.evaluation.triage import fit_triage
    from tests.evaluation.test_reading_fit import synthetic_split

    y, c, groups = synthetic_split(400, 11, hernia_positives=6)
    return {**METADATA, "triage": fit_triage(y, c, groups=groups).to_dict(), "flags": fit_flags(y, c).to_dict()}


def test_findings_rows_are_ranked_with_operating_points(analysis):
    # A bundle evaluated before the flags existed: its Youden cuts are the flags, and it says so.
    rows = findings_rows(analysis, METADATA)
    assert [r["finding"] for r in rows] == list(analysis.ranked) and len(rows) == 14
    assert rows[0]["finding"] == "Hernia" and rows[0]["band"] == "flag" and rows[-1]["band"] == "below"
    assert rows[0]["val_sensitivity"] == 0.8 and rows[0]["youden_threshold"] == 0.5 and rows[0]["at_youden"]
    assert "Youden" in rows[0]["meaning"]
    assert {r["name"] for r in rows} >= {"Pleural Thickening"}
    # Thresholds passed explicitly win; a bundle without operating points gives None, not an error.
    bare = findings_rows(analysis, {}, thresholds=[0.3] * 14)
    assert bare[0]["youden_threshold"] == 0.3 and bare[0]["val_sensitivity"] is None


def test_findings_rows_with_fitted_flags_say_what_a_flag_is_worth(analysis):
    meta = fitted_metadata()
    rows = {r["finding"]: r for r in findings_rows(analysis, meta)}
    hernia = rows["Hernia"]  # 6 validation positives: no flag, whatever its probability (0.90 here)
    assert hernia["band"] == "no flag set" and hernia["flag_threshold"] is None and "too few positives" in hernia["meaning"]
    flagged = [r for r in rows.values() if r["band"] == "flag"]
    assert flagged and all(r["probability"] >= r["flag_threshold"] for r in flagged)
    assert all("PPV" in r["meaning"] and r["ppv_low"] <= r["ppv"] <= r["ppv_high"] for r in flagged)
    doc = json_report(analysis, meta, source_name="scan.png")
    assert doc["triage"]["verdict"] in ("abnormal", "no finding likely") and 0 <= doc["triage"]["probability"] <= 1
    assert doc["flagged_findings"] == [r["finding"] for r in doc["findings"] if r["band"] == "flag"]
    assert "Hernia" not in doc["flagged_findings"] and doc["operating_point"] == "specificity"


def test_withheld_output_is_said_in_both_reports(analysis):
    withheld = Analysis(**{**analysis.__dict__, "withheld_because": analysis.warnings})
    doc = json_report(withheld, fitted_metadata(), source_name="cat.jpg")
    assert doc["withheld"] and doc["withheld_because"] == list(analysis.warnings)
    assert doc["findings"] == [] and doc["flagged_findings"] == [] and doc["triage"]["verdict"] == "not assessed"
    assert doc["triage"]["probability"] is None and "withheld" in doc["notes"]
    pdf = pdf_report(withheld, fitted_metadata(), source_name="cat.jpg")
    assert len(re.findall(rb"/Type /Page\b", pdf)) == 1
    text = _pdf_text(pdf)
    assert "Output withheld" in text and "FLAG" not in text and "Findings" not in text


def test_json_report_lists_the_14_findings(analysis):
    doc = json_report(analysis, METADATA, source_name="scan.png")
    text = json.dumps(doc, allow_nan=False)  # plain JSON types only
    assert json.loads(text)["format"] == "cxr-assist-report"
    assert sorted(r["finding"] for r in doc["findings"]) == sorted(FINDINGS)
    assert doc["disclaimer"] == DISCLAIMER and "NOT for clinical use" in doc["disclaimer"]
    assert doc["image"] == {"name": "scan.png", "format": "PNG", "original_height": 300, "original_width": 240, "bit_depth": 8}
    assert doc["warnings"] == list(analysis.warnings)
    assert doc["flagged_findings"] == [r["finding"] for r in doc["findings"] if r["probability"] >= 0.5]
    assert not doc["withheld"] and doc["operating_point"] == "youden" and doc["format_version"] == 2
    assert doc["model"]["test_mean_auroc"] == 0.71 and doc["model"]["training_images"] == 2400
    box = doc["findings"][0]["heatmap_boxes"][0]
    assert box["x"] == pytest.approx(50, abs=1) and box["w"] == pytest.approx(70, abs=1) and box["h"] == pytest.approx(60, abs=1)
    assert model_summary(None)["backbone"] is None


def _pdf_text(pdf: bytes) -> str:
    """The text drawn in a PDF's content streams (reportlab: ASCII85 + Flate)."""
    chunks = []
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", pdf, flags=re.S):
        data = stream.strip()
        try:
            if data.endswith(b"~>"):
                data = base64.a85decode(data.removeprefix(b"<~")[:-2])
            chunks.append(zlib.decompress(data).decode("latin-1"))
        except (ValueError, zlib.error):
            continue
    return "".join("".join(re.findall(r"\((.*?)\)\s*Tj", c)) + "\n" for c in chunks)


def test_pdf_report_pages_and_text(analysis):
    pdf = pdf_report(analysis, METADATA, source_name="scan.png")
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type /Page\b", pdf)) == 2  # /Type /Pages does not match
    text = _pdf_text(pdf)
    for expected in ("cxr-assist report", "NOT for clinical use", "scan.png", "Findings", "Pleural Thickening", "FLAG", "Hernia",
                     "Warning", "Triage"):
        assert expected in text, expected
    # A shorter overlay list and an empty warning list still make a valid 2-page report.
    plain = Analysis(**{**analysis.__dict__, "warnings": ()})
    assert len(re.findall(rb"/Type /Page\b", pdf_report(plain, {}, overlay_findings=["Mass"]))) == 2


def test_heatmap_picture_is_shrunk_and_boxed(analysis):
    from cxr_core.reporting import heatmap_picture

    picture = heatmap_picture(analysis, "Mass", max_side=150)
    assert picture.dtype == np.uint8 and picture.shape == (150, 120, 3)
    box = heatmap_picture(analysis, "Mass", alpha=0.0, max_side=300, label=False)
    top, left = 100 + FINDINGS.index("Mass"), 50
    assert (box[top, left + 5] == 255).all()  # the white heatmap box edge at the map's region


def test_heatmap_method_is_what_the_bundle_records():
    from cxr_core.reporting.report import heatmap_method

    assert heatmap_method(None) == "Grad-CAM++"  # bundles from before the key
    assert heatmap_method({"explanation": {"method": "gradcam"}}) == "Grad-CAM"
    mixed = {"members": [{"explanation": {"method": "gradcam"}}, {"explanation": {"method": "gradcam++"}}]}
    assert heatmap_method(mixed) == "Grad-CAM + Grad-CAM++"
