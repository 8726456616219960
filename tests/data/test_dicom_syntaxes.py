"""Every DICOM transfer syntax cxr-assist reads, built from a real chest film.

The films come from ``../shared/dicom/udacity_test1.dcm`` through
``tests/dicom_sources.py`` (8-bit, 12-bit and signed 12-bit). Each syntax is
encoded here where an installed package can encode it (pydicom: deflated, big
endian, RLE; imagecodecs: JPEG 2000, and JPEG-LS of the full 8-bit film);
JPEG Lossless and JPEG extended were encoded once by DCMTK, JPEG-LS at the
films' own precision by CharLS (``tests/fixtures/dicom_generated``, README there).
Every compressed syntax but RLE and JPEG baseline is decoded by imagecodecs
(``cxr_core.data.dicom_codecs``). For each file:

- the stored values, as decoded by the plugin ``cxr_core.data.dicom.DECODERS``
  names and by every other installed plugin for that syntax, equal the
  original exactly (lossless) or within the stated bound (near-lossless
  JPEG-LS: the NEAR value; lossy JPEG 2000 and JPEG extended: a loose PSNR and
  largest-error bound);
- ``decode_image`` gives the same image as for the uncompressed original;
- a damaged compressed stream (cut short, header overwritten, bytes flipped)
  gives an ``ImageReadError`` with a plain message, or (flipped bits inside
  the entropy-coded data, which no JPEG checksum catches) a valid image; and
  hundreds of randomly damaged streams, decoded in a child process, never end
  that process.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from cxr_core.data import decode_image
from cxr_core.data import dicom as dicom_module
from cxr_core.errors import ImageReadError
from tests import dicom_sources
from tests.data.test_image_corpus import _assert_plain_message, _assert_valid_image

pydicom = pytest.importorskip("pydicom")
from pydicom import uid  # noqa: E402
from pydicom.encaps import encapsulate, generate_frames  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402

GENERATED = Path(__file__).resolve().parents[1] / "fixtures" / "dicom_generated"
VARIANTS = ("chest8", "chest12", "chest12_signed")
#: The NEAR parameter of the near-lossless JPEG-LS files: no stored value may move further.
JLS_NEAR = 2
#: Lossy files (JPEG 2000 at 50 dB, JPEG extended at quality 90): a loose bound.
LOSSY_MIN_PSNR_DB = 40.0
LOSSY_MAX_ERROR = 0.03  # of the full stored range
HANG_GUARD_S = 20.0


@pytest.fixture(autouse=True, scope="module")
def _source_film() -> None:
    if not dicom_sources.source_path().is_file():
        pytest.skip(f"the real chest film {dicom_sources.source_path()} is not beside the checkout")


# --------------------------------------------------------------------------
# The files.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One compressed (or re-encoded) film and what it must decode to."""

    variant: str
    syntax: str
    make: Callable[[], bytes]
    lossy: str = ""  # "" lossless, "near" near-lossless JPEG-LS, "lossy" JPEG 2000 / extended
    clip: bool = False  # the original was clipped to the range near-lossless JPEG-LS keeps signed

    def original(self) -> np.ndarray:
        pixels = dicom_sources.source_pixels(self.variant)
        if self.clip:  # JPEG-LS keeps no sign: NEAR may not carry -2048 over to +2047 (12-bit signed)
            pixels = np.clip(pixels, -2048 + JLS_NEAR, 2047 - JLS_NEAR).astype(pixels.dtype)
        return pixels

    def original_bytes(self) -> bytes:
        ds = dicom_sources.source_dataset(self.variant)
        ds.PixelData = self.original().tobytes()
        return _save(ds)


def _save(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _rewritten(variant: str, syntax: str) -> Callable[[], bytes]:
    """The uncompressed film written again with another native transfer syntax."""

    def make() -> bytes:
        ds = dicom_sources.source_dataset(variant)
        ds.file_meta.TransferSyntaxUID = syntax
        return _save(ds)

    return make


def _big_endian(variant: str, *, ow_8bit: bool = False) -> Callable[[], bytes]:
    """Explicit VR Big Endian: pydicom writes the values as given, so 16-bit words go in swapped.

    ``ow_8bit``: 8-bit pixels in an OW element, which big endian stores as swapped byte pairs.
    """

    def make() -> bytes:
        pixels = dicom_sources.source_pixels(variant)
        ds = dicom_sources.source_dataset(variant)
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRBigEndian
        if ow_8bit:
            ds["PixelData"].VR = "OW"
            ds.PixelData = pixels.reshape(-1, 2)[:, ::-1].tobytes()
        else:
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, little_endian=False, implicit_vr=False, force_encoding=True)
        return buffer.getvalue()

    return make


