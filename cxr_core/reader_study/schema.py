"""The reader-study SQLite schema, its version and migrations, and the mapping between a ``reads`` row and a :class:`Read`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.evaluation.triage import TRIAGE_VERDICTS
from cxr_core.findings import FINDINGS
from cxr_core.reader_study.records import EXPERT_PREFIX, READ_PREFIX, REF_PREFIX, REFERENCES, Read

__all__ = ["SCHEMA_VERSION", "SCHEMA_V1", "MIGRATIONS", "EXPERT_COLUMNS", "split_sql", "READ_COLUMNS", "quoted", "row_to_read",
           "vector_to_json", "vector_from_json"]

#: Version of the schema this code writes. Bump it with a migration in
#: :data:`MIGRATIONS` whenever a table changes. A new file is created at
#: version 1 (:data:`SCHEMA_V1`) and migrated up, so new and old files end alike.
#: 2: ``studies.reference`` ('nih' for every existing study) and the cases'
#: radiologist labels ``expert_<category>`` (NULL where not stored).
#: 3: ``reads.ai_triage`` (the AI panel's normal/abnormal verdict, NULL for
#: reads stored before it) and ``excluded_cases`` (cases left out because the
#: input check warned on their image: never shown to a reader).
SCHEMA_VERSION = 3


def _finding_columns(prefix: str, *, sql_type: str) -> str:
    # One column per finding, named after it, so a stored vector never depends
    # on the order of FINDINGS and every value is checked by SQLite.
    return ",\n    ".join(f'"{prefix}{f}" {sql_type}' for f in FINDINGS)


_BIT = "INTEGER NOT NULL CHECK ({col} IN (0, 1))"


def _bit_columns(prefix: str) -> str:
    return ",\n    ".join(f'"{prefix}{f}" ' + _BIT.format(col=f'"{prefix}{f}"') for f in FINDINGS)


SCHEMA_V1 = f"""
CREATE TABLE schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at TEXT NOT NULL
);
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    data_root TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    n_cases INTEGER NOT NULL CHECK (n_cases > 0),
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE cases (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    position INTEGER NOT NULL CHECK (position >= 0),
    image TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    {_bit_columns(REF_PREFIX)},
    PRIMARY KEY (study_id, position),
    UNIQUE (study_id, image)
);
CREATE TABLE readers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created_at TEXT NOT NULL
);
CREATE TABLE reads (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    reader_id INTEGER NOT NULL REFERENCES readers(id),
    phase TEXT NOT NULL CHECK (phase IN ('unaided', 'aided')),
    {_bit_columns(READ_PREFIX)},
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    seconds REAL NOT NULL CHECK (seconds >= 0),
    ai_probabilities TEXT CHECK (ai_probabilities IS NULL OR phase = 'aided'),
    ai_thresholds TEXT CHECK (ai_thresholds IS NULL OR ai_probabilities IS NOT NULL),
    created_at TEXT NOT NULL,
    FOREIGN KEY (study_id, position) REFERENCES cases(study_id, position),
    UNIQUE (study_id, position, reader_id, phase)
);
CREATE INDEX reads_by_reader ON reads(study_id, reader_id, position);
CREATE TRIGGER aided_after_unaided BEFORE INSERT ON reads
WHEN NEW.phase = 'aided' AND NOT EXISTS (
    SELECT 1 FROM reads r
    WHERE r.study_id = NEW.study_id AND r.position = NEW.position
      AND r.reader_id = NEW.reader_id AND r.phase = 'unaided')
BEGIN
    SELECT RAISE(ABORT, 'an aided read needs the unaided read of the same case first');
END;
"""

#: Columns of ``cases`` holding the radiologists' label per expert category (schema version 2).
EXPERT_COLUMNS: tuple[str, ...] = tuple(f"{EXPERT_PREFIX}{c}" for c in EXPERT_CATEGORIES)


def _v1_to_v2(con: sqlite3.Connection) -> None:
    """Add the study's reference standard and the cases' expert labels; existing studies keep NIH's labels."""
    allowed = ", ".join(f"'{r}'" for r in REFERENCES)
    con.execute(f"ALTER TABLE studies ADD COLUMN reference TEXT NOT NULL DEFAULT 'nih' CHECK (reference IN ({allowed}))")
    for column in EXPERT_COLUMNS:
        con.execute(f'ALTER TABLE cases ADD COLUMN "{column}" INTEGER CHECK ("{column}" IS NULL OR "{column}" IN (0, 1))')


def _v2_to_v3(con: sqlite3.Connection) -> None:
    """Record the AI panel's triage verdict with an aided read, and the cases left out by the input check."""
    verdicts = ", ".join(f"'{v}'" for v in TRIAGE_VERDICTS)
    con.execute(f"ALTER TABLE reads ADD COLUMN ai_triage TEXT CHECK (ai_triage IS NULL OR ai_triage IN ({verdicts}))")
    con.execute("""
        CREATE TABLE excluded_cases (
            study_id INTEGER NOT NULL,
            position INTEGER NOT NULL,
            reason TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (study_id, position),
            FOREIGN KEY (study_id, position) REFERENCES cases(study_id, position)
        )""")


#: ``{old version: function upgrading a connection from it to old + 1}``.
#: Each runs inside the opening transaction, so a failed upgrade changes
#: nothing and no existing row is touched.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3}


def split_sql(script: str) -> list[str]:
    """Statements of a schema script, keeping a trigger's body (which has its own ';') whole.

    ``executescript`` would commit the open transaction first; running the
    statements one by one keeps schema creation inside BEGIN IMMEDIATE, so two
    processes opening a new file at once cannot both create it.
    """
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    if "\n".join(current).strip():
        raise ValueError("incomplete SQL statement at the end of the schema")
    return statements


# --------------------------------------------------------------------------
# Rows of the reads table
# --------------------------------------------------------------------------


READ_COLUMNS = (
    ["id", "study_id", "position", "reader_id", "phase"]
    + [f"{READ_PREFIX}{f}" for f in FINDINGS]
    + ["confidence", "seconds", "ai_probabilities", "ai_thresholds", "ai_triage", "created_at"]
)


def quoted(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def row_to_read(row: Sequence) -> Read:
    values = dict(zip(READ_COLUMNS, row))
    return Read(
        id=int(values["id"]),
        study_id=int(values["study_id"]),
        position=int(values["position"]),
        reader_id=int(values["reader_id"]),
        phase=values["phase"],
        findings=tuple(int(values[f"{READ_PREFIX}{f}"]) for f in FINDINGS),
        confidence=int(values["confidence"]),
        seconds=float(values["seconds"]),
        ai_probabilities=vector_from_json(values["ai_probabilities"]),
        ai_thresholds=vector_from_json(values["ai_thresholds"]),
        created_at=values["created_at"],
        ai_triage=values["ai_triage"],
    )


def vector_to_json(values: tuple[float, ...] | None) -> str | None:
    # Keyed by finding name: the stored JSON stays right if FINDINGS is reordered.
    return None if values is None else json.dumps(dict(zip(FINDINGS, values)))


def vector_from_json(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    mapping = json.loads(text)
    return tuple(float(mapping[f]) for f in FINDINGS)
