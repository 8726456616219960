"""The node's inbox: films written durably before the PACS is told they arrived.

A film is written to a temporary file beside its final name,
flushed to the disk (``fsync``), renamed to its final name (atomic on one file
system) and the folder itself is flushed, so a power cut or a ``kill -9`` at
any moment leaves either no film or the whole film, never half of one. Only
then does the node answer C-STORE with success: a PACS that got success may
forget the film.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

#: What an inbox holds, each in its own folder.
FILMS, RESULTS = "films", "results"

_SAFE = re.compile(r"[^0-9A-Za-z.\-]")


def _fsync_folder(folder: Path) -> None:
    """Make a rename or an unlink in ``folder`` durable (POSIX: the directory entry is data of the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing: a temporary file beside it, fsync, rename, fsync of the folder.

    Args:
        path: the final file; its folder is created when missing.
        data: the bytes.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def file_name(sop_instance_uid: str) -> str:
    """A safe file name for an instance (a UID holds only digits and dots; anything else is replaced)."""
    name = _SAFE.sub("_", sop_instance_uid.strip()) or "unnamed"
    return f"{name}.dcm"


def digest(data: bytes) -> str:
    """SHA-256 of a film's bytes: tells a film sent again unchanged from a new version of it."""
    return hashlib.sha256(data).hexdigest()


class Inbox:
    """The node's folders: ``films/`` (received, not yet sent back), ``results/`` (the DICOM results built).

    Args:
        root: the inbox folder (created when missing).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for sub in (FILMS, RESULTS):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def film_path(self, sop_instance_uid: str) -> Path:
        return self.root / FILMS / file_name(sop_instance_uid)

    def result_path(self, sop_instance_uid: str, kind: str) -> Path:
        """Where a result of ``kind`` (``"sr"`` or ``"sc"``) for a source instance is kept until it is sent."""
        return self.root / RESULTS / f"{file_name(sop_instance_uid)[:-4]}.{kind}.dcm"

    def store_film(self, sop_instance_uid: str, data: bytes) -> Path:
        """Write a received film durably (see :func:`write_durably`); a film with the same UID is replaced."""
        return write_durably(self.film_path(sop_instance_uid), data)

    def films_on_disk(self) -> list[Path]:
        """Every film in ``films/``, oldest first (what a restart checks against the state database)."""
        films = [p for p in (self.root / FILMS).glob("*.dcm") if p.is_file()]
        return sorted(films, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def remove(self, *paths: Path | None) -> None:
        """Delete files that have been sent (missing ones are fine), durably."""
        folders = set()
        for path in paths:
            if path is not None:
                Path(path).unlink(missing_ok=True)
                folders.add(Path(path).parent)
        for folder in folders:
            if folder.is_dir():
                _fsync_folder(folder)