def _compressed(variant: str, syntax: str) -> Callable[[], bytes]:
    """The film compressed by pydicom's own encoder (``Dataset.compress``: RLE)."""

    def make() -> bytes:
        ds = dicom_sources.source_dataset(variant)
        ds.compress(syntax, dicom_sources.source_pixels(variant))
        return _save(ds)

    return make


def _generated(file_name: str) -> Callable[[], bytes]:
    return lambda: (GENERATED / file_name).read_bytes()


def _jpeg_2000(variant: str, psnr: float = 0) -> Callable[[], bytes]:
    """The film as JPEG 2000 by imagecodecs (OpenJPEG): reversible, or lossy at ``psnr`` dB."""

    def make() -> bytes:
        bits = 8 if variant == "chest8" else 12
        frame = dicom_sources.jpeg_2000_frame(dicom_sources.source_pixels(variant), bits, psnr)
        syntax = uid.JPEG2000 if psnr else uid.JPEG2000Lossless
        return dicom_sources.compressed_bytes(dicom_sources.source_dataset(variant), syntax, frame, lossy=bool(psnr))

    return make


def _cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for v in VARIANTS:
        cases[f"{v}-implicit-le"] = Case(v, uid.ImplicitVRLittleEndian, _rewritten(v, uid.ImplicitVRLittleEndian))
        cases[f"{v}-explicit-le"] = Case(v, uid.ExplicitVRLittleEndian, _rewritten(v, uid.ExplicitVRLittleEndian))
        cases[f"{v}-deflated"] = Case(
            v, uid.DeflatedExplicitVRLittleEndian, _rewritten(v, uid.DeflatedExplicitVRLittleEndian)
        )
        cases[f"{v}-big-endian"] = Case(v, uid.ExplicitVRBigEndian, _big_endian(v))
        cases[f"{v}-rle"] = Case(v, uid.RLELossless, _compressed(v, uid.RLELossless))
        cases[f"{v}-jpeg-ls-lossless"] = Case(v, uid.JPEGLSLossless, _generated(f"gen-{v}-jpeg-ls-lossless.dcm"))
        signed = v.endswith("signed")
        cases[f"{v}-jpeg-ls-near-{JLS_NEAR}"] = Case(
            v, uid.JPEGLSNearLossless, _generated(f"gen-{v}-jpeg-ls-near-{JLS_NEAR}.dcm"), lossy="near", clip=signed,
        )
        cases[f"{v}-jpeg2000-lossless"] = Case(v, uid.JPEG2000Lossless, _jpeg_2000(v))
        cases[f"{v}-jpeg2000-psnr50"] = Case(v, uid.JPEG2000, _jpeg_2000(v, psnr=50), lossy="lossy")
    cases["chest8-big-endian-8bit-ow"] = Case("chest8", uid.ExplicitVRBigEndian, _big_endian("chest8", ow_8bit=True))
    for file_name, syntax, lossy in (
        ("gen-chest8-jpeg-lossless-sv1.dcm", uid.JPEGLosslessSV1, ""),
        ("gen-chest12-jpeg-lossless-sv1.dcm", uid.JPEGLosslessSV1, ""),
        ("gen-chest12_signed-jpeg-lossless-sv1.dcm", uid.JPEGLosslessSV1, ""),
        ("gen-chest12-jpeg-lossless-p14-sv6.dcm", uid.JPEGLossless, ""),
        ("gen-chest12_signed-jpeg-lossless-p14-sv7.dcm", uid.JPEGLossless, ""),
        ("gen-chest12-jpeg-extended-q90.dcm", uid.JPEGExtended12Bit, "lossy"),
    ):
        variant = file_name.removeprefix("gen-").split("-jpeg")[0]
        cases[file_name.removeprefix("gen-").removesuffix(".dcm")] = Case(variant, syntax, _generated(file_name), lossy)
    return cases


