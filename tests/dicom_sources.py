"""Uncompressed chest DICOM sources for the transfer-syntax tests.

Every source is derived, by integer arithmetic only, from one real chest film
beside the checkout (``../shared/dicom/udacity_test1.dcm``: an NIH image
wrapped as DICOM, DX, CHEST, PA, 8-bit, 1024 x 1024; see that folder's
PROVENANCE.md). The same functions wrote the inputs of the files committed
under ``tests/fixtures/dicom_generated`` (see its README and ``generate.py``), so
a test can rebuild the exact original that each of those files compresses.

- ``chest8``: the film at half size, 512 x 512, 8 bits (2 x 2 block mean, rounded).
- ``chest12``: a quarter size, 256 x 256, 12 bits stored in 16 (4 x 4 block
  *sum*: 16 eight-bit values add up to 0..4080, twelve bits of real detail,
  like a CR/DX detector's output).
- ``chest12_signed``: ``chest12`` minus 2048 with PixelRepresentation 1.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SHARED_DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "dicom"
SOURCE_FILE = "udacity_test1.dcm"


def source_path() -> Path:
    """The real chest film the sources come from (tests skip when it is absent)."""
    return SHARED_DICOM / SOURCE_FILE


def _block_sum(pixels: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = pixels.shape
    blocks = pixels[: rows // factor * factor, : cols // factor * factor].astype(np.int64)
    return blocks.reshape(rows // factor, factor, cols // factor, factor).sum(axis=(1, 3))


def source_pixels(variant: str) -> np.ndarray:
    """The stored values of a source: ``"chest8"``, ``"chest12"`` or ``"chest12_signed"``."""
    import pydicom

    film = pydicom.dcmread(source_path()).pixel_array
    if variant == "chest8":
        return ((_block_sum(film, 2) + 2) // 4).astype(np.uint8)
    if variant == "chest12":
        return _block_sum(film, 4).astype(np.uint16)
    if variant == "chest12_signed":
        return (_block_sum(film, 4) - 2048).astype(np.int16)
    raise ValueError(f"unknown source variant {variant!r}")


def source_dataset(variant: str):
    """The source as a pydicom Dataset, Explicit VR Little Endian, the film's own tags kept."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    pixels = source_pixels(variant)
    ds = pydicom.dcmread(source_path())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    bits_stored = 8 if variant == "chest8" else 12
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    return ds


def source_bytes(variant: str) -> bytes:
    """The source written as a DICOM Part-10 file."""
    buffer = io.BytesIO()
    source_dataset(variant).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def jpeg_2000_frame(pixels: np.ndarray, bits_stored: int, psnr: float = 0) -> bytes:
    """A JPEG 2000 codestream of ``pixels`` by imagecodecs (OpenJPEG): reversible, or lossy at ``psnr`` dB.

    The codestream's precision is ``bits_stored`` and its sign that of the
    array, as DICOM asks (a raw .j2k stream, no JP2 boxes).
    """
    import imagecodecs

    if psnr:
        return imagecodecs.jpeg2k_encode(pixels, level=psnr, codecformat="J2K", reversible=False, bitspersample=bits_stored)
    return imagecodecs.jpeg2k_encode(pixels, level=0, codecformat="J2K", reversible=True, bitspersample=bits_stored)


def jpeg_ls_frame(pixels: np.ndarray) -> bytes:
    """A lossless JPEG-LS codestream of 8-bit ``pixels`` by imagecodecs (CharLS), without the SPIFF header.

    imagecodecs writes JPEG-LS at 8 or 16 bits only, so this serves 8-bit
    films; the committed ``tests/fixtures/dicom_generated`` files hold the 12-bit
    ones at their own precision. CharLS starts its stream with a SPIFF header
    (two APP8 segments and a second SOI), which DICOM does not use: dropped.
    """
    import imagecodecs

    if pixels.dtype != np.uint8:
        raise ValueError("imagecodecs writes JPEG-LS at 8 or 16 bits: use it for 8-bit films only")
    stream = bytes(imagecodecs.jpegls_encode(pixels))
    return b"\xff\xd8" + stream[stream.index(b"\xff\xf7"):]


def compressed_bytes(ds, syntax: str, frame: bytes, *, lossy: bool = False) -> bytes:
    """``ds`` written with ``frame`` as its one encapsulated frame of transfer syntax ``syntax``."""
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = syntax
    if len(frame) % 2:
        frame += b"\x00"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if lossy:
        ds.LossyImageCompression = "01"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
