"""Reader study storage: cases, readers and their unaided and aided reads, in SQLite.

A reader study asks whether radiologists read chest X-rays closer to the
reference labels with the AI panel than without it. Each reader reads every
case of a study twice, in order:

1. **unaided**: the image alone; the reader ticks findings and gives a
   confidence from 1 to 5;
2. **aided**: the same image with the AI panel; the reader may change answers.

This module stores that design and nothing else (the numbers are computed by
:mod:`cxr_core.reader_study.analysis`). It is written for a thin Streamlit page that
calls one method per user action, possibly from several tabs or browsers at
once, and may re-run a submission:

* a read is stored once: ``UNIQUE(study_id, position, reader_id, phase)``
  plus a check inside the same ``BEGIN IMMEDIATE`` transaction, so a re-run
  page or a second tab gets the stored read back instead of a duplicate;
* an aided read needs the unaided read of that case (checked here with a clear
  message, and by a trigger in the database as a last line of defence);
* a case whose image the input check warns on (it may not be a frontal chest
  film) is never shown: the page calls :meth:`ReaderStudyStore.exclude_case`
  before showing it, and from then on it is no reader's next case, does not
  count in :meth:`~ReaderStudyStore.progress` and its reads (if any were made
  before) leave :meth:`~ReaderStudyStore.reads_frame`.

The SQLite file itself (one connection per process, shared by threads and
safe across fork; WAL journal, ``synchronous=FULL``; schema creation and
migration) is :class:`cxr_core.reader_study.database.StudyDatabase`, which
the store extends.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data.expert_labels import EXPERT_CATEGORIES
from cxr_core.evaluation.triage import TRIAGE_VERDICTS
from cxr_core.findings import FINDINGS
from cxr_core.reader_study import schema
from cxr_core.reader_study.cases import READER_CATEGORIES, case_table, expert_case_labels, find_image, select_cases
from cxr_core.reader_study.database import StudyDatabase, timestamp
from cxr_core.reader_study.records import (
    AI_PREFIX,
    AI_THRESHOLD_PREFIX,
    ALL_READERS,
    PHASES,
    READ_PREFIX,
    REF_PREFIX,
    REFERENCES,
    MissingCasesError,
    NextCase,
    Read,
    Reader,
    ReadOrderError,
    ReadResult,
    Study,
    UnknownReaderError,
    UnknownStudyError,
)
from cxr_core.reader_study.schema import READ_COLUMNS, quoted, row_to_read, vector_from_json, vector_to_json
from cxr_core.reader_study.validation import check_bits, check_confidence, check_probabilities, check_seconds, clean_name

__all__ = ["ReaderStudyStore"]

_MAX_LISTED = 20  # missing files named in one error message


class ReaderStudyStore(StudyDatabase):
    """All reader-study data in one SQLite file: studies and their cases, readers, reads.

    Args:
        path: the database file; created (with its folder) if absent.
            Defaults to :func:`~cxr_core.reader_study.database.default_db_path`.

    Raises:
        SchemaVersionError: the file was written by a newer cxr-assist, or is
            an SQLite file of something else.
    """

    # ------------------------------------------------------------ studies

    def create_study(
        self,
        name: str,
        dataset,
        *,
        n_cases: int,
        seed: int,
        description: str = "",
        data_root: str | os.PathLike | None = None,
        no_finding_fraction: float = 0.25,
        one_per_patient: bool = True,
        reference: str = "nih",
        expert_labels: pd.DataFrame | None = None,
    ) -> Study:
        """Create a study with a fixed, seeded, stratified list of cases.

        Calling it again with the same name, data and options returns the
        existing study (a re-run page cannot create a duplicate); the same
        name with other cases is refused.

        Args:
            name: unique study name (case-insensitive), at most 80 characters.
            dataset: an :class:`~cxr_core.data.dataset.NIHDataset`, or a sequence
                of ``(image, patient_id, labels)`` rows with labels 14 values
                of 0/1 in FINDINGS order (e.g. from ``to_multi_hot``).
            n_cases: cases in the study (see :func:`select_cases`).
            seed: seed of the selection and the reading order.
            description: free text shown with the study.
            data_root: the image folder; defaults to ``dataset.root``.
            no_finding_fraction, one_per_patient: see :func:`select_cases`.
            reference: the reference standard the results are measured
                against: ``"nih"`` (NIH's labels) or ``"expert"`` (the
                radiologists' labels of Majkowska et al. 2019). With
                ``"expert"``, cases are chosen only among the images the
                radiologists labelled (stratified by NIH's labels as usual),
                and their labels are stored with the cases.
            expert_labels: with ``reference="expert"``, the table of
                :func:`cxr_core.data.expert_labels.read_expert_labels` (column
                ``image``, or indexed by image).

        Raises:
            ValueError: bad name, n_cases or labels; the name is taken by a
                study with other cases or another reference; an expert
                reference without expert labels, or with too few labelled images.
        """
        name = clean_name(name, what="study")
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        if data_root is None:
            data_root = getattr(dataset, "root", "")
        # Absolute, so the page finds the images whatever its working directory.
        data_root = str(Path(data_root).resolve()) if str(data_root) else ""
        images, patients, labels = case_table(dataset)
        experts = expert_case_labels(images, expert_labels) if reference == "expert" else None
        if experts is not None:
            # Only the images the radiologists read for every category a reader can answer.
            keep = np.flatnonzero(~np.isnan(experts[:, [EXPERT_CATEGORIES.index(c) for c in READER_CATEGORIES]]).any(axis=1))
            if not len(keep):
                raise ValueError("none of this dataset's images has the radiologists' labels; "
                                 "choose the NIH reference or a dataset folder with the expert label file")
            images, patients, labels, experts = [images[i] for i in keep], [patients[i] for i in keep], labels[keep], experts[keep]
        picked = select_cases(
            images, patients, labels, n_cases=n_cases, seed=seed,
            no_finding_fraction=no_finding_fraction, one_per_patient=one_per_patient,
        )
        columns = [f"{REF_PREFIX}{f}" for f in FINDINGS] + list(schema.EXPERT_COLUMNS)
        if experts is None:
            experts = np.full((len(images), len(EXPERT_CATEGORIES)), np.nan)
        rows = [(int(pos), images[i], patients[i], *map(int, labels[i]), *(None if np.isnan(v) else int(v) for v in experts[i]))
                for pos, i in enumerate(picked)]
        with self._write() as con:
            existing = con.execute("SELECT id, reference FROM studies WHERE name = ?", (name,)).fetchone()
            if existing is not None:
                stored = con.execute(
                    f"SELECT position, image, patient_id, {quoted(columns)} FROM cases WHERE study_id = ? ORDER BY position",
                    (existing[0],),
                ).fetchall()
                if [tuple(r) for r in stored] != rows or existing[1] != reference:
                    raise ValueError(f"a study named {name!r} already exists with other cases or another reference; choose another name")
                study_id = existing[0]
            else:
                cursor = con.execute(
                    "INSERT INTO studies (name, data_root, seed, created_at, n_cases, description, reference) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, str(data_root), int(seed), timestamp(), len(rows), str(description), reference),
                )
                study_id = cursor.lastrowid
                con.executemany(
                    f"INSERT INTO cases (study_id, position, image, patient_id, {quoted(columns)}) "
                    f"VALUES ({', '.join('?' * (4 + len(columns)))})",
                    [(study_id, *row) for row in rows],
                )
        return self.get_study(study_id)

    def get_study(self, study_id: int) -> Study:
        """The study with this id.

        Raises:
            UnknownStudyError: no such study.
        """
        with self._read() as con:
            return self._study(con, study_id)

    def _study(self, con: sqlite3.Connection, study_id) -> Study:
        row = None
        if isinstance(study_id, (int, np.integer)) and not isinstance(study_id, bool):
            row = con.execute(
                "SELECT id, name, data_root, seed, n_cases, description, created_at, reference FROM studies WHERE id = ?",
                (int(study_id),),
            ).fetchone()
        if row is None:
            raise UnknownStudyError(f"there is no study with id {study_id!r} in {self.path}; pick one from list_studies()")
        return Study(*row)

    def list_studies(self) -> list[Study]:
        """Every study, oldest first."""
        with self._read() as con:
            rows = con.execute(
                "SELECT id, name, data_root, seed, n_cases, description, created_at, reference FROM studies ORDER BY id"
            ).fetchall()
        return [Study(*row) for row in rows]

    def cases_frame(self, study_id: int) -> pd.DataFrame:
        """The cases of a study with their reference labels (for analysis and export, not for readers).

        Returns:
            DataFrame with ``position, image, patient_id``, one
            ``ref_<finding>`` column (0/1, NIH's label) per finding and one
            ``expert_<category>`` column (the radiologists' label; empty unless
            the study's reference is ``"expert"``), ordered by position.
        """
        with self._read() as con:
            self._study(con, study_id)
            frame = pd.read_sql_query(
                "SELECT * FROM cases WHERE study_id = ? ORDER BY position", con, params=(int(study_id),)
            )
        return frame.drop(columns="study_id")

    def case_image_path(self, study_id: int, position: int, *, dataset_root: str | os.PathLike | None = None) -> Path:
        """The image file of one case.

        Args:
            study_id, position: the case.
            dataset_root: the dataset folder on this machine; defaults to the
                study's ``data_root``.

        Raises:
            UnknownStudyError: no such study or case.
            MissingCasesError: the file is not there.
        """
        with self._read() as con:
            study = self._study(con, study_id)
            row = con.execute(
                "SELECT image FROM cases WHERE study_id = ? AND position = ?", (study.id, int(position))
            ).fetchone()
        if row is None:
            raise UnknownStudyError(f"study {study.name!r} has no case at position {position!r} (0 to {study.n_cases - 1})")
        root = self._root(study, dataset_root)
        path = find_image(root, row[0])
        if path is None:
            raise MissingCasesError(f"the image {row[0]} of study {study.name!r} is not under {root}", missing=[row[0]])
        return path

    @staticmethod
    def _root(study: Study, dataset_root) -> Path:
        root = dataset_root if dataset_root is not None else study.data_root
        if not str(root):
            raise ValueError(f"study {study.name!r} records no image folder; pass dataset_root=")
        return Path(root)

    def check_cases_present(self, study_id: int, dataset_root: str | os.PathLike | None = None) -> list[str]:
        """File names of the study's case images that are not on disk.

        Args:
            study_id: the study.
            dataset_root: the dataset folder on this machine (official,
                Kaggle or flat layout); defaults to the study's ``data_root``.

        Returns:
            missing image names in reading order; empty when all are present.
        """
        with self._read() as con:
            study = self._study(con, study_id)
            names = [r[0] for r in con.execute("SELECT image FROM cases WHERE study_id = ? ORDER BY position", (study.id,))]
        root = self._root(study, dataset_root)
        if not root.is_dir():
            return names
        return [n for n in names if find_image(root, n) is None]

    def require_cases_present(self, study_id: int, dataset_root: str | os.PathLike | None = None) -> None:
        """Raise :class:`MissingCasesError` with a readable message if any case image is missing."""
        missing = self.check_cases_present(study_id, dataset_root)
        if missing:
            study = self.get_study(study_id)
            root = self._root(study, dataset_root)
            shown = ", ".join(missing[:_MAX_LISTED]) + (f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else "")
            where = f"under {root}" if root.is_dir() else f"because the folder {root} does not exist"
            raise MissingCasesError(
                f"{len(missing)} of the {study.n_cases} case images of study {study.name!r} are missing {where}: "
                f"{shown}. Point dataset_root at the folder that holds them (images/, images_NNN/images/ or flat).",
                missing=missing,
            )

    # ------------------------------------------------------------ readers

    def get_or_create_reader(self, name: str) -> Reader:
        """The reader with this name, created on first use.

        Names are compared after collapsing whitespace and ignoring case, so
        "Dr  Smith " and "dr smith" are one reader.

        Raises:
            ValueError: empty or whitespace-only name, longer than 80
                characters, control characters, or the reserved "all readers".
        """
        name = clean_name(name, what="reader")
        if name.lower() == ALL_READERS:
            raise ValueError(f"{ALL_READERS!r} is reserved for pooled results; choose another reader name")
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO readers (name, created_at) VALUES (?, ?)", (name, timestamp()))
            row = con.execute("SELECT id, name, created_at FROM readers WHERE name = ?", (name,)).fetchone()
        return Reader(*row)

    def list_readers(self) -> list[Reader]:
        """Every reader, oldest first."""
        with self._read() as con:
            return [Reader(*r) for r in con.execute("SELECT id, name, created_at FROM readers ORDER BY id")]

    def _reader(self, con: sqlite3.Connection, reader_id) -> Reader:
        row = None
        if isinstance(reader_id, (int, np.integer)) and not isinstance(reader_id, bool):
            row = con.execute("SELECT id, name, created_at FROM readers WHERE id = ?", (int(reader_id),)).fetchone()
        if row is None:
            raise UnknownReaderError(f"there is no reader with id {reader_id!r}; use get_or_create_reader(name)")
        return Reader(*row)

    # ------------------------------------------------------------ reading

    def next_case(self, study_id: int, reader_id: int) -> NextCase | None:
        """The first case (by position) this reader has not finished, and which read is due.

        A reader who closed the browser resumes exactly here: at the aided
        read of a case whose unaided read is stored, else at the next unread
        case.

        Returns:
            :class:`NextCase`, or None when every case has both reads.
        """
        with self._read() as con:
            study = self._study(con, study_id)
            reader = self._reader(con, reader_id)
            row = con.execute(
                """
                SELECT c.position, c.image, c.patient_id, COALESCE(SUM(r.phase = 'unaided'), 0)
                FROM cases c
                LEFT JOIN reads r ON r.study_id = c.study_id AND r.position = c.position AND r.reader_id = ?
                WHERE c.study_id = ?
                  AND NOT EXISTS (SELECT 1 FROM excluded_cases x WHERE x.study_id = c.study_id AND x.position = c.position)
                GROUP BY c.position
                HAVING COUNT(r.id) < 2
                ORDER BY c.position
                LIMIT 1
                """,
                (reader.id, study.id),
            ).fetchone()
        if row is None:
            return None
        return NextCase(position=int(row[0]), image=row[1], patient_id=row[2], phase="aided" if row[3] else "unaided")

    def get_read(self, study_id: int, reader_id: int, position: int, phase: str) -> Read | None:
        """The stored read of one case by one reader in one phase; None if not made yet.

        The page starts the aided form from the stored unaided answers (not
        from its own memory of them, which an interrupted page run can miss and
        another browser never had).

        Raises:
            ValueError: bad phase.
            UnknownStudyError, UnknownReaderError: no such study or reader.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be 'unaided' or 'aided', got {phase!r}")
        with self._read() as con:
            return self._stored_read(con, self._study(con, study_id).id, int(position), self._reader(con, reader_id).id, phase)

    @staticmethod
    def _stored_read(con: sqlite3.Connection, study_id: int, position: int, reader_id: int, phase: str) -> Read | None:
        row = con.execute(
            f"SELECT {quoted(READ_COLUMNS)} FROM reads WHERE study_id = ? AND position = ? AND reader_id = ? AND phase = ?",
            (study_id, position, reader_id, phase),
        ).fetchone()
        return None if row is None else row_to_read(row)

    def progress(self, study_id: int, reader_id: int) -> tuple[int, int]:
        """(cases with both reads done, cases in the study) for one reader; excluded cases count in neither."""
        with self._read() as con:
            study = self._study(con, study_id)
            reader = self._reader(con, reader_id)
            done = con.execute(
                "SELECT COUNT(*) FROM reads r WHERE study_id = ? AND reader_id = ? AND phase = 'aided' AND NOT EXISTS "
                "(SELECT 1 FROM excluded_cases x WHERE x.study_id = r.study_id AND x.position = r.position)",
                (study.id, reader.id),
            ).fetchone()[0]
            excluded = con.execute("SELECT COUNT(*) FROM excluded_cases WHERE study_id = ?", (study.id,)).fetchone()[0]
        # Every aided read has its unaided read (trigger), so aided reads count finished cases.
        return int(done), study.n_cases - int(excluded)

    def exclude_case(self, study_id: int, position: int, reason: str) -> bool:
        """Leave a case out of the study for every reader, because its image must not be shown (idempotent).

        The reader-study page calls this when the input check warns on a
        case's image (it may not be a frontal chest X-ray): such an image is
        never shown. The case stays in ``cases`` (the study's selection is a
        record), but it is nobody's next case, does not count in
        :meth:`progress`, and reads made of it before are left out of
        :meth:`reads_frame`.

        Args:
            study_id, position: the case.
            reason: why (the input check's warnings), shown with the list of excluded cases.

        Returns:
            True when the case was excluded now, False when it already was.

        Raises:
            UnknownStudyError: no such study or case.
            ValueError: an empty reason.
        """
        reason = " ".join(str(reason or "").split())
        if not reason:
            raise ValueError("say why the case is excluded (the input check's warnings)")
        with self._write() as con:
            study = self._study(con, study_id)
            if con.execute("SELECT 1 FROM cases WHERE study_id = ? AND position = ?", (study.id, int(position))).fetchone() is None:
                raise UnknownStudyError(f"study {study.name!r} has no case at position {position!r} (0 to {study.n_cases - 1})")
            cursor = con.execute("INSERT OR IGNORE INTO excluded_cases (study_id, position, reason, created_at) VALUES (?, ?, ?, ?)",
                                 (study.id, int(position), reason, timestamp()))
            return cursor.rowcount == 1

    def excluded_cases(self, study_id: int) -> pd.DataFrame:
        """The study's excluded cases: ``position, image, reason, created_at``, by position."""
        with self._read() as con:
            study = self._study(con, study_id)
            return pd.read_sql_query(
                "SELECT x.position, c.image, x.reason, x.created_at FROM excluded_cases x "
                "JOIN cases c ON c.study_id = x.study_id AND c.position = x.position WHERE x.study_id = ? ORDER BY x.position",
                con, params=(study.id,))

    def record_read(
        self,
        study_id: int,
        reader_id: int,
        position: int,
        *,
        phase: str,
        findings: Sequence[int],
        confidence: int,
        seconds: float,
        ai_probabilities: Sequence[float] | Mapping[str, float] | None = None,
        ai_thresholds: Sequence[float] | Mapping[str, float] | None = None,
        ai_triage: str | None = None,
    ) -> ReadResult:
        """Store one read in its own transaction; idempotent.

        Args:
            study_id, reader_id, position: the case and who read it.
            phase: ``"unaided"`` or ``"aided"``.
            findings: 14 values of 0/1 (or bools) in FINDINGS order: the
                findings ticked (``to_multi_hot(names)`` builds it from names).
            confidence: 1 (guessing) to 5 (certain).
            seconds: time spent on this read.
            ai_probabilities: for an aided read, the 14 probabilities the AI
                panel showed (sequence in FINDINGS order or ``{finding: p}``).
                Not allowed on an unaided read, which is made without the AI.
            ai_thresholds: the 14 operating thresholds the panel used to flag
                findings, if any; the analysis of agreement with the AI uses
                them. A finding the panel had no flag for (too few validation
                positives to set one) is stored as 1.0, a cut no calibrated
                probability reaches, so it is never counted as an AI call.
            ai_triage: the panel's normal/abnormal verdict (one of
                :data:`cxr_core.evaluation.triage.TRIAGE_VERDICTS`), with
                ``ai_probabilities``; the agreement on the normal/abnormal
                decision uses it (:mod:`cxr_core.reader_study.normal_abnormal`).

        Returns:
            :class:`ReadResult`; ``created`` is False when the same read was
            already stored (then nothing changes, see ``differs``).

        Raises:
            ValueError: bad phase, findings, confidence, seconds or AI values.
            UnknownStudyError, UnknownReaderError: no such study, case or reader.
            ReadOrderError: an aided read before the unaided read of the case.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be 'unaided' or 'aided', got {phase!r}")
        bits = check_bits(findings, what="findings")
        confidence = check_confidence(confidence)
        seconds = check_seconds(seconds)
        probabilities = check_probabilities(ai_probabilities, what="ai_probabilities")
        thresholds = check_probabilities(ai_thresholds, what="ai_thresholds")
        if phase == "unaided" and probabilities is not None:
            raise ValueError("an unaided read is made without the AI: do not pass ai_probabilities")
        if thresholds is not None and probabilities is None:
            raise ValueError("ai_thresholds were given without ai_probabilities")
        if ai_triage is not None and (probabilities is None or ai_triage not in TRIAGE_VERDICTS):
            raise ValueError(f"ai_triage must be one of {TRIAGE_VERDICTS}, given with ai_probabilities; got {ai_triage!r}")
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise ValueError(f"position must be a whole number, got {position!r}")

        with self._write() as con:
            study = self._study(con, study_id)
            reader = self._reader(con, reader_id)
            if not 0 <= int(position) < study.n_cases:
                raise UnknownStudyError(f"study {study.name!r} has no case at position {position} (0 to {study.n_cases - 1})")
            key = (study.id, int(position), reader.id)
            read = self._stored_read(con, *key, phase)
            if read is not None:
                differs = read.findings != bits or read.confidence != confidence
                message = f"The {phase} read of case {position + 1} was already saved"
                message += "; it is final, so the answers saved first are kept." if differs else "; nothing new was written."
                return ReadResult(read=read, created=False, differs=differs, message=message)
            if phase == "aided":
                has_unaided = con.execute(
                    "SELECT 1 FROM reads WHERE study_id = ? AND position = ? AND reader_id = ? AND phase = 'unaided'", key
                ).fetchone()
                if has_unaided is None:
                    raise ReadOrderError(
                        f"case {position + 1} has no unaided read by {reader.name!r} yet: "
                        "the unaided read must be saved before the AI panel is shown"
                    )
            cursor = con.execute(
                f"INSERT INTO reads ({quoted(READ_COLUMNS[1:])}) VALUES ({', '.join('?' * (len(READ_COLUMNS) - 1))})",
                (*key[:2], reader.id, phase, *bits, confidence, seconds,
                 vector_to_json(probabilities), vector_to_json(thresholds), ai_triage, timestamp()),
            )
            row = con.execute(f"SELECT {quoted(READ_COLUMNS)} FROM reads WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return ReadResult(read=row_to_read(row), created=True, differs=False, message=f"Saved the {phase} read of case {position + 1}.")

    # ------------------------------------------------------------ export

    def reads_frame(self, study_id: int | None = None) -> pd.DataFrame:
        """Every read, one row each, joined with its case's reference labels.

        Args:
            study_id: one study, or None for all.

        Returns:
            DataFrame with columns ``read_id, study_id, study, position,
            image, patient_id, reader_id, reader, phase, confidence, seconds,
            created_at, reference`` (the study's: ``"nih"`` or ``"expert"``),
            then ``read_<finding>`` (0/1 ticked), ``ref_<finding>``
            (0/1 NIH label), ``expert_<category>`` (the radiologists' 0/1 label
            per EXPERT_CATEGORIES, NaN where not stored), ``ai_<finding>`` (probability shown, NaN
            for unaided reads or when not recorded) and ``ai_threshold_<finding>``
            (NaN when not recorded), 14 of each in FINDINGS order, and
            ``ai_triage`` (the panel's verdict; missing for unaided reads and
            reads stored before it was recorded). Rows are ordered by study, reader,
            position, phase (unaided first). Reads of excluded cases
            (:meth:`exclude_case`) are left out.
        """
        read_cols = ", ".join(f'r."{READ_PREFIX}{f}"' for f in FINDINGS)
        ref_cols = ", ".join(f'c."{REF_PREFIX}{f}"' for f in FINDINGS)
        expert_cols = ", ".join(f'c."{c}"' for c in schema.EXPERT_COLUMNS)
        where, params = "", ()
        with self._read() as con:
            if study_id is not None:
                self._study(con, study_id)
                where, params = "AND r.study_id = ?", (int(study_id),)
            frame = pd.read_sql_query(
                f"""
                SELECT r.id AS read_id, r.study_id, s.name AS study, r.position, c.image, c.patient_id,
                       r.reader_id, p.name AS reader, r.phase, r.confidence, r.seconds, r.created_at,
                       s.reference, {read_cols}, {ref_cols}, {expert_cols}, r.ai_probabilities, r.ai_thresholds, r.ai_triage
                FROM reads r
                JOIN cases c ON c.study_id = r.study_id AND c.position = r.position
                JOIN studies s ON s.id = r.study_id
                JOIN readers p ON p.id = r.reader_id
                WHERE NOT EXISTS (SELECT 1 FROM excluded_cases x WHERE x.study_id = r.study_id AND x.position = r.position)
                {where}
                ORDER BY r.study_id, r.reader_id, r.position, r.phase = 'aided'
                """,
                con,
                params=params,
            )
        for column, prefix in (("ai_probabilities", AI_PREFIX), ("ai_thresholds", AI_THRESHOLD_PREFIX)):
            vectors = [vector_from_json(t) if isinstance(t, str) else (np.nan,) * len(FINDINGS) for t in frame[column]]
            values = np.asarray(vectors, dtype=float).reshape(len(frame), len(FINDINGS))
            for j, f in enumerate(FINDINGS):
                frame[f"{prefix}{f}"] = values[:, j]
        frame = frame.drop(columns=["ai_probabilities", "ai_thresholds"])
        bit_columns = [f"{p}{f}" for p in (READ_PREFIX, REF_PREFIX) for f in FINDINGS]
        frame[bit_columns] = frame[bit_columns].astype(int)
        expert = list(schema.EXPERT_COLUMNS)
        frame[expert] = frame[expert].astype(float)  # NaN where not stored (NIH-reference studies)
        return frame.reset_index(drop=True)
