"""The app in a real browser: `streamlit run app.py` driven by Playwright and the system chromium.

What a newcomer meets after the README's two commands: a server started on a
machine that has never run cxr-assist (an empty serving cache: the shipped
model's LiteRT forms are put together from the bundle at this first start, no
TensorFlow), then every page of the navigation, each with no error and no
exception text; Analyze with a PNG, a JPEG and a DICOM film, waiting for the
findings table and the heatmaps; the Guided tour through every stop; a
reader's first case. Screenshots go to the test's tmp_path; with
``CXR_ASSIST_SCREENSHOTS=1`` they are also copied to docs/use/screenshots/ (for
the README). The shipped model is used when present, else the tiny test
bundle. Skips when /usr/bin/chromium is missing (CI installs it: .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cxr_core.reporting.words import WITHHELD_NOTE
from tests.app_bundle import SHIPPED_BUNDLE, tiny_app_bundle
from tests.conftest import REPO_ROOT, SHARED_DICOM

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO_ROOT / "docs" / "use" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1700}  # Streamlit scrolls inside the page: a tall window shows more
PAGES = {"home": "", "analyze": "analyze", "browse": "browse", "performance": "performance",
         "reader_study": "reader_study", "reader_results": "reader_results"}
# What an exception looks like when a page prints one as text instead of through Streamlit's exception box.
EXCEPTION_TEXT = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(?:Error|Exception)\b: ")


def nav_titles(links) -> list[str]:
    """The page titles of the sidebar's links (each link's text is its icon's name, then its title)."""
    return [text.strip().splitlines()[-1].strip() for text in links.all_inner_texts()]


