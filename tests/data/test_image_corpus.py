"""A corpus of bad and unusual image files run through ``decode_image``.

Every image enters cxr-assist through :func:`cxr_core.data.imageio.decode_image`,
so its contract is tested here file by file: bad input raises exactly
:class:`ImageReadError` with the expected ``reason`` and a plain sentence a
clinician can act on; unusual but valid input decodes to a 2-D float32 image
in [0, 1], with a warning where the file is suspicious.

Almost every file is generated in memory (Pillow, zlib/struct, pydicom) so the
corpus needs no binary fixtures. The real DICOM files in ``../shared/dicom``
(beside the checkout) are used when present and skipped otherwise.
"""

from __future__ import annotations

import io
import os
import re
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pytest
from PIL import Image

from cxr_core.data import MAX_PIXELS, DecodedImage, PreprocessConfig, decode_image, preprocess
from cxr_core.errors import ImageReadError

SHARED_DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "dicom"
#: Only a hang guard: the whole corpus decodes in well under a second per case.
HANG_GUARD_S = 10.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Source = Union[bytes, Path]


# --------------------------------------------------------------------------
# Builders: small images, PNG chunks by hand, JPEG, DICOM.
# --------------------------------------------------------------------------


def _film(height: int = 96, width: int = 128, *, seed: int = 0) -> np.ndarray:
    """An 8-bit X-ray-like image: smooth gradient plus noise (so it does not compress to nothing)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(30, 220, height)[:, None]
    cols = np.linspace(-20, 20, width)[None, :]
    noise = rng.normal(0, 12, (height, width))
    return np.clip(rows + cols + noise, 0, 255).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png(array: np.ndarray, **options) -> bytes:
    return _save(Image.fromarray(array), "PNG", **options)


def _jpeg(array: np.ndarray, **options) -> bytes:
    return _save(Image.fromarray(array), "JPEG", quality=90, **options)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_by_hand(width: int, height: int, bit_depth: int, colour_type: int, scanlines: bytes) -> bytes:
    """A PNG written with zlib/struct: for what Pillow will not write (16-bit RGB, impossible sizes)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines))
        + _chunk(b"IEND", b"")
    )


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the chunk, payload length) for every chunk of a PNG."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, pos, length))
        pos += 12 + length
    return chunks


def _idat(data: bytes) -> tuple[int, int]:
    """Offset of the first IDAT payload and its length."""
    kind, offset, length = next(c for c in _png_chunks(data) if c[0] == b"IDAT")
    return offset + 8, length


