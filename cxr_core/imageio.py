"""Decode PNG, JPEG and DICOM files into one kind of image: a 2-D float array.

Every image that enters cxr-assist (training, evaluation, the app) passes
through :func:`decode_image`. Its output is a ``float32`` array of shape
``(height, width)`` with values in ``[0, 1]`` where 1 is white (dense tissue
bright, as radiologists view a chest film).

Anything that cannot be used raises :class:`cxr_core.errors.ImageReadError`
with a message written for the person who supplied the file.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_core.errors import ImageReadError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

#: Largest image accepted, in pixels. A 4,300 x 3,500 detector image is 15 MP;
#: 60 MP leaves room for any radiograph while refusing decompression bombs.
MAX_PIXELS = 60_000_000
#: Largest file accepted, in bytes (uncompressed 16-bit 60 MP DICOM ~ 120 MB).
MAX_FILE_BYTES = 200 * 1024 * 1024

# DICOM modalities that are projection radiographs. DX/CR are what chest films
# are; RG and OT are common for digitised films and secondary captures.
_RADIOGRAPH_MODALITIES = {"DX", "CR", "RG", "DR", "OT", "SC", "PX", "XR"}
# Cross-sectional and other modalities a chest X-ray model must not read.
_REFUSED_MODALITIES = {"CT", "MR", "PT", "NM", "US", "MG", "XA", "RF", "IO", "ES", "OP", "SM"}
_CHEST_BODY_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", ""}
_FRONTAL_VIEWS = {"PA", "AP"}


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


def _read_bytes(source: ImageSource) -> tuple[bytes, str]:
    """Return the raw bytes and a display name for ``source``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "uploaded file"
    path = Path(source)
    name = path.name
    if not path.exists():
        raise ImageReadError(f"The file {name!r} does not exist.", reason="missing")
    if path.is_dir():
        raise ImageReadError(f"{name!r} is a folder, not an image file.", reason="not_a_file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImageReadError(
            f"The file {name!r} is {size / 2**20:.0f} MB; the limit is "
            f"{MAX_FILE_BYTES / 2**20:.0f} MB. Export a smaller image.",
            reason="too_large",
        )
    try:
        return path.read_bytes(), name
    except OSError as exc:
        raise ImageReadError(f"The file {name!r} could not be read ({exc.strerror}).", reason="unreadable") from exc


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _check_pixel_count(height: int, width: int, name: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageReadError(f"The image in {name} has no pixels ({width} x {height}).", reason="corrupt")
    if height * width > MAX_PIXELS:
        raise ImageReadError(
            f"The image in {name} is {width} x {height} pixels ({height * width / 1e6:.0f} megapixels); "
            f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels. Export a smaller copy of the image.",
            reason="too_large",
        )


def _to_unit_range(array: np.ndarray, *, maximum: float | None = None) -> np.ndarray:
    """Scale to [0, 1] by a known maximum, or by the image's own range."""
    array = array.astype(np.float32, copy=False)
    if maximum is not None:
        return np.clip(array / np.float32(maximum), 0.0, 1.0)
    low, high = float(array.min()), float(array.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ImageReadError("The image contains invalid (non-finite) pixel values.", reason="corrupt")
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return (array - np.float32(low)) / np.float32(high - low)


def _decode_raster(data: bytes, name: str) -> DecodedImage:
    """Decode PNG or JPEG bytes with Pillow."""
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns at 89 MP and raises at 179 MP; ours is stricter.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise ImageReadError(f"The image in {name} is far too large to open safely.", reason="too_large") from exc
        raise ImageReadError(
            f"{name} is not a readable image. Upload a PNG, JPEG or DICOM chest X-ray.", reason="not_an_image"
        ) from exc
    except Exception as exc:  # Pillow raises many types on mangled headers
        raise ImageReadError(f"{name} is damaged and could not be opened ({exc}).", reason="corrupt") from exc

    fmt = (image.format or "").upper()
    if fmt not in {"PNG", "JPEG", "MPO"}:
        raise ImageReadError(
            f"{name} is a {fmt or 'unknown'} image; cxr-assist reads PNG, JPEG and DICOM files.",
            reason="unsupported_format",
        )
    fmt = "JPEG" if fmt == "MPO" else fmt
    width, height = image.size
    _check_pixel_count(height, width, name)
    if getattr(image, "n_frames", 1) > 1 and fmt == "PNG":
        raise ImageReadError(f"{name} is an animated image; upload a single X-ray image.", reason="multi_frame")
    try:
        image.load()
        if fmt == "JPEG":
            # Phone photos of films carry their rotation in EXIF.
            image = ImageOps.exif_transpose(image)
    except Exception as exc:  # truncated data, bad CRC, broken huffman tables ...
        raise ImageReadError(
            f"{name} is incomplete or damaged and could not be decoded ({exc}). Export the image again.",
            reason="truncated",
        ) from exc

    mode = image.mode
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA"}:
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            notes.append("The image had transparent areas; they were treated as black.")
        image = image.convert("RGBa" if mode == "RGBA" else "La").convert("L" if mode == "LA" else "RGB")
        mode = image.mode
    if mode in {"RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        spread = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
        if spread > 8.0:
            notes.append("The image is in colour; X-rays are grayscale, so it was converted. Check it is an X-ray.")
        pixels = _to_unit_range(np.asarray(image.convert("L")), maximum=255.0)
        bit_depth = 8
    elif mode == "L":
        pixels = _to_unit_range(np.asarray(image), maximum=255.0)
        bit_depth = 8
    elif mode == "1":
        pixels = np.asarray(image, dtype=np.float32)
        bit_depth = 1
        notes.append("The image is black-and-white only (1 bit); results will be unreliable.")
    elif mode.startswith("I") or mode == "F":
        raw = np.asarray(image)
        if raw.dtype.byteorder == ">" or mode.endswith("B"):
            raw = raw.astype(raw.dtype.newbyteorder("=")) if raw.dtype.byteorder == ">" else raw
        raw = raw.astype(np.float32)
        # 16-bit exports from PACS use any sub-range (often 12 bits): stretch
        # the image's own range rather than dividing by 65535, which would
        # give a nearly black image.
        pixels = _to_unit_range(raw)
        bit_depth = 16
    else:
        raise ImageReadError(f"{name} uses an unsupported pixel format ({mode}).", reason="unsupported_format")

    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        source_format=fmt,
        original_shape=(height, width),
        bit_depth=bit_depth,
        warnings=tuple(notes),
    )


def _dicom_text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def _decode_dicom(data: bytes, name: str) -> DecodedImage:
    """Decode a DICOM file with pydicom: modality LUT, VOI LUT/window, MONOCHROME1."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, Exception) as exc:
        raise ImageReadError(f"{name} is a damaged DICOM file ({exc}).", reason="corrupt") from exc

    notes: list[str] = []
    modality = _dicom_text(ds, "Modality")
    if modality in _REFUSED_MODALITIES:
        raise ImageReadError(
            f"{name} is a {modality} image, not a chest radiograph. cxr-assist reads frontal chest X-rays only.",
            reason="wrong_modality",
        )
    if modality and modality not in _RADIOGRAPH_MODALITIES:
        notes.append(f"The DICOM modality is {modality!r}, not a radiograph (DX/CR); check this is a chest X-ray.")
    body_part = _dicom_text(ds, "BodyPartExamined")
    if body_part not in _CHEST_BODY_PARTS:
        notes.append(f"The DICOM says the body part is {body_part!r}, not the chest; the model was trained on chest films.")
    view = _dicom_text(ds, "ViewPosition") or _dicom_text(ds, "PatientPosition")
    if view not in _FRONTAL_VIEWS:
        shown = view or "missing"
        notes.append(f"The view position is {shown!r}, not PA or AP; the model was trained on frontal films only.")

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(f"{name} is a DICOM file without an image in it (no pixel data).", reason="no_pixel_data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            f"{name} holds {frames} frames (a series or cine loop); upload a single chest X-ray image.",
            reason="multi_frame",
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixel_count(rows, cols, name)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(
            f"The image data in {name} could not be decoded ({syntax_name}): {exc}. "
            "Export it uncompressed or as PNG.",
            reason="corrupt",
        ) from exc
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):  # colour DICOM (secondary capture)
        raw = raw[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        notes.append("The DICOM image is in colour; it was converted to grayscale.")
    elif raw.ndim != 2:
        raise ImageReadError(f"{name} has an unexpected image shape {raw.shape}.", reason="corrupt")

    photometric = _dicom_text(ds, "PhotometricInterpretation")
    values = apply_modality_lut(raw, ds)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        # apply_voi_lut returns values in the output range of the LUT/window;
        # prefer_lut follows the standard when both are present.
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    values = np.asarray(values, dtype=np.float32)
    pixels = _to_unit_range(values)
    if photometric == "MONOCHROME1":  # 0 means white in MONOCHROME1: invert to display convention
        pixels = 1.0 - pixels
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    metadata = {
        "modality": modality,
        "body_part": body_part,
        "view_position": view,
        "photometric": photometric,
        "sex": _dicom_text(ds, "PatientSex"),
        "age": _dicom_text(ds, "PatientAge"),
    }
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        source_format="DICOM",
        original_shape=(int(pixels.shape[0]), int(pixels.shape[1])),
        bit_depth=bits,
        warnings=tuple(notes),
        metadata=metadata,
    )


def decode_image(source: ImageSource, *, name: str | None = None) -> DecodedImage:
    """Decode a PNG, JPEG or DICOM image into a :class:`DecodedImage`.

    Args:
        source: a file path, or the file's bytes (e.g. an upload).
        name: how to call the file in error messages (defaults to its file name).

    Raises:
        ImageReadError: empty, truncated, corrupt or non-image data; an
            unsupported format; an image above :data:`MAX_PIXELS`; a DICOM
            without pixel data, with several frames, or of a non-radiograph
            modality.
    """
    data, default_name = _read_bytes(source)
    label = name or default_name
    if len(data) == 0:
        raise ImageReadError(f"{label} is empty (0 bytes). Upload the image again.", reason="empty")
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(
            f"{label} is {len(data) / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB.", reason="too_large"
        )
    if _is_dicom(data):
        return _decode_dicom(data, label)
    return _decode_raster(data, label)
