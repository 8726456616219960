"""The DICOM node's recent work, read from its state database (CXR_ASSIST_NODE_INBOX; docs/use/pacs.md)."""

import os
import sqlite3

import pandas as pd
import streamlit as st

from cxr_core.findings import DISPLAY_NAMES
from cxr_core.pacs.state import ANALYSED, RECEIVED, SENT, read_only_state
from cxr_core.pacs.status import status_summary

INBOX_ENV = "CXR_ASSIST_NODE_INBOX"
RECENT = 50
START_HELP = f"""Start the node with the inbox this page should show, and give the app the same folder:

```bash
python -m training.node --port 11112 --ae-title CXR_ASSIST --send-to ORTHANC@127.0.0.1:4242 \\
    --inbox /var/lib/cxr-assist/inbox --allow ORTHANC
{INBOX_ENV}=/var/lib/cxr-assist/inbox streamlit run app.py
```

The node takes chest films routed from a PACS and sends a structured report (TID 1500) and an overlay back
into the same study. The five-minute walk with Orthanc is in `docs/use/pacs.md`."""

st.title("PACS node")
st.caption("What the cxr-assist DICOM node has received from the PACS, analysed and sent back. "
           "Research tool, **not for clinical use**.")
inbox = os.environ.get(INBOX_ENV, "").strip()
if not inbox:
    st.info(f"No node inbox is set for this app (`{INBOX_ENV}`).")
    st.markdown(START_HELP)
    st.stop()
st.button("Refresh", key="node_refresh", icon=":material/refresh:")  # a click reruns the page: the database is read again
try:
    state = read_only_state(inbox)
    try:
        summary = status_summary(state, recent=RECENT)
    finally:
        state.close()
except FileNotFoundError:
    st.info(f"No node has used the inbox `{inbox}` yet.")
    st.markdown(START_HELP)
    st.stop()
except (sqlite3.Error, RuntimeError, OSError) as exc:
    st.error(f"The node's state database in `{inbox}` could not be read: {exc}")
    st.stop()

counts = summary["counts"]
queued, waiting, failing, sent = st.columns(4)
queued.metric("Waiting for analysis", counts[RECEIVED])
waiting.metric("Waiting to be sent", counts[ANALYSED], help="Analysed; results not yet stored in the PACS "
               "(including those whose send failed and are retried).")
failing.metric("Send failed, retrying", counts["failing"], help="Never dropped: tried again with a growing wait.")
sent.metric("Sent", counts[SENT])
st.caption(f"State database: `{summary['database']}`, read {pd.Timestamp.now().strftime('%H:%M:%S')}.")

st.subheader(f"Recent work, newest first (at most {RECENT})")
if not summary["recent"]:
    st.info("The node has received no film yet.")
    st.stop()
rows = pd.DataFrame(summary["recent"])
rows["flagged"] = rows["flagged"].map(lambda names: ", ".join(DISPLAY_NAMES.get(n, n) for n in names))
rows["triage"] = rows["triage"].fillna("not yet")  # received, not analysed yet
for column in ("received_at", "analysed_at", "sent_at"):
    rows[column] = rows[column].str.replace("T", " ")
st.dataframe(
    rows[["received_at", "status", "triage", "flagged", "reason", "patient_id", "accession_number", "modality", "from",
          "analysed_at", "sent_at", "attempts", "last_error"]],
    hide_index=True, width="stretch", key="node_recent",
    column_config={
        "received_at": "Received", "status": st.column_config.TextColumn("State", width="medium"), "triage": "Triage", "flagged": "Flagged findings",
        "reason": st.column_config.TextColumn("Why not assessed", width="medium"), "patient_id": "Patient ID",
        "accession_number": "Accession", "modality": "Modality", "from": "From (AE)", "analysed_at": "Analysed",
        "sent_at": "Sent", "attempts": "Failed sends", "last_error": st.column_config.TextColumn("Last error", width="large"),
    },
)
st.caption("Triage and flags are the node's readings at the model bundle's validated operating points: the triage's "
           "rule-out point, and each finding's flag at a specificity of 0.95 (where the bundle has such flags fitted, "
           "as the shipped model has), fitted on the NIH validation split against NIH's text-mined labels, not "
           "radiologists' reads. \"Not assessed\": the film was not a chest film "
           "the model reads (another modality, withheld by the input check, or unreadable). Times are this server's "
           "local time.")
