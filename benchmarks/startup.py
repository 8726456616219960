"""Where a fresh process spends its time before its first analysis, part by part.

    python -m benchmarks.startup [--bundle models/default] [--repeats 3] [--modes first litert eager]
                                 [--out benchmarks/results/startup.json]

Each repeat is a fresh Python process (so TensorFlow is imported, the members
loaded and their graphs traced from nothing, as in a newly started app), run
with the app's compute mode (``CXR_ASSIST_COMPUTE``, default ``auto``). It
times, in order: importing TensorFlow and Keras; reading the bundle
(``load_bundle``: the Keras files); building the Predictor (the bfloat16 copy
of a trunk, each member's runner); then either

* ``traced``: :meth:`Predictor.warm_up` (every member's graphs compiled, as the
  app did before issue 26) and a first analysis of a real demo film; or
* ``eager``: a first analysis of that film straight away, with the members
  run op by op (:meth:`Predictor.analyze` before any compiled graph exists),
  then the compiled graphs traced, then the same film again;

and a later analysis of another film. ``litert`` (what the app runs once
the bundle's serving form is in the cache): importing the serving code
without TensorFlow, opening each member's LiteRT form, a first and a later
analysis. ``first`` (a machine that has never run cxr-assist: each probe gets
an empty serving cache): the same, with the forms the bundle ships put
together into the cache first (:mod:`cxr_core.serving.shipped_form`). CPU seconds (the process's, all
threads) stand beside the wall seconds: on the 2-core machine they do not
depend on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import json, os, sys, time
t0, c0 = time.perf_counter(), time.process_time()
marks = []
def mark(name):
    marks.append((name, time.perf_counter() - t0, time.process_time() - c0))
bundle_path, mode, first, later = sys.argv[1:5]
if mode in ("litert", "first"):
    from cxr_core.serving import Predictor
    from cxr_core.serving.predictor import Analysis  # noqa: F401
    mark("import the serving code (numpy, OpenCV, SciPy, pandas; no TensorFlow)")
    if mode == "first":
        from cxr_core.bundle.ensemble import load_bundle
        from cxr_core.serving.litert import find_serving_form
        find_serving_form(load_bundle(bundle_path, load_model=False))
        mark("put the serving forms the bundle ships into the empty cache (SHA-256 of each model.keras and of each form)")
    predictor = Predictor.from_bundle(bundle_path, runtime="litert")
    mark("read the bundle, find each member's serving form (SHA-256), open the interpreters")
    predictor.analyze(first)
    mark("first analysis")
else:
    import keras  # noqa: F401  (TensorFlow)
    mark("import TensorFlow and Keras")
    from cxr_core.bundle.ensemble import load_bundle
    from cxr_core.serving import Predictor
    from cxr_core.serving.precision import member_compute_dtype  # noqa: F401
    compute = os.environ.get("CXR_ASSIST_COMPUTE", "").strip() or "auto"
    load_bundle(bundle_path)
    mark("read the bundle (Keras files)")
    predictor = Predictor.from_bundle(bundle_path, compute=compute, compiled=(mode == "traced"), runtime="keras")
    mark("read the bundle again and build the Predictor")
if mode in ("litert", "first"):
    pass
elif mode == "traced":
    predictor.warm_up()
    mark("trace every member's graphs (warm_up)")
    predictor.analyze(first)
    mark("first analysis")
else:
    predictor.analyze(first)
    mark("first analysis, eager")
    predictor.analyze(later)
    mark("a second analysis, eager")
    predictor.warm_up()
    mark("then trace every member's graphs (warm_up)")
    predictor.analyze(first)
    mark("the first film again, traced")
predictor.analyze(later)
mark("a later analysis")
print("PROBE" + json.dumps({"marks": marks, "threads": os.cpu_count(), "tensorflow": "tensorflow" in sys.modules}))
"""


def probe(bundle: Path, mode: str, first: Path, later: Path) -> list[tuple[str, float, float]]:
    """One fresh process: ``[(part, wall seconds, CPU seconds), ...]`` (each part's own, not cumulative)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory(prefix="cxr-assist-first-start-") as empty_cache:
        if mode == "first":
            env["CXR_ASSIST_SERVING_CACHE"] = empty_cache
        out = subprocess.run([sys.executable, "-c", _PROBE, str(bundle), mode, str(first), str(later)], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=False, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("PROBE")), None)
    if line is None:
        raise RuntimeError(f"the probe process failed:\n{out.stderr[-3000:]}")
    report = json.loads(line[5:])
    marks = report["marks"]
    parts, last_wall, last_cpu = [], 0.0, 0.0
    for name, wall, cpu in marks:
        parts.append((name, wall - last_wall, cpu - last_cpu))
        last_wall, last_cpu = wall, cpu
    parts.append(("TensorFlow imported", float(report["tensorflow"]), 0.0))
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "data" / "demo" / "images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["first", "litert", "eager"],
                        choices=["litert", "first", "traced", "eager"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args(argv)
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")
    if len(images) < 2:
        print(f"error: need two PNG films in {args.images}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    results: dict = {"bundle": str(args.bundle), "load_average_before": load, "modes": {}}
    for mode in args.modes:
        runs = [probe(args.bundle, mode, images[0], images[1]) for _ in range(args.repeats)]
        table = []
        for i, (name, _, _) in enumerate(runs[0]):
            walls = [run[i][1] for run in runs]
            cpus = [run[i][2] for run in runs]
            table.append({"part": name, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
                          "wall_all": walls})
        print(f"\n{mode} ({args.repeats} fresh processes, medians; load average before {load:.2f})")
        print(f"{'part':78s} {'wall s':>8s} {'CPU s':>8s}")
        results["modes"][mode] = table[:-1]
        results.setdefault("tensorflow_imported", {})[mode] = bool(table[-1]["wall_s"])
        print(f"TensorFlow imported: {'yes' if table[-1]['wall_s'] else 'no'}")
        for row in table[:-1]:
            print(f"{row['part']:78s} {row['wall_s']:8.2f} {row['cpu_s']:8.2f}")
    results["load_average_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