CASES = _cases()
_BUILT: dict[str, bytes] = {}


def _built(case_id: str) -> bytes:
    if case_id not in _BUILT:
        _BUILT[case_id] = CASES[case_id].make()
    return _BUILT[case_id]


def _read(data: bytes):
    return pydicom.dcmread(io.BytesIO(data))


def _psnr(decoded: np.ndarray, original: np.ndarray, bits: int) -> float:
    error = decoded.astype(np.float64) - original.astype(np.float64)
    mse = float(np.mean(error**2))
    return float("inf") if mse == 0 else 10 * np.log10((2**bits - 1) ** 2 / mse)


def _check_stored_values(case: Case, decoded: np.ndarray, bits: int) -> None:
    original = case.original()
    assert decoded.shape == original.shape
    assert decoded.dtype.newbyteorder("=") == original.dtype  # big endian files decode to '>u2'
    error = np.abs(decoded.astype(np.int64) - original.astype(np.int64))
    if case.lossy == "":
        np.testing.assert_array_equal(decoded, original)
    elif case.lossy == "near":
        assert int(error.max()) <= JLS_NEAR
        assert int(error.max()) > 0  # it is really the near-lossless file
    else:
        assert _psnr(decoded, original, bits) >= LOSSY_MIN_PSNR_DB
        assert float(error.max()) <= LOSSY_MAX_ERROR * (2**bits - 1)


# --------------------------------------------------------------------------
# Coverage, the files themselves, and their decoding.
# --------------------------------------------------------------------------


def test_every_supported_syntax_is_tested() -> None:
    tested = {case.syntax for case in CASES.values()} | {uid.JPEGBaseline8Bit}  # baseline: the real SIIM file below
    assert tested == set(dicom_module.DECODERS)
    assert {uid.JPEGLosslessSV1, uid.JPEGLossless, uid.JPEGLSLossless, uid.JPEGLSNearLossless} <= tested


def test_generated_files_are_small_and_documented() -> None:
    readme = (GENERATED / "README.md").read_text(encoding="utf-8")
    files = sorted(GENERATED.glob("*.dcm"))
    assert files
    for path in files:
        assert path.name.startswith("gen-"), "generated files are named as such"
        assert path.stat().st_size < 300_000, path.name
        assert path.name in readme, f"{path.name} is not described in the README"


@pytest.mark.parametrize("case_id", list(CASES))
def test_file_is_stored_with_its_syntax(case_id: str) -> None:
    case = CASES[case_id]
    ds = _read(_built(case_id))
    assert ds.file_meta.TransferSyntaxUID == case.syntax
    assert (ds.Rows, ds.Columns) == case.original().shape
    assert int(ds.PixelRepresentation) == int(case.original().dtype.kind == "i")
    if case.syntax.is_encapsulated:  # compressed frames in items, not native bytes relabelled
        assert ds.PixelData[:4] == b"\xfe\xff\x00\xe0"
        assert len(_frame(_built(case_id))) != case.original().nbytes


@pytest.mark.parametrize("case_id", list(CASES))
def test_stored_values_decode_with_every_installed_plugin(case_id: str) -> None:
    """The chosen plugin, and every other installed one (an independent decoder for most syntaxes)."""
    case = CASES[case_id]
    data = _built(case_id)
    bits = int(_read(data).BitsStored)
    chosen = dicom_module.DECODERS[case.syntax]
    plugins = [""] if chosen is None else sorted(get_decoder(case.syntax).available_plugins)
    if chosen is not None:
        assert chosen in plugins, f"{chosen} is not installed (requirements.txt)"
    for plugin in plugins:
        if plugin == "pillow" and case.syntax == uid.JPEGExtended12Bit and bits > 8:
            continue  # Pillow reads 8-bit JPEG only
        ds = _read(data)
        ds.pixel_array_options(decoding_plugin=plugin)
        _check_stored_values(case, ds.pixel_array, bits)


