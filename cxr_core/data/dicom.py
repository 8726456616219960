"""Decode DICOM files for :func:`cxr_core.data.imageio.decode_image`.

pydicom reads the file; modality LUT, VOI LUT or window and MONOCHROME1 are
applied here; CT, MR and other non-radiographs are refused and a non-chest
body part or a non-frontal view gives a warning. Errors are
:class:`cxr_core.errors.ImageReadError` with a plain message, like every
other decoding error.
"""

from __future__ import annotations

import io
import warnings
from typing import Optional

import numpy as np

from cxr_core.data.imageio import (
    DecodedImage,
    _check_pixel_count,
    _error,
    _to_unit_range,
    _truncated,
)

# DICOM modalities that are projection radiographs. DX/CR are what chest films
# are; RG and OT are common for digitised films and secondary captures.
_RADIOGRAPH_MODALITIES = {"DX", "CR", "RG", "DR", "OT", "SC", "PX", "XR"}
# Cross-sectional and other modalities a chest X-ray model must not read.
_REFUSED_MODALITIES = {"CT", "MR", "PT", "NM", "US", "MG", "XA", "RF", "IO", "ES", "OP", "SM"}
_CHEST_BODY_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", ""}
_FRONTAL_VIEWS = {"PA", "AP"}


def _dicom_text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def _dicom_int(ds, keyword: str, default: int, name: str) -> int:
    """An integer element; a multi-valued or non-numeric one means a damaged header."""
    try:
        value = ds.get(keyword, default)  # pydicom converts the text on first use: may raise
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError) as exc:
        raise _error(f"{name} is a damaged DICOM file: its {keyword} value is not a number.", "corrupt") from exc


def _an(word: str) -> str:
    """The article for an abbreviation read letter by letter ("an MR", "a CT")."""
    return "an" if word[:1] in set("AEFHILMNORSX") else "a"


def _apply_window(values: np.ndarray, ds, apply_voi_lut) -> Optional[np.ndarray]:
    """Apply the DICOM window (WindowCenter/Width) and scale its output to [0, 1].

    The window is what the modality chose for display: its output range, not
    the image's own range, maps to black and white, so tissue that lies
    inside a wide window stays mid-gray instead of being stretched.

    Returns:
        the windowed image in [0, 1], or None when the window is unusable.
    """
    try:
        windowed = apply_voi_lut(values, ds, index=0, prefer_lut=False)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # The window's output for inputs far below and far above it.
            black, white = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0, prefer_lut=False))
    except (ValueError, TypeError, IndexError, ZeroDivisionError, AttributeError):
        return None  # width < 1, non-numeric or mismatched values
    if not (np.isfinite(black) and np.isfinite(white)) or black == white:
        return None
    scaled = (np.asarray(windowed, dtype=np.float32) - np.float32(black)) / np.float32(white - black)
    return np.clip(scaled, 0.0, 1.0)


def decode_dicom(data: bytes, name: str) -> DecodedImage:
    """Decode a DICOM file with pydicom: modality LUT, VOI LUT/window, MONOCHROME1.

    pydicom warns about every oddity of real files, while reading and again
    when it converts a value on first use. The warnings are recorded, not
    shown: the caller's filters could otherwise turn them into exceptions of
    another type, and one of them is how a cut-off file shows itself.

    Args:
        data: the whole file, with the 128-byte preamble and ``DICM``.
        name: the file's label for messages.
    """
    with warnings.catch_warnings(record=True) as pydicom_warnings:
        warnings.simplefilter("always")
        return _dicom_to_image(data, name, pydicom_warnings)


def _dicom_to_image(data: bytes, name: str, read_warnings: list) -> DecodedImage:
    """The body of :func:`decode_dicom`, run with warnings recorded in ``read_warnings``."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error ... on mangled headers
        raise _error(
            f"{name} starts like a DICOM file but its header is damaged and could not be read.", "corrupt"
        ) from exc

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    has_pixels = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    if not has_pixels and any("end of file" in str(w.message).lower() for w in read_warnings):
        # Compressed pixel data cut short: pydicom drops the element and only warns.
        raise _truncated(name)
    if syntax is None and not has_pixels:
        # pydicom reads garbage after "DICM" as unknown private elements; a
        # real file always states its transfer syntax.
        raise _error(f"{name} starts like a DICOM file but its header is damaged and could not be read.", "corrupt")

    notes: list[str] = []
    modality = _dicom_text(ds, "Modality")
    if modality in _REFUSED_MODALITIES:
        raise _error(
            f"{name} is {_an(modality)} {modality} image, not a chest radiograph. "
            "cxr-assist reads frontal chest X-rays only.",
            "wrong_modality",
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

    if not has_pixels:
        raise _error(f"{name} is a DICOM file without an image in it (no pixel data).", "no_pixel_data")
    frames = _dicom_int(ds, "NumberOfFrames", 1, name)
    if frames > 1:
        raise _error(
            f"{name} holds {frames} frames (a series or cine loop); upload a single chest X-ray image.", "multi_frame"
        )
    rows, cols = _dicom_int(ds, "Rows", 0, name), _dicom_int(ds, "Columns", 0, name)
    _check_pixel_count(rows, cols, name)
    try:
        native = syntax is not None and not syntax.is_compressed
    except ValueError:  # a UID that is not a known transfer syntax: pixel_array will say
        native = False
    if native and "PixelData" in ds:
        # Uncompressed pixels have a known size: fewer bytes means the file was cut.
        samples = _dicom_int(ds, "SamplesPerPixel", 1, name)
        bits = _dicom_int(ds, "BitsAllocated", 8, name)
        expected = (rows * cols * max(frames, 1) * max(samples, 1) * bits + 7) // 8
        if len(ds.PixelData) < expected:
            raise _truncated(name)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        syntax_name = getattr(syntax, "name", None) or "an unknown encoding"
        raise _error(
            f"the image data in {name} could not be decoded (it is stored as {syntax_name}); it is damaged or "
            "compressed in a way cxr-assist cannot read. Export it uncompressed or as PNG.",
            "corrupt",
        ) from exc
    photometric = _dicom_text(ds, "PhotometricInterpretation")
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):  # colour DICOM (secondary capture)
        raw = raw[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        notes.append("The DICOM image is in colour; it was converted to grayscale.")
        pixels = _to_unit_range(raw)
    elif raw.ndim != 2:
        raise _error(f"{name} has an unexpected image shape {tuple(raw.shape)}; upload a single 2-D image.", "corrupt")
    else:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        pixels = None
        if photometric in {"MONOCHROME1", "MONOCHROME2"}:  # pydicom's VOI functions accept only these
            if "VOILUTSequence" in ds:
                try:
                    values = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
                except Exception:
                    notes.append("The DICOM display lookup table is invalid; the image's own range was used instead.")
            elif "WindowCenter" in ds and "WindowWidth" in ds:
                pixels = _apply_window(values, ds, apply_voi_lut)
                if pixels is None:
                    notes.append("The DICOM display window is invalid; the image's own range was used instead.")
        if pixels is None:
            pixels = _to_unit_range(values)
    if photometric == "MONOCHROME1":  # 0 means white in MONOCHROME1: invert to display convention
        pixels = 1.0 - pixels
    bits = _dicom_int(ds, "BitsStored", _dicom_int(ds, "BitsAllocated", 8, name), name)
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
