"""Analyze one image: the triage first, findings flagged at validated operating points, heatmaps, PDF and JSON reports."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from cxr_core.bundle.format import describe_model
from cxr_core.errors import ImageReadError
from cxr_core.findings import DISPLAY_NAMES
from cxr_core.host import settings
from cxr_core.pacs import dicomweb
from cxr_core.reporting import overlays, report
from cxr_core.reporting.words import BAND_LABELS, WITHHELD_NOTE, triage_words
from pages import common

DISPLAY_SIDE = 768  # pictures are drawn at most this size (the model saw far less)
OPERATING_POINTS = {
    "specificity": "Flags at validated specificity 0.95 (default)",
    "youden": "Youden's J per finding (earlier design: many flags on normal films)",
}
VERDICT_STYLE = {"abnormal": ("ABNORMAL", "red"), "no finding likely": ("NO FINDING LIKELY", "green")}

st.title("Analyze an image")
st.caption("Research tool, **not for clinical use**.")
getting_ready = common.getting_ready_notice()  # the image can be chosen meanwhile
if not getting_ready:
    common.require_predictor()  # loaded already, or a plain message (no bundle, a broken one) before anything else



# -- From the PACS (CXR_ASSIST_DICOMWEB): QIDO-RS search, WADO-RS retrieval; the film's bytes then go the upload's way.
PACS_SOURCE = "From the PACS"
PACS_SEARCH_BY = {"patient_id": "Patient ID", "accession_number": "Accession Number"}


@st.cache_data(ttl=30, show_spinner="Searching the PACS ...")
def pacs_studies(connection: dicomweb.PacsConnection, by: str, query: str) -> list[dicomweb.StudyRow]:
    return dicomweb.search_studies(connection.client(), **{by: query})


@st.cache_data(ttl=30, show_spinner="Listing the study's images ...")
def pacs_images(connection: dicomweb.PacsConnection, study_uid: str) -> list[dicomweb.InstanceRow]:
    return dicomweb.list_instances(connection.client(), study_uid)


@st.cache_data(max_entries=4, show_spinner="Retrieving the image from the PACS ...")
def pacs_film(connection: dicomweb.PacsConnection, study: str, series: str, instance: str) -> bytes:
    return dicomweb.retrieve_instance(connection.client(), study, series, instance)


def choose_from_pacs(connection: dicomweb.PacsConnection) -> tuple[str, bytes]:
    """A film picked from the PACS as (name, DICOM bytes); stops the page with a message until there is one."""
    st.caption(f"PACS: {connection.shown_url} (DICOMweb)")
    by = st.radio("Search by", list(PACS_SEARCH_BY), format_func=PACS_SEARCH_BY.get, horizontal=True,
                  key="analyze_pacs_by")
    query = st.text_input(PACS_SEARCH_BY[by], key="analyze_pacs_query").strip()
    if not query:
        st.info(f"Type a {PACS_SEARCH_BY[by]} to search the PACS (exact match).")
        st.stop()
    try:
        studies = {s.study_instance_uid: s for s in pacs_studies(connection, by, query)}
        if not studies:
            st.info(f"The PACS has no study with {PACS_SEARCH_BY[by]} **{query}**.")
            st.stop()
        study = st.selectbox("Study", list(studies), format_func=lambda uid: studies[uid].label, key="analyze_pacs_study")
        images = {i.sop_instance_uid: i for i in pacs_images(connection, study)}
        if not images:
            st.info("This study has no image the model can read (only reports or other objects).")
            st.stop()
        chosen = images[st.selectbox("Image (radiographs first)", list(images), format_func=lambda uid: images[uid].label,
                                     key="analyze_pacs_image")]
        data = pacs_film(connection, chosen.study_instance_uid, chosen.series_instance_uid, chosen.sop_instance_uid)
    except dicomweb.PacsError as exc:
        st.error(str(exc))
        st.stop()
    return f"{chosen.sop_instance_uid}.dcm", data


try:
    pacs = dicomweb.PacsConnection.from_env()
except dicomweb.PacsError as exc:  # a mistyped setting: the other sources still work
    st.warning(f"The PACS source is off: {exc}")
    pacs = None
sources = ["Upload a file", "Demo image", *([PACS_SOURCE] if pacs else [])]
source = st.radio("Image source", sources, horizontal=True, key="analyze_source")
if source == PACS_SOURCE:
    name, data = choose_from_pacs(pacs)
elif source == "Upload a file":
    upload = st.file_uploader("A frontal chest X-ray: PNG, JPEG or DICOM", key="analyze_upload")
    if upload is None:
        st.info("Upload an image, or choose **Demo image** above.")
        st.stop()
    name, data = upload.name, upload.getvalue()
else:
    dataset = common.load_dataset(str(settings.demo_root()))
    name = st.selectbox("Demo image", dataset.image_names, key="analyze_demo")
    data = Path(dataset.csv.set_index("image").at[name, "path"]).read_bytes()

if getting_ready:  # the notice above reruns the page when the model is ready
    st.caption(f"**{name}** will be analysed as soon as the model is ready.")
    st.stop()
predictor = common.require_predictor()
model_key = settings.current_bundle()
policy = predictor.policy
try:
    analysis = common.analyze_bytes(*model_key, common.digest(data), data)
except ImageReadError as exc:
    st.error(f"**{name}** cannot be analysed. {exc}")
    st.stop()
for note in analysis.warnings:
    st.warning(note)
st.caption(f"Analysed **{name}**: {analysis.image.source_format}, {analysis.image.original_shape[1]} × {analysis.image.original_shape[0]} px. "
           f"Model: {describe_model(predictor.metadata)}." + common.compute_note(predictor))

show_anyway = False
if analysis.withheld_because:
    st.error(WITHHELD_NOTE)
    show_anyway = st.checkbox("Show the model's output anyway", key="analyze_show_anyway")
point = None
if show_anyway or not analysis.withheld_because:
    choices = [p for p in OPERATING_POINTS if p == "youden" or policy.flags is not None]
    point = st.radio("Operating point of the flags", choices, format_func=OPERATING_POINTS.get, horizontal=True,
                     key="analyze_operating_point")
reading = analysis.reading  # the default operating point's, withheld where the input check warned
if show_anyway or point not in (None, policy.default_operating_point):
    reading = policy.read(analysis.probabilities, withheld_because=analysis.withheld_because, show_anyway=show_anyway,
                          operating_point=point)
stem = Path(name).stem or "image"


def downloads(alpha=0.45, level=0.5, width=1.0):
    doc = report.json_report(analysis, predictor.metadata, source_name=name, thresholds=predictor.thresholds, reading=reading)
    first, second = st.columns(2)
    first.download_button(
        "Download PDF report", key="analyze_pdf", file_name=f"{stem}_cxr-assist.pdf", mime="application/pdf", on_click="ignore",
        data=lambda: report.pdf_report(analysis, predictor.metadata, source_name=name, thresholds=predictor.thresholds,
                                       alpha=alpha, level=level, width=width, reading=reading),
    )
    second.download_button(
        "Download JSON report", key="analyze_json", file_name=f"{stem}_cxr-assist.json", mime="application/json",
        data=json.dumps(doc, indent=1), on_click="ignore",
    )


pixels, _ = overlays.fit_to(analysis.image.pixels, DISPLAY_SIDE)
if reading.withheld:
    st.image(overlays.window_level(pixels, 0.5, 1.0), caption="The image as received (no findings shown)", width=480,
             output_format="JPEG")
    downloads()
    st.stop()

label, color = VERDICT_STYLE.get(reading.triage, (reading.triage.upper(), "gray"))
with st.container(border=True, key="analyze_triage"):
    st.markdown(f"#### :{color}[Triage: {label}]")
    st.markdown(triage_words(reading, policy))
flagged = ", ".join(DISPLAY_NAMES[f] for f in reading.flagged)
possible = ", ".join(DISPLAY_NAMES[f] for f in reading.possible)
st.markdown(f"**Flagged:** {flagged or 'none'}" + (f" · *possible:* {possible}" if possible else ""))

rows = pd.DataFrame(report.findings_rows(analysis, predictor.metadata, reading=reading, policy=policy))
left, right = st.columns(2)
with left:
    level = st.slider("Window level", 0.0, 1.0, 0.5, 0.01, key="analyze_level")
    width = st.slider("Window width", 0.05, 1.0, 1.0, 0.01, key="analyze_width")
    st.image(overlays.window_level(pixels, level, width), caption="Image (window/level)", width="stretch", output_format="JPEG")
order = [*reading.flagged, *(f for f in rows["finding"] if f not in reading.flagged)]
with right:
    finding = st.selectbox("Heatmap of", order, format_func=DISPLAY_NAMES.get, key="analyze_finding")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="analyze_alpha")


def overlay(finding_name: str):
    return report.heatmap_picture(analysis, finding_name, alpha=alpha, level=level, width=width, max_side=DISPLAY_SIDE)


with right:
    p = analysis.probabilities[finding]
    st.image(overlay(finding), caption=f"{report.heatmap_method(predictor.metadata)}: {DISPLAY_NAMES[finding]} (p = {p:.2f}); "
             "boxes: strongest regions", width="stretch", output_format="JPEG")

st.subheader("Findings, most probable first")
table = rows.assign(
    band=rows["band"].map(lambda b: BAND_LABELS.get(b, b)),
    ppv_text=[("" if r.ppv is None or r.ppv != r.ppv else f"{r.ppv:.2f} ({r.ppv_low:.2f}–{r.ppv_high:.2f})")
              for r in rows.itertuples()],
)
st.dataframe(
    table[["name", "probability", "band", "ppv_text", "lift", "meaning"]],
    hide_index=True, width="stretch", height=35 * 15 + 3, key="analyze_findings",
    column_config={
        "name": "Finding",
        "probability": st.column_config.ProgressColumn("Calibrated probability", format="%.3f", min_value=0.0, max_value=1.0),
        "band": "Flag",
        "ppv_text": "Flag PPV, validation (95% CI)",
        "lift": st.column_config.NumberColumn("Lift (validation)", format="%.1f×"),
        "meaning": st.column_config.TextColumn("What the flag means", width="large"),
    },
)
try:
    evaluation = common.bundle_metrics()
except ValueError:  # a damaged metrics.json: the Model performance page says why
    evaluation = None
burden = evaluation.reading.burden if evaluation else {}
per_normal = (burden.get("flags" if reading.operating_point == "specificity" else "youden") or {}).get("flags_per_no_finding_film")
st.caption(("Probabilities are calibrated on the model's validation split. PPV: share of flagged validation films that had the "
            "finding (NIH labels); lift: PPV over the finding's validation prevalence."
            if reading.operating_point == "specificity" else
            "Youden's J cuts per finding, fitted on validation.")
           + (f" At this operating point a No-Finding film of the test split got {per_normal:.2f} flags on average."
              if per_normal is not None else ""))

st.subheader("Heatmaps: flagged findings first, then the most probable")
for column, top in zip(st.columns(4), order[:4]):
    column.image(overlay(top), caption=f"{DISPLAY_NAMES[top]} (p = {analysis.probabilities[top]:.2f})", width="stretch", output_format="JPEG")

downloads(alpha, level, width)