def assert_no_error(page, *, expected: tuple[str, ...] = ()) -> None:
    """No exception box, no error message (but those starting with an ``expected`` text) and no exception text."""
    assert page.locator('[data-testid="stException"]').count() == 0, page.url
    errors = [text for text in page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
              if not text.strip().startswith(expected)]
    assert errors == [], (page.url, errors)
    found = EXCEPTION_TEXT.search(page.locator("body").inner_text())
    assert found is None, (page.url, found and found.group(0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


def settle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the script run that the last action started has finished."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def scripted_example_study(db: Path, bundle: Path, demo_root: Path, n_cases: int = 24) -> None:
    """A reader study named "scripted example", read by two scripted readers (not real people).

    Unaided, a scripted reader ticks a labelled finding with probability 0.55
    and an unlabelled one with probability 0.04; aided, it also ticks what the
    AI flags (the bundle's default operating point; a finding without a flag stored
    at 1.0, as the page stores it) with probability 0.5 and drops an unflagged tick with probability
    0.3. Only for the results-page screenshot: the numbers mean nothing.
    """
    import numpy as np

    from cxr_core.data import NIHDataset
    from cxr_core.reader_study import ReaderStudyStore
    from cxr_core.serving import Predictor

    rng = np.random.default_rng(0)
    # Its own serving cache: the server's stays empty until the server starts (a machine's first start).
    predictor = Predictor.from_bundle(bundle, runtime="auto", serving_cache=db.parent / "serving-cache-of-the-script")
    store = ReaderStudyStore(db)
    study = store.create_study("scripted example", NIHDataset(demo_root), n_cases=n_cases, seed=0,
                               description="scripted readers, not real people")
    cases = store.cases_frame(study.id)
    reference = cases[[c for c in cases.columns if c.startswith("ref_")]].to_numpy()
    for name in ("Scripted reader A", "Scripted reader B"):
        reader = store.get_or_create_reader(name)
        for position in range(n_cases):
            truth = reference[position].astype(bool)
            unaided = np.where(truth, rng.random(14) < 0.55, rng.random(14) < 0.04)
            store.record_read(study.id, reader.id, position, phase="unaided", findings=unaided.astype(int),
                              confidence=int(rng.integers(2, 5)), seconds=float(rng.uniform(20, 70)))
            probabilities = predictor.predict(store.case_image_path(study.id, position))
            p = np.array([probabilities[f] for f in predictor.findings])
            cuts = predictor.policy.cuts()
            flagged = cuts.flagged(p)
            aided = np.where(flagged, unaided | (rng.random(14) < 0.5), unaided & (rng.random(14) > 0.3))
            store.record_read(study.id, reader.id, position, phase="aided", findings=aided.astype(int),
                              confidence=int(rng.integers(3, 6)), seconds=float(rng.uniform(8, 30)),
                              ai_probabilities=p, ai_thresholds=np.nan_to_num(cuts.flag, nan=1.0),
                              ai_triage=predictor.policy.read(p).triage)
    store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_root):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it in CI)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    # The shipped model on a machine that has never run cxr-assist: an empty serving cache, which the server fills from
    # the forms the bundle ships (no TensorFlow, no conversion).
    bundle = SHIPPED_BUNDLE if (SHIPPED_BUNDLE / "bundle.json").is_file() else tiny_app_bundle(tmp_path_factory, demo_root)
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    db = log.parent / "reader_study.sqlite3"
    cache = log.parent / "fresh-serving-cache"
    scripted_example_study(db, bundle, demo_root)
    env = {**os.environ, "CXR_ASSIST_BUNDLE": str(bundle), "CXR_ASSIST_DEMO": str(demo_root), "TF_CPP_MIN_LOG_LEVEL": "2",
           "CXR_READER_STUDY_DB": str(db), "CXR_ASSIST_SERVING_CACHE": str(cache)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield {"url": url, "bundle": bundle, "log": log, "cache": cache}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def keep(shot: Path, name: str) -> None:
    if os.environ.get("CXR_ASSIST_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOTS / f"{name}.png")


def test_upload_on_the_analyze_page(server, browser, demo_root, tmp_path):
    from cxr_core.data import NIHDataset

    name = NIHDataset(demo_root).boxes["image"].iloc[0]
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/analyze", timeout=60_000)
        page.get_by_role("heading", name="Analyze an image").wait_for(timeout=60_000)
        # The first visit of a fresh server, straight to a page URL, still goes through streamlit_app.py's navigation.
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Model performance").wait_for(timeout=30_000)
        assert nav.get_by_text("common", exact=True).count() == 0
        page.locator('input[type="file"]').set_input_files(str(demo_root / "images" / name))
        page.locator('[data-testid="stCaptionContainer"]', has_text=f"Analysed {name}").wait_for(timeout=90_000)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
        page.get_by_text("Heatmaps: flagged findings first, then the most probable").wait_for()
        # The triage verdict comes before the findings; no finding is called POSITIVE any more.
        verdict = page.get_by_text("Triage:").first
        verdict.wait_for(timeout=30_000)
        table_top = page.locator('[data-testid="stDataFrame"]').first.bounding_box()["y"]
        assert verdict.bounding_box()["y"] < table_top
        assert page.get_by_text("POSITIVE", exact=True).count() == 0
        page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 6", timeout=30_000)
        settle(page)
        assert_no_error(page)
        assert page.get_by_role("button", name="Download PDF report").count() == 1
        if server["bundle"] == SHIPPED_BUNDLE:  # the forms it ships, put into the empty cache: LiteRT, never Keras
            log = server["log"].read_text(errors="replace")
            assert "loading the model (LiteRT serving form)" in log and "starting TensorFlow" not in log
            assert len(list(server["cache"].glob("*-v1"))) == 5
        shot = tmp_path / "analyze.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        keep(shot, "analyze")
    finally:
        page.close()


def _jpeg_film(demo_root: Path, folder: Path) -> Path:
    """A real demo film (PNG) saved as a JPEG, as a clinic's export would give it."""
    from PIL import Image

    from cxr_core.data import NIHDataset

    name = NIHDataset(demo_root).image_names[1]
    film = folder / f"{Path(name).stem}.jpg"
    Image.open(demo_root / "images" / name).convert("L").save(film, quality=92)
    return film


def _dicom_film() -> Path:
    """A real chest film as DICOM: the NIH image that Udacity's course wrapped (../shared/dicom), else the committed
    JPEG-lossless file derived from it (tests/fixtures/dicom_generated)."""
    shared = SHARED_DICOM / "udacity_test1.dcm"
    return shared if shared.is_file() else REPO_ROOT / "tests" / "fixtures" / "dicom_generated" / "gen-chest12-jpeg-lossless-sv1.dcm"


@pytest.mark.parametrize("kind", ["jpeg", "dicom"])
def test_analyze_a_jpeg_and_a_dicom(server, browser, demo_root, tmp_path, kind):
    """The other two formats a newcomer uploads (the PNG: test_upload_on_the_analyze_page): findings, heatmaps, no
    error."""
    film = _jpeg_film(demo_root, tmp_path) if kind == "jpeg" else _dicom_film()
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/analyze", timeout=60_000)
        page.get_by_role("heading", name="Analyze an image").wait_for(timeout=60_000)
        page.locator('input[type="file"]').set_input_files(str(film))
        caption = page.locator('[data-testid="stCaptionContainer"]', has_text=f"Analysed {film.name}")
        caption.wait_for(timeout=90_000)
        assert ("DICOM" if kind == "dicom" else "JPEG") in caption.inner_text()
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
        page.get_by_text("Triage:").first.wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 6", timeout=30_000)
        settle(page)
        assert_no_error(page)
    finally:
        page.close()


def test_every_page_of_the_navigation_loads_without_error(server, browser):
    """Each page the sidebar lists (whatever pages are added later), opened by its link as a newcomer would: a title,
    its script run to the end, no error and no exception text."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(server["url"], timeout=60_000)
        nav = page.locator('[data-testid="stSidebarNav"] a')
        nav.first.wait_for(timeout=60_000)
        titles = nav_titles(nav)
        hrefs = nav.evaluate_all("links => links.map(a => a.href)")
        assert {"Home", "Guided tour", "Analyze an image", "Browse dataset", "Model performance", "Read cases",
                "Results"} <= set(titles), titles
        for index, href in enumerate(hrefs):
            nav.nth(index).click()
            page.wait_for_url(href, timeout=60_000)
            page.locator("h1").first.wait_for(timeout=60_000)
            settle(page, timeout_ms=120_000)
            assert_no_error(page)
    finally:
        page.close()


def test_a_photograph_gets_the_warning_and_no_findings_until_asked(server, browser, tmp_path):
    """A real photograph (scikit-image's cat) on Analyze: the input check's warning, no triage, no findings, no
    heatmap; "Show the model's output anyway" reveals them."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (requirements.txt) ships the photograph")
    from PIL import Image

    photo = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=90)
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/analyze", timeout=60_000)
        page.get_by_role("heading", name="Analyze an image").wait_for(timeout=60_000)
        page.locator('input[type="file"]').set_input_files(str(photo))
        page.get_by_text("The model's output is withheld").wait_for(timeout=90_000)
        settle(page)
        assert page.locator('[data-testid="stDataFrame"]').count() == 0
        assert page.get_by_text("Triage:").count() == 0
        assert page.locator('[data-testid="stImage"] img').count() == 1  # the photograph itself, no heatmap
        shot = tmp_path / "analyze_withheld.png"
        page.screenshot(path=str(shot), full_page=True)
        keep(shot, "analyze_withheld")
        page.get_by_text("Show the model's output anyway").click()
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=60_000)
        settle(page)
        assert page.get_by_text("Triage:").count() >= 1
        assert_no_error(page, expected=(WITHHELD_NOTE[:30],))
    finally:
        page.close()


