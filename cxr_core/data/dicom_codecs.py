"""A pydicom decoder plugin that decodes compressed DICOM frames with imagecodecs.

imagecodecs (BSD-3-Clause) is one wheel with libjpeg-turbo 3 (JPEG extended
and lossless, 8 to 16 bits, any selection value), CharLS (JPEG-LS) and
OpenJPEG (JPEG 2000) inside. It replaces pylibjpeg, pylibjpeg-libjpeg
(GPL-3.0), pylibjpeg-openjpeg and pyjpegls. :mod:`cxr_core.data.dicom`
registers this module with pydicom under the label :data:`LABEL`, so pydicom
still does everything around the codec: it finds the frame in the
encapsulated pixel data, reshapes the decoded bytes, corrects the sign of
JPEG-LS and JPEG 2000 samples, and converts colour spaces; the caller then
applies rescale, VOI LUT and photometric as for any other DICOM.

The module follows pydicom's plugin contract (``DECODER_DEPENDENCIES``,
``is_available`` and the frame function, see pydicom's "decoder plugins"
guide). JPEG baseline stays with Pillow (see :data:`cxr_core.data.dicom.DECODERS`),
RLE with pydicom itself.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom import uid
from pydicom.pixels.common import PhotometricInterpretation as PI

try:
    import imagecodecs
except ImportError:  # not installed: pydicom lists the plugin as unavailable
    imagecodecs = None

#: The plugin's label in pydicom (``decoding_plugin=...``, ``available_plugins``).
LABEL = "imagecodecs"

_JPEG = (uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
_JPEG_LS = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)
_JPEG_2000 = (uid.JPEG2000Lossless, uid.JPEG2000)
#: The transfer syntaxes this plugin decodes, and what it needs for them.
DECODER_DEPENDENCIES = {syntax: ("numpy", "imagecodecs>=2026.3.6") for syntax in (*_JPEG, *_JPEG_LS, *_JPEG_2000)}


def is_available(syntax: str) -> bool:
    """True when imagecodecs is installed and decodes ``syntax`` (pydicom's plugin contract)."""
    if imagecodecs is None or syntax not in DECODER_DEPENDENCIES:
        return False
    if syntax in _JPEG:
        return bool(imagecodecs.JPEG8.available)
    if syntax in _JPEG_LS:
        return bool(imagecodecs.JPEGLS.available)
    return bool(imagecodecs.JPEG2K.available)


def _jpeg(src: bytes, runner) -> np.ndarray:
    """A JPEG frame with libjpeg-turbo, samples as stored (no colour conversion: pydicom does that)."""
    if runner.samples_per_pixel == 3:
        # Like pydicom's Pillow plugin: the samples as stored, pydicom converts YBR itself.
        space = "RGB" if runner.photometric_interpretation == PI.RGB else "YCbCr"
        return imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=space)
    return imagecodecs.jpeg8_decode(src)


#: JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS's SOF55.
_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})


def _stated_size(src: bytes, syntax) -> tuple[int, int, int] | None:
    """Rows, columns and components the codestream's own header states (None: not found before the data).

    JPEG and JPEG-LS: the start-of-frame segment; JPEG 2000: the SIZ segment
    after SOC (a JP2 wrapper around the codestream is looked through).
    """
    if syntax in _JPEG_2000:
        start = src.find(b"\xff\x4f\xff\x51")
        if start < 0 or len(src) < start + 42:
            return None
        x, y, x_offset, y_offset = struct.unpack(">IIII", src[start + 8 : start + 24])
        return y - y_offset, x - x_offset, struct.unpack(">H", src[start + 40 : start + 42])[0]
    position = 2
    while position + 4 <= len(src) and src[position] == 0xFF:
        marker = src[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        if marker in _SOF_MARKERS and position + 10 <= len(src):
            rows, columns = struct.unpack(">HH", src[position + 5 : position + 9])
            return (rows, columns, src[position + 9]) if rows else None  # 0 rows: the height comes later (DNL)
        position += 2 + struct.unpack(">H", src[position + 2 : position + 4])[0]
    return None


def decode_frame(src: bytes, runner) -> bytes:
    """Decode one frame; the samples' container follows the codestream's precision.

    Raises:
        imagecodecs' own errors (``Jpeg8Error``, ``JpeglsError``, ``Jpeg2kError``,
        all ``RuntimeError``) on a damaged stream, and ValueError when the
        stream states or decodes to another size or number of samples than
        the DICOM header (checked first from the stream's own header, so a
        damaged size field costs no decoding).
    """
    syntax = runner.transfer_syntax
    stated = _stated_size(src, syntax)
    expected = (runner.rows, runner.columns, runner.samples_per_pixel)
    if stated is not None and stated != expected:
        # Checked before decoding: a damaged size field (a 2-million-row JPEG 2000 film) would have the codec
        # allocate and decode for minutes before the size check below could refuse it.
        raise ValueError(f"the frame's header states {stated[0]} x {stated[1]} with {stated[2]} component(s), the "
                         f"DICOM header {expected[0]} x {expected[1]} with {expected[2]}")
    if syntax in _JPEG_LS:
        pixels = imagecodecs.jpegls_decode(src)  # samples interleaved (colour by pixel)
        runner.set_option("planar_configuration", 0)
    elif syntax in _JPEG_2000:
        pixels = imagecodecs.jpeg2k_decode(src)
        if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
            runner.set_option("photometric_interpretation", PI.RGB)  # OpenJPEG undoes the component transform
    else:
        pixels = _jpeg(src, runner)
    pixels = np.asarray(pixels)
    samples = 1 if pixels.ndim == 2 else int(pixels.shape[-1])
    if pixels.shape[:2] != (runner.rows, runner.columns) or samples != runner.samples_per_pixel:
        raise ValueError(
            f"the frame decodes to {pixels.shape}, the DICOM header says {runner.rows} x {runner.columns} "
            f"with {runner.samples_per_pixel} sample(s) per pixel"
        )
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    runner.set_option("bits_allocated", 8 * pixels.dtype.itemsize)
    return np.ascontiguousarray(pixels).tobytes()
