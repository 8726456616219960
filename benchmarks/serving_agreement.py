"""How closely the app's LiteRT serving form reproduces the evaluated model, film by film.

    python -m benchmarks.serving_agreement [--bundle models/default] [--films 60]
                                           [--out benchmarks/results/v4_litert/serving_agreement.json]

Analyses the first ``--films`` demo films twice: with the bundle's LiteRT
serving form (what the app runs; built first if missing) and with its Keras
models in float32 (what ``training.evaluate`` measured). Reports the largest
and mean absolute differences of the calibrated and raw probabilities, the
triage probability and the heatmaps (all 14 per film, at the film's size), the
input check's feature distance, and how many readings differ (triage verdict,
a finding's band, withheld or not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def compare(bundle: Path, films: list[Path]) -> dict:
    from cxr_core.serving import Predictor
    from cxr_core.serving.litert import build_serving_form

    build_serving_form(bundle)
    served = Predictor.from_bundle(bundle, runtime="litert")
    evaluated = Predictor.from_bundle(bundle, runtime="keras", compute="float32")
    calibrated, raw, triage, maps, distance, readings = [], [], [], [], [], 0
    for film in films:
        a, b = served.analyze(film), evaluated.analyze(film)
        calibrated += [abs(a.probabilities[f] - b.probabilities[f]) for f in a.probabilities]
        raw += [abs(a.raw_probabilities[f] - b.raw_probabilities[f]) for f in a.raw_probabilities]
        if a.reading.triage_probability is not None:
            triage.append(abs(a.reading.triage_probability - b.reading.triage_probability))
        maps += [float(np.abs(a.heatmaps[f] - b.heatmaps[f]).max()) for f in a.heatmaps]
        if a.input_check:
            distance.append(abs(a.input_check["feature_distance"] - b.input_check["feature_distance"])
                            / max(abs(b.input_check["feature_distance"]), 1e-12))
        same = (a.reading.triage, a.reading.bands, a.reading.withheld) == (b.reading.triage, b.reading.bands, b.reading.withheld)
        readings += not same

    def stats(values: list[float]) -> dict:
        return {"max": float(np.max(values)), "mean": float(np.mean(values)), "n": len(values)}

    return {"films": len(films), "calibrated_probability_abs_diff": stats(calibrated),
            "raw_probability_abs_diff": stats(raw), "triage_probability_abs_diff": stats(triage),
            "heatmap_max_abs_diff_per_map": stats(maps), "feature_distance_rel_diff": stats(distance),
            "readings_that_differ": readings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "data" / "demo" / "images")
    parser.add_argument("--films", type=int, default=60)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "v4_litert" / "serving_agreement.json")
    args = parser.parse_args(argv)
    films = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")[: args.films]
    if not films:
        print(f"error: no PNG films in {args.images}", file=sys.stderr)
        return 2
    started = time.monotonic()
    result = {"bundle": str(args.bundle.relative_to(REPO_ROOT) if args.bundle.is_relative_to(REPO_ROOT) else args.bundle),
              **compare(args.bundle, films), "seconds": round(time.monotonic() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
