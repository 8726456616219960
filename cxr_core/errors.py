"""Error types raised by cxr_core with messages meant for the person using it."""

from __future__ import annotations


class ImageReadError(ValueError):
    """An image could not be read or is not usable as a chest X-ray input.

    The message is written for a clinician (what is wrong and what to do);
    ``reason`` is a short stable code for programs and tests, e.g. ``"empty"``,
    ``"truncated"``, ``"too_large"``, ``"not_an_image"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DataFormatError(ValueError):
    """A metadata file (Data_Entry, BBox_List, split list) is malformed."""
