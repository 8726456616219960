"""Home: what cxr-assist is, that it is not for clinical use, and which model is loaded."""

import streamlit as st

from cxr_core import __version__
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.learn.bundle import describe_model, input_sizes
from pages import common

st.title("cxr-assist")
st.warning("Research tool. **Not for clinical use**: it has not been validated for diagnosis.")
st.markdown(
    "A radiologist-assist system for the **NIH ChestX-ray14** dataset. It reads a frontal chest X-ray "
    "(PNG, JPEG or DICOM) and gives, first, a normal/abnormal **triage** (the probability that the film has any "
    "of 14 findings text-mined from radiology reports, with a rule-out point below which a film is \"no finding "
    "likely\"); then the calibrated probability of each finding, **flagged** only where it reaches a cut with a "
    "validated specificity of 0.95, with what such a flag was worth on validation; and a heatmap of where the model "
    "looked (Grad-CAM or Grad-CAM++, as the model records). An image that may not be a frontal chest film gets a "
    f"warning and no findings unless you ask for them. Library version {__version__}."
)
st.write("Findings: " + ", ".join(DISPLAY_NAMES[f] for f in FINDINGS) + '. "No Finding" means none of them.')

st.subheader("Loaded model")
meta = common.bundle_metadata()
if meta is None:
    st.error(common.NO_BUNDLE_HELP.format(path=common.bundle_dir()))
else:
    data = meta.get("data") or {}
    counts, patients = data.get("counts") or {}, data.get("patients") or {}
    auroc = (meta.get("test_summary") or {}).get("mean_auroc")
    cols = st.columns(5)
    members = meta.get("members") or []
    if members:  # an ensemble: every member's backbone and input size, never one for all; the full line in the help
        cols[0].metric("Backbone", f"ensemble of {len(members)}",
                       help=f"{describe_model(meta)}; logits averaged with weights "
                            + ", ".join(f"{m.get('weight', 0):.2f}" for m in members))
        cols[1].metric("Input size", " / ".join(str(s) for s in input_sizes(meta)) + " px")
    else:
        cols[0].metric("Backbone", str(meta.get("backbone", "?")))
        cols[1].metric("Input size", f"{meta.get('input_size', '?')} px")
    cols[2].metric("Test mean AUROC", "not evaluated" if auroc is None else f"{auroc:.3f}")
    cols[3].metric("Training images", f"{counts['train']:,}" if "train" in counts else "?")
    triage = ((common.bundle_metrics() or {}).get("reading") or {}).get("triage")
    cols[4].metric("Triage AUROC (test)", "not fitted" if not triage else f"{triage['auroc']:.3f}",
                   help="Abnormal (any of the 14 findings) against No-Finding films of the test split, NIH labels; "
                        "fitted on validation" + ("" if not triage else
                                                  f"; 95% CI {triage['auroc_low']:.3f}–{triage['auroc_high']:.3f}"))
    trained_on = (
        f"NIH ChestX-ray14 images, patient-wise split: {counts.get('train', '?')} training images "
        f"({patients.get('train', '?')} patients), {counts.get('val', '?')} validation, {counts.get('test', '?')} test."
        if counts else "the split recorded in the bundle's splits.csv."
    )
    st.caption(f"Bundle `{common.bundle_dir()}` ({describe_model(meta)}), created {meta.get('created', '?')}. "
               f"Trained on {trained_on}")
    if auroc is None:
        st.info("This bundle has not been evaluated yet (`python -m training.evaluate`): no thresholds or metrics.")

st.subheader("Pages")
st.page_link("pages/analyze.py", label="Analyze an image: upload a film or pick a demo image: triage, flags, heatmaps",
             icon=":material/search:")
st.page_link("pages/browse.py", label="Browse the dataset: labels and expert boxes against the model", icon=":material/photo_library:")
st.page_link("pages/performance.py", label="Model performance: ROC, PR, calibration, localisation", icon=":material/monitoring:")
st.page_link("pages/reader_study.py", label="Reader study: read cases unaided, then with the AI panel", icon=":material/visibility:")
st.page_link("pages/reader_results.py", label="Reader study results: does the AI panel help?", icon=":material/analytics:")
