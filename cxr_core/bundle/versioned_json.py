"""The one reader of cxr-assist's JSON files that name their format and version.

A bundle's ``bundle.json``, a tour's ``tour.json``, a training cache's ``manifest.json`` and a pretraining's
``pretrain.json`` each start with ``"format": "<name>"`` and a version number; each is read here, so every file
format fails the same way, with a message that names the file, the format found and expected, and the version::

    meta = read_versioned_json(path, format="cxr-assist-bundle", versions=range(0, 3), error=BundleError)

Files without a format tag (an evaluation's ``metrics.json``) go through :func:`read_json_object`, which the versioned
reader is built on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container
from pathlib import Path

__all__ = ["read_json_object", "read_versioned_json"]


def read_json_object(path: str | os.PathLike, *, error: type[Exception] = ValueError, what: str = "JSON file") -> dict:
    """The JSON object stored in ``path``.

    Args:
        path: the file.
        error: the exception class raised on any problem (the caller's own error type).
        what: what the file is, for the messages (``"model bundle's bundle.json"``).

    Raises:
        error: the file is missing or unreadable, not valid JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: the {what} could not be read ({exc})") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise error(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise error(f"{path} is not a {what} (a JSON {type(document).__name__}, not an object)")
    return document


def read_versioned_json(
    path: str | os.PathLike,
    *,
    format: str,  # noqa: A002 (the file's own key)
    versions: Container[int],
    error: type[Exception] = ValueError,
    version_key: str = "format_version",
    missing_version: int | None = None,
) -> dict:
    """The JSON object in ``path`` after checking its ``"format"`` and its version.

    Args:
        path: the file.
        format: the ``"format"`` value the file must carry (``"cxr-assist-bundle"``).
        versions: the versions this code reads, e.g. ``range(1, 3)`` (an older or newer one is refused).
        error: the exception class raised on any problem (the caller's own error type).
        version_key: the key holding the version (``"format_version"``; the pretraining record says ``"version"``).
        missing_version: the version of a file without ``version_key`` (None: such a file is refused).

    Returns:
        the whole document.

    Raises:
        error: the file is missing or unreadable, not JSON, not an object, of another format, or of a version
            outside ``versions``.
    """
    document = read_json_object(path, error=error, what=f"{format} file")
    found = document.get("format")
    if found != format:
        raise error(f"{path} is not a {format} file (its format is {found!r}, expected {format!r})")
    version = document.get(version_key, missing_version)
    if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
        readable = _describe(versions)
        raise error(f"{path} has {format} version {version!r}; this cxr-assist reads {readable}")
    return document


def _describe(versions: Container[int]) -> str:
    if isinstance(versions, range) and versions.step == 1 and len(versions):
        first, last = versions[0], versions[-1]
        return f"version {first}" if first == last else f"versions {first} to {last}"
    try:
        listed = sorted(versions)  # type: ignore[call-overload]
    except TypeError:
        return f"versions {versions!r}"
    return f"version {listed[0]}" if len(listed) == 1 else "versions " + ", ".join(str(v) for v in listed)