@pytest.mark.parametrize("name", ["home", "browse", "performance", "reader_study", "reader_results"])
def test_every_page_renders(server, browser, tmp_path, name):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/{PAGES[name]}", timeout=60_000)
        page.locator("h1").first.wait_for(timeout=60_000)
        if name in ("performance", "reader_results"):
            page.locator(".js-plotly-plot").first.wait_for(timeout=90_000)
        if name == "reader_results":
            page.get_by_text("Scripted reader A").first.wait_for(state="attached", timeout=60_000)
        if name == "reader_study":  # a new reader: unaided read of case 1, then the aided read with the AI panel
            page.get_by_label("Your name (as reader)").fill("Browser test reader")
            page.get_by_label("Your name (as reader)").press("Enter")
            page.get_by_role("heading", name="Case 1 of 24: unaided read").wait_for(timeout=60_000)
            page.get_by_role("button", name="Save unaided read").click()
            page.get_by_role("heading", name="Case 1 of 24: aided read").wait_for(timeout=90_000)
            page.get_by_text("AI panel.").first.wait_for()
            page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 5", timeout=60_000)
        if name == "browse":
            page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 14", timeout=90_000)
        settle(page, timeout_ms=90_000)
        assert_no_error(page)
        if name == "home":  # at 1400 px: the model and every input size whole (as text), no metric card cut short
            page.get_by_text("Model:").first.wait_for()
            cut = page.evaluate("() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"] *')]"
                                ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)")
            assert cut == [], cut
            meta = json.loads((Path(server["bundle"]) / "bundle.json").read_text())
            body = page.locator("body").inner_text()
            assert all(f"{m['input_size']} px" in body for m in meta.get("members") or [meta])
            nav = page.locator('[data-testid="stSidebarNav"] a')
            titles = [t for t in nav_titles(nav) if t != "Home"]
            main = page.locator('[data-testid="stMain"]')
            missing = [t for t in titles if main.get_by_role("link", name=re.compile(re.escape(t))).count() == 0]
            assert "Guided tour" in titles and missing == [], missing
        shot = tmp_path / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        keep(shot, name)
    finally:
        page.close()


