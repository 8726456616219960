"""What serving a bundle with bfloat16 trunks changes, against float32, on its validation split.

    python -m benchmarks.bfloat16 [--bundle models/default] [--data ../shared/nih] [--compute auto]

Both Predictors load the same bundle; only the trunks that
:mod:`cxr_core.serving.precision` puts in bfloat16 differ. On the bundle's
validation images (never its test images) it reports: mean AUROC of each,
the largest and mean change of a calibrated probability, how many calls at
the operating thresholds flip, how many images the learned input check
flags differently, T(IoBB)=0.1 on the validation images with expert boxes,
and the median time of one full analysis (14 probabilities + 14 maps) of a
demo image. Appends a section to ``--out`` (default
``benchmarks/BFLOAT16_RESULTS.md``) and writes the run's numbers beside it
(the same name with ``.json``), so a run with another ``--out`` leaves the
committed record alone.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _t_iobb(records) -> float:
    from cxr_core.evaluation import localization_accuracy

    table = localization_accuracy(records, thresholds=[0.1])
    return float(table["T(IoBB)=0.1"].mean()) if len(table) else float("nan")


def measure(bundle: str, data: str, *, compute: str, repeats: int) -> dict:
    from benchmarks.explain import median_seconds
    from benchmarks.resources import machine
    from cxr_core.data import NIHDataset
    from cxr_core.evaluation.metrics import auroc, macro_mean
    from cxr_core.jobs import localization_records
    from cxr_core.serving import Predictor
    from cxr_core.serving.precision import cpu_has_native_bfloat16

    reference = Predictor.from_bundle(bundle)
    fast = Predictor.from_bundle(bundle, compute=compute)
    dataset = NIHDataset(data)
    names = dataset.csv["image"]
    split = names.map(reference.bundle.splits.set_index("image")["split"]).to_numpy()
    rows = np.flatnonzero(split == "val")
    if not len(rows):
        raise SystemExit(f"error: {data} holds none of this bundle's validation images")
    paths = list(dataset.csv["path"].to_numpy()[rows])
    labels = dataset.labels[rows]
    image = sorted((ROOT / "data" / "demo" / "images").glob("*.png"))[0]
    result = {"bundle": bundle, "compute": compute, "members": fast.compute_dtypes,
              "cpu_native_bfloat16": cpu_has_native_bfloat16(), "machine": machine()["cpu"],
              "validation_images": int(len(rows)), "load_average_before": round(os.getloadavg()[0], 2)}
    outputs = {}
    for tag, predictor in (("float32", reference), ("served", fast)):
        started = time.perf_counter()
        raw, calibrated, flagged = [], [], []
        for path in paths:  # one image at a time, as the app sees them
            analysis = predictor.analyze(predictor.prepare(path, keep_image=False), explain=[])
            raw.append(list(analysis.raw_probabilities.values()))
            calibrated.append(list(analysis.probabilities.values()))
            flagged.append(bool(analysis.input_check and analysis.input_check["unlike_training"]))
        raw, calibrated, flagged = np.array(raw), np.array(calibrated), np.array(flagged)
        records = localization_records(predictor, dataset, names.iloc[rows])
        outputs[tag] = {"calibrated": calibrated, "flagged": flagged, "records": records}
        result[tag] = {"val_mean_auroc": round(macro_mean(auroc(labels, raw)), 4),
                       "val_t_iobb_0.1": round(_t_iobb(records), 4), "val_boxes": int(len(records)),
                       "analysis_seconds": round(median_seconds(lambda: predictor.analyze(image), repeats), 4),
                       "validation_seconds": round(time.perf_counter() - started, 1)}
    a, b = outputs["float32"]["calibrated"], outputs["served"]["calibrated"]
    thresholds = reference.thresholds
    result["max_abs_probability_change"] = round(float(np.abs(a - b).max()), 5)
    result["mean_abs_probability_change"] = round(float(np.abs(a - b).mean()), 6)
    result["calls_flipped"] = int(((a >= thresholds) != (b >= thresholds)).sum())
    result["calls"] = int(a.size)
    result["input_check_flips"] = int((outputs["float32"]["flagged"] != outputs["served"]["flagged"]).sum())
    result["speedup"] = round(result["float32"]["analysis_seconds"] / result["served"]["analysis_seconds"], 2)
    return result


def markdown(result: dict) -> str:
    f32, served = result["float32"], result["served"]
    members = ", ".join(f"{name} {dtype}" for name, dtype in result["members"].items())
    return "\n".join([
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{result['bundle']}`, compute `{result['compute']}`",
        "",
        f"Members: {members}. CPU with native bfloat16: {result['cpu_native_bfloat16']}. "
        f"{result['validation_images']} validation images, {f32['val_boxes']} expert boxes on them. "
        f"Load average before the run: {result['load_average_before']} (2 cores; times are wall clock).",
        "",
        "| | float32 (reference) | served |",
        "|---|---:|---:|",
        f"| full analysis of a demo image (median of the repeats) | {f32['analysis_seconds']:.3f} s | "
        f"{served['analysis_seconds']:.3f} s ({result['speedup']:.2f}x faster) |",
        f"| validation mean AUROC | {f32['val_mean_auroc']:.4f} | {served['val_mean_auroc']:.4f} |",
        f"| validation T(IoBB)=0.1 | {f32['val_t_iobb_0.1']:.3f} | {served['val_t_iobb_0.1']:.3f} |",
        "",
        f"Calibrated probabilities: largest change {result['max_abs_probability_change']:.4f}, mean "
        f"{result['mean_abs_probability_change']:.5f}; calls at the operating thresholds flipped: "
        f"{result['calls_flipped']} of {result['calls']}; images the learned input check flags "
        f"differently: {result['input_check_flips']}.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--data", default="../shared/nih", help="the bundle's own dataset (its validation split is used)")
    parser.add_argument("--compute", default="auto", choices=["auto", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "BFLOAT16_RESULTS.md"))
    args = parser.parse_args(argv)
    result = measure(args.bundle, args.data, compute=args.compute, repeats=args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text("# bfloat16 trunks against float32 (benchmarks/bfloat16.py)\n\n", encoding="utf-8")
    with out.open("a", encoding="utf-8") as fh:
        fh.write(markdown(result) + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
