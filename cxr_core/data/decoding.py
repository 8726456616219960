"""What the image decoders share: their result (:class:`DecodedImage`), the pixel limit, the error messages, the scaling to [0, 1], and the walk that checks a JPEG stream.

:mod:`cxr_core.data.imageio` (PNG, JPEG, and the dispatch of every file)
and :mod:`cxr_core.data.dicom` (DICOM, with its JPEG, JPEG Lossless and
JPEG-LS frames) both build on it, so imports run one way: decoding <- dicom
<- imageio. Every error is a :class:`cxr_core.errors.ImageReadError` whose
message is written for the person who supplied the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from cxr_core.errors import ImageReadError

__all__ = ["DecodedImage", "MAX_PIXELS"]

#: Largest image accepted, in pixels. A 4,300 x 3,500 detector image is 15 MP;
#: 60 MP leaves room for any radiograph while refusing decompression bombs.
MAX_PIXELS = 60_000_000

_JPEG_SOI = b"\xff\xd8"


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what was learned while decoding it.

    Attributes:
        pixels: float32 array (height, width) in [0, 1], white = dense.
        source_format: ``"PNG"``, ``"JPEG"`` or ``"DICOM"``.
        original_shape: (height, width) as stored in the file.
        bit_depth: bits per sample in the file (8, 12, 16 ...).
        warnings: messages about suspicious input that does not block use
            (not a chest film, unknown view, alpha channel dropped ...).
        metadata: facts read from the file (DICOM view position, sex, age ...).
    """

    pixels: np.ndarray
    source_format: str
    original_shape: tuple[int, int]
    bit_depth: int
    warnings: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict)


def _error(message: str, reason: str) -> ImageReadError:
    """An :class:`ImageReadError` whose message starts as a sentence.

    Messages put the file's label first ("the uploaded file is ..."); the
    capital letter is added here so every message reads as a sentence.
    """
    return ImageReadError(message[:1].upper() + message[1:], reason=reason)


def _check_pixel_count(height: int, width: int, name: str) -> None:
    if height <= 0 or width <= 0:
        raise _error(f"the image in {name} has no pixels ({width} x {height}); the file is damaged.", "corrupt")
    if height * width > MAX_PIXELS:
        raise _error(
            f"the image in {name} is {width} x {height} pixels ({height * width / 1e6:.0f} megapixels); "
            f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels. Export a smaller copy of the image.",
            "too_large",
        )


def _to_unit_range(array: np.ndarray, *, maximum: float | None = None) -> np.ndarray:
    """Scale to [0, 1] by a known maximum, or by the image's own range."""
    array = array.astype(np.float32, copy=False)
    if maximum is not None:
        return np.clip(array / np.float32(maximum), 0.0, 1.0)
    low, high = float(array.min()), float(array.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise _error("the image contains invalid (non-finite) pixel values; the file is damaged.", "corrupt")
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return (array - np.float32(low)) / np.float32(high - low)


def _truncated(name: str) -> ImageReadError:
    return _error(
        f"{name} is incomplete: the file ends before the image does. Export or download it again.", "truncated"
    )


def _damaged(name: str, what: str = "image") -> ImageReadError:
    return _error(f"{name} is a damaged {what} file and could not be decoded. Export the image again.", "corrupt")


def _skip_jpeg_scan(data: bytes, pos: int, *, jpeg_ls: bool = False) -> int:
    """Return the offset of the marker that ends the entropy-coded data at ``pos``."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        # FF00 is a stuffed data byte and FFD0-FFD7 restart markers: both belong to the scan.
        # JPEG-LS stuffs a zero bit instead: FF then any byte below 0x80 is data.
        stuffed = following < 0x80 if jpeg_ls else following == 0x00
        if stuffed or 0xD0 <= following <= 0xD7:
            pos += 2
            continue
        return pos


def _check_jpeg_structure(data: bytes, name: str, *, what: str = "JPEG", jpeg_ls: bool = False) -> None:
    """Walk the JPEG marker segments up to EOI; check the frame size.

    libjpeg (inside Pillow) only *warns* about bytes where a marker should be
    and fills what it cannot decode with gray, so a JPEG with a damaged body
    would otherwise decode "successfully". Walking the segment lengths finds
    such damage and a file that stops before its end marker. (Damage inside
    the compressed data that keeps the structure intact cannot be detected:
    JPEG has no checksum.) The frame size is checked from the SOF header,
    before Pillow allocates anything.

    The same walk checks the JPEG, JPEG Lossless and JPEG-LS frames inside
    DICOM files (:mod:`cxr_core.data.dicom`): their decoders, too, fill a
    stream that stops early instead of failing.

    Args:
        data: the whole file (or DICOM frame), starting with the SOI marker.
        name: the file's label for messages.
        what: the kind of file that messages call damaged.
        jpeg_ls: the data is JPEG-LS (ISO 14495-1), whose scans stuff bits, not bytes.
    """
    n = len(data)
    pos = len(_JPEG_SOI)
    while True:
        if pos >= n:
            raise _truncated(name)
        if data[pos] != 0xFF:
            raise _damaged(name, what)
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        if pos >= n:
            raise _truncated(name)
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI; anything after it (MPO pictures, padding) is not ours to judge
            return
        if marker in (0x00, 0xD8):
            raise _damaged(name, what)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers, no length
            continue
        if pos + 2 > n:
            raise _truncated(name)
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise _damaged(name, what)
        # SOFn: the frame header (SOF55, 0xF7, in JPEG-LS)
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or (jpeg_ls and marker == 0xF7):
            if pos + 7 > n:
                raise _truncated(name)
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if height * width > MAX_PIXELS:
                _check_pixel_count(height, width, name)
        pos += length
        if pos > n:
            raise _truncated(name)
        if marker == 0xDA:  # SOS: compressed data follows up to the next marker
            pos = _skip_jpeg_scan(data, pos, jpeg_ls=jpeg_ls)
