"""What the app's pages import before the model is ready must not import TensorFlow.

The app loads the model (and TensorFlow) in a background thread as soon as
the first page has run. A page that imported TensorFlow at the same time, on
its own thread, would get a half-initialised module (two threads importing
TensorFlow at once fail with "module 'tensorflow...' has no attribute ...").
So every module a page imports at its top stays free of TensorFlow; the model
itself comes through the host (cxr_core.host), under its load lock.
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
    assert "cxr_core.reporting.report" in modules and "cxr_core.evaluation.reading" in modules
    code = ("import importlib, sys\n"
            f"for name in {sorted(modules)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"a page's imports load {result.stdout.strip()}"


def test_app_py_is_the_server_and_starts_the_warm_up_when_it_starts(monkeypatch):
    """`streamlit run app.py` serves streamlit_app.py through an st.App whose start-up hook sees to the model's
    warm-up (HOST.warm_up_at_start) and returns at once: the server must answer while the model gets ready."""
    import asyncio
    import importlib.util

    import streamlit as st

    from cxr_core.host import HOST

    spec = importlib.util.spec_from_file_location("cxr_assist_server", REPO_ROOT / "app.py")
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    assert isinstance(server.app, st.App)
    assert str(server.app.script_path) == "streamlit_app.py" and (REPO_ROOT / "streamlit_app.py").is_file()
    calls = []
    monkeypatch.setattr(HOST, "warm_up_at_start", lambda: calls.append("warm_up"))

    async def start_and_stop():
        async with server.lifespan(server.app):
            assert calls == ["warm_up"]  # started before the server takes requests

    asyncio.run(start_and_stop())
    assert calls == ["warm_up"]


def test_streamlit_app_marks_the_first_page_before_its_navigation_runs():
    """app.py's server leaves the warm-up to a first page (tests/host/test_host.py): streamlit_app.py marks it before the
    page runs."""
    source = (REPO_ROOT / "streamlit_app.py").read_text(encoding="utf-8")
    assert source.index("HOST.page_started.set()") < source.index("st.navigation(")


def _tiny_copy(tmp_path, tmp_path_factory, demo_root):
    """A copy of the tiny evaluated bundle under a new path (the warm-up runs once per bundle path and version)."""
    import shutil

    from tests.app_bundle import tiny_app_bundle

    return shutil.copytree(tiny_app_bundle(tmp_path_factory, demo_root), tmp_path / "bundle")


def test_with_its_serving_form_the_warm_up_loads_the_model_without_tensorflow(tmp_path, tmp_path_factory, demo_root):
    """The app's warm-up in a fresh process: with the bundle's LiteRT form built, no TensorFlow step, no tracing,
    and TensorFlow is never imported, through a first analysis."""
    from cxr_core.serving.litert import build_serving_form

    bundle = _tiny_copy(tmp_path, tmp_path_factory, demo_root)
    cache = tmp_path / "cache"  # its own: forms are named by content, and the tiny bundle's page tests use Keras
    build_serving_form(bundle, cache=cache)
    film = sorted((demo_root / "images").glob("*.png"))[0]
    code = ("import sys, time\n"
            "from cxr_core.host import HOST\n"
            "HOST.warm_up()\n"
            "deadline = time.monotonic() + 120\n"
            "while HOST.warm_state().running and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "assert HOST.warm_state().error is None, HOST.warm_state().error\n"
            "predictor = HOST.predictor()\n"
            f"analysis = HOST.on_model_thread(predictor.analyze, {str(film)!r})\n"
            "assert len(analysis.heatmaps) == 14\n"
            "print(predictor.runtime, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    env = {**__import__("os").environ, "CXR_ASSIST_BUNDLE": str(bundle), "CXR_ASSIST_WARM": "1",
           "CXR_ASSIST_SERVING_CACHE": str(cache)}
    env.pop("CXR_ASSIST_RUNTIME", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "litert []"
    stages = [line for line in result.stderr.splitlines() if line.startswith("cxr-assist: ")]
    assert any("loading the model (LiteRT serving form)" in line for line in stages), stages
    assert any("ready: analyses run (LiteRT serving form)" in line for line in stages), stages
    assert not any("starting TensorFlow" in line or "compiling" in line for line in stages), stages


def test_a_server_builds_the_serving_form_after_its_first_keras_warm_up(monkeypatch, tmp_path, tmp_path_factory,
                                                                        demo_root):
    """No form yet: the Keras models serve, and once they are compiled a server (app.py's start, not a page script
    alone) starts the background build; the build makes the form the next start uses."""
    import threading

    from cxr_core.host import ModelHost, model_host

    bundle = _tiny_copy(tmp_path, tmp_path_factory, demo_root)
    # Forms are named by their model's content, so the tiny bundle's copies share them: a cache of this test's own.
    monkeypatch.setenv("CXR_ASSIST_SERVING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(bundle))
    monkeypatch.setenv("CXR_ASSIST_WARM", "1")
    monkeypatch.delenv("CXR_ASSIST_RUNTIME", raising=False)
    host = ModelHost(trace_delay_s=0.0)
    asked = threading.Event()
    real_build = model_host.start_serving_build
    monkeypatch.setattr(model_host, "start_serving_build", lambda path: asked.set())
    host.server_started.set()
    assert not host.serving_form_ready()
    host.warm_up()
    assert asked.wait(180), "the warm-up ended without starting the serving-form build"
    assert [p.runtime for p in host.loaded()] == ["keras"]

    build = real_build(bundle)  # the real one: training.export_serving at low priority
    assert build is not None and build.wait(timeout=600) == 0
    assert host.serving_form_ready()


def test_the_keras_session_is_kept_before_the_keras_models_are_built(monkeypatch, tmp_path, tmp_path_factory,
                                                                     demo_root):
    """Streamlit clears the Keras session after every script run; while the Keras models loaded, the "getting ready"
    notice's reruns (twice a second) tore them down and the load never ended in a real server. The wrapper that
    skips Streamlit's call must be in place before the first Keras model is built."""
    import keras

    from cxr_core.host import ModelHost, ModelKey
    from cxr_core.serving import Predictor

    bundle = _tiny_copy(tmp_path, tmp_path_factory, demo_root)
    monkeypatch.setenv("CXR_ASSIST_SERVING_CACHE", str(tmp_path / "empty-cache"))  # no form: the Keras models
    # An unwrapped clear_session (as in a fresh server process); the real one is restored after the test.
    monkeypatch.setattr(keras.backend, "clear_session", lambda *args, **kwargs: None)
    seen = []
    original = Predictor.from_bundle.__func__

    def from_bundle(cls, *args, **kwargs):
        seen.append((kwargs.get("runtime"), getattr(keras.backend.clear_session, "_cxr_assist_wrapper", False)))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Predictor, "from_bundle", classmethod(from_bundle))
    predictor = ModelHost().predictor(ModelKey(str(bundle), 1.0, "float32", "auto"))
    assert predictor.runtime == "keras"
    assert seen == [("auto", True)]  # one load, Predictor.from_bundle's own choice, the session already kept
