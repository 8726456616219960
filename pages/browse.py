"""Browse the demo set (or a dataset folder) against its labels and boxes."""

from pathlib import Path

import streamlit as st

from cxr_core.dataset import NIHDataset
from cxr_core.findings import FINDINGS

DEMO_ROOT = Path(__file__).resolve().parents[1] / "data" / "demo"


@st.cache_resource(show_spinner="Reading the dataset…")
def load_dataset(root: str) -> NIHDataset:
    return NIHDataset(root)


st.title("Browse dataset")
dataset = load_dataset(str(DEMO_ROOT))
st.caption(f"{len(dataset)} images of {dataset.csv['patient_id'].nunique()} patients, {len(dataset.boxes)} expert boxes")
finding = st.selectbox("Finding", ["Any", "No Finding", *FINDINGS], key="browse_finding")
table = dataset.csv
if finding == "No Finding":
    table = table[dataset.labels.sum(axis=1) == 0]
elif finding != "Any":
    table = table[dataset.labels[:, FINDINGS.index(finding)] == 1]
st.dataframe(table[["image", "finding_labels", "patient_id", "age", "sex", "view"]], hide_index=True, key="browse_table")
