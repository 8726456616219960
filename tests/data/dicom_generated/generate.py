"""Write the DICOM files in this folder: chest films compressed by DCMTK and by CharLS.

No Python package installed by requirements.txt can *encode* JPEG Lossless
(process 14) or JPEG extended, nor JPEG-LS at the film's own 12-bit precision
(imagecodecs writes JPEG-LS at 8 or 16 bits), so these few files were made
once and are committed: the JPEG files with DCMTK's dcmcjpeg, the JPEG-LS
files with pydicom's pyjpegls encoder (CharLS; DCMTK's dcmcjpls writes
lossless 12-bit films at 16-bit precision and refuses signed near-lossless).
Their uncompressed inputs are rebuilt by ``tests/dicom_sources.py`` from
``../shared/dicom/udacity_test1.dcm``, which is how the tests know the exact
pixels each file must decode to.

Run from the repository root; the JPEG files need ``dcmcjpeg``
(``apt-get install dcmtk``), the JPEG-LS files ``pip install pyjpegls``
(MIT; not in requirements.txt, cxr-assist decodes with imagecodecs):

    python tests/data/dicom_generated/generate.py          # both
    python tests/data/dicom_generated/generate.py jpeg-ls  # the JPEG-LS files only
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.dicom_sources import source_bytes, source_dataset, source_pixels  # noqa: E402

#: output file -> (source variant, dcmcjpeg options)
FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gen-chest8-jpeg-lossless-sv1.dcm": ("chest8", ("+e1",)),
    "gen-chest12-jpeg-lossless-sv1.dcm": ("chest12", ("+e1",)),
    "gen-chest12_signed-jpeg-lossless-sv1.dcm": ("chest12_signed", ("+e1",)),
    "gen-chest12-jpeg-lossless-p14-sv6.dcm": ("chest12", ("+el", "+sv", "6")),
    "gen-chest12_signed-jpeg-lossless-p14-sv7.dcm": ("chest12_signed", ("+el", "+sv", "7")),
    "gen-chest12-jpeg-extended-q90.dcm": ("chest12", ("+ee", "+q", "90")),
}

#: The NEAR value of the near-lossless JPEG-LS files (``JLS_NEAR`` in tests/test_dicom_syntaxes.py).
JLS_NEAR = 2
VARIANTS = ("chest8", "chest12", "chest12_signed")
#: output file -> (source variant, NEAR): JPEG-LS lossless (NEAR 0) and near-lossless.
JPEG_LS_FILES: dict[str, tuple[str, int]] = {
    **{f"gen-{variant}-jpeg-ls-lossless.dcm": (variant, 0) for variant in VARIANTS},
    **{f"gen-{variant}-jpeg-ls-near-{JLS_NEAR}.dcm": (variant, JLS_NEAR) for variant in VARIANTS},
}


def jpeg_ls_original(variant: str, near: int):
    """The stored values a JPEG-LS file compresses: signed films lose ``near`` at both ends when lossy.

    JPEG-LS keeps no sign: a 12-bit signed value is coded as its 12-bit
    pattern, in which +2047 and -2048 are neighbours, so a near-lossless error
    could carry one over to the other.
    """
    import numpy as np

    pixels = source_pixels(variant)
    if near and pixels.dtype.kind == "i":
        pixels = np.clip(pixels, -2048 + near, 2047 - near).astype(pixels.dtype)
    return pixels


def write_jpeg_ls() -> None:
    """The JPEG-LS files, by pydicom's pyjpegls encoder plugin (CharLS)."""
    from pydicom import uid

    for out, (variant, near) in JPEG_LS_FILES.items():
        ds = source_dataset(variant)
        syntax = uid.JPEGLSNearLossless if near else uid.JPEGLSLossless
        options = {"jls_error": near} if near else {}
        # A lossy copy is a new instance (new SOP Instance UID); a lossless one keeps the film's.
        ds.compress(
            syntax, jpeg_ls_original(variant, near), encoding_plugin="pyjpegls", generate_instance_uid=bool(near), **options
        )
        print(f"pyjpegls {syntax.name} NEAR={near}", f"{variant}.dcm", out)
        ds.save_as(HERE / out, enforce_file_format=True)


def main(which: str = "") -> None:
    if which in ("", "jpeg-ls"):
        write_jpeg_ls()
    if which == "jpeg-ls":
        return
    with tempfile.TemporaryDirectory() as tmp:
        for out, (variant, options) in FILES.items():
            source = Path(tmp) / f"{variant}.dcm"
            source.write_bytes(source_bytes(variant))
            command = ["dcmcjpeg", *options, str(source), str(HERE / out)]
            print(" ".join(command[:-2]), f"{variant}.dcm", out)
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
