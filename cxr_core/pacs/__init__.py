"""The DICOM node: chest films routed from a PACS in, standard results (a TID 1500 Structured Report and a
Secondary Capture overlay) sent back into the same study (``python -m training.node``; docs/pacs.md).

It may use data, evaluation and serving (through the Predictor's public API); nothing in cxr_core imports it.
"""
