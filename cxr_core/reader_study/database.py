"""The reader study's SQLite file: one connection per process, its transactions, the schema check and migration.

:class:`StudyDatabase` is the file; :class:`~cxr_core.reader_study.store.ReaderStudyStore`
adds the study's operations on it. A page calls one store method per user
action, possibly from several tabs or browsers at once:

* one store can be shared across Streamlit's threads (a lock serialises its
  one connection) and survives a fork (the child opens its own connection);
  any number of stores and processes may use one file;
* a write is one ``BEGIN IMMEDIATE`` transaction (:meth:`StudyDatabase._write`),
  so the checks made inside it still hold when its insert happens; a read
  of several SELECTs is one snapshot (:meth:`StudyDatabase._read`);
* another program's SQLite file, or one written by a newer cxr-assist, is
  refused untouched; an older schema is migrated in place
  (:mod:`cxr_core.reader_study.schema`).

Durability: WAL journal (readers never block the writer), ``busy_timeout``
30 s (concurrent writers queue instead of failing), one transaction per read,
and ``synchronous=FULL``. In WAL mode ``NORMAL`` is already crash-safe for a
killed process, but a power loss or OS crash could drop the last committed
reads; a reader who was shown "saved" and then has to redo an *unaided* read
after seeing the AI panel would contaminate the study. One fsync per read
(milliseconds, once every tens of seconds per reader) is a cheap price.

Keep the database on a local disk: SQLite's WAL mode does not work on network
file systems.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Self

from cxr_core.reader_study import schema
from cxr_core.reader_study.records import ReaderStudyError, SchemaVersionError

__all__ = ["DB_PATH_ENV", "default_db_path", "StudyDatabase", "timestamp"]

#: Environment variable that moves the default database (e.g. to a data disk).
DB_PATH_ENV = "CXR_READER_STUDY_DB"

_BUSY_TIMEOUT_S = 30.0
_SYNCHRONOUS = "FULL"  # see the module docstring for why not NORMAL


def timestamp() -> str:
    """Now, UTC, ISO 8601 to the millisecond: what every row records as its time."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_db_path() -> Path:
    """``$CXR_READER_STUDY_DB`` if set, else ``<project>/var/reader_study.sqlite3``.

    Anchored at the project folder, not the working directory, so the page
    and a script started elsewhere find the same file.
    """
    override = os.environ.get(DB_PATH_ENV, "").strip()
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "var" / "reader_study.sqlite3"


class StudyDatabase:
    """One reader-study SQLite file, opened (created, checked, migrated) on construction.

    Args:
        path: the database file; created (with its folder) if absent.
            Defaults to :func:`default_db_path`.

    Raises:
        SchemaVersionError: the file was written by a newer cxr-assist, or is
            an SQLite file of something else.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if str(self.path) in ("", ":memory:"):
            raise ValueError("a reader study needs a database file; ':memory:' would vanish between calls")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._open_schema()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's connection (the store reopens it on next use)."""
        with self._lock:
            if self._con is not None and self._pid == os.getpid():
                self._con.close()
            self._con = None

    # ------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a write
        # transaction is exactly one BEGIN IMMEDIATE ... COMMIT.
        # check_same_thread=False: Streamlit runs each session in its own
        # thread; self._lock serialises use of the one connection instead.
        con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA foreign_keys = ON")
        con.execute(f"PRAGMA synchronous = {_SYNCHRONOUS}")
        return con

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, held exclusively for one operation.

        The connection stays open between calls: closing the last connection
        to a WAL database checkpoints and deletes the WAL file, which made a
        connection per call about five times slower per read.
        """
        if self._pid != os.getpid():
            # Forked child: the parent's connection and lock state must never
            # be used here (SQLite forbids carrying a connection across fork).
            self._pid, self._lock, self._con = os.getpid(), threading.Lock(), None
        with self._lock:
            if self._con is None:
                self._con = self._connect()
            try:
                yield self._con
            except BaseException:
                if self._con.in_transaction:
                    try:
                        self._con.execute("ROLLBACK")
                    except sqlite3.Error:  # a broken connection: start afresh next call
                        self._con.close()
                        self._con = None
                raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so
        the checks made inside it still hold when the insert happens."""
        with self._connection() as con:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read snapshot (several SELECTs see the same state)."""
        with self._connection() as con:
            con.execute("BEGIN")
            yield con
            con.execute("COMMIT")

    def _recorded_version(self, con: sqlite3.Connection) -> int | None:
        """The file's schema version; None for an empty file.

        Raises:
            SchemaVersionError: another program's SQLite file, or a newer schema.
        """
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        if "schema_version" not in tables:
            raise SchemaVersionError(f"{self.path} is an SQLite file but not a cxr-assist reader-study database")
        version = con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if version > schema.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} was written by a newer cxr-assist (reader-study schema version {version}; "
                f"this version reads up to {schema.SCHEMA_VERSION}). Upgrade cxr-assist, or choose another file."
            )
        return int(version)

    def _open_schema(self) -> None:
        """Check the file, switch it to WAL, then create or migrate the schema."""
        try:
            # Look before changing anything: another program's file, or one
            # from a newer cxr-assist, is refused untouched.
            with self._read() as con:
                self._recorded_version(con)
            with self._connection() as con:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ReaderStudyError(f"{self.path} cannot use WAL journaling (got {mode!r}); put it on a local disk")
            # Again inside the write lock: two processes opening a new file at
            # once must not both create the schema.
            with self._write() as con:
                version = self._recorded_version(con)
                if version is None:
                    for statement in schema.split_sql(schema.SCHEMA_V1):
                        con.execute(statement)
                    con.execute("INSERT INTO schema_version VALUES (?, ?)", (1, timestamp()))
                    version = 1
                while version < schema.SCHEMA_VERSION:
                    if version not in schema.MIGRATIONS:
                        raise SchemaVersionError(f"{self.path} has schema version {version} and no migration from it exists")
                    schema.MIGRATIONS[version](con)
                    version += 1
                    con.execute("INSERT INTO schema_version VALUES (?, ?)", (version, timestamp()))
        except sqlite3.OperationalError:
            raise  # locked, unwritable folder, ...: SQLite's own message is the clear one
        except sqlite3.DatabaseError as exc:
            raise SchemaVersionError(f"{self.path} is not a readable SQLite database: {exc}") from exc

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self._read() as con:
            return int(con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])
