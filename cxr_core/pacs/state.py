"""The node's state database (SQLite): every instance it was given and how far it got.

Each source instance goes ``received`` -> ``analysed`` -> ``sent``, in the
order it arrived. A row is written (and committed) before the PACS hears that
the film arrived, and a state changes only after what it records is on the
disk, so after a ``kill -9`` the database says what is left to do: films
``received`` are analysed again, results ``analysed`` are sent (again), and
results ``sent`` are never sent twice by the node. A result sent again after a
kill between "sent" and its commit carries the same SOP Instance UID (derived
from the source), so the PACS keeps one copy.

A send that fails leaves the row ``analysed`` with its attempt count, the
error and when the next attempt is due: nothing is ever dropped.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RECEIVED, ANALYSED, SENT = "received", "analysed", "sent"
STATES = (RECEIVED, ANALYSED, SENT)
#: The state database's name inside the inbox.
STATE_FILE = "node.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    patient_id TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    transfer_syntax TEXT NOT NULL DEFAULT '',
    film TEXT NOT NULL,
    film_sha256 TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN {STATES!r}),
    received_at REAL NOT NULL,
    analysed_at REAL,
    sent_at REAL,
    triage TEXT,
    flagged TEXT,
    reason TEXT,
    results TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS instances_by_state ON instances (state, seq);
PRAGMA user_version = {SCHEMA_VERSION};
"""

_COLUMNS = ("seq", "sop_instance_uid", "sop_class_uid", "study_instance_uid", "modality", "patient_id",
            "accession_number", "calling_ae", "transfer_syntax", "film", "film_sha256", "state", "received_at",
            "analysed_at", "sent_at", "triage", "flagged", "reason", "results", "attempts", "next_attempt_at",
            "last_error")


@dataclass(frozen=True)
class InstanceRecord:
    """One source instance as the state database holds it.

    Attributes:
        seq: arrival order (the order films are analysed and sent in).
        results: the result files built for it (SR first), until sent.
        attempts: failed sends so far; ``next_attempt_at`` (epoch seconds) is when the next one is due.
        flagged: the flagged findings joined by ``|`` (as ``training.predict`` writes them).
    """

    seq: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    modality: str
    patient_id: str
    accession_number: str
    calling_ae: str
    transfer_syntax: str
    film: str
    film_sha256: str
    state: str
    received_at: float
    analysed_at: float | None
    sent_at: float | None
    triage: str | None
    flagged: str | None
    reason: str | None
    results: tuple[str, ...]
    attempts: int
    next_attempt_at: float | None
    last_error: str | None

    @property
    def failing(self) -> bool:
        """Results waiting to be sent again after a failed send."""
        return self.state == ANALYSED and self.attempts > 0

    @classmethod
    def _from_row(cls, row: tuple) -> InstanceRecord:
        values = dict(zip(_COLUMNS, row))
        values["results"] = tuple(json.loads(values["results"] or "[]"))
        return cls(**values)


