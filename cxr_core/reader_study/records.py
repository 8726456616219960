"""Reader-study vocabulary: the phases, scales and column names, the errors, and the records handed to the page."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PHASES",
    "CONFIDENCE_LEVELS",
    "MAX_NAME_LENGTH",
    "ALL_READERS",
    "REF_PREFIX",
    "READ_PREFIX",
    "AI_PREFIX",
    "AI_THRESHOLD_PREFIX",
    "EXPERT_PREFIX",
    "REFERENCES",
    "REFERENCE_NAMES",
    "ReaderStudyError",
    "SchemaVersionError",
    "UnknownStudyError",
    "UnknownReaderError",
    "ReadOrderError",
    "MissingCasesError",
    "Study",
    "Reader",
    "NextCase",
    "Read",
    "ReadResult",
]

#: The two reads of a case, in the order they must be made.
PHASES: tuple[str, ...] = ("unaided", "aided")

#: Confidence scale of a read: 1 (guessing) to 5 (certain).
CONFIDENCE_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Longest reader or study name accepted (a name is a label on a page, not a note).
MAX_NAME_LENGTH = 80

#: Label the analysis uses for "pooled over every reader"; no reader may be
#: called this, so it can never be confused with a person.
ALL_READERS = "all readers"

#: Column prefixes of :meth:`ReaderStudyStore.reads_frame`, followed by a
#: finding name from FINDINGS (e.g. ``ref_Effusion``, ``read_Effusion``).
REF_PREFIX = "ref_"
READ_PREFIX = "read_"
AI_PREFIX = "ai_"
AI_THRESHOLD_PREFIX = "ai_threshold_"
#: Prefix of a case's radiologist label per expert category (``expert_Nodule or mass``), schema version 2.
EXPERT_PREFIX = "expert_"

#: A study's reference standard: NIH's text-mined labels (14 findings), or the
#: radiologists' labels of Majkowska et al. 2019 (their categories; only cases
#: that have them are selected). See docs/build/expert_reference.md.
REFERENCES: tuple[str, ...] = ("nih", "expert")

#: How each reference standard is named on the pages.
REFERENCE_NAMES: dict[str, str] = {
    "nih": "NIH labels (text-mined from reports; 14 findings)",
    "expert": "Radiologists' labels (Majkowska et al. 2019; Pneumothorax, Nodule or mass, Airspace opacity; "
              "cases chosen among the images that have them)",
}


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ReaderStudyError(ValueError):
    """A reader-study request cannot be honoured; the message says why and what to do."""


class SchemaVersionError(ReaderStudyError):
    """The database file was written by a newer cxr-assist, or is not a reader-study database."""


class UnknownStudyError(ReaderStudyError):
    """No study has that id (or that case position)."""


class UnknownReaderError(ReaderStudyError):
    """No reader has that id."""


class ReadOrderError(ReaderStudyError):
    """An aided read was submitted before the unaided read of the same case."""


class MissingCasesError(ReaderStudyError):
    """Case images of a study are not on disk; ``missing`` lists their file names."""

    def __init__(self, message: str, *, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


# --------------------------------------------------------------------------
# Records handed to the page
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """One study: a fixed, ordered list of ``n_cases`` cases.

    ``reference`` is ``"nih"`` (NIH's labels; every study made before schema
    version 2) or ``"expert"`` (the radiologists' labels stored with its cases).
    """

    id: int
    name: str
    data_root: str
    seed: int
    n_cases: int
    description: str
    created_at: str
    reference: str = "nih"


@dataclass(frozen=True)
class Reader:
    id: int
    name: str
    created_at: str


@dataclass(frozen=True)
class NextCase:
    """The read a reader owes next. Deliberately carries no reference labels.

    Attributes:
        position: 0-based place of the case in the study.
        image: image file name (find it with :meth:`ReaderStudyStore.case_image_path`).
        patient_id: as stored (text).
        phase: ``"unaided"`` or ``"aided"``: which form the page shows.
    """

    position: int
    image: str
    patient_id: str
    phase: str


@dataclass(frozen=True)
class Read:
    """A stored read. ``findings`` is 14 ints (0/1) in FINDINGS order;
    ``ai_probabilities`` / ``ai_thresholds`` are 14 floats or None;
    ``ai_triage`` is the AI panel's normal/abnormal verdict (``"abnormal"``,
    ``"no finding likely"``, ``"not assessed"``), None for an unaided read or
    one stored before schema version 3."""

    id: int
    study_id: int
    position: int
    reader_id: int
    phase: str
    findings: tuple[int, ...]
    confidence: int
    seconds: float
    ai_probabilities: tuple[float, ...] | None
    ai_thresholds: tuple[float, ...] | None
    created_at: str
    ai_triage: str | None = None


@dataclass(frozen=True)
class ReadResult:
    """Outcome of :meth:`ReaderStudyStore.record_read`.

    Attributes:
        read: the stored read (the new one, or the one already there).
        created: False when this read had already been stored (page re-run,
            second tab); nothing was written then.
        differs: True when an already stored read has other answers than
            this submission; the first submission is kept, because a read is
            final once made (an unaided read redone after the AI panel was
            seen would no longer be unaided).
        message: one sentence for the page.
    """

    read: Read
    created: bool
    differs: bool
    message: str
