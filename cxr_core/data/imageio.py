"""Decode PNG, JPEG and DICOM files into one kind of image: a 2-D float array.

Every image that enters cxr-assist (training, evaluation, the app) passes
through :func:`decode_image`. Its output is a ``float32`` array of shape
``(height, width)`` with values in ``[0, 1]`` where 1 is white (dense tissue
bright, as radiologists view a chest film).

Anything that cannot be used raises :class:`cxr_core.errors.ImageReadError`
with a message written for the person who supplied the file. The technical
cause (Pillow's or pydicom's exception), when there is one, stays attached as
``__cause__`` for logs; it is not put in the message. DICOM files are
decoded by :mod:`cxr_core.data.dicom`; what both share (the result, the
limits, the messages, the JPEG walk) is :mod:`cxr_core.data.decoding`.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

from cxr_core.data.decoding import (
    _JPEG_SOI,
    MAX_PIXELS,
    DecodedImage,
    _check_jpeg_structure,
    _check_pixel_count,
    _damaged,
    _error,
    _to_unit_range,
    _truncated,
)
from cxr_core.errors import ImageReadError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

#: Largest file accepted, in bytes (uncompressed 16-bit 60 MP DICOM ~ 120 MB).
MAX_FILE_BYTES = 200 * 1024 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUPPORTED = "cxr-assist reads PNG, JPEG and DICOM files"

# Other image formats people upload, recognised by their first bytes so the
# message can name the format (and so Pillow's many other parsers never run).
_OTHER_IMAGE_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "Photoshop"),
)
# Files that are not images at all, with the words a user recognises.
_DOCUMENT_SIGNATURES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\x1f\x8b", "a compressed (gzip) archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Office document"),
)


def _label(name: Optional[str]) -> str:
    """How a file is called in messages: by its name, or as the upload."""
    return f"the file {name!r}" if name else "the uploaded file"


def _read_bytes(source: ImageSource) -> tuple[bytes, Optional[str]]:
    """Return the raw bytes of ``source`` and its file name (None for bytes).

    Args:
        source: a path, or the file's bytes.

    Raises:
        ImageReadError: missing path, a folder or other non-regular file, a
            file above :data:`MAX_FILE_BYTES`, or one the system cannot read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    path = Path(source)
    name = path.name or str(path)
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise _error(f"the file {name!r} does not exist.", "missing") from exc
    except (OSError, ValueError) as exc:  # permission denied, a NUL byte in the path ...
        raise _error(
            f"the file {name!r} could not be opened. Check the path and its permissions.", "unreadable"
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        raise _error(f"the path {name!r} is a folder, not an image file.", "not_a_file")
    if not stat.S_ISREG(info.st_mode):
        # A pipe or device would block read_bytes() forever (or never end).
        raise _error(f"the path {name!r} is not a regular file (it is a pipe, socket or device).", "not_a_file")
    if info.st_size > MAX_FILE_BYTES:
        raise _error(
            f"the file {name!r} is {info.st_size / 2**20:.0f} MB; the limit is "
            f"{MAX_FILE_BYTES / 2**20:.0f} MB. Export a smaller image.",
            "too_large",
        )
    try:
        return path.read_bytes(), name
    except OSError as exc:
        reason = exc.strerror or "a system error"
        raise _error(f"the file {name!r} could not be read ({reason.lower()}).", "unreadable") from exc


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _looks_like_text(sample: bytes) -> bool:
    """True for UTF-8/ASCII text without control characters (a note, CSV, JSON ...)."""
    if not sample or b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the end of the sample is fine; anything else is binary.
        if exc.reason != "unexpected end of data":
            return False
    return not any(byte < 32 and byte not in (9, 10, 12, 13) for byte in sample)


def _identify(data: bytes) -> tuple[str, str]:
    """Tell what kind of file ``data`` is from its first bytes.

    Returns:
        (kind, description): kind is ``"PNG"``, ``"JPEG"``, ``"image"`` (a
        format cxr-assist does not read; description is its name),
        ``"document"`` (description says what it is) or ``"unknown"``.
    """
    if data.startswith(_PNG_SIGNATURE):
        return "PNG", "PNG"
    if data.startswith(_JPEG_SOI):
        return "JPEG", "JPEG"
    for signature, fmt in _OTHER_IMAGE_SIGNATURES:
        if data.startswith(signature):
            return "image", fmt
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image", "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in {b"heic", b"heix", b"mif1", b"avif"}:
        return "image", "HEIC/AVIF"
    # BMP has a two-letter signature only: also check the DIB header size.
    if data.startswith(b"BM") and len(data) >= 18:
        if struct.unpack_from("<I", data, 14)[0] in {12, 40, 52, 56, 64, 108, 124}:
            return "image", "BMP"
    for signature, description in _DOCUMENT_SIGNATURES:
        if data.startswith(signature):
            return "document", description
    head = data[:1024]
    if _looks_like_text(head):
        lowered = head.lstrip().lower()
        if lowered.startswith((b"<!doctype html", b"<html")) or b"<html" in lowered:
            return "document", "a web page (HTML), not the image itself"
        if lowered.startswith(b"<svg") or (lowered.startswith(b"<?xml") and b"<svg" in lowered):
            return "image", "SVG"
        return "document", "a text file"
    return "unknown", ""


def _check_png_structure(data: bytes, name: str) -> None:
    """Walk the PNG chunks: the file must be complete (IEND) with intact CRCs.

    Pillow verifies the CRCs of some chunks only and decodes a file cut off
    after its image data without complaint; a film damaged in transit must
    not be read as if it were whole. The size in IHDR is checked as soon as it
    is read, so a decompression bomb is refused before any pixel is allocated.

    Args:
        data: the whole file, starting with the PNG signature.
        name: the file's label for messages.
    """
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    first = True
    while True:
        if pos + 12 > len(data):
            raise _truncated(name)
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > 2**31 - 1:  # the PNG limit: a larger length is garbage, not a cut
            raise _damaged(name, "PNG")
        end = pos + 12 + length
        if end > len(data):
            raise _truncated(name)
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise _damaged(name, "PNG")
        if first:
            if kind != b"IHDR" or length != 13:
                raise _damaged(name, "PNG")
            width, height = struct.unpack_from(">II", data, pos + 8)
            _check_pixel_count(height, width, name)
            first = False
        if kind == b"IEND":
            return
        pos = end


def _open_with_pillow(data: bytes, kind: str, name: str) -> Image.Image:
    """Open (parse the header of) PNG or JPEG bytes; nothing is decoded yet.

    Args:
        data: the whole file.
        kind: ``"PNG"`` or ``"JPEG"``, from the file's signature.
        name: the file's label for messages.
    """
    try:
        # Only the parser the signature named: Pillow's other parsers never see upload bytes.
        return Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as exc:  # Pillow's own limit (179 MP); ours, checked before, is lower
        raise _error(
            f"the image in {name} is far too large to open safely (the limit is {MAX_PIXELS / 1e6:.0f} megapixels).",
            "too_large",
        ) from exc
    except Exception as exc:  # UnidentifiedImageError, SyntaxError, struct.error ... on mangled headers
        raise _damaged(name, kind) from exc


def _decode_raster(data: bytes, name: str) -> DecodedImage:
    """Decode PNG or JPEG bytes with Pillow.

    Args:
        data: the whole file.
        name: the file's label for messages.
    """
    kind, description = _identify(data)
    if kind == "image":
        raise _error(
            f"{name} is a {description} image; {_SUPPORTED}. Export the image as PNG or DICOM.",
            "unsupported_format",
        )
    if kind == "document":
        raise _error(f"{name} is {description}. Upload a PNG, JPEG or DICOM chest X-ray.", "not_an_image")
    if kind == "unknown":
        raise _error(
            f"{name} is not a PNG, JPEG or DICOM image. Upload a chest X-ray in one of those formats.", "not_an_image"
        )
    if kind == "PNG":
        _check_png_structure(data, name)
    else:
        _check_jpeg_structure(data, name)

    notes: list[str] = []
    # Pillow reports a damaged EXIF block (while opening and while rotating)
    # as a warning only. Record its warnings rather than let them reach the
    # caller, whose filters might turn them into exceptions of another type.
    with warnings.catch_warnings(record=True) as pillow_warnings:
        warnings.simplefilter("always")
        image = _open_with_pillow(data, kind, name)
        fmt = "JPEG" if image.format == "MPO" else (image.format or kind)  # MPO: phone multi-picture JPEG
        width, height = image.size
        _check_pixel_count(height, width, name)
        if fmt == "PNG" and getattr(image, "n_frames", 1) > 1:
            raise _error(f"{name} is an animated image; upload a single X-ray image.", "multi_frame")
        try:
            image.load()
        except Exception as exc:  # the structure was whole, so the compressed data itself is bad
            raise _damaged(name, fmt) from exc
        exif_damaged = False
        if fmt == "JPEG":
            # Phone photos of films carry their rotation in EXIF.
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # the pixels are fine; only the rotation is unknown
                exif_damaged = True
    if exif_damaged or any("exif" in str(w.message).lower() for w in pillow_warnings):
        notes.append("The orientation information in the image is damaged; check that the film is shown upright.")

    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode == "PA":
        image = image.convert("RGBA")
        mode = image.mode
    alpha = None
    pixels = None
    if mode in {"RGBA", "LA"}:
        # Transparent pixels count as black (alpha premultiplied). Done with
        # NumPy because Pillow cannot convert "La" to "L".
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / np.float32(255.0)
        if float(alpha.min()) < 1.0:
            notes.append("The image had transparent areas; they were treated as black.")
        image = image.convert("RGB" if mode == "RGBA" else "L")
        mode = image.mode
    if mode in {"RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
        if spread > 8.0:
            notes.append("The image is in colour; X-rays are grayscale, so it was converted. Check it is an X-ray.")
        gray = np.asarray(image.convert("L"), dtype=np.float32)
        bit_depth = 8
    elif mode == "L":
        gray = np.asarray(image, dtype=np.float32)
        bit_depth = 8
    elif mode == "1":
        gray = np.asarray(image, dtype=np.float32) * np.float32(255.0)
        bit_depth = 1
        notes.append("The image is black-and-white only (1 bit); results will be unreliable.")
    elif mode.startswith("I") or mode == "F":
        # astype reads any byte order correctly. 16-bit exports from PACS use
        # any sub-range (often 12 bits): stretch the image's own range rather
        # than dividing by 65535, which would give a nearly black image.
        pixels = _to_unit_range(np.asarray(image).astype(np.float32))
        bit_depth = 16
    else:
        raise _error(
            f"{name} uses an unsupported pixel format ({mode}). Export it as an 8-bit PNG.", "unsupported_format"
        )

    if pixels is None:  # 8-bit and 1-bit images: a fixed scale, so contrast is kept as stored
        pixels = _to_unit_range(gray if alpha is None else gray * alpha, maximum=255.0)
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        source_format=fmt,
        original_shape=(height, width),
        bit_depth=bit_depth,
        warnings=tuple(notes),
    )


def decode_image(source: ImageSource, *, name: str | None = None) -> DecodedImage:
    """Decode a PNG, JPEG or DICOM image into a :class:`DecodedImage`.

    The format is told from the file's content, never from its name.

    Args:
        source: a file path, or the file's bytes (e.g. an upload).
        name: how to call the file in error messages (defaults to its file name).

    Raises:
        ImageReadError: empty, truncated, corrupt or non-image data; an
            unsupported format; an image above :data:`MAX_PIXELS`; a DICOM
            without pixel data, with several frames, or of a non-radiograph
            modality. No other exception type escapes for bad file content.
    """
    data, file_name = _read_bytes(source)
    label = _label(name or file_name)
    if len(data) == 0:
        raise _error(f"{label} is empty (0 bytes). Upload the image again.", "empty")
    if len(data) > MAX_FILE_BYTES:
        raise _error(
            f"{label} is {len(data) / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB.", "too_large"
        )
    try:
        if _is_dicom(data):
            from cxr_core.data.dicom import decode_dicom  # here: pydicom loads only for DICOM files

            return decode_dicom(data, label)
        return _decode_raster(data, label)
    except ImageReadError:
        raise
    except MemoryError as exc:
        raise _error(f"{label} is too large to decode with the memory available.", "too_large") from exc
    except Exception as exc:
        # Last line of defence: the decoders raise many types on hostile input,
        # and callers rely on one. The cause stays attached for the logs.
        raise _damaged(label) from exc
