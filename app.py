"""cxr-assist: radiologist-assist demo for NIH ChestX-ray14 (not for clinical use).

Run with ``streamlit run app.py``.
"""

import streamlit as st

st.set_page_config(page_title="cxr-assist", page_icon="🩻", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", default=True),
    st.Page("pages/browse.py", title="Browse dataset"),
]
st.navigation(pages).run()
