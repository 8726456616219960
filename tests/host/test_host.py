"""The app's host (cxr_core.host) without Streamlit: settings, loading through the one runtime choice, the warm-up's
state machine, the model thread, the server start. A stand-in Predictor keeps these fast; the real bundles' warm-ups
are in tests/app/test_app_startup.py."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cxr_core.host import ModelHost, ModelKey, current_bundle, model_host, settings
from cxr_core.serving.predictor import Predictor
from tests.conftest import REPO_ROOT


class StandIn:
    """What the host uses of a Predictor: its runtime, its members, compile_member."""

    def __init__(self, runtime: str, members: int = 2):
        self.runtime, self.members, self.compiled, self.threads = runtime, [object()] * members, [], []

    def compile_member(self, index: int) -> None:
        self.compiled.append(index)
        self.threads.append(threading.current_thread().name)


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    path = tmp_path / "bundle"
    path.mkdir()
    (path / "bundle.json").write_text("{}")
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", str(path))
    monkeypatch.setenv("CXR_ASSIST_WARM", "1")
    monkeypatch.delenv("CXR_ASSIST_RUNTIME", raising=False)
    monkeypatch.setenv("CXR_ASSIST_COMPUTE", "float32")
    return path


@pytest.fixture
def loads(monkeypatch):
    """Predictor.from_bundle replaced: records its calls, returns a StandIn of the runtime set in ``loads.serve``."""
    calls = []

    def from_bundle(cls, path, **kwargs):
        calls.append((str(path), kwargs))
        if isinstance(calls.serve, Exception):
            raise calls.serve
        return StandIn(calls.serve)

    calls = type("Calls", (list,), {"serve": "litert"})()
    monkeypatch.setattr(Predictor, "from_bundle", classmethod(from_bundle))
    monkeypatch.setattr(model_host, "keep_keras_session", lambda: calls.append(("keep_keras_session", {})))
    monkeypatch.setattr(model_host, "start_serving_build", lambda path: calls.append(("build", {"path": path})))
    return calls


def wait_done(host: ModelHost, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while host.warm_state().running and time.monotonic() < deadline:
        time.sleep(0.01)
    return host.warm_state()


def test_importing_the_host_imports_neither_streamlit_nor_tensorflow():
    code = ("import sys, cxr_core.host\n"
            "print(sorted(m for m in ('streamlit', 'tensorflow', 'keras', 'ai_edge_litert') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_settings_come_from_the_environment(bundle, monkeypatch):
    assert current_bundle() == ModelKey(str(bundle), (bundle / "bundle.json").stat().st_mtime, "float32", "auto")
    monkeypatch.setenv("CXR_ASSIST_RUNTIME", " keras ")
    monkeypatch.setenv("CXR_ASSIST_BUNDLE", "models/elsewhere")  # relative: from the repository's root
    key = current_bundle()
    assert key.bundle == str(REPO_ROOT / "models" / "elsewhere") and key.stamp == 0.0 and key.runtime == "keras"
    assert not settings.bundle_present()
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")
    assert not settings.warm_up_wanted()


def test_the_model_loads_once_through_the_one_runtime_choice(bundle, loads, monkeypatch):
    host = ModelHost()
    monkeypatch.setattr(host, "serving_form_ready", lambda model=None: True)
    key = current_bundle()
    first = host.predictor(key)
    assert host.predictor(key) is first and host.loaded() == [first]
    # One call, the configured runtime passed on as it is: Predictor.from_bundle alone chooses LiteRT or Keras.
    assert loads == [(str(bundle), {"compute": "float32", "compiled": True, "runtime": "auto"})]
    other = host.predictor(key._replace(compute="bfloat16"))
    assert other is not first and host.loaded() == [other]  # a new key frees the old model


def test_the_keras_session_is_kept_before_keras_models_load(bundle, loads, monkeypatch):
    host = ModelHost()
    monkeypatch.setattr(host, "serving_form_ready", lambda model=None: False)  # no form: from_bundle will use Keras
    loads.serve = "keras"
    host.predictor(current_bundle())
    assert [name for name, _ in loads][:2] == ["keep_keras_session", str(bundle)]


def test_an_unknown_runtime_names_its_variable(bundle, loads, monkeypatch):
    monkeypatch.setenv("CXR_ASSIST_RUNTIME", "tpu")
    with pytest.raises(ValueError, match="CXR_ASSIST_RUNTIME"):
        ModelHost().predictor()
    assert loads == []


def test_a_litert_warm_up_loads_and_is_ready_without_tensorflow_steps(bundle, loads, monkeypatch, capsys):
    host = ModelHost(trace_delay_s=0.0)
    monkeypatch.setattr(host, "serving_form_ready", lambda model=None: True)
    host.warm_up()
    state = wait_done(host)
    assert state.error is None and state.step == 1 and state.started > 0
    assert state.stage == "ready: analyses run (LiteRT serving form)"
    assert loads[0][1]["compiled"] is False  # the warm-up's load answers before any tracing
    log = capsys.readouterr().err
    assert "loading the model (LiteRT serving form)" in log and "starting TensorFlow" not in log
    host.warm_up()  # once per bundle version
    assert len(loads) == 1


def test_a_keras_warm_up_starts_tensorflow_then_compiles_on_the_model_thread(bundle, loads, monkeypatch):
    host = ModelHost(trace_delay_s=0.0)
    monkeypatch.setattr(host, "serving_form_ready", lambda model=None: False)
    loads.serve = "keras"
    host.server_started.set()
    host.warm_up()
    wait_done(host)
    deadline = time.monotonic() + 10
    while not any(name == "build" for name, _ in loads) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [name for name, _ in loads] == ["keep_keras_session", str(bundle), "keep_keras_session", "build"]
    predictor = host.loaded()[0]
    assert predictor.compiled == [0, 1] and all(t.startswith("cxr-assist-model") for t in predictor.threads)
    assert host.warm_state().stage == "compiled"


def test_a_page_script_alone_never_starts_the_serving_form_build(bundle, loads, monkeypatch):
    host = ModelHost(trace_delay_s=0.0)
    monkeypatch.setattr(host, "serving_form_ready", lambda model=None: False)
    loads.serve = "keras"
    host.warm_up()  # no server start
    wait_done(host)
    deadline = time.monotonic() + 5
    while host.warm_state().stage != "compiled" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host.warm_state().stage == "compiled" and "build" not in [name for name, _ in loads]


def test_a_failed_warm_up_says_why_and_stops(bundle, loads, monkeypatch):
    host = ModelHost()
    monkeypatch.setattr(host, "serving_form_ready", lambda model=None: True)
    loads.serve = ValueError("not a bundle")
    host.warm_up()
    state = wait_done(host)
    assert not state.running and state.error == "ValueError: not a bundle"


def test_no_warm_up_when_switched_off_or_without_a_bundle(bundle, loads, monkeypatch):
    host = ModelHost()
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")
    host.warm_up()
    monkeypatch.setenv("CXR_ASSIST_WARM", "1")
    (bundle / "bundle.json").unlink()
    host.warm_up()
    assert not host.warm_state().running and host.warm_state().started == 0.0 and loads == []


def test_the_server_warms_up_unless_a_page_comes_first(bundle, monkeypatch):
    """No page within the grace time: the warm-up starts by itself. A page first: it is left to that page."""
    monkeypatch.setenv("CXR_ASSIST_WARM", "0")  # no form check thread; warm_up itself is replaced
    host = ModelHost()
    started = threading.Event()
    monkeypatch.setattr(host, "warm_up", started.set)
    host.warm_up_at_start(0.05)
    assert host.server_started.is_set() and started.wait(10), "no page came and the warm-up did not start"

    host, started = ModelHost(), threading.Event()
    monkeypatch.setattr(host, "warm_up", started.set)
    host.page_started.set()  # streamlit_app.py's mark
    host.warm_up_at_start(0.05)
    assert not started.wait(0.5), "a page came first, yet the server started the warm-up too"


def test_streamlit_keeps_the_keras_session_between_runs():
    """Streamlit's per-run keras clear_session is skipped; every other caller still clears."""
    import keras

    model_host.keep_keras_session()
    model_host.keep_keras_session()  # idempotent: wraps once
    assert keras.backend.clear_session._cxr_assist_wrapper

    def _clean_problem_modules():  # the name of the Streamlit function that calls it
        keras.backend.clear_session()

    before = keras.layers.Dense(1).name
    _clean_problem_modules()
    assert keras.layers.Dense(1).name != before  # names keep counting: the session was kept
    keras.backend.clear_session()
    assert keras.layers.Dense(1).name == "dense"  # a direct call still resets Keras


def test_the_servers_configuration_turns_off_the_per_run_garbage_collection():
    import tomllib

    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["runner"]["postScriptGC"] is False


def test_no_private_streamlit_api_in_the_app():
    for path in [REPO_ROOT / "app.py", REPO_ROOT / "streamlit_app.py", *sorted((REPO_ROOT / "pages").glob("*.py")),
                 *sorted(Path(model_host.__file__).parent.glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        for private in (r"streamlit\.runtime", r"PagesManager", r"\bst\._", r"\._pages\b"):
            assert re.search(private, text) is None, (path.name, private)
