"""Reader study: each case read unaided, then with the AI panel; every read timed and saved at once.

The AI panel shows what Analyze shows: the triage verdict first, then the findings with their band at the bundle's
default operating point (⚑ flag, "possible"). Stored with the aided read: the 14 calibrated probabilities, the flag
cuts the panel used (``ai_thresholds``; a finding with no flag set is stored as 1.0, a cut no calibrated probability
reaches, so the analysis never counts it as an AI call) and the triage verdict (``ai_triage``). A case whose image the
input check warns on is never shown: it is excluded from the study for every reader, with a note.
"""

import time

import streamlit as st

from cxr_core.data import decode_image
from cxr_core.errors import ImageReadError
from cxr_core.findings import DISPLAY_NAMES, FINDINGS, from_multi_hot, to_multi_hot
from cxr_core.host import settings
from cxr_core.reader_study import REFERENCE_NAMES, REFERENCES, MissingCasesError
from cxr_core.reporting import overlays, report
from cxr_core.reporting.words import BAND_LABELS, triage_words
from pages import common

st.title("Reader study")
st.caption("Research tool, **not for clinical use**. Read each case alone first; the AI panel appears after your unaided read is saved, which is final.")
store = common.reader_store()
if message := st.session_state.pop("rs_message", None):
    st.success(message)
if note := st.session_state.pop("rs_excluded_note", None):
    st.info(note)

with st.expander("Create a study (the demo set, or an allowed dataset folder)", expanded=not store.list_studies()):
    with st.form("rs_create"):
        new_name = st.text_input("Study name", key="rs_new_name")
        root_text = st.text_input("Dataset folder", str(settings.demo_root()), key="rs_new_root")
        reference = st.radio("Reference standard the reads are scored against", REFERENCES, format_func=REFERENCE_NAMES.get,
                             key="rs_new_reference", help="The radiologists' labels need the folder's extras/google2019_nih-chest-xray-labels.csv.gz.")
        n_cases = st.number_input("Cases", min_value=2, max_value=200, value=30, key="rs_new_cases")
        seed = st.number_input("Seed", min_value=0, value=0, key="rs_new_seed")
        if st.form_submit_button("Create study"):
            try:
                root = settings.check_dataset_root(root_text)
                experts = common.expert_labels(root) if reference == "expert" else None
                if reference == "expert" and experts is None:
                    raise ValueError(f"`{root}` has no radiologists' label file (extras/google2019_nih-chest-xray-labels.csv.gz); "
                                     "choose the NIH labels or another folder.")
                where = "demo set" if root == settings.demo_root().resolve() else root.name
                created = store.create_study(new_name, common.load_dataset(str(root)), n_cases=int(n_cases), seed=int(seed),
                                             description=where, reference=reference, expert_labels=experts)
                st.session_state["rs_study"] = created.id
            except (ValueError, OSError) as exc:
                st.error(str(exc))
studies = {s.id: s for s in store.list_studies()}
if not studies:
    st.info("No study yet: create one above.")
    st.stop()
study = studies[st.selectbox("Study", list(studies), key="rs_study", format_func=lambda i: f"{studies[i].name} ({studies[i].n_cases} cases"
                             + (", radiologists' labels as reference)" if studies[i].reference == "expert" else ")"))]
reader_name = st.text_input("Your name (as reader)", key="rs_reader")
try:
    store.require_cases_present(study.id)
    if not reader_name:
        st.info("Enter your name to start or resume reading.")
        st.stop()
    reader = store.get_or_create_reader(reader_name)
except (MissingCasesError, ValueError) as exc:  # missing images, an empty or reserved name
    st.error(str(exc))
    st.stop()

done, total = store.progress(study.id, reader.id)
st.progress(done / max(total, 1), text=f"{reader.name}: {done} of {total} cases read")
case = store.next_case(study.id, reader.id)
if case is None:
    st.success("You have read every case of this study. Thank you! See **Reader study results**.")
    st.stop()
if st.session_state.get("rs_stopped"):
    st.info("Stopped. Every read you saved is kept; resume here (or from any browser, with the same name) at the next case.")
    st.button("Resume", key="rs_resume", on_click=lambda: st.session_state.pop("rs_stopped", None))
    st.stop()
st.button("Stop for now", key="rs_stop", on_click=lambda: st.session_state.update(rs_stopped=True))

