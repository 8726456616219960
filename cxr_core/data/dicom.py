"""Decode DICOM files for :func:`cxr_core.data.imageio.decode_image`.

pydicom reads the file and its pixel-data plugins decode the transfer
syntaxes in :data:`DECODERS` (uncompressed, deflated and big endian; RLE;
JPEG baseline, extended and lossless; JPEG-LS; JPEG 2000: what PACS export);
the compressed ones other than RLE and JPEG baseline through imagecodecs
(BSD-3-Clause), registered with pydicom as a plugin by
:mod:`cxr_core.data.dicom_codecs`.
Modality LUT, VOI LUT or window and MONOCHROME1 are applied here; CT, MR
and other non-radiographs are refused and a non-chest body part or a
non-frontal view gives a warning. Errors are
:class:`cxr_core.errors.ImageReadError` with a plain message, like every
other decoding error.
"""

from __future__ import annotations

import io
import warnings
from typing import Optional

import numpy as np
from pydicom import uid
from pydicom.pixels import get_decoder

from cxr_core.data import dicom_codecs
from cxr_core.data.decoding import (
    DecodedImage,
    _check_jpeg_structure,
    _check_pixel_count,
    _damaged,
    _error,
    _to_unit_range,
    _truncated,
)

#: The transfer syntaxes cxr-assist decodes, each with the pydicom plugin that
#: decodes its pixel data (None: uncompressed, read by pydicom itself). Each is
#: tested on real chest films (tests/fixtures/test_dicom_syntaxes.py). The plugin is
#: named rather than left to pydicom, whose choice depends on what happens to
#: be installed, because the decoders differ where it matters here:
#: - RLE: pydicom's own decoder; pylibjpeg-rle aborts with a Rust panic on some
#:   damaged streams.
#: - JPEG baseline: Pillow, the libjpeg-turbo that decodes JPEG files, so a
#:   DICOM and a JPEG of one film give the same pixels (as before this table).
#: - JPEG extended and lossless (process 14, any selection value), JPEG-LS and
#:   JPEG 2000: imagecodecs (BSD-3-Clause; libjpeg-turbo 3, which decodes 12-
#:   and 16-bit JPEG, CharLS and OpenJPEG in one wheel), registered below. It
#:   replaced pylibjpeg-libjpeg (GPL-3.0), pyjpegls and pylibjpeg-openjpeg with
#:   the same pixels (benchmarks/DICOM_DECODE_RESULTS.md). GDCM can decode these
#:   too, but aborts the whole process on some damaged lossless streams.
_CODECS = dicom_codecs.LABEL
DECODERS: dict[str, Optional[str]] = {
    uid.ImplicitVRLittleEndian: None,
    uid.ExplicitVRLittleEndian: None,
    uid.DeflatedExplicitVRLittleEndian: None,
    uid.ExplicitVRBigEndian: None,
    uid.RLELossless: "pydicom",
    uid.JPEGBaseline8Bit: "pillow",
    uid.JPEGExtended12Bit: _CODECS,
    uid.JPEGLossless: _CODECS,
    uid.JPEGLosslessSV1: _CODECS,
    uid.JPEGLSLossless: _CODECS,
    uid.JPEGLSNearLossless: _CODECS,
    uid.JPEG2000Lossless: _CODECS,
    uid.JPEG2000: _CODECS,
}


def _register_codecs() -> None:
    """Add :mod:`cxr_core.data.dicom_codecs` to pydicom's decoders (once per process)."""
    for syntax in dicom_codecs.DECODER_DEPENDENCIES:
        try:
            get_decoder(syntax).add_plugin(_CODECS, (dicom_codecs.__name__, "decode_frame"))
        except ValueError:  # already added (this module imported again)
            pass


_register_codecs()
#: The same list in words, for messages and documentation.
SUPPORTED_SYNTAXES = (
    "uncompressed (little or big endian, deflated), RLE, JPEG (baseline, extended, lossless), "
    "JPEG-LS (lossless, near-lossless) and JPEG 2000 (lossless, lossy)"
)
# Frames whose marker structure is walked before decoding: their decoders fill
# a stream that stops early with made-up pixels instead of failing.
_JPEG_FRAMES = {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1}
_JPEG_LS_FRAMES = {uid.JPEGLSLossless, uid.JPEGLSNearLossless}

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


def _check_frame(ds, syntax, name: str) -> None:
    """Walk the markers of a JPEG or JPEG-LS frame: it must start with SOI and reach EOI.

    libjpeg decodes a lossless or JPEG-LS stream that stops early into an
    image without complaint, and CharLS can spend seconds on one; a film cut
    in transit must be refused, not read. (Damage inside the compressed data
    that keeps the structure whole cannot be seen: JPEG has no checksum.)
    """
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:  # a broken item tag or offset table
        raise _damaged(name, "DICOM") from exc
    if not frame.startswith(b"\xff\xd8"):
        raise _damaged(name, "DICOM")
    _check_jpeg_structure(frame, name, what="DICOM", jpeg_ls=syntax in _JPEG_LS_FRAMES)


def _decode_pixels(ds, syntax, name: str) -> np.ndarray:
    """``ds``'s stored values, decoded by the plugin :data:`DECODERS` names for its transfer syntax.

    Raises:
        ImageReadError: damaged pixel data (``corrupt``, ``truncated``), or a
            transfer syntax cxr-assist does not read or whose decoder is not
            installed (``unsupported_format``).
    """
    syntax_name = getattr(syntax, "name", None) or "an unknown encoding"
    plugin = DECODERS.get(syntax) if syntax is not None else None
    if plugin is not None:
        decoder = get_decoder(syntax)
        if plugin not in decoder.available_plugins:
            if not decoder.available_plugins:
                raise _error(
                    f"the image data in {name} is stored as {syntax_name}, and the decoder for it ({plugin}) is not "
                    "installed here (requirements.txt installs it). Export the image uncompressed or as PNG.",
                    "unsupported_format",
                )
            plugin = ""  # another installed plugin can decode it: let pydicom choose
        ds.pixel_array_options(decoding_plugin=plugin)
    if syntax in _JPEG_FRAMES or syntax in _JPEG_LS_FRAMES:
        _check_frame(ds, syntax, name)
    try:
        return ds.pixel_array
    except BaseException as exc:
        # Decoders written in Rust (pyo3) raise PanicException, a BaseException,
        # on some damaged streams: it is bad data, not an interrupt.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        if syntax is not None and syntax in DECODERS:
            raise _error(
                f"the image data in {name} is damaged and could not be decoded (it is stored as {syntax_name}). "
                "Export the image again.",
                "corrupt",
            ) from exc
        raise _error(
            f"the image data in {name} is stored as {syntax_name}, which cxr-assist cannot decode; it reads DICOM "
            f"stored {SUPPORTED_SYNTAXES}. Export the image in one of those or as PNG.",
            "unsupported_format",
        ) from exc


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
    raw = _decode_pixels(ds, syntax, name)
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
