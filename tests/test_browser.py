"""The app in a real browser: `streamlit run app.py` driven by Playwright and the system chromium.

Uploads a demo image on the Analyze page and waits for the findings table and
the heatmaps, then visits every page. Screenshots go to the test's tmp_path;
with ``CXR_ASSIST_SCREENSHOTS=1`` they are also copied to docs/screenshots/
(for the README). The shipped model is used when present, else the tiny test
bundle. Skips when /usr/bin/chromium is missing (CI installs it: .ci/run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app_bundle import SHIPPED_BUNDLE, tiny_app_bundle
from tests.conftest import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1700}  # Streamlit scrolls inside the page: a tall window shows more
PAGES = {"home": "", "analyze": "analyze", "browse": "browse", "performance": "performance"}


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


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_root):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it in CI)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    bundle = SHIPPED_BUNDLE if (SHIPPED_BUNDLE / "bundle.json").is_file() else tiny_app_bundle(tmp_path_factory, demo_root)
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {**os.environ, "CXR_ASSIST_BUNDLE": str(bundle), "CXR_ASSIST_DEMO": str(demo_root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield {"url": url, "bundle": bundle, "log": log}
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
    from cxr_core.dataset import NIHDataset

    name = NIHDataset(demo_root).boxes["image"].iloc[0]
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/analyze", timeout=60_000)
        page.get_by_role("heading", name="Analyze an image").wait_for(timeout=60_000)
        # The first visit of a fresh server, straight to a page URL, still goes through app.py's navigation.
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Model performance").wait_for(timeout=30_000)
        assert nav.get_by_text("common", exact=True).count() == 0
        page.locator('input[type="file"]').set_input_files(str(demo_root / "images" / name))
        page.locator('[data-testid="stCaptionContainer"]', has_text=f"Analysed {name}").wait_for(timeout=90_000)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)
        page.get_by_text("Heatmaps of the 4 most probable findings").wait_for()
        page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 6", timeout=30_000)
        settle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.get_by_role("button", name="Download PDF report").count() == 1
        shot = tmp_path / "analyze.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        keep(shot, "analyze")
    finally:
        page.close()


@pytest.mark.parametrize("name", ["home", "browse", "performance"])
def test_every_page_renders(server, browser, tmp_path, name):
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server['url']}/{PAGES[name]}", timeout=60_000)
        page.locator("h1").first.wait_for(timeout=60_000)
        if name == "performance":
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        if name == "browse":
            page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 14", timeout=90_000)
        settle(page, timeout_ms=90_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        shot = tmp_path / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        keep(shot, name)
    finally:
        page.close()