def _png_16bit_rgb() -> bytes:
    height, width = 40, 56
    base = _film(height, width).astype(np.uint16) * 257
    rgb = np.stack([base, base, base], axis=-1).astype(">u2")
    scanlines = b"".join(b"\x00" + row.tobytes() for row in rgb)
    return _png_by_hand(width, height, 16, 2, scanlines)


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG header claiming ``width x height`` with one tiny IDAT."""
    return _png_by_hand(width, height, 8, 0, b"\x00" * 1024)


def _png_truncated_mid_idat() -> bytes:
    data = _png(_film())
    start, length = _idat(data)
    return data[: start + length // 2]


def _png_bad_crc() -> bytes:
    """One IDAT byte flipped, CRC left as it was: damaged in transit."""
    data = bytearray(_png(_film()))
    start, length = _idat(bytes(data))
    data[start + length // 2] ^= 0xFF
    return bytes(data)


def _png_bad_idat() -> bytes:
    """IDAT replaced by bytes that are not a zlib stream, with a *correct* CRC."""
    data = _png(_film())
    start, length = _idat(data)
    garbage = np.random.default_rng(7).integers(0, 256, length, dtype=np.uint8).tobytes()
    garbage = b"\x78\x9c" + b"\xff" * 16 + garbage[18:]  # zlib header, then an invalid block
    return data[: start - 8] + _chunk(b"IDAT", garbage) + data[start + length + 4 :]


def _apng() -> bytes:
    frames = [Image.fromarray(_film(seed=i)) for i in range(3)]
    return _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def _jpeg_truncated_half() -> bytes:
    data = _jpeg(_film(256, 256))
    return data[: len(data) // 2]


def _jpeg_corrupt_body() -> bytes:
    """Markers overwritten in the middle of the scan: the structure, not just the values, is broken."""
    data = bytearray(_jpeg(_film(256, 256)))
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff\xc4\x00\x02" * 16  # empty Huffman-table segments inside the scan
    return bytes(data)


def _jpeg_header_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 marker is patched to claim another size."""
    data = bytearray(_jpeg(_film(32, 32)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _jpeg_exif_orientation_6() -> bytes:
    """48 rows x 80 columns, a bright block top-left; EXIF says 'rotate 90 degrees clockwise to view'."""
    array = np.full((48, 80), 30, dtype=np.uint8)
    array[:16, :16] = 250
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(array, exif=exif.tobytes())


def _jpeg_damaged_exif() -> bytes:
    """An EXIF block whose orientation IFD claims 5 entries but holds 1 (orientation 6)."""
    data = _jpeg(np.full((48, 80), 100, dtype=np.uint8))
    entry = struct.pack("<HHII", 0x0112, 3, 1, 6)
    payload = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00" + entry
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + app1 + data[2:]


def _jpeg_progressive() -> bytes:
    data = _jpeg(_film(), progressive=True)
    assert b"\xff\xc2" in data, "Pillow did not write a progressive (SOF2) JPEG"
    return data


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("chest.png", _png(_film()))
    return buffer.getvalue()


def _dicom(pixels: np.ndarray, frames: int = 1, **tags) -> bytes:
    """A DICOM Part-10 file (Explicit VR Little Endian) holding ``pixels``.

    Args:
        pixels: 2-D uint8/uint16/int16 array (one frame; repeated ``frames`` times).
        frames: number of frames to store; above 1 writes NumberOfFrames.
        **tags: DICOM keywords to set; a value of None deletes the element.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    bits = pixels.dtype.itemsize * 8
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes() * frames
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dicom_claiming_rows(rows: int, columns: int) -> bytes:
    """Rows/Columns written as UL so that values above 65535 can be stored (and read back)."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(_dicom(_film(8, 8))))
    del ds.Rows, ds.Columns
    ds.add_new(0x00280010, "UL", rows)
    ds.add_new(0x00280011, "UL", columns)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _dicom_jpeg_compressed(pixels: np.ndarray) -> bytes:
    """The same film stored as encapsulated JPEG Baseline (how many PACS export)."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dcmread(io.BytesIO(_dicom(pixels)))
    ds.PixelData = encapsulate([_jpeg(pixels)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _dicom_patched(data: bytes, old: bytes, new: bytes) -> bytes:
    """Overwrite one encoded element value in place (for values pydicom refuses to write)."""
    assert len(old) == len(new) and data.count(old) == 1, "the element to patch was not found once"
    return data.replace(old, new)


def _dicom_two_row_values() -> bytes:
    """Rows stored with two values (VM 2): a header no scanner writes."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(_dicom(_film())))
    del ds.Rows
    ds.add_new(0x00280010, "US", [96, 2])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _dicom_truncated_in_pixels() -> bytes:
    data = _dicom(_film())
    return data[: len(data) - _film().size // 2]


def _dicom_ct(_tmp: Path) -> Source:
    shared = SHARED_DICOM / "udacity_test5.dcm"
    if shared.is_file():
        return shared
    return _dicom(_film(), Modality="CT")


# Pixels for the windowed DICOM cases: 12 bits stored in 16, HU = raw - 1024.
_HU_BLOCKS = (-1000, -60, 40, 1000)


def _windowed_raw(hu_blocks=_HU_BLOCKS) -> np.ndarray:
    raw = np.zeros((40, 16 * len(hu_blocks)), dtype=np.uint16)
    for i, hu in enumerate(hu_blocks):
        raw[:, 16 * i : 16 * (i + 1)] = hu + 1024
    return raw


def _dicom_windowed(hu_blocks=_HU_BLOCKS, **tags) -> bytes:
    settings = dict(
        BitsStored=12, HighBit=11, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    settings.update(tags)
    return _dicom(_windowed_raw(hu_blocks), **settings)


# --------------------------------------------------------------------------
# Assertions shared by the cases.
# --------------------------------------------------------------------------

_PYTHON_NOISE = re.compile(r"Traceback|File \"|object at 0x|\b\w*(Error|Exception)\b|\n|Errno")


def _assert_plain_message(message: str) -> None:
    """One plain sentence (or two) for a person: no traceback, repr or exception names."""
    assert 15 <= len(message) <= 400, message
    assert not _PYTHON_NOISE.search(message), f"message looks like a Python error: {message!r}"
    assert message[0].isupper(), f"message should start a sentence: {message!r}"
    assert message.rstrip().endswith("."), f"message should end a sentence: {message!r}"


def _refuse(source: Source) -> ImageReadError:
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        decode_image(source)
    elapsed = time.monotonic() - start
    assert type(info.value) is ImageReadError, f"wrong exception type {type(info.value).__name__}: {info.value}"
    assert elapsed < HANG_GUARD_S, f"refusal took {elapsed:.1f} s"
    return info.value


def _decode(source: Source) -> DecodedImage:
    start = time.monotonic()
    decoded = decode_image(source)
    elapsed = time.monotonic() - start
    assert elapsed < HANG_GUARD_S, f"decoding took {elapsed:.1f} s"
    return decoded


def _assert_valid_image(decoded: DecodedImage, shape: tuple[int, int]) -> None:
    pixels = decoded.pixels
    assert isinstance(pixels, np.ndarray)
    assert pixels.dtype == np.float32
    assert pixels.ndim == 2
    assert pixels.shape == shape
    assert np.isfinite(pixels).all()
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0


def _write(tmp_path: Path, case_id: str, data: bytes) -> Path:
    # A neutral extension: the decoder must go by content, not by the file name.
    path = tmp_path / f"{case_id}.dat"
    path.write_bytes(data)
    return path


def _materialise(made: Source, tmp_path: Path, case_id: str) -> Path:
    return made if isinstance(made, Path) else _write(tmp_path, case_id, made)


# --------------------------------------------------------------------------
# Bad input: refused with the right reason and a plain message.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    make: Callable[[Path], Source]
    reason: str
    mentions: tuple[str, ...] = ()  # words the message must contain (case-insensitive)


def _const(data: bytes) -> Callable[[Path], bytes]:
    return lambda _tmp: data


def _lazy(builder: Callable[[], bytes]) -> Callable[[Path], bytes]:
    return lambda _tmp: builder()


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images.png"
    folder.mkdir()
    return folder


def _fifo(tmp_path: Path) -> Path:
    """A named pipe: reading it would block forever if the decoder tried."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("named pipes need a POSIX system")
    path = tmp_path / "film.png"
    os.mkfifo(path)
    return path


_NOT_AN_IMAGE = ("PNG", "JPEG", "DICOM")

BAD: dict[str, Bad] = {
    # Not images at all.
    "empty": Bad(_const(b""), "empty", ("empty",)),
    "one_byte": Bad(_const(b"\x89"), "not_an_image", _NOT_AN_IMAGE),
    "random_bytes": Bad(
        _lazy(lambda: np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "not_an_image",
        _NOT_AN_IMAGE,
    ),
    "text_file": Bad(
        _const(b"Patient 0042, PA chest film, see attached.\nNo image here.\n"), "not_an_image", ("text",)
    ),
    "html_page": Bad(
        _const(b"<!DOCTYPE html>\n<html><head><title>Login</title></head><body>Session expired</body></html>\n"),
        "not_an_image",
        ("web page",),
    ),
    "pdf_header": Bad(
        _const(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"), "not_an_image", ("PDF",)
    ),
    "zip_archive": Bad(_lazy(_zip), "not_an_image", ("ZIP",)),
    # PNG cut short or damaged.
    "png_truncated_after_signature": Bad(_const(PNG_SIGNATURE), "truncated", ("incomplete",)),
    "png_truncated_mid_ihdr": Bad(_lazy(lambda: _png(_film())[:20]), "truncated", ("incomplete",)),
    "png_truncated_mid_idat": Bad(_lazy(_png_truncated_mid_idat), "truncated", ("incomplete",)),
    "png_missing_iend": Bad(_lazy(lambda: _png(_film())[:-12]), "truncated", ("incomplete",)),
    "png_bad_crc": Bad(_lazy(_png_bad_crc), "corrupt", ("damaged",)),
    "png_bad_idat": Bad(_lazy(_png_bad_idat), "corrupt", ("damaged",)),
    # JPEG cut short or damaged.
    "jpeg_truncated_half": Bad(_lazy(_jpeg_truncated_half), "truncated", ("incomplete",)),
    "jpeg_only_soi": Bad(_const(b"\xff\xd8"), "truncated", ("incomplete",)),
    "jpeg_corrupt_body": Bad(_lazy(_jpeg_corrupt_body), "corrupt", ("damaged",)),
    # Real images in formats cxr-assist does not read.
    "gif": Bad(_lazy(lambda: _save(Image.fromarray(_film()), "GIF")), "unsupported_format", ("GIF", "PNG")),
    "bmp": Bad(_lazy(lambda: _save(Image.fromarray(_film()), "BMP")), "unsupported_format", ("BMP", "PNG")),
    "tiff": Bad(_lazy(lambda: _save(Image.fromarray(_film()), "TIFF")), "unsupported_format", ("TIFF", "PNG")),
    "webp": Bad(_lazy(lambda: _save(Image.fromarray(_film()), "WEBP")), "unsupported_format", ("WEBP", "PNG")),
    "apng_3_frames": Bad(_lazy(_apng), "multi_frame", ("animated",)),
    # Decompression bombs: refused from the header alone.
    "png_bomb_100000x100000": Bad(_lazy(lambda: _png_bomb(100_000, 100_000)), "too_large", ("megapixels",)),
    "png_8000x8000_over_limit": Bad(_lazy(lambda: _png_bomb(8_000, 8_000)), "too_large", ("megapixels",)),
    "jpeg_header_65535x65535": Bad(_lazy(lambda: _jpeg_header_claiming(65_535, 65_535)), "too_large", ("megapixels",)),
    # DICOM.
    "dicom_no_pixel_data": Bad(_lazy(lambda: _dicom(_film(), PixelData=None)), "no_pixel_data", ("without an image",)),
    "dicom_3_frames": Bad(_lazy(lambda: _dicom(_film(), frames=3)), "multi_frame", ("3 frames",)),
    "dicom_ct": Bad(_dicom_ct, "wrong_modality", ("CT",)),
    "dicom_mr_generated": Bad(_lazy(lambda: _dicom(_film(), Modality="MR")), "wrong_modality", ("MR",)),
    "dicom_truncated_in_pixels": Bad(_lazy(_dicom_truncated_in_pixels), "truncated", ("incomplete",)),
    "dicom_jpeg_truncated_in_pixels": Bad(
        _lazy(lambda: _dicom_jpeg_compressed(_film())[:-2000]), "truncated", ("incomplete",)
    ),
    "dicom_preamble_then_garbage": Bad(
        _lazy(lambda: b"\0" * 128 + b"DICM" + np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()),
        "corrupt",
        ("DICOM", "damaged"),
    ),
    "dicom_frames_not_a_number": Bad(
        _lazy(lambda: _dicom_patched(_dicom(_film(), NumberOfFrames=1), b"IS\x02\x001 ", b"IS\x02\x00ab")),
        "corrupt",
        ("NumberOfFrames",),
    ),
    "dicom_rows_two_values": Bad(_lazy(_dicom_two_row_values), "corrupt", ("Rows",)),
    "dicom_rows_100000x100000": Bad(
        _lazy(lambda: _dicom_claiming_rows(100_000, 100_000)), "too_large", ("megapixels",)
    ),
    "dicom_rows_65535x65535": Bad(
        _lazy(lambda: _dicom(_film(8, 8), Rows=65_535, Columns=65_535)), "too_large", ("megapixels",)
    ),
    # File system.
    "path_does_not_exist": Bad(lambda tmp: tmp / "no_such_film.png", "missing", ("does not exist",)),
    "folder_not_file": Bad(_folder, "not_a_file", ("folder",)),
    "named_pipe_not_file": Bad(_fifo, "not_a_file", ("not a regular file",)),
}


@pytest.mark.parametrize("case_id", list(BAD))
def test_bad_input_is_refused(case_id: str, tmp_path: Path) -> None:
    case = BAD[case_id]
    source = _materialise(case.make(tmp_path), tmp_path, case_id)
    error = _refuse(source)
    assert error.reason == case.reason, f"{case_id}: reason {error.reason!r}, message: {error}"
    message = str(error)
    _assert_plain_message(message)
    for word in case.mentions:
        assert word.lower() in message.lower(), f"{case_id}: {word!r} missing from {message!r}"


_BOMBS = ["png_bomb_100000x100000", "png_8000x8000_over_limit", "jpeg_header_65535x65535", "dicom_rows_100000x100000"]


@pytest.mark.parametrize("case_id", _BOMBS)
def test_bomb_is_refused_from_the_header(case_id: str, tmp_path: Path) -> None:
    """No pixel buffer is allocated: the process does not grow and the refusal is immediate."""
    resource = pytest.importorskip("resource")  # POSIX only: peak memory of this process
    data = BAD[case_id].make(tmp_path)
    assert len(data) < 10_000  # the file itself is tiny: only its header is big
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.monotonic()
    with pytest.raises(ImageReadError) as info:
        decode_image(data)
    assert time.monotonic() - start < 2.0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100, f"decoding grew the process by {grown_mib:.0f} MiB"
    assert info.value.reason == "too_large"


def test_pixel_limit_is_the_documented_one() -> None:
    # The 8000 x 8000 case above is under Pillow's own bomb limit: it tests ours.
    assert 8_000 * 8_000 > MAX_PIXELS > 20_000_000


# --------------------------------------------------------------------------
# Unusual but valid input: decoded, 2-D float32 in [0, 1], warnings where due.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    make: Callable[[], bytes]
    shape: tuple[int, int]
    fmt: str
    warning: Optional[str] = None  # a word one warning must contain; None: no warning at all
    check: Optional[Callable[[DecodedImage], None]] = None


def _check_exact_8bit(expected: np.ndarray) -> Callable[[DecodedImage], None]:
    def check(decoded: DecodedImage) -> None:
        np.testing.assert_allclose(decoded.pixels, expected.astype(np.float32) / 255.0, atol=1e-6)

    return check


def _check_close_to(expected: np.ndarray, atol: float) -> Callable[[DecodedImage], None]:
    def check(decoded: DecodedImage) -> None:
        np.testing.assert_allclose(decoded.pixels, expected, atol=atol)

    return check


def _check_not_dark(decoded: DecodedImage) -> None:
    # 12 bits used of 16: divided by 65535 the film would be nearly black (mean ~0.03).
    assert 0.3 < float(decoded.pixels.mean()) < 0.7
    assert float(decoded.pixels.max()) > 0.95


def _check_rotated(decoded: DecodedImage) -> None:
    # Stored 48 x 80 with the bright block top-left; viewed after a 90 degree
    # clockwise turn it is 80 x 48 with the block top-right.
    pixels = decoded.pixels
    assert pixels[:16, -16:].mean() > 0.8
    assert pixels[:16, :16].mean() < 0.3
    assert decoded.original_shape == (48, 80)


def _check_transparent_black(decoded: DecodedImage) -> None:
    assert float(decoded.pixels[:10, :10].max()) == 0.0


def _check_binary(decoded: DecodedImage) -> None:
    assert set(np.unique(decoded.pixels).tolist()) <= {0.0, 1.0}


def _check_window(decoded: DecodedImage) -> None:
    # WC 40 / WW 400 (DICOM linear window): HU -1000 -> 0, -60 -> ~0.25, 40 -> ~0.5, 1000 -> 1.
    block = [float(decoded.pixels[:, 16 * i : 16 * (i + 1)].mean()) for i in range(len(_HU_BLOCKS))]
    assert block[0] == pytest.approx(0.0, abs=1e-6)
    assert block[1] == pytest.approx(0.2506, abs=0.01)
    assert block[2] == pytest.approx(0.5, abs=0.01)
    assert block[3] == pytest.approx(1.0, abs=1e-6)


def _check_window_not_stretched(decoded: DecodedImage) -> None:
    # All tissue inside the window (HU 0 .. 80 in a 400-wide window): it must
    # stay mid-gray as the window says, not be stretched to black and white.
    low, high = float(decoded.pixels.min()), float(decoded.pixels.max())
    assert low == pytest.approx(0.40, abs=0.01)
    assert high == pytest.approx(0.60, abs=0.01)


def _rgba_with_hole() -> bytes:
    rgba = np.dstack([_film()] * 3 + [np.full(_film().shape, 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    return _png(rgba)


def _palette(transparent: bool) -> bytes:
    palette_image = Image.fromarray(_film()).quantize(16)
    if not transparent:
        return _save(palette_image, "PNG")
    index = palette_image.getpixel((0, 0))
    # Every pixel with the top-left pixel's palette index becomes transparent.
    return _save(palette_image, "PNG", transparency=index)


def _check_palette_transparency(decoded: DecodedImage) -> None:
    assert float(decoded.pixels[0, 0]) == 0.0


_FILM = _film()
_RAMP12 = (np.linspace(0, 4095, 96 * 128).reshape(96, 128)).astype(np.uint16)

GOOD: dict[str, Good] = {
    "png_gray_8bit": Good(lambda: _png(_FILM), (96, 128), "PNG", check=_check_exact_8bit(_FILM)),
    "png_gray_16bit_12_used": Good(lambda: _png(_RAMP12), (96, 128), "PNG", check=_check_not_dark),
    "png_rgb_16bit": Good(_png_16bit_rgb, (40, 56), "PNG", check=_check_exact_8bit(_film(40, 56))),
    "png_rgb_gray_content": Good(
        lambda: _png(np.dstack([_FILM] * 3)), (96, 128), "PNG", check=_check_exact_8bit(_FILM)
    ),
    "png_rgb_colour_content": Good(
        lambda: _png(np.dstack([_FILM, 255 - _FILM, np.zeros_like(_FILM)])), (96, 128), "PNG", warning="colour"
    ),
    "png_rgba_transparent": Good(
        _rgba_with_hole, (96, 128), "PNG", warning="transparent", check=_check_transparent_black
    ),
    "png_la_opaque": Good(
        lambda: _png(np.dstack([_FILM, np.full_like(_FILM, 255)])), (96, 128), "PNG", check=_check_exact_8bit(_FILM)
    ),
    "png_palette": Good(lambda: _palette(False), (96, 128), "PNG"),
    "png_palette_transparent": Good(
        lambda: _palette(True), (96, 128), "PNG", warning="transparent", check=_check_palette_transparency
    ),
    "png_1bit": Good(lambda: _png(_FILM > 128), (96, 128), "PNG", warning="1 bit", check=_check_binary),
    "jpeg_gray": Good(lambda: _jpeg(_FILM), (96, 128), "JPEG", check=_check_close_to(_FILM / 255.0, 0.12)),
    "jpeg_rgb": Good(
        lambda: _jpeg(np.dstack([_FILM] * 3)), (96, 128), "JPEG", check=_check_close_to(_FILM / 255.0, 0.12)
    ),
    "jpeg_exif_orientation_6": Good(_jpeg_exif_orientation_6, (80, 48), "JPEG", check=_check_rotated),
    "jpeg_damaged_exif": Good(_jpeg_damaged_exif, (80, 48), "JPEG", warning="orientation"),
    "jpeg_progressive": Good(_jpeg_progressive, (96, 128), "JPEG", check=_check_close_to(_FILM / 255.0, 0.12)),
    "dicom_mono2_8bit": Good(
        lambda: _dicom(_FILM),
        (96, 128),
        "DICOM",
        check=_check_close_to((_FILM - float(_FILM.min())) / float(np.ptp(_FILM)), 1e-6),
    ),
    "dicom_jpeg_baseline": Good(
        lambda: _dicom_jpeg_compressed(_FILM),
        (96, 128),
        "DICOM",
        check=_check_close_to((_FILM - float(_FILM.min())) / float(np.ptp(_FILM)), 0.12),
    ),
    "dicom_16bit_rescale_window": Good(_dicom_windowed, (40, 64), "DICOM", check=_check_window),
    "dicom_window_wider_than_content": Good(
        lambda: _dicom_windowed((0, 80, 40, 20)), (40, 64), "DICOM", check=_check_window_not_stretched
    ),
    "dicom_window_width_zero": Good(lambda: _dicom_windowed(WindowWidth=0), (40, 64), "DICOM", warning="window"),
    "dicom_window_not_a_number": Good(
        lambda: _dicom_patched(_dicom_windowed(), b"DS\x04\x0040.0", b"DS\x04\x00abcd"),
        (40, 64),
        "DICOM",
        warning="window",
    ),
    "dicom_signed_16bit": Good(
        lambda: _dicom((_RAMP12.astype(np.int16) - 2048)), (96, 128), "DICOM", check=_check_not_dark
    ),
    "dicom_missing_view_position": Good(lambda: _dicom(_FILM, ViewPosition=None), (96, 128), "DICOM", warning="view"),
    "dicom_lateral_view": Good(lambda: _dicom(_FILM, ViewPosition="LL"), (96, 128), "DICOM", warning="'LL'"),
}


@pytest.mark.parametrize("case_id", list(GOOD))
def test_unusual_input_decodes(case_id: str, tmp_path: Path) -> None:
    case = GOOD[case_id]
    decoded = _decode(_write(tmp_path, case_id, case.make()))
    _assert_valid_image(decoded, case.shape)
    assert decoded.source_format == case.fmt
    if case.warning is None:
        assert decoded.warnings == (), decoded.warnings
    else:
        assert any(case.warning.lower() in note.lower() for note in decoded.warnings), decoded.warnings
        for note in decoded.warnings:
            _assert_plain_message(note)
    if case.check is not None:
        case.check(decoded)


def test_monochrome1_is_inverted_relative_to_monochrome2() -> None:
    mono2 = decode_image(_dicom(_FILM)).pixels
    mono1 = decode_image(_dicom(_FILM, PhotometricInterpretation="MONOCHROME1")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert np.corrcoef(mono1.ravel(), mono2.ravel())[0, 1] < -0.99


def test_monochrome1_with_window_is_inverted_too() -> None:
    mono2 = decode_image(_dicom_windowed()).pixels
    mono1 = decode_image(_dicom_windowed(PhotometricInterpretation="MONOCHROME1")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_dicom_metadata_is_read() -> None:
    decoded = decode_image(_dicom(_FILM))
    assert decoded.metadata["view_position"] == "PA"
    assert decoded.metadata["sex"] == "F"
    assert decoded.bit_depth == 8


# --------------------------------------------------------------------------
# A sweep of damaged copies: whatever the damage, only ImageReadError escapes.
# --------------------------------------------------------------------------

_SWEEP_BASES: dict[str, Callable[[], bytes]] = {
    "png": lambda: _png(_FILM),
    "jpeg": lambda: _jpeg(_FILM),
    "jpeg_progressive": _jpeg_progressive,
    "dicom": lambda: _dicom_windowed(),
    "dicom_jpeg": lambda: _dicom_jpeg_compressed(_FILM),
}


@pytest.mark.parametrize("base_id", list(_SWEEP_BASES))
def test_damaged_copies_are_refused_or_decoded_cleanly(base_id: str) -> None:
    """30 prefixes and 60 copies with 1-3 bytes overwritten (seeded).

    Every prefix that cuts into the image is refused: PNG ends with IEND, JPEG with EOI, and DICOM
    pixel data has a known length (or a closing delimiter). An overwritten
    byte that leaves the structure intact (a changed pixel value) may decode:
    JPEG and DICOM have no checksum. Anything else must be refused with
    ImageReadError and a plain message.
    """
    base = _SWEEP_BASES[base_id]()
    rng = np.random.default_rng(2024)
    # Up to 9 bytes before the end: a cut inside the 8-byte delimiter that
    # closes encapsulated DICOM pixel data loses nothing of the image.
    prefixes = [base[:cut] for cut in np.unique(np.linspace(1, len(base) - 9, 30).astype(int))]
    overwritten = []
    for _ in range(60):
        damaged = bytearray(base)
        for position in rng.integers(0, len(damaged), rng.integers(1, 4)):
            damaged[position] = int(rng.integers(0, 256))
        overwritten.append(bytes(damaged))
    for prefix in prefixes:
        error = _refuse(prefix)
        assert error.reason in {"truncated", "not_an_image", "no_pixel_data", "corrupt"}, (len(prefix), error.reason)
        _assert_plain_message(str(error))
    for variant in overwritten:
        try:
            decoded = _decode(variant)
        except ImageReadError as error:
            _assert_plain_message(str(error))
        else:
            _assert_valid_image(decoded, decoded.pixels.shape)


# --------------------------------------------------------------------------
# Bytes and path input behave the same.
# --------------------------------------------------------------------------

# Cases that are paths by nature (or a shared file) are left out.
_PATH_ONLY = {"path_does_not_exist", "folder_not_file", "named_pipe_not_file", "dicom_ct"}
_BYTES_CASES = [case_id for case_id in BAD if case_id not in _PATH_ONLY]


@pytest.mark.parametrize("case_id", _BYTES_CASES)
def test_bad_bytes_and_path_agree(case_id: str, tmp_path: Path) -> None:
    data = BAD[case_id].make(tmp_path)
    from_bytes = _refuse(data)
    from_path = _refuse(_write(tmp_path, case_id, data))
    assert from_bytes.reason == from_path.reason
    _assert_plain_message(str(from_bytes))


@pytest.mark.parametrize("case_id", list(GOOD))
def test_good_bytes_and_path_agree(case_id: str, tmp_path: Path) -> None:
    data = GOOD[case_id].make()
    from_bytes = decode_image(data)
    from_path = decode_image(_write(tmp_path, case_id, data))
    np.testing.assert_array_equal(from_bytes.pixels, from_path.pixels)
    assert from_bytes.warnings == from_path.warnings
    # bytearray and memoryview are accepted as well (uploads arrive in several forms).
    np.testing.assert_array_equal(decode_image(memoryview(bytearray(data))).pixels, from_bytes.pixels)


def test_name_is_used_in_messages() -> None:
    error = _refuse(b"")
    assert "uploaded" in str(error)
    with pytest.raises(ImageReadError) as info:
        decode_image(b"", name="film_017.png")
    assert "film_017.png" in str(info.value)
    _assert_plain_message(str(info.value))


# --------------------------------------------------------------------------
# The real DICOM files beside the checkout (see ../shared/dicom/PROVENANCE.md).
# --------------------------------------------------------------------------

# file -> (reason it is refused with, or None) and a word a warning must contain (or None: no warning).
SHARED_EXPECTED: dict[str, tuple[Optional[str], Optional[str]]] = {
    "udacity_test1.dcm": (None, None),
    "udacity_test2.dcm": (None, None),
    "udacity_test3.dcm": (None, None),
    "udacity_test4.dcm": (None, "RIBCAGE"),
    "udacity_test5.dcm": ("wrong_modality", None),
    "udacity_test6.dcm": (None, "'XX'"),
    "siim_example_monochrome2.dcm": (None, None),
    "txv_fake_monochrome1.dcm": (None, None),
}


def _shared(file_name: str) -> Path:
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"real DICOM files not found at {SHARED_DICOM}")
    path = SHARED_DICOM / file_name
    if not path.is_file():
        pytest.skip(f"{file_name} is not in {SHARED_DICOM}")
    return path


@pytest.mark.parametrize("file_name", list(SHARED_EXPECTED))
def test_shared_dicom_as_provenance_says(file_name: str) -> None:
    path = _shared(file_name)
    refused_with, warning = SHARED_EXPECTED[file_name]
    if refused_with is not None:
        error = _refuse(path)
        assert error.reason == refused_with
        _assert_plain_message(str(error))
        return
    decoded = _decode(path)
    _assert_valid_image(decoded, (1024, 1024))
    assert decoded.source_format == "DICOM"
    if warning is None:
        assert decoded.warnings == ()
    else:
        assert any(warning in note for note in decoded.warnings), decoded.warnings
    if file_name == "udacity_test4.dcm":
        assert any("body part" in note for note in decoded.warnings)
    if file_name == "udacity_test6.dcm":
        assert any("view" in note.lower() for note in decoded.warnings)
    # Bytes behave like the path.
    np.testing.assert_array_equal(decode_image(path.read_bytes()).pixels, decoded.pixels)


def test_shared_monochrome1_is_the_inverse_of_monochrome2() -> None:
    mono2 = decode_image(_shared("siim_example_monochrome2.dcm")).pixels
    mono1 = decode_image(_shared("txv_fake_monochrome1.dcm")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_every_shared_dicom_decodes_or_is_refused_cleanly() -> None:
    if not SHARED_DICOM.is_dir():
        pytest.skip(f"real DICOM files not found at {SHARED_DICOM}")
    files = sorted(SHARED_DICOM.glob("*.dcm"))
    assert files
    for path in files:
        try:
            decoded = _decode(path)
        except ImageReadError as error:
            _assert_plain_message(str(error))
        else:
            _assert_valid_image(decoded, decoded.pixels.shape)


# --------------------------------------------------------------------------
# preprocess() on corpus files.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["png_gray_16bit_12_used", "jpeg_exif_orientation_6", "dicom_16bit_rescale_window"])
def test_preprocess_valid_corpus_file(case_id: str, tmp_path: Path) -> None:
    config = PreprocessConfig(size=64)
    model_input = preprocess(_write(tmp_path, case_id, GOOD[case_id].make()), config)
    assert model_input.shape == (64, 64, 1)
    assert model_input.dtype == np.float32
    assert np.isfinite(model_input).all()


@pytest.mark.parametrize("case_id", ["png_truncated_mid_idat", "dicom_no_pixel_data", "png_bomb_100000x100000"])
def test_preprocess_refuses_bad_corpus_file(case_id: str, tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as info:
        preprocess(BAD[case_id].make(tmp_path), PreprocessConfig(size=64))
    assert info.value.reason == BAD[case_id].reason
