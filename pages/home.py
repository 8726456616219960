"""Home: what cxr-assist is, that it is not for clinical use, and which model is loaded."""

import streamlit as st

from cxr_core import __version__
from cxr_core.bundle.format import describe_model
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.host import settings
from pages import common

#: What each page is for, by its URL path (a page not named here is listed by its title alone).
PAGE_SUMMARIES = {
    "tour": "a dozen demo films, one at a time, where the model helps and where it fails (a demo starts here)",
    "analyze": "upload a film (PNG, JPEG or DICOM) or pick a demo image; triage, flags, heatmaps, PDF and JSON reports",
    "browse": "the demo set or your own copy, labels and expert boxes against the model",
    "performance": "every test number of the loaded model (ROC, PR, calibration, localisation)",
    "node": "the DICOM node's recent work (films from a PACS, results sent back)",
    "reader_study": "read cases unaided, then with the AI panel",
    "reader_results": "the reader study's results (does the AI panel help?)",
}

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
    st.error(common.NO_BUNDLE_HELP.format(path=settings.bundle_dir()))
else:
    data = meta.get("data") or {}
    counts, patients = data.get("counts") or {}, data.get("patients") or {}
    auroc = (meta.get("test_summary") or {}).get("mean_auroc")
    # The model's name and every member's input size as text, whole at any width (metric cards cut them: "ensembl…").
    members = meta.get("members") or []
    if members:
        st.markdown(f"**Model:** an ensemble of {len(members)} networks, their logits averaged with the shares below "
                    "(each network sees the film at its own input size).")
        st.markdown("| member | network | input size | test-time views | share of the logits |\n|---|---|---|---|---|\n"
                    + "\n".join(f"| `{m.get('name', '?')}` | {m.get('backbone', '?')} | {m.get('input_size', '?')} px | "
                                f"{m.get('tta_views', 1)} | {m.get('weight', 0):.2f} |" for m in members))
    else:
        st.markdown(f"**Model:** {meta.get('backbone') or '?'}; **input size:** {meta.get('input_size', '?')} px.")
    cols = st.columns(3)
    cols[0].metric("Test mean AUROC", "not evaluated" if auroc is None else f"{auroc:.3f}",
                   help="Mean over the 14 findings on the bundle's test split, NIH labels")
    cols[1].metric("Training images", f"{counts['train']:,}" if "train" in counts else "?")
    try:
        evaluation = common.bundle_metrics()
    except ValueError:  # a damaged metrics.json: the Model performance page says why
        evaluation = None
    triage = evaluation.reading.triage if evaluation else None
    cols[2].metric("Triage AUROC (test)", "not fitted" if not triage else f"{triage.auroc:.3f}",
                   help="Abnormal (any of the 14 findings) against No-Finding films of the test split, NIH labels; "
                        "fitted on validation" + ("" if not triage else
                                                  f"; 95% CI {triage.auroc_low:.3f}–{triage.auroc_high:.3f}"))
    trained_on = (
        f"NIH ChestX-ray14 images, patient-wise split: {counts.get('train', '?')} training images "
        f"({patients.get('train', '?')} patients), {counts.get('val', '?')} validation, {counts.get('test', '?')} test."
        if counts else "the split recorded in the bundle's splits.csv."
    )
    st.caption(f"Bundle `{settings.bundle_dir()}` ({describe_model(meta)}), created {meta.get('created', '?')}. "
               f"Trained on {trained_on}")
    if auroc is None:
        st.info("This bundle has not been evaluated yet (`python -m training.evaluate`): no thresholds or metrics.")

st.subheader("Pages")
# Every page of the navigation (streamlit_app.py), so a page added there is listed here too; the Home page itself not.
for page in common.navigation_pages():
    if page.url_path:
        summary = PAGE_SUMMARIES.get(page.url_path)
        st.page_link(page, label=f"{page.title} — {summary}" if summary else page.title)
