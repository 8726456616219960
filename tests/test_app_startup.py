"""What the app's pages import before the model is ready must not import TensorFlow.

The app loads the model (and TensorFlow) in a background thread as soon as
the first page has run. A page that imported TensorFlow at the same time, on
its own thread, would get a half-initialised module (two threads importing
TensorFlow at once fail with "module 'tensorflow...' has no attribute ...").
So every module a page imports at its top stays free of TensorFlow; the model
itself comes through pages.common, under its load lock.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _page_imports() -> set[str]:
    modules = set()
    for page in sorted((REPO_ROOT / "pages").glob("*.py")):
        tree = ast.parse(page.read_text(encoding="utf-8"))
        for node in tree.body:  # top level only: imports inside functions run after the model is ready
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxr_core"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    modules.add(candidate if (REPO_ROOT / (candidate.replace(".", "/") + ".py")).is_file() else node.module)
            elif isinstance(node, ast.Import):
                modules.update(a.name for a in node.names if a.name.startswith("cxr_core"))
    return modules


def test_pages_import_nothing_that_imports_tensorflow():
    modules = _page_imports()
    assert "cxr_core.serving.report" in modules and "cxr_core.serving.reading" in modules
    code = ("import importlib, sys\n"
            f"for name in {sorted(modules)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"a page's imports load {result.stdout.strip()}"


def test_app_py_is_the_server_and_starts_the_warm_up_when_it_starts(monkeypatch):
    """`streamlit run app.py` serves streamlit_app.py through an st.App whose start-up hook sees to the model's
    warm-up (pages.common.warm_up_at_start) and returns at once: the server must answer while the model gets ready."""
    import asyncio
    import importlib.util

    import streamlit as st

    from pages import common

    spec = importlib.util.spec_from_file_location("cxr_assist_server", REPO_ROOT / "app.py")
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    assert isinstance(server.app, st.App)
    assert str(server.app.script_path) == "streamlit_app.py" and (REPO_ROOT / "streamlit_app.py").is_file()
    calls = []
    monkeypatch.setattr(common, "warm_up_at_start", lambda: calls.append("warm_up"))

    async def start_and_stop():
        async with server.lifespan(server.app):
            assert calls == ["warm_up"]  # started before the server takes requests

    asyncio.run(start_and_stop())
    assert calls == ["warm_up"]


def test_the_server_warms_up_unless_a_page_comes_first(monkeypatch):
    """No browser within the grace time: the warm-up starts by itself. A page first: it is left to that page."""
    import threading

    from pages import common

    started = threading.Event()
    monkeypatch.setattr(common, "warm_up", started.set)
    monkeypatch.setattr(common, "PAGE_STARTED", threading.Event())
    common.warm_up_at_start(0.05)
    assert started.wait(10), "no page came and the warm-up did not start"

    started.clear()
    common.PAGE_STARTED.set()  # streamlit_app.py's first line
    common.warm_up_at_start(0.05)
    assert not started.wait(0.5), "a page came first, yet the server started the warm-up too"
    source = (REPO_ROOT / "streamlit_app.py").read_text(encoding="utf-8")
    assert source.index("common.PAGE_STARTED.set()") < source.index("st.navigation(")