def test_the_guided_tour_walks_every_stop(server, browser, tmp_path):
    """The Guided tour page: the first stop's film and heatmap (screenshot), then Next through every stop to the last;
    absent categories, if any, are listed. Skips when the bundle has no stored tour (python -m training.tour)."""
    tour_file = Path(server["bundle"]) / "tour.json"
    if not tour_file.is_file():
        pytest.skip(f"{tour_file} is missing (python -m training.tour --bundle ... --data data/demo)")
    tour = json.loads(tour_file.read_text())
    stops = tour["stops"]
    if not stops:
        pytest.skip("the stored tour has no stop")
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/tour", timeout=60_000)
        page.get_by_role("heading", name="Guided tour").wait_for(timeout=60_000)
        page.get_by_role("heading", name=f"Stop 1 of {len(stops)}").wait_for(timeout=60_000)
        if stops[0]["probabilities"] and stops[0]["finding"]:  # the film and its heatmap
            page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 2",
                                   timeout=120_000)
        settle(page, timeout_ms=120_000)
        assert_no_error(page)
        assert page.get_by_text(stops[0]["caption"]).count() == 1
        shot = tmp_path / "tour.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        keep(shot, "tour")
        for k in range(1, len(stops)):
            page.get_by_role("button", name="Next →").click()
            page.get_by_role("heading", name=f"Stop {k + 1} of {len(stops)}").wait_for(timeout=120_000)
            settle(page, timeout_ms=120_000)
            assert_no_error(page, expected=(WITHHELD_NOTE[:30],))  # a stop shows a photograph the check refuses
            assert page.get_by_text(stops[k]["caption"]).count() == 1, stops[k]["category"]
        assert page.get_by_role("button", name="Next →").is_disabled()
        for absent in tour["absent"]:
            assert page.get_by_text(absent["reason"], exact=False).count() >= 1
    finally:
        page.close()