@pytest.mark.parametrize("case_id", list(CASES))
def test_decode_image_matches_the_uncompressed_original(case_id: str) -> None:
    case = CASES[case_id]
    start = time.monotonic()
    decoded = decode_image(_built(case_id), name="film.dcm")
    assert time.monotonic() - start < HANG_GUARD_S
    reference = decode_image(case.original_bytes(), name="film.dcm")
    _assert_valid_image(decoded, case.original().shape)
    assert decoded.source_format == "DICOM"
    assert decoded.bit_depth == reference.bit_depth == (8 if case.variant == "chest8" else 12)
    assert decoded.original_shape == reference.original_shape
    assert decoded.warnings == reference.warnings
    assert decoded.metadata == reference.metadata
    if case.lossy == "":
        np.testing.assert_array_equal(decoded.pixels, reference.pixels)
    else:
        # The film has no window, so decode_image stretches its own range: the
        # bound on stored values, over that range, bounds the displayed image.
        original = case.original().astype(np.float64)
        span = float(original.max() - original.min())
        allowed = JLS_NEAR if case.lossy == "near" else LOSSY_MAX_ERROR * (2 ** reference.bit_depth - 1)
        assert float(np.abs(decoded.pixels - reference.pixels).max()) <= 3 * allowed / span + 1e-6


def test_jpeg_baseline_is_decoded_by_pillow_as_before() -> None:
    """The real SIIM file (JPEG baseline): the same pixels as Pillow gives the embedded JPEG."""
    from PIL import Image

    path = dicom_sources.SHARED_DICOM / "siim_example_monochrome2.dcm"
    if not path.is_file():
        pytest.skip(f"{path} is not beside the checkout")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGBaseline8Bit
    assert dicom_module.DECODERS[uid.JPEGBaseline8Bit] == "pillow"
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    pillow = np.asarray(Image.open(io.BytesIO(frame)))
    decoded = decode_image(path)
    _assert_valid_image(decoded, pillow.shape)
    np.testing.assert_array_equal(decoded.pixels, (pillow.astype(np.float32) - pillow.min()) / np.float32(pillow.max() - pillow.min()))


def test_full_size_film_as_jpeg_ls_decodes_exactly() -> None:
    """The whole 1024 x 1024 film (the size the app sees), losslessly compressed."""
    original = dicom_sources.source_path().read_bytes()
    frame = dicom_sources.jpeg_ls_frame(np.asarray(_read(original).pixel_array, dtype=np.uint8))
    compressed = dicom_sources.compressed_bytes(_read(original), uid.JPEGLSLossless, frame)
    np.testing.assert_array_equal(decode_image(compressed).pixels, decode_image(original).pixels)


@pytest.mark.parametrize("case_id", ["chest12-jpeg-lossless-sv1", "chest12-jpeg-ls-lossless", "chest12-jpeg2000-lossless"])
def test_frame_split_into_fragments_decodes_exactly(case_id: str) -> None:
    """PACS often store one frame as several fragments, with a basic offset table."""
    data = _built(case_id)
    ds = _read(data)
    ds.PixelData = encapsulate([_frame(data)], fragments_per_frame=5, has_bot=True)
    split = _save(ds)
    assert len(list(pydicom.encaps.generate_fragments(_read(split).PixelData))) == 6  # the table, then 5
    np.testing.assert_array_equal(_read(split).pixel_array, CASES[case_id].original())
    np.testing.assert_array_equal(decode_image(split).pixels, decode_image(data).pixels)


# --------------------------------------------------------------------------
# Damaged compressed streams.
# --------------------------------------------------------------------------

#: One case per compressed syntax, 8-bit and 16-bit.
DAMAGE_CASES = [
    case_id
    for case_id, case in CASES.items()
    if case.syntax.is_encapsulated and (case.variant == "chest12" or case_id.startswith("chest8-jpeg-lossless"))
]


def _with_frame(data: bytes, frame: bytes) -> bytes:
    """The file with its one encapsulated frame replaced (the DICOM structure itself stays whole)."""
    ds = _read(data)
    if len(frame) % 2:
        frame += b"\x00"
    ds.PixelData = encapsulate([frame])
    return _save(ds)


def _frame(data: bytes) -> bytes:
    return next(generate_frames(_read(data).PixelData, number_of_frames=1))


def _refused(data: bytes) -> ImageReadError:
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        decode_image(data)
    assert time.monotonic() - start < HANG_GUARD_S
    assert type(info.value) is ImageReadError, f"{type(info.value).__name__}: {info.value}"
    _assert_plain_message(str(info.value))
    return info.value