# The input check runs before the image is shown (the analysis is cached for the aided read): an image that may not
# be a frontal chest film is never shown to a reader, in either phase; the case leaves the study for everyone.
path = store.case_image_path(study.id, case.position)
predictor = common.require_predictor()
try:
    analysis = common.analyze_path(*settings.current_bundle(), str(path), path.stat().st_mtime)
    why = " ".join(analysis.withheld_because)
except ImageReadError as exc:
    why = f"the image cannot be read: {exc}"
if why:
    store.exclude_case(study.id, case.position, why)
    st.session_state["rs_excluded_note"] = (f"Case {case.position + 1} was left out of this study for every reader and is not shown: "
                                            f"the input check warned on its image (it may not be a frontal chest X-ray). {why}")
    st.rerun()

started = st.session_state.setdefault(f"rs_started_{study.id}_{reader.id}_{case.position}_{case.phase}", time.monotonic())
st.subheader(f"Case {case.position + 1} of {study.n_cases}: {'unaided' if case.phase == 'unaided' else 'aided'} read")
left, right = st.columns([3, 2])
left.image(overlays.fit_to(decode_image(path).pixels, 768)[0], caption=f"Case {case.position + 1}", width="stretch", clamp=True)

panel = None
if case.phase == "aided":
    reading, policy = analysis.reading, predictor.policy
    cuts = policy.cuts(reading.operating_point)
    rows = report.findings_rows(analysis, predictor.metadata, predictor.thresholds)
    panel = {"ai_probabilities": [analysis.probabilities[f] for f in FINDINGS],
             "ai_thresholds": [float(c) if c == c else 1.0 for c in cuts.flag],  # no flag set: 1.0, never reached
             "ai_triage": reading.triage}
    with right:
        st.markdown(f"**AI panel.** Triage: **{reading.triage}**")
        st.caption(triage_words(reading, policy))
        st.dataframe([{"finding": r["name"], "probability": round(r["probability"], 3), "AI": BAND_LABELS.get(r["band"], r["band"]),
                       "flag at": None if r["flag_threshold"] is None else round(r["flag_threshold"], 3)} for r in rows],
                     hide_index=True, key="rs_ai_table", height=35 * 15 + 3)
        point = (f"at a specificity of {cuts.target_specificity:.2f} on the validation split (NIH labels)"
                 if reading.operating_point == "specificity" else "at Youden's J per finding (this bundle has no validated flags yet)")
        st.caption(f"Calibrated probabilities, most probable first. ⚑ flag: at or above the finding's flag cut, {point}; "
                   "possible: a lower band, not a flag.")
    for column, row in zip(st.columns(4), rows[:4]):
        column.image(report.heatmap_picture(analysis, row["finding"], max_side=384), caption=f"{row['name']} ({row['probability']:.2f})", width="stretch")

# Not clear_on_submit: the browser would clear the form at the first click of a double-click, and the second
# click's submission (no findings ticked) would replace the first before it was saved. The form's widgets
# start empty at the next case anyway: each phase's widgets leave the page (and their state) in between.
with right, st.form(f"rs_{case.phase}"):
    # The aided form starts from the unaided answers as stored, not as this session remembers them: a page run
    # stopped right after the save (by a double-click's second submission) would not remember, nor would another browser.
    unaided = store.get_read(study.id, reader.id, case.position, "unaided") if case.phase == "aided" else None
    ticked = st.multiselect("Findings you see (none = No Finding)", FINDINGS, default=list(from_multi_hot(unaided.findings)) if unaided else [],
                            format_func=DISPLAY_NAMES.get, key=f"rs_{case.phase}_findings")
    confidence = st.slider("Confidence (1 = guessing, 5 = certain)", 1, 5, 3, key=f"rs_{case.phase}_confidence")
    if st.form_submit_button(f"Save {case.phase} read"):
        try:
            result = store.record_read(study.id, reader.id, case.position, phase=case.phase, findings=to_multi_hot(ticked),
                                       confidence=confidence, seconds=time.monotonic() - started, **(panel or {}))
        except ValueError as exc:  # ReadOrderError, an unknown case ...: say so, keep the page
            st.error(str(exc))
        else:
            st.session_state["rs_message"] = result.message
            st.rerun()
