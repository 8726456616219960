"""cxr-assist: radiologist-assist demo for NIH ChestX-ray14 (not for clinical use).

Run with ``streamlit run app.py``. The model bundle folder comes from
``CXR_ASSIST_BUNDLE`` (default ``models/default``), the demo data from
``CXR_ASSIST_DEMO`` (default ``data/demo``); see ``pages/common.py``.
"""

import streamlit as st

from pages import common

st.set_page_config(page_title="cxr-assist", page_icon="🩻", layout="wide")

pages = {
    "cxr-assist": [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/tour.py", title="Guided tour", icon=":material/tour:", url_path="tour"),
        st.Page("pages/analyze.py", title="Analyze an image", icon=":material/search:", url_path="analyze"),
        st.Page("pages/browse.py", title="Browse dataset", icon=":material/photo_library:", url_path="browse"),
        st.Page("pages/performance.py", title="Model performance", icon=":material/monitoring:", url_path="performance"),
    ],
    "Reader study": [
        st.Page("pages/reader_study.py", title="Read cases", icon=":material/visibility:", url_path="reader_study"),
        st.Page("pages/reader_results.py", title="Results", icon=":material/analytics:", url_path="reader_results"),
    ],
}
try:
    st.navigation(pages).run()
finally:  # as soon as the first page's script has run (or stopped), get the model ready in the background: importing
    # TensorFlow, loading and compiling the members is most of the time before a first analysis; started before the
    # page ran, it slowed the first page down (cold start 6.4 s instead of about 4 s on the 2 cores).
    common.warm_up()
