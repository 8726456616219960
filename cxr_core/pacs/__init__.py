"""The DICOM node: chest films routed from a PACS in, standard results (a TID 1500 Structured Report and a
Secondary Capture overlay) sent back into the same study (``python -m training.node``; docs/use/pacs.md).

It may use data, evaluation, serving (through the Predictor's public API) and, from learn, the bundle format (its
SHA-256 names the model in the results); nothing in cxr_core imports it.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "assessment": ("Assessment",),
    "assess": ("FilmResult", "assess_film", "ASSESSED_SOP_CLASSES"),
    "results": ("AlgorithmInfo", "ResultUIDs", "SRSummary", "ResultError", "build_sr", "clean_source", "read_sr",
                "result_uids"),
    "capture": ("build_sc", "capture_lines", "capture_pixels", "heatmap_finding"),
    "inbox": ("Inbox", "write_durably"),
    "state": ("NodeState", "InstanceRecord", "open_state", "read_only_state", "RECEIVED", "ANALYSED", "SENT"),
    "status": ("status_summary", "status_lines"),
    "sender": ("CStoreDestination", "StowDestination", "SendError", "backoff_delay"),
    "node": ("Node", "NodeConfig", "bundle_fingerprint"),
})
