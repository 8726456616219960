"""Decode time of compressed DICOM: imagecodecs against the pydicom plugins it replaced.

    python -m benchmarks.dicom_decode [--repeats 15] [--out benchmarks/DICOM_DECODE_RESULTS.md]

The files are the test films of ``tests/fixtures/test_dicom_syntaxes.py``: the
committed ``tests/fixtures/dicom_generated`` files (JPEG lossless and extended by
DCMTK, JPEG-LS by CharLS; 512 x 512 8-bit or 256 x 256 12-bit) and, made here,
JPEG 2000 of the same films and the full 1,024 x 1,024 film
(``../shared/dicom/udacity_test1.dcm``) as JPEG-LS and JPEG 2000 lossless.
Each file's pixel data is decoded by pydicom with one plugin named
(``Decoder.as_array``: the codec plus pydicom's reshaping and sign
correction), alternating the plugins, and the median of ``--repeats`` runs is
reported. Plugins that are not installed are reported as such: the old ones
(pylibjpeg with pylibjpeg-libjpeg and pylibjpeg-openjpeg; pyjpegls) are not in
requirements.txt any more (``pip install pylibjpeg pylibjpeg-libjpeg
pylibjpeg-openjpeg pyjpegls`` in a scratch environment to compare). Writes
``--out`` and the numbers beside it (same name, ``.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "tests" / "fixtures" / "dicom_generated"
#: The plugin each syntax was decoded with before imagecodecs (cxr_core.data.dicom.DECODERS until issue 23).
OLD_PLUGINS = {"JPEG-LS": "pyjpegls"}  # every other compressed syntax: "pylibjpeg"


def films() -> dict[str, bytes]:
    """name -> DICOM file bytes."""
    import numpy as np
    import pydicom
    from pydicom import uid

    from tests import dicom_sources

    files = {path.stem.removeprefix("gen-"): path.read_bytes() for path in sorted(GENERATED.glob("gen-*.dcm"))}
    for variant in ("chest8", "chest12", "chest12_signed"):
        pixels = dicom_sources.source_pixels(variant)
        bits = 8 if variant == "chest8" else 12
        frame = dicom_sources.jpeg_2000_frame(pixels, bits)
        files[f"{variant}-jpeg2000-lossless"] = dicom_sources.compressed_bytes(
            dicom_sources.source_dataset(variant), uid.JPEG2000Lossless, frame
        )
    full = pydicom.dcmread(dicom_sources.source_path())
    film = np.asarray(full.pixel_array, dtype=np.uint8)
    files["full1024-8bit-jpeg-ls-lossless"] = dicom_sources.compressed_bytes(
        pydicom.dcmread(dicom_sources.source_path()), uid.JPEGLSLossless, dicom_sources.jpeg_ls_frame(film)
    )
    files["full1024-8bit-jpeg2000-lossless"] = dicom_sources.compressed_bytes(
        pydicom.dcmread(dicom_sources.source_path()), uid.JPEG2000Lossless, dicom_sources.jpeg_2000_frame(film, 8)
    )
    return files


def _old_plugin(syntax) -> str:
    return next((plugin for key, plugin in OLD_PLUGINS.items() if key in syntax.name), "pylibjpeg")


def measure(repeats: int) -> dict:
    import numpy as np
    import pydicom
    from pydicom.pixels import get_decoder

    from benchmarks.resources import machine
    from cxr_core.data import dicom  # registers the imagecodecs plugin

    rows = []
    for name, data in films().items():
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = ds.file_meta.TransferSyntaxUID
        decoder = get_decoder(syntax)
        plugins = [dicom.DECODERS[syntax], _old_plugin(syntax)]
        installed = [plugin for plugin in plugins if plugin in decoder.available_plugins]
        times: dict[str, list[float]] = {plugin: [] for plugin in installed}
        arrays = {plugin: decoder.as_array(ds, decoding_plugin=plugin)[0] for plugin in installed}  # warm-up
        for _ in range(repeats):
            for plugin in installed:
                start = time.perf_counter()
                decoder.as_array(ds, decoding_plugin=plugin)
                times[plugin].append(time.perf_counter() - start)
        values = [array.astype(np.int64) for array in arrays.values()]
        largest = int(np.abs(values[0] - values[1]).max()) if len(values) == 2 else None
        row = {"file": name, "syntax": syntax.name, "shape": list(ds.pixel_array.shape), "bits_stored": int(ds.BitsStored),
               "bytes": len(data), "largest_difference": largest}
        for role, plugin in zip(("new", "old"), plugins):
            row[role] = plugin
            row[f"{role}_ms"] = round(1000 * statistics.median(times[plugin]), 3) if plugin in times else None
        rows.append(row)
        print(row, flush=True)
    import imagecodecs

    versions = {"imagecodecs": imagecodecs.__version__, "pydicom": pydicom.__version__}
    for package in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = "not installed"
    return {"rows": rows, "repeats": repeats, "versions": versions, "machine": machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def report(result: dict) -> str:
    lines = [
        "# DICOM decode time: imagecodecs against the plugins it replaced",
        "",
        f"`python -m benchmarks.dicom_decode --repeats {result['repeats']}`; median of {result['repeats']} decodes of the "
        "pixel data by pydicom with one plugin named (codec plus pydicom's reshaping and sign correction), "
        f"plugins alternated. Load average {result['load_average']} on {result['machine']['cores']} cores "
        f"({result['machine']['cpu']}), shared with other work. Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        "| file | transfer syntax | size | bits | imagecodecs ms | before ms (plugin) | ratio | largest pixel difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        new, old = row["new_ms"], row["old_ms"]
        ratio = f"{old / new:.2f}x" if new and old else "-"
        old_text = f"{old:.2f} ({row['old']})" if old is not None else f"not installed ({row['old']})"
        lines.append(
            f"| {row['file']} | {row['syntax']} | {row['shape'][0]} x {row['shape'][1]} | {row['bits_stored']} | "
            f"{new:.2f} | {old_text} | {ratio} | {'-' if row['largest_difference'] is None else row['largest_difference']} |"
        )
    lines += ["", "ratio: time before / time with imagecodecs (above 1: imagecodecs is faster). Largest pixel "
              "difference: between the two plugins' stored values (0: identical; a lossy JPEG extended file may "
              "differ by rounding in the inverse DCT, both within the test's bound)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "DICOM_DECODE_RESULTS.md"))
    args = parser.parse_args(argv)
    result = measure(args.repeats)
    out = Path(args.out)
    out.write_text(report(result), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(report(result))


if __name__ == "__main__":
    main()
