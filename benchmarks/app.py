"""App timings in a real browser: cold start to the first rendered page, and upload to findings.

    python -m benchmarks.app [--bundle models/default] [--images 8] [--repeats 2]

Starts ``streamlit run app.py`` on a free port (a fresh server: nothing
loaded, nothing cached), drives it with Playwright and the system chromium,
and measures:

* cold start: from launching the server process to the home page rendered
  in the browser (title, clinical-use warning and the model's metrics shown);
* CPU per upload: CPU seconds the Streamlit server and chromium spent per
  upload, which does not depend on what else runs (wall time does);
* home page to first findings: from the home page shown, open Analyze,
  upload a demo image at once (the page takes it while the model is still
  getting ready) and wait for its findings: what a demo audience watches
  after a fresh start;
* upload to findings: on the Analyze page, from ``set_input_files`` of a demo
  image to its findings table and all 6 heatmap pictures rendered and the
  script run finished. The first upload is reported apart (it may wait for
  the model, which app.py starts loading in the background at start-up);
  every later image is a new file (not cached).

Goals on the 2-core machine: cold start <= 5 s, home page to first findings
<= 5 s, <= 2 s per later image.

The server runs the bundle's LiteRT serving form (the default cache, or
``CXR_ASSIST_SERVING_CACHE``). ``--first-start`` gives every fresh server an
empty serving cache of its own, as on a machine that has never run cxr-assist:
the shipped model's forms are then put together from the bundle as the server
gets ready (a bundle that ships none runs the Keras models). The load average
(``os.getloadavg``) is printed before and after: the machine is shared. On
failure the server's log is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.app_driver import (
    ANALYSED,
    CHROMIUM,
    CHROMIUM_ARGS,
    FINDINGS_SHOWN_JS,
    REPO_ROOT,
    SETTLE_PAUSE_S,
    VIEWPORT,
    cpu_seconds,
    free_port,
    settle,
    start_streamlit,
    stop_streamlit,
    wait_healthy,
)


def run(bundle: Path, n_images: int, repeats: int, entry: str = "app.py", first_start: bool = False) -> dict:
    from playwright.sync_api import sync_playwright

    from cxr_core.data import NIHDataset

    demo = REPO_ROOT / "data" / "demo"
    names = NIHDataset(demo).image_names[:n_images]
    results = {"cold_start_s": [], "health_s": [], "first_upload_s": [], "home_to_first_findings_s": [], "upload_s": [],
               "server_cpu_s": [], "browser_cpu_s": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for _ in range(repeats):
            port = free_port()
            env = {**os.environ, "CXR_ASSIST_BUNDLE": str(bundle), "TF_CPP_MIN_LOG_LEVEL": "2"}
            fresh_cache = tempfile.mkdtemp(prefix="cxr-assist-first-start-") if first_start else None
            if fresh_cache:
                env["CXR_ASSIST_SERVING_CACHE"] = fresh_cache
            page = browser.new_page(viewport=VIEWPORT)
            started = time.perf_counter()
            log = tempfile.NamedTemporaryFile(prefix="cxr-assist-app-benchmark-", suffix=".log", delete=False)
            process = start_streamlit(port, env, log, entry=entry)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_healthy(url, process)
                results["health_s"].append(time.perf_counter() - started)
                page.goto(url)
                page.locator('[data-testid="stMetric"]', has_text="Test mean AUROC").wait_for(timeout=60_000)
                page.get_by_text("Not for clinical use").first.wait_for()
                home_shown = time.perf_counter()
                results["cold_start_s"].append(home_shown - started)

                page.goto(f"{url}/analyze")
                file_input = page.locator('input[type="file"]')
                file_input.wait_for(state="attached", timeout=60_000)
                for i, name in enumerate(names):
                    t0 = time.perf_counter()
                    server_cpu, browser_cpu = cpu_seconds({process.pid}), cpu_seconds(names=("chrom",))
                    file_input.set_input_files(str(demo / "images" / name))
                    page.locator(ANALYSED, has_text=f"Analysed {name}").wait_for(timeout=120_000)
                    page.wait_for_function(FINDINGS_SHOWN_JS, timeout=60_000)
                    settle(page)
                    elapsed = time.perf_counter() - t0 - SETTLE_PAUSE_S  # settle() pauses before it looks
                    results["first_upload_s" if i == 0 else "upload_s"].append(elapsed)
                    if i == 0:
                        results["home_to_first_findings_s"].append(time.perf_counter() - home_shown - SETTLE_PAUSE_S)
                    if i:
                        results["server_cpu_s"].append(cpu_seconds({process.pid}) - server_cpu)
                        results["browser_cpu_s"].append(cpu_seconds(names=("chrom",)) - browser_cpu)
            except Exception:
                print(f"the server's log (kept: {log.name}), its end:\n"
                      f"{Path(log.name).read_text(errors='replace')[-3000:]}", file=sys.stderr)
                log.close()
                raise
            finally:
                page.close()
                stop_streamlit(process)
                if fresh_cache:
                    shutil.rmtree(fresh_cache, ignore_errors=True)
            log.close()
            os.unlink(log.name)  # kept only when the run failed
        browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=os.environ.get("CXR_ASSIST_BUNDLE", "models/default"), help="model bundle folder")
    parser.add_argument("--images", type=int, default=8, help="demo images uploaded per server")
    parser.add_argument("--repeats", type=int, default=2, help="fresh servers started")
    parser.add_argument("--entry", default="app.py", choices=["app.py", "streamlit_app.py"],
                        help="what `streamlit run` starts: app.py (the server, warm-up at start) or the pages alone")
    parser.add_argument("--first-start", action="store_true",
                        help="an empty serving cache for every server: a machine's first start")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle).resolve()
    if not (bundle / "bundle.json").is_file():
        parser.error(f"no model bundle at {bundle} (pass --bundle)")
    if not Path(CHROMIUM).is_file():
        parser.error(f"{CHROMIUM} is missing: apt-get install chromium")
    load_before = os.getloadavg()
    r = run(bundle, args.images, args.repeats, args.entry, args.first_start)
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    print(f"bundle {bundle} on {platform.machine()}, {os.cpu_count()} CPUs"
          + (", every server with an empty serving cache (a first start)" if args.first_start else ""))
    print("load average (1, 5, 15 min) before: " + ", ".join(f"{v:.2f}" for v in load_before)
          + "; after: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"server healthy:          median {med(r['health_s']):.2f} s  ({', '.join(f'{v:.2f}' for v in r['health_s'])})")
    print(f"cold start to home page: median {med(r['cold_start_s']):.2f} s  ({', '.join(f'{v:.2f}' for v in r['cold_start_s'])})  goal <= 5 s")
    print(f"first upload to findings: median {med(r['first_upload_s']):.2f} s  ({', '.join(f'{v:.2f}' for v in r['first_upload_s'])})")
    print(f"home page to first findings: median {med(r['home_to_first_findings_s']):.2f} s  "
          f"({', '.join(f'{v:.2f}' for v in r['home_to_first_findings_s'])})  goal <= 5 s")
    print(f"upload to findings:      median {med(r['upload_s']):.2f} s, max {max(r['upload_s'], default=float('nan')):.2f} s "
          f"over {len(r['upload_s'])} images  goal <= 2 s")
    print(f"CPU per upload (not the first): server median {med(r['server_cpu_s']):.2f} s, browser median {med(r['browser_cpu_s']):.2f} s "
          f"(CPU seconds, whatever else runs on the machine; os.getloadavg() at the end: {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
