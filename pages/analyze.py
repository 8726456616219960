"""Analyze one image: calibrated findings with thresholds, heatmap overlays, PDF and JSON reports."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from cxr_core.errors import ImageReadError
from cxr_core.findings import DISPLAY_NAMES
from cxr_core.learn.bundle import describe_model
from cxr_core.serving import overlays, report
from pages import common

DISPLAY_SIDE = 768  # pictures are drawn at most this size (the model saw far less)

st.title("Analyze an image")
st.caption("Research tool, **not for clinical use**.")
predictor = common.require_predictor()
model_key = common.current_bundle()

source = st.radio("Image source", ["Upload a file", "Demo image"], horizontal=True, key="analyze_source")
if source == "Upload a file":
    upload = st.file_uploader("A frontal chest X-ray: PNG, JPEG or DICOM", key="analyze_upload")
    if upload is None:
        st.info("Upload an image, or choose **Demo image** above.")
        st.stop()
    name, data = upload.name, upload.getvalue()
else:
    dataset = common.load_dataset(str(common.demo_root()))
    name = st.selectbox("Demo image", dataset.image_names, key="analyze_demo")
    data = Path(dataset.csv.set_index("image").at[name, "path"]).read_bytes()

try:
    analysis = common.analyze_bytes(*model_key, common.digest(data), data)
except ImageReadError as exc:
    st.error(f"**{name}** cannot be analysed. {exc}")
    st.stop()
for note in analysis.warnings:
    st.warning(note)
st.caption(f"Analysed **{name}**: {analysis.image.source_format}, {analysis.image.original_shape[1]} × {analysis.image.original_shape[0]} px. "
           f"Model: {describe_model(predictor.metadata)}." + common.compute_note(predictor))

rows = pd.DataFrame(report.findings_rows(analysis, predictor.metadata, predictor.thresholds))
pixels, _ = overlays.fit_to(analysis.image.pixels, DISPLAY_SIDE)

left, right = st.columns(2)
with left:
    level = st.slider("Window level", 0.0, 1.0, 0.5, 0.01, key="analyze_level")
    width = st.slider("Window width", 0.05, 1.0, 1.0, 0.01, key="analyze_width")
    st.image(overlays.window_level(pixels, level, width), caption="Image (window/level)", width="stretch", output_format="JPEG")
with right:
    finding = st.selectbox("Heatmap of", rows["finding"], format_func=DISPLAY_NAMES.get, key="analyze_finding")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="analyze_alpha")


def overlay(finding_name: str):
    return report.heatmap_picture(analysis, finding_name, alpha=alpha, level=level, width=width, max_side=DISPLAY_SIDE)


with right:
    p = analysis.probabilities[finding]
    st.image(overlay(finding), caption=f"{report.heatmap_method(predictor.metadata)}: {DISPLAY_NAMES[finding]} (p = {p:.2f}); boxes: strongest regions", width="stretch", output_format="JPEG")

st.subheader("Findings, most probable first")
table = rows.assign(call=rows["positive"].map({True: "POSITIVE", False: "negative"}))
st.dataframe(
    table[["name", "probability", "threshold", "call", "val_sensitivity", "val_specificity"]],
    hide_index=True, width="stretch", height=35 * 15 + 3, key="analyze_findings",
    column_config={
        "name": "Finding",
        "probability": st.column_config.ProgressColumn("Calibrated probability", format="%.3f", min_value=0.0, max_value=1.0),
        "threshold": st.column_config.NumberColumn("Operating threshold", format="%.3f"),
        "call": "At threshold",
        "val_sensitivity": st.column_config.NumberColumn("Sensitivity (validation)", format="%.2f"),
        "val_specificity": st.column_config.NumberColumn("Specificity (validation)", format="%.2f"),
    },
)

st.subheader("Heatmaps of the 4 most probable findings")
for column, top in zip(st.columns(4), rows["finding"][:4]):
    column.image(overlay(top), caption=f"{DISPLAY_NAMES[top]} (p = {analysis.probabilities[top]:.2f})", width="stretch", output_format="JPEG")

stem = Path(name).stem or "image"
doc = report.json_report(analysis, predictor.metadata, source_name=name, thresholds=predictor.thresholds)
first, second = st.columns(2)
first.download_button(
    "Download PDF report", key="analyze_pdf", file_name=f"{stem}_cxr-assist.pdf", mime="application/pdf", on_click="ignore",
    data=lambda: report.pdf_report(analysis, predictor.metadata, source_name=name, thresholds=predictor.thresholds, alpha=alpha, level=level, width=width),
)
second.download_button(
    "Download JSON report", key="analyze_json", file_name=f"{stem}_cxr-assist.json", mime="application/json",
    data=json.dumps(doc, indent=1), on_click="ignore",
)
