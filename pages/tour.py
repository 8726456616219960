"""Guided tour: a dozen demo films that show where the model helps and where it fails, one at a time.

Reads the tour stored with the model (``<bundle>/tour.json``, built by ``python -m training.tour``,
:mod:`cxr_core.jobs.tour`); nothing is chosen here. Each stop shows its computed caption, the reading as every
other page words it (:mod:`cxr_core.evaluation.reading`), the film with NIH's expert boxes, the heatmap of the stop's
finding with the model's boxes (from an analysis of the film, cached), NIH's labels and the radiologists' labels where
the film has them. The whole tour downloads as a PDF handout (:mod:`cxr_core.reporting.handout`).
"""

from pathlib import Path

import streamlit as st

from cxr_core.data import decode_image
from cxr_core.evaluation.reading import ReadingPolicy
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.host import settings
from cxr_core.jobs.tour import CATEGORIES, bundle_fingerprint
from cxr_core.reporting.handout import radiologists_rows, stop_pictures, stop_reading
from cxr_core.reporting.tour_file import TOUR_FILE, read_tour, resolve_image
from cxr_core.reporting.words import BAND_LABELS, WITHHELD_NOTE, flag_words, triage_words
from pages import common

st.title("Guided tour")
st.caption("**Research demo, not for clinical use.** The stops were chosen automatically from the model's own outputs on "
           "the demo set (films it was neither trained nor tuned on, one per patient); every caption is computed from "
           "them, failures as plainly as successes. Labels: NIH's are text-mined from reports and noisy.")


@st.cache_data(show_spinner=False, max_entries=4)
def load_tour(folder: str, mtime: float):
    return read_tour(folder)


bundle = settings.bundle_dir()
tour_path = bundle / TOUR_FILE
try:
    tour = load_tour(str(bundle), tour_path.stat().st_mtime) if tour_path.is_file() else None
except ValueError as exc:
    st.error(f"The stored tour could not be read: {exc}")
    st.stop()
if tour is None:
    st.info(f"No guided tour is stored with the model at `{bundle}`. Build it (a few minutes on a CPU) with\n\n"
            f"`python -m training.tour --bundle {bundle} --data {settings.demo_root()}`")
    st.stop()
metadata = common.bundle_metadata()
if tour.fingerprint != bundle_fingerprint(metadata):
    st.warning("This tour was built for an earlier fitting of the model: its captions may not match what the model says "
               f"now. Rebuild it with `{tour.command or 'python -m training.tour'}`.")
stops, absent = tour.stops, tour.absent
if not stops:
    st.info("The stored tour has no stop: no demo film fits any of its categories.")
    st.stop()

n = len(stops)
if st.session_state.get("tour_stop", 0) >= n:  # a rebuilt, shorter tour
    st.session_state["tour_stop"] = 0


def _go(delta: int) -> None:
    st.session_state["tour_stop"] = min(max(st.session_state.get("tour_stop", 0) + delta, 0), n - 1)


index = st.session_state.get("tour_stop", 0)
nav = st.columns([1, 1, 5])
nav[0].button("← Previous", key="tour_prev", on_click=_go, args=(-1,), disabled=index == 0, width="stretch")
nav[1].button("Next →", key="tour_next", on_click=_go, args=(1,), disabled=index == n - 1, width="stretch")
nav[2].selectbox("Stop", range(n), format_func=lambda k: f"{k + 1}. {stops[k].title}", key="tour_stop",
                 label_visibility="collapsed")
index = st.session_state["tour_stop"]
stop = stops[index]

st.subheader(f"Stop {index + 1} of {n}: {stop.title}")
st.info(stop.caption)
why = CATEGORIES.get(stop.category, ("", ""))[1]
chosen = f" Chosen among {stop.candidates} such films." if stop.candidates else ""
if stop.nih_labels is None:
    st.caption(f"Why this stop: {why}.{chosen} Image: {stop.image} ({stop.description}).")
else:
    labels = ", ".join(DISPLAY_NAMES[f] for f in stop.nih_labels) or "No Finding"
    st.caption(f"Why this stop: {why}.{chosen} Image {stop.image}, patient {stop.patient_id}, model split "
               f"{stop.split}. NIH labels: {labels}.")

policy = ReadingPolicy.from_metadata(metadata)
reading = stop_reading(stop, policy)
if reading.withheld:
    for note in stop.withheld_because:
        st.warning(note)
    st.error(WITHHELD_NOTE)
