"""cxr-assist: radiologist-assist demo for NIH ChestX-ray14 (not for clinical use).

Run with ``streamlit run app.py``. This file is the server: a Streamlit
``st.App`` that serves the pages of ``streamlit_app.py`` and, when the server
process starts, sees that the model gets ready (importing TensorFlow, loading
the members, compiling them for this CPU; :mod:`cxr_core.host`) before
anyone asks for it. Streamlit runs a page's script only when a browser
connects; a server started for readers who come later would otherwise load
the model only then. When a browser connects at once (Streamlit opens one),
its first page runs first and then starts the warm-up: both at once on 2 cores
slowed that page and brought the first findings no sooner
(:meth:`cxr_core.host.ModelHost.warm_up_at_start`).

The model bundle folder comes from ``CXR_ASSIST_BUNDLE`` (default
``models/default``), the demo data from ``CXR_ASSIST_DEMO`` (default
``data/demo``); ``CXR_ASSIST_WARM=0`` turns the warm-up off (see ``cxr_core/host/settings.py``).
"""

from contextlib import asynccontextmanager

import streamlit as st


@asynccontextmanager
async def lifespan(_app):
    """At server start: the model's warm-up, unless a browser's first page comes first (returns at once; the server
    answers meanwhile)."""
    from cxr_core.host import HOST

    # The pages sit in pages/, beside the entry script, and Streamlit serves such a folder as a legacy multipage app
    # (each file a page of its own, streamlit_app.py bypassed) until st.navigation has been called; from then on it
    # ignores the folder in every session (st.navigation's documentation). Called here, before any session (Streamlit
    # logs "missing ScriptRunContext ... can be ignored" for it), so that even a first visit straight to a page's URL
    # goes through streamlit_app.py's navigation and page config (tests/app/test_browser.py checks it).
    st.navigation([st.Page("streamlit_app.py")])
    HOST.warm_up_at_start()
    yield


app = st.App("streamlit_app.py", lifespan=lifespan)
