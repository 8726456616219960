"""Reader study results: agreement with the study's reference labels (NIH's, or the radiologists') unaided vs aided, the paired change, kappa with the AI,
agreement on the normal/abnormal decision (with NIH's labels and the AI's triage), reading time."""

import io
import tempfile
import warnings
import zipfile
from pathlib import Path

import plotly.express as px
import streamlit as st

from cxr_core.reader_study import (
    AI_READER,
    ALL_FINDINGS,
    LABEL_NOISE_CAVEAT,
    MACRO,
    REFERENCE_NAMES,
    export_csv,
    reader_study_results,
    reference_caveat,
    triage_agreement,
)
from pages import common


def bundle_triage():
    """The configured bundle's triage (derives the AI verdict of reads stored before it was recorded); None without one."""
    from cxr_core.evaluation.triage import Triage

    block = (common.bundle_metadata() or {}).get("triage")
    try:
        return Triage.from_dict(block) if block else None
    except ValueError:
        return None


@st.cache_data(show_spinner="Computing the results (paired case bootstrap)…", max_entries=16)
def results(study_id: int, n_reads: int, last_read: str, _frame):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = reader_study_results(_frame, n_boot=2000, seed=0)
    return tables, sorted({str(w.message) for w in caught})


def csv_bytes(tables, caveat: str) -> bytes:
    """export_csv's files (one CSV per table + README with the caveat), zipped."""
    with tempfile.TemporaryDirectory() as folder:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in export_csv(tables, Path(folder) / "results", caveat=caveat):
                archive.write(file, file.name)
        return buffer.getvalue()


st.title("Reader study results")
store = common.reader_store()
studies = {s.id: s for s in store.list_studies()}
if not studies:
    st.warning(LABEL_NOISE_CAVEAT)
    st.info("No study yet: create one on the Reader study page.")
    st.stop()
study = studies[st.selectbox("Study", list(studies), format_func=lambda i: studies[i].name, key="rr_study")]
caveat = reference_caveat(study.reference)
st.markdown(f"**Reference standard:** {REFERENCE_NAMES[study.reference]}.")
st.warning(caveat)
frame = store.reads_frame(study.id)
if frame.empty:
    st.info("No reads in this study yet.")
    st.stop()
tables, notes = results(study.id, len(frame), str(frame["created_at"].max()), frame)
metrics, change, agreement, times = (tables[k] for k in ("metrics", "change", "agreement", "time"))
if metrics.empty:
    st.info("No case has both its unaided and aided reads yet: only paired cases are compared.")
    st.stop()
st.caption(f"{study.description + '. ' if study.description else ''}{frame['reader'].nunique()} readers, {metrics['n_cases'].max()} paired cases. Undefined values (e.g. sensitivity without a positive case) are blank.")

labels = "the 3 expert categories" if study.reference == "expert" else "the 14 findings"
st.subheader(f"Per reader and overall (macro average of {labels})")
macro = metrics[metrics["finding"] == MACRO].pivot_table(index="reader", columns="phase", values=["sensitivity", "specificity", "f1"], sort=False)
macro.columns = [f"{metric} {phase}" for metric, phase in macro.columns]
st.dataframe(macro.round(3).reset_index(), hide_index=True, key="rr_macro")

st.subheader("Change aided − unaided, with 95% paired bootstrap interval")
shown = change[change["finding"] == MACRO].copy()
figure = px.scatter(shown, x="change", y="reader", facet_col="metric", error_x=shown["ci_high"] - shown["change"], error_x_minus=shown["change"] - shown["ci_low"])
figure.add_vline(x=0, line_dash="dot", line_color="gray").update_layout(height=260 + 30 * shown["reader"].nunique(), margin={"t": 40})
st.plotly_chart(figure, key="rr_change_chart")
st.dataframe(shown.round(3), hide_index=True, key="rr_change")
st.caption("Cases are resampled with both reads kept, so both phases are measured on the same resample. An interval excluding 0 says "
           f"the aided reads agreed better (or worse) with the {'radiologists' if study.reference == 'expert' else 'NIH'} labels on these "
           "cases; readers are treated as fixed.")

st.subheader("Per category" if study.reference == "expert" else "Per finding")
reader = st.selectbox("Reader", list(dict.fromkeys(metrics["reader"])), key="rr_reader")
per_finding = metrics[metrics["reader"] == reader].pivot_table(index="finding", columns="phase", values=["sensitivity", "specificity", "f1"], sort=False)
per_finding.columns = [f"{metric} {phase}" for metric, phase in per_finding.columns]
st.dataframe(per_finding.round(3).reset_index(), hide_index=True, key="rr_per_finding")

left, right = st.columns(2)
kappa = agreement[agreement["finding"] == ALL_FINDINGS]
left.markdown("**Cohen's kappa with the AI's calls** (all findings pooled)")
left.plotly_chart(px.bar(kappa, x="reader", y="kappa", color="phase", barmode="group").update_layout(height=320, margin={"t": 20}), key="rr_kappa_chart")
left.caption("A rise in agreement with the AI without a gain in accuracy is the signature of automation bias.")
right.markdown("**Median seconds per case**")
long_times = times.melt(id_vars="reader", value_vars=["median_seconds_unaided", "median_seconds_aided"], var_name="read", value_name="seconds")
right.plotly_chart(px.bar(long_times, x="reader", y="seconds", color="read", barmode="group").update_layout(height=320, margin={"t": 20}), key="rr_time_chart")
st.dataframe(times.round(1), hide_index=True, key="rr_time")
with st.expander("Kappa per finding"):
    st.dataframe(agreement.round(3), hide_index=True, key="rr_agreement")

st.subheader("Normal or abnormal: agreement per reader")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # an undefined kappa is a blank cell here
    decisions = triage_agreement(frame, triage=bundle_triage())
st.dataframe(decisions.round(3), hide_index=True, key="rr_normal_abnormal",
             column_config={"agreement": st.column_config.NumberColumn("percent agreement", format="percent"),
                            "reader_abnormal": st.column_config.NumberColumn("reader: share abnormal", format="percent"),
                            "other_abnormal": st.column_config.NumberColumn("compared with: share abnormal", format="percent"),
                            "kappa": st.column_config.NumberColumn("Cohen's kappa", format="%.2f")})
derived = int(decisions.loc[decisions["reader"] == AI_READER, "ai_verdicts_derived"].sum())
st.caption("A film is abnormal for a reader who ticked any finding, for the NIH labels when it has any of the 14, for the AI "
           "when its triage verdict (shown with the aided read) was \"abnormal\"; \"no finding likely\" is normal, and films "
           "it did not assess are left out of that comparison. Both phases on the same paired cases. The radiologists' labels "
           "cover four categories only, not whether a film is normal, so they are not compared here."
           + (f" The AI verdicts of {derived} cases were not recorded with their reads (stored before verdicts were) and are derived from the "
              "stored probabilities with the current bundle's triage." if derived else ""))
if notes:
    with st.expander(f"{len(notes)} notes on undefined values"):
        for note in notes:
            st.caption(note)

st.download_button("Download all tables (CSV, zipped, with the caveat)", csv_bytes({**tables, "normal_abnormal": decisions}, caveat), file_name=f"reader_study_{study.id}_results.zip",
                   mime="application/zip", key="rr_zip", on_click="ignore")
for column, (name, table) in zip(st.columns(4), tables.items()):
    column.download_button(f"{name}.csv", table.to_csv(index=False, na_rep=""), file_name=f"{name}.csv", mime="text/csv", key=f"rr_csv_{name}", on_click="ignore")