def test_damage_cases_cover_every_compressed_syntax() -> None:
    covered = {CASES[case_id].syntax for case_id in DAMAGE_CASES}
    assert covered == {syntax for syntax in dicom_module.DECODERS if syntax.is_encapsulated} - {uid.JPEGBaseline8Bit}


@pytest.mark.parametrize("case_id", DAMAGE_CASES)
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -2])
def test_cut_frame_is_refused(case_id: str, keep: float) -> None:
    frame = _frame(_built(case_id))
    cut = frame[:keep] if isinstance(keep, int) else frame[: int(len(frame) * keep)]
    error = _refused(_with_frame(_built(case_id), cut))
    assert error.reason in {"truncated", "corrupt"}


@pytest.mark.parametrize("case_id", DAMAGE_CASES)
def test_overwritten_frame_header_is_refused(case_id: str) -> None:
    frame = _frame(_built(case_id))
    error = _refused(_with_frame(_built(case_id), b"\x00" * 16 + frame[16:]))
    assert error.reason == "corrupt"


@pytest.mark.parametrize("case_id", DAMAGE_CASES)
def test_flipped_bytes_are_refused_or_decoded_cleanly(case_id: str) -> None:
    """Bit flips inside the compressed data: a plain refusal, or (no checksum to catch them) a valid image."""
    frame = _frame(_built(case_id))
    shape = CASES[case_id].original().shape
    rng = random.Random(case_id)
    for _ in range(6):
        damaged = bytearray(frame)
        for _ in range(rng.randrange(1, 30)):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        data = _with_frame(_built(case_id), bytes(damaged))
        start = time.monotonic()
        try:
            decoded = decode_image(data)
        except ImageReadError as error:
            _assert_plain_message(str(error))
        else:
            _assert_valid_image(decoded, shape)
        assert time.monotonic() - start < HANG_GUARD_S


@pytest.mark.parametrize("case_id", ["chest8-jpeg2000-lossless", "chest12-jpeg-lossless-sv1", "chest12-jpeg-ls-lossless"])
def test_frame_header_stating_another_size_is_refused_before_decoding(case_id: str) -> None:
    """A damaged size field: refused from the header at once, not after the codec decodes a giant image.

    Found by fuzzing: three flipped bits made a 512 x 512 JPEG 2000 film state
    2,097,664 rows; OpenJPEG then spent 32 s (210 s on a loaded machine) and
    1 GB decoding it before the decoded size could be checked.
    """
    frame = bytearray(_frame(_built(case_id)))
    if CASES[case_id].syntax == uid.JPEG2000Lossless:
        assert frame[:4] == b"\xff\x4f\xff\x51"
        frame[12:16] = (2_097_664).to_bytes(4, "big")  # Ysiz
    else:
        marker = next(i for i in range(2, 200) if frame[i] == 0xFF and frame[i + 1] in (0xC3, 0xF7))
        frame[marker + 5 : marker + 7] = (60_000).to_bytes(2, "big")  # the frame header's number of lines
    start = time.monotonic()
    error = _refused(_with_frame(_built(case_id), bytes(frame)))
    assert time.monotonic() - start < 2.0
    assert error.reason == "corrupt"


#: Randomly damaged streams per compressed case in the child-process test.
RANDOM_DAMAGES = 40
_DAMAGE_CHILD = """
import io, random, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import pydicom
from pydicom.encaps import encapsulate, generate_frames
from cxr_core.data import decode_image
from cxr_core.errors import ImageReadError

refused = decoded = 0
for path in sorted(Path(sys.argv[1]).glob("*.dcm")):
    data = path.read_bytes()
    frame = next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1))
    rng = random.Random(path.name)
    for _ in range(int(sys.argv[2])):
        damaged = bytearray(frame)
        how = rng.randrange(3)
        if how == 0:  # bytes overwritten anywhere
            for _ in range(rng.randrange(1, 40)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif how == 1:  # the header: markers, sizes, tables
            for _ in range(rng.randrange(1, 10)):
                damaged[rng.randrange(min(len(damaged), 300))] ^= 1 << rng.randrange(8)
        else:  # cut, then bytes overwritten
            damaged = damaged[: rng.randrange(2, len(damaged))]
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PixelData = encapsulate([bytes(damaged) + b"\\0" * (len(damaged) % 2)])
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        try:
            decode_image(buffer.getvalue(), name="film.dcm")
            decoded += 1
        except ImageReadError:
            refused += 1
print(f"refused {refused} decoded {decoded}")
"""


