"""Cost of a full analysis (14 calibrated probabilities + 14 Grad-CAM++ maps)
against one forward pass, and against the naive per-finding tf-keras-vis loop.

    python -m benchmarks.explain [--bundle models/default] [--compute auto] [--backbone mobilenetv2 --size 160] [--repeats 10]

Same process, same image, after warm-up; medians of ``--repeats`` runs. Goal:
the full analysis costs at most 1.5x one forward pass. For an ensemble bundle
"one forward pass" is the bundle's own: every member once, over each of its
test-time views where it has them (``tta_views``). ``--compute`` loads the
bundle as the app serves it (``auto``: bfloat16 trunks where the CPU has
them, :mod:`cxr_core.serving.precision`); the default is float32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()  # warm-up: graph tracing, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a model bundle (default: a freshly built, untrained model)")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compute", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="how the bundle computes (the app serves auto)")
    parser.add_argument("--naive-repeats", type=int, default=2)
    args = parser.parse_args()

    from cxr_core.data import PreprocessConfig, preprocess
    from cxr_core.data.imageio import decode_image
    from cxr_core.findings import FINDINGS
    from cxr_core.serving import Predictor, gradcam_plus_plus_per_finding

    if args.bundle:
        predictor = Predictor.from_bundle(args.bundle, compute=args.compute)
        from cxr_core.bundle.format import describe_model

        dtypes = ", ".join(f"{name} {dtype}" for name, dtype in predictor.compute_dtypes.items())
        label = f"bundle {args.bundle} ({describe_model(predictor.metadata)}; {dtypes})"
    else:
        from cxr_core.learn import build_model

        model = build_model(args.backbone, args.size)
        predictor = Predictor(model, preprocess=PreprocessConfig(size=args.size))
        label = f"untrained {args.backbone} at {args.size} px"
    image_path = sorted((Path(__file__).resolve().parents[1] / "data" / "demo" / "images").glob("*.png"))[0]
    decoded = decode_image(image_path)  # decode once: we time the model, not PNG decoding
    # One input per member (an ensemble's members each have their own size and normalisation).
    batches = [preprocess(image_path, m.preprocess)[np.newaxis] for m in predictor.members]

    # The bundle's own forward pass: every member's scores (compiled; with its test-time views where it has
    # them), nothing else.
    forward = median_seconds(lambda: [r.scores(b) for r, b in zip(predictor._runners, batches)], args.repeats)
    analysis = median_seconds(lambda: predictor.analyze(decoded), args.repeats)
    naive = median_seconds(
        lambda: [gradcam_plus_plus_per_finding(m.model, b, i)
                 for m, b in zip(predictor.members, batches) for i in range(len(FINDINGS))],
        args.naive_repeats,
    ) + forward
    print(f"{label}, image {image_path.name}")
    print(f"forward pass, every member (compiled):  {forward * 1000:8.1f} ms")
    print(f"analysis (14 probabilities + 14 maps):   {analysis * 1000:8.1f} ms  = {analysis / forward:.2f}x forward")
    print(f"naive per-finding tf-keras-vis loop:     {naive * 1000:8.1f} ms  = {naive / forward:.1f}x forward")
    print(f"speed-up of the fast path over naive:    {naive / analysis:.1f}x")


if __name__ == "__main__":
    main()