else:
    with st.container(border=True):
        st.markdown(f"**Triage: {reading.triage}**")
        st.caption(triage_words(reading, policy))
        flagged = ", ".join(f"{BAND_LABELS['flag']} {DISPLAY_NAMES[f]}" for f in reading.flagged) or "no finding flagged"
        st.markdown(f"Flags: {flagged}")

dataset = None
paths = None
if stop.nih_labels is not None:
    try:
        dataset = common.load_dataset(str(settings.demo_root()))
        paths = dict(zip(dataset.csv["image"], dataset.csv["path"]))
    except (ValueError, OSError) as exc:
        st.error(f"The demo set could not be read: {exc}")
path = resolve_image(stop.source, stop.image, settings.demo_root(), paths)
if path is None:
    st.error(f"The image {stop.image} is not on this machine (demo set: `{settings.demo_root()}`).")
else:
    left, right = st.columns(2)
    analysis, getting_ready = None, False
    if not reading.withheld and stop.finding:
        with right:  # while the app is still getting the model ready: its progress here, the page reruns when done
            getting_ready = common.getting_ready_notice()
        if not getting_ready and common.optional_predictor() is not None:
            analysis = common.analyze_path(*settings.current_bundle(), str(path), Path(path).stat().st_mtime)
    pictures = stop_pictures(stop, decode_image(path).pixels, dataset=dataset, analysis=analysis)
    left.image(pictures.image, caption=pictures.image_caption, width="stretch")
    if pictures.heatmap is not None:
        right.image(pictures.heatmap, caption=pictures.heatmap_caption, width="stretch")
    elif reading.withheld:
        right.caption("No heatmap: the output is withheld for this image.")
    elif stop.finding and not getting_ready:
        right.caption("No heatmap: no model is loaded.")

measured = [b for b in stop.boxes if b.finding == stop.finding]
for box in measured:
    st.caption(f"{DISPLAY_NAMES[box.finding]} heatmap against its expert box, measured when the tour was built: IoU "
               f"{box.iou:.2f}, IoBB {box.iobb:.2f} (share of the best heatmap box inside the expert box), the heatmap "
               f"boxes cover {100 * box.coverage:.0f}% of the expert box; its strongest value inside the box is "
               f"{100 * box.peak_in_box:.0f}% of the map's peak.")

if not reading.withheld:
    order = sorted(FINDINGS, key=lambda f: -stop.probabilities[f])
    st.dataframe(
        {"finding": [DISPLAY_NAMES[f] for f in order], "NIH label": ["yes" if f in (stop.nih_labels or ()) else "" for f in order],
         "probability": [stop.probabilities[f] for f in order], "band": [BAND_LABELS.get(reading.bands[f], "") for f in order]},
        hide_index=True, key="tour_findings", height=250,
        column_config={"probability": st.column_config.NumberColumn("calibrated probability", format="%.3f")},
    )
    cuts = policy.cuts(reading.operating_point)
    for finding in reading.flagged:
        st.caption(f"{BAND_LABELS['flag']} {DISPLAY_NAMES[finding]}: {flag_words(finding, 'flag', cuts)}")
rows = radiologists_rows(stop)
if rows:
    st.markdown("**Radiologists' labels** (Majkowska et al., Radiology 2019) beside NIH's text-mined labels")
    st.dataframe(rows, hide_index=True, key="tour_expert")

if absent:
    st.markdown("**Not on this tour**: no demo film fits these categories.")
    st.markdown("\n".join(f"- {a.title}: {a.reason}." for a in absent))

st.divider()
tour_key = f"{tour.created}:{tour.fingerprint}"
if st.button("Prepare the PDF handout of the whole tour", key="tour_pdf_prepare"):
    from cxr_core.reporting.handout import tour_pdf

    analyze = None
    common.wait_until_ready()
    if common.optional_predictor() is not None:
        def analyze(file):
            return common.analyze_path(*settings.current_bundle(), str(file), Path(file).stat().st_mtime)
    with st.spinner("Writing the handout (one analysis per stop)…"):
        try:
            demo = dataset or common.load_dataset(str(settings.demo_root()))
        except (ValueError, OSError):
            demo = None
        st.session_state["tour_pdf_bytes"] = (tour_key, tour_pdf(tour, metadata, dataset=demo, analyze=analyze,
                                                                  data_root=settings.demo_root()))
ready = st.session_state.get("tour_pdf_bytes")
if ready and ready[0] == tour_key:
    st.download_button("Download the tour handout (PDF)", data=ready[1], file_name="cxr-assist-guided-tour.pdf",
                       mime="application/pdf", key="tour_pdf")