def test_random_damage_never_ends_the_process(tmp_path: Path) -> None:
    """imagecodecs' C decoders on hundreds of damaged streams, in a child process: a refusal or an image, never an abort.

    An abort (a C library calling abort(), a segmentation fault) would end the
    app's server with every session in it; here it ends only the child, and
    the test says which signal did it. Every damaged file gives ImageReadError
    or an image (other exceptions fail the child with a traceback).
    """
    for case_id in DAMAGE_CASES:
        (tmp_path / f"{case_id}.dcm").write_bytes(_built(case_id))
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", _DAMAGE_CHILD, str(tmp_path), str(RANDOM_DAMAGES)],
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert child.returncode >= 0, f"the decoding process was killed by signal {-child.returncode}: {child.stderr[-2000:]}"
    assert child.returncode == 0, child.stderr[-3000:]
    refused, decoded = (int(word) for word in child.stdout.split()[1::2])
    assert refused + decoded == RANDOM_DAMAGES * len(DAMAGE_CASES)
    assert refused > 0


def test_compressed_syntaxes_need_no_gpl_decoder() -> None:
    """JPEG extended and lossless, JPEG-LS and JPEG 2000 go through imagecodecs (BSD), not pylibjpeg-libjpeg (GPL)."""
    compressed = {syntax for syntax in dicom_module.DECODERS if syntax.is_encapsulated}
    assert {dicom_module.DECODERS[s] for s in compressed - {uid.RLELossless, uid.JPEGBaseline8Bit}} == {"imagecodecs"}
    assert not {"pylibjpeg", "pyjpegls", "gdcm"} & set(dicom_module.DECODERS.values())


def test_native_pixels_labelled_as_compressed_are_refused() -> None:
    """Wrongly labelled exports: uncompressed bytes under an RLE label, or as a JPEG Lossless frame."""
    native = _rewritten("chest12", uid.ExplicitVRLittleEndian)()
    explicit, rle = uid.ExplicitVRLittleEndian.encode() + b"\x00", uid.RLELossless.encode() + b"\x00"
    assert len(explicit) == len(rle) and native.count(explicit) == 1
    assert _refused(native.replace(explicit, rle)).reason == "corrupt"
    raw = dicom_sources.source_pixels("chest12").tobytes()
    assert _refused(_with_frame(_built("chest12-jpeg-lossless-sv1"), raw)).reason == "corrupt"


# --------------------------------------------------------------------------
# Syntaxes and decoders that are not there.
# --------------------------------------------------------------------------


def test_unsupported_syntax_names_what_is_supported() -> None:
    """An MPEG-2 video label: the message says what it is stored as and lists what cxr-assist reads."""
    ds = _read(_built("chest12-jpeg2000-lossless"))
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    error = _refused(_save(ds))
    assert error.reason == "unsupported_format"
    message = str(error)
    assert "MPEG2" in message
    for word in ("RLE", "JPEG-LS", "JPEG 2000", "lossless", "big endian", "deflated"):
        assert word in message, word


class _NoPlugins:
    available_plugins: tuple[str, ...] = ()


def test_missing_decoder_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom_module, "get_decoder", lambda syntax: _NoPlugins())
    error = _refused(_built("chest12-jpeg-lossless-sv1"))
    assert error.reason == "unsupported_format"
    assert "imagecodecs" in str(error) and "not installed" in str(error)


def test_decoder_panic_is_a_plain_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Rust decoder's PanicException derives from BaseException, not Exception: still a plain refusal."""
    PanicException = type("PanicException", (BaseException,), {})

    def panic(self):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    error = _refused(_built("chest12-rle"))
    assert error.reason == "corrupt"


def test_keyboard_interrupt_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(interrupt))
    with pytest.raises(KeyboardInterrupt):
        decode_image(_built("chest12-rle"))
