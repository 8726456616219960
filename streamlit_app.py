"""cxr-assist's pages and navigation: the Streamlit script that ``app.py`` serves (not for clinical use).

Run with ``streamlit run app.py`` (the server, see app.py); ``streamlit run
streamlit_app.py`` also serves the pages, without app.py's start: no warm-up
before the first page, and until someone opens the home page Streamlit takes
pages/ for a legacy page folder (a first visit straight to a page's URL shows
the folder's files). The model bundle folder comes from
``CXR_ASSIST_BUNDLE`` (default ``models/default``), the demo data from
``CXR_ASSIST_DEMO`` (default ``data/demo``); see ``cxr_core/host/settings.py``.
"""

import streamlit as st

from cxr_core.host import HOST
from pages import common

HOST.page_started.set()  # a browser came: app.py's server leaves the warm-up to the end of this first page run
st.set_page_config(page_title="cxr-assist", page_icon="🩻", layout="wide")

pages = {
    "cxr-assist": [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/tour.py", title="Guided tour", icon=":material/tour:", url_path="tour"),
        st.Page("pages/analyze.py", title="Analyze an image", icon=":material/search:", url_path="analyze"),
        st.Page("pages/browse.py", title="Browse dataset", icon=":material/photo_library:", url_path="browse"),
        st.Page("pages/performance.py", title="Model performance", icon=":material/monitoring:", url_path="performance"),
        st.Page("pages/node.py", title="PACS node", icon=":material/lan:", url_path="node"),
    ],
    "Reader study": [
        st.Page("pages/reader_study.py", title="Read cases", icon=":material/visibility:", url_path="reader_study"),
        st.Page("pages/reader_results.py", title="Results", icon=":material/analytics:", url_path="reader_results"),
    ],
}
common.remember_navigation(pages)  # the home page lists every page
try:
    st.navigation(pages).run()
finally:  # once the first page's script has run (or stopped), get the model ready in the background (once per process;
    # app.py's server starts it itself when no browser comes within 2 s of its start).
    HOST.warm_up()
