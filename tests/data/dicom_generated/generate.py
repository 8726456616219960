"""Write the DICOM files in this folder: chest films compressed by DCMTK's dcmcjpeg.

No Python package installed by requirements.txt can *encode* JPEG Lossless
(process 14) or JPEG extended, so these few files were made once with DCMTK
and are committed. Their uncompressed inputs are rebuilt by
``tests/dicom_sources.py`` from ``../shared/dicom/udacity_test1.dcm``, which is
how the tests know the exact pixels each file must decode to.

Run from the repository root (needs ``dcmcjpeg``: ``apt-get install dcmtk``):

    python tests/data/dicom_generated/generate.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.dicom_sources import source_bytes  # noqa: E402

#: output file -> (source variant, dcmcjpeg options)
FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gen-chest8-jpeg-lossless-sv1.dcm": ("chest8", ("+e1",)),
    "gen-chest12-jpeg-lossless-sv1.dcm": ("chest12", ("+e1",)),
    "gen-chest12_signed-jpeg-lossless-sv1.dcm": ("chest12_signed", ("+e1",)),
    "gen-chest12-jpeg-lossless-p14-sv6.dcm": ("chest12", ("+el", "+sv", "6")),
    "gen-chest12_signed-jpeg-lossless-p14-sv7.dcm": ("chest12_signed", ("+el", "+sv", "7")),
    "gen-chest12-jpeg-extended-q90.dcm": ("chest12", ("+ee", "+q", "90")),
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for out, (variant, options) in FILES.items():
            source = Path(tmp) / f"{variant}.dcm"
            source.write_bytes(source_bytes(variant))
            command = ["dcmcjpeg", *options, str(source), str(HERE / out)]
            print(" ".join(command[:-2]), f"{variant}.dcm", out)
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
