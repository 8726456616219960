"""Reader study: its vocabulary and records, the SQLite file (database) with the study's operations on it (store) and its schema, case selection, answer validation, the reference standard (reference), and the analysis of the paired reads (pairing, analysis: unaided vs aided; normal_abnormal: agreement on normal/abnormal).

Uses the data and evaluation layers only.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "records": ("PHASES", "CONFIDENCE_LEVELS", "MAX_NAME_LENGTH", "ALL_READERS", "REF_PREFIX", "READ_PREFIX", "AI_PREFIX",
                "AI_THRESHOLD_PREFIX", "EXPERT_PREFIX", "REFERENCES", "REFERENCE_NAMES", "ReaderStudyError", "SchemaVersionError", "UnknownStudyError", "UnknownReaderError",
                "ReadOrderError", "MissingCasesError", "Study", "Reader", "NextCase", "Read", "ReadResult"),
    "schema": ("SCHEMA_VERSION",),
    "database": ("default_db_path", "DB_PATH_ENV"),
    "store": ("ReaderStudyStore",),
    "cases": ("select_cases", "READER_CATEGORIES"),
    "reference": ("LABEL_NOISE_CAVEAT", "EXPERT_REFERENCE_NOTE", "reference_caveat", "expert_reference_frame"),
    "analysis": ("METRICS", "MACRO", "ALL_FINDINGS", "phase_metrics", "paired_change", "ai_agreement", "reading_time",
                 "reader_study_results", "export_csv"),
    "normal_abnormal": ("NIH_LABELS", "AI_TRIAGE", "AI_READER", "triage_verdicts", "triage_agreement"),
})