class NodeState:
    """The state database, safe to share between the node's threads (one connection behind a lock).

    Args:
        path: the SQLite file (created with its schema when missing, unless ``read_only``).
        read_only: open for reading only (the status command, the app's page): nothing in the file changes.
    """

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        if read_only:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                       isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE) and committed at once.
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on the disk before the PACS hears "stored"
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} was written by a newer cxr-assist (schema {version}); "
                               "update cxr-assist or use another --inbox")
        if not read_only:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, where: str, params: tuple = (), *, order: str = "seq", limit: int | None = None) -> list[InstanceRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM instances WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [InstanceRecord._from_row(r) for r in rows]

    # -- receiving ---------------------------------------------------------------------------------------------

    def record_received(
        self,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        study_instance_uid: str,
        film: str | os.PathLike,
        film_sha256: str,
        modality: str = "",
        patient_id: str = "",
        accession_number: str = "",
        calling_ae: str = "",
        transfer_syntax: str = "",
        received_at: float | None = None,
    ) -> str:
        """Record a film written to the inbox; returns ``"new"``, ``"same"`` or ``"changed"``.

        A film received again with the same bytes changes nothing (``"same"``:
        its results are not built or sent twice). One received again with other
        bytes under the same SOP Instance UID goes back to ``received`` and is
        analysed again (``"changed"``); its results keep their UIDs, so a PACS
        that stores them replaces the earlier ones.
        """
        now = time.time() if received_at is None else received_at
        fields = dict(sop_class_uid=sop_class_uid, study_instance_uid=study_instance_uid, modality=modality,
                      patient_id=patient_id, accession_number=accession_number, calling_ae=calling_ae,
                      transfer_syntax=transfer_syntax, film=os.fspath(film), film_sha256=film_sha256)
        with self._transaction() as db:
            row = db.execute("SELECT film_sha256 FROM instances WHERE sop_instance_uid = ?",
                             (sop_instance_uid,)).fetchone()
            if row is not None and row[0] == film_sha256:
                return "same"
            if row is None:
                names = ["sop_instance_uid", *fields, "state", "received_at"]
                db.execute(f"INSERT INTO instances ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                           (sop_instance_uid, *fields.values(), RECEIVED, now))
                return "new"
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE instances SET {sets}, state = ?, received_at = ?, analysed_at = NULL, sent_at = NULL, "
                       "triage = NULL, flagged = NULL, reason = NULL, results = NULL, attempts = 0, "
                       "next_attempt_at = NULL, last_error = NULL WHERE sop_instance_uid = ?",
                       (*fields.values(), RECEIVED, now, sop_instance_uid))
            return "changed"

    def known_films(self) -> set[str]:
        """The film path of every instance recorded (a restart registers the films on the disk missing here)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT film FROM instances")}

    # -- analysing and sending ---------------------------------------------------------------------------------

    def next_to_analyse(self) -> InstanceRecord | None:
        """The earliest film still ``received``."""
        rows = self._select("state = ?", (RECEIVED,), limit=1)
        return rows[0] if rows else None

    def mark_analysed(self, sop_instance_uid: str, *, film_sha256: str, triage: str, flagged: str, reason: str | None,
                      results: list[str]) -> bool:
        """Record the results built for a film (their files already on the disk).

        Returns False (and changes nothing) when the film was replaced by another version meanwhile.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE instances SET state = ?, analysed_at = ?, triage = ?, flagged = ?, reason = ?, results = ?, "
                "attempts = 0, next_attempt_at = ?, last_error = NULL "
                "WHERE sop_instance_uid = ? AND state = ? AND film_sha256 = ?",
                (ANALYSED, time.time(), triage, flagged, reason, json.dumps(results), time.time(), sop_instance_uid,
                 RECEIVED, film_sha256))
            return cursor.rowcount == 1

    def requeue(self, sop_instance_uid: str) -> None:
        """Back to ``received``: its results are to be built again (their files were lost)."""
        with self._transaction() as db:
            db.execute("UPDATE instances SET state = ?, results = NULL, attempts = 0, next_attempt_at = NULL "
                       "WHERE sop_instance_uid = ? AND state = ?", (RECEIVED, sop_instance_uid, ANALYSED))

    def due_to_send(self, now: float | None = None, *, limit: int = 50) -> list[InstanceRecord]:
        """Results ``analysed`` whose next attempt is due, in arrival order."""
        now = time.time() if now is None else now
        return self._select("state = ? AND (next_attempt_at IS NULL OR next_attempt_at <= ?)", (ANALYSED, now),
                            limit=limit)

    def next_attempt_at(self) -> float | None:
        """When the earliest waiting send is due (None: nothing waits)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_at) FROM instances WHERE state = ?", (ANALYSED,)).fetchone()
        return row[0]

    def mark_sent(self, sop_instance_uid: str, *, film_sha256: str) -> bool:
        """Record that every result of a film reached the PACS (False: the film was replaced meanwhile)."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE instances SET state = ?, sent_at = ?, next_attempt_at = NULL, last_error = NULL "
                                "WHERE sop_instance_uid = ? AND state = ? AND film_sha256 = ?",
                                (SENT, time.time(), sop_instance_uid, ANALYSED, film_sha256))
            return cursor.rowcount == 1

    def mark_send_failed(self, sop_instance_uid: str, *, error: str, retry_at: float) -> None:
        """Record a failed send; the results stay ``analysed`` and are tried again at ``retry_at``."""
        with self._transaction() as db:
            db.execute("UPDATE instances SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                       "WHERE sop_instance_uid = ? AND state = ?", (error[:2000], retry_at, sop_instance_uid, ANALYSED))

    # -- reading the state -------------------------------------------------------------------------------------

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        rows = self._select("sop_instance_uid = ?", (sop_instance_uid,))
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        """Instances per state, and ``failing``: analysed results whose last send failed (they are retried)."""
        with self._lock:
            rows = dict(self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
            failing = self._db.execute("SELECT COUNT(*) FROM instances WHERE state = ? AND attempts > 0",
                                       (ANALYSED,)).fetchone()[0]
        return {**{s: int(rows.get(s, 0)) for s in STATES}, "failing": int(failing)}

    def recent(self, limit: int = 20) -> list[InstanceRecord]:
        """The latest instances, newest first."""
        return self._select("1", order="seq DESC", limit=limit)

    def all(self) -> list[InstanceRecord]:
        """Every instance, in arrival order."""
        return self._select("1")


def open_state(inbox: str | os.PathLike) -> NodeState:
    """The state database of an inbox (``<inbox>/node.sqlite``)."""
    return NodeState(Path(inbox) / STATE_FILE)


def read_only_state(inbox: str | os.PathLike) -> NodeState:
    """The state database of an inbox, for a reader (status page, ``--status``).

    Raises:
        FileNotFoundError: the inbox has no state database (no node has run there).
    """
    path = Path(inbox) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: no node has used the inbox {inbox} yet")
    return NodeState(path, read_only=True)
