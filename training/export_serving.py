"""Build a bundle's LiteRT serving form: what the app runs, without TensorFlow, once it exists.

    python -m training.export_serving --bundle models/default

Converts each member's model.keras into a LiteRT flatbuffer (image -> features
and logits, float32 weights: the same numbers as the Keras model, tested) and
stores it with the head's Dense kernel, for the Grad-CAM maps, in the serving
cache (CXR_ASSIST_SERVING_CACHE, else ~/.cache/cxr-assist/serving), named by
the SHA-256 of the model.keras it came from: a replaced member is converted
again, never served stale. The app then loads in about a second instead of
importing TensorFlow and building the Keras models (benchmarks/APP_RESULTS.md).
A member whose bundle ships its form (a recipe over its own weights, a few
hundred KB; models/default does) is put together from it instead, without
TensorFlow, in about a tenth of a second; the app does that itself at its
first start. The app started with `streamlit run app.py` runs this command in
the background after a start that had to use the Keras models; run it by hand
after training a bundle, or to prepare a machine. Members already built are
skipped, so an interrupted build resumes. About 30 s of conversion for the
shipped ensemble on 2 cores. See cxr_core/serving/litert.py.

    python -m training.export_serving --bundle runs/x/bundle --ship

converts every member and writes the recipe of its form into the bundle
(<member>/serving/), so that the bundle's first start on any machine needs no
conversion (cxr_core/serving/shipped_form.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from training._command import add_bundle, command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("export_serving", __doc__)
    add_bundle(parser)
    parser.add_argument("--cache", default=None,
                        help="serving cache folder (default CXR_ASSIST_SERVING_CACHE, else ~/.cache/cxr-assist/serving)")
    parser.add_argument("--low-priority", action="store_true",
                        help="run at nice 10, taking the cores only when other work leaves them idle (the app uses it)")
    parser.add_argument("--ship", action="store_true",
                        help="convert every member and write its form's recipe into the bundle (<member>/serving/), "
                             "so that a first start needs no conversion")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _build, then=_print_ready)


def _build(args: argparse.Namespace) -> float:
    """Ship (with --ship) and build the serving form; return the seconds it took."""
    if args.low_priority and hasattr(os, "nice"):
        os.nice(10)
    from cxr_core.serving.litert import build_serving_form, ship_serving_form

    started = time.monotonic()
    if args.ship:
        ship_serving_form(args.bundle, progress=lambda line: print(line, flush=True))
    build_serving_form(args.bundle, cache=args.cache, progress=lambda line: print(line, flush=True))
    return time.monotonic() - started


def _print_ready(args: argparse.Namespace, seconds: float) -> None:
    from cxr_core.serving.litert import cache_root

    print(f"serving form of {args.bundle} ready in {cache_root(args.cache)} ({seconds:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
