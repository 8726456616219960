"""Home: what cxr-assist is, and the data it ships with."""

import streamlit as st

from cxr_core import __version__
from cxr_core.findings import DISPLAY_NAMES, FINDINGS

st.title("cxr-assist")
st.warning("Research tool. **Not for clinical use**: it has not been validated for diagnosis.")
st.markdown(
    "A radiologist-assist system for the **NIH ChestX-ray14** dataset: 14 findings "
    "text-mined from radiology reports, expert boxes for 8 of them. "
    f"Library version {__version__}."
)
st.subheader("Findings the model reads")
st.write(", ".join(DISPLAY_NAMES[f] for f in FINDINGS) + ". \"No Finding\" means none of them.")
st.info("Model analysis pages arrive with the shipped model. Browse the demo data in the meantime.")
