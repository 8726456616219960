"""What every page shares: where the bundle and data are, cached loaders, guards.

Not a page (streamlit_app.py lists the pages). Environment:

* ``CXR_ASSIST_BUNDLE``: the model bundle folder (default ``models/default``);
* ``CXR_ASSIST_DEMO``: the demo data set (default ``data/demo``);
* ``CXR_ASSIST_DATA_ROOTS``: further dataset folders the Browse page may open,
  separated by ``os.pathsep``;
* ``CXR_ASSIST_WARM=0``: do not load the model in the background at start;
* ``CXR_ASSIST_RUNTIME``: ``auto`` (default: each member's LiteRT serving
  form where the bundle has one, without TensorFlow; else the Keras models),
  ``litert`` or ``keras`` (see ``cxr_core.serving.litert``);
* ``CXR_ASSIST_COMPUTE``: for Keras members, ``auto`` (default: bfloat16
  trunks where the CPU computes them natively and the backbone gains, see
  ``cxr_core.serving.precision``), ``float32`` or ``bfloat16``.

The model is loaded only when a page needs it or in the background after the
first page, so the home page renders without waiting for it. With the
bundle's serving form (LiteRT) loading takes about a second and imports no
TensorFlow; a bundle that ships its form (``models/default`` does:
:mod:`cxr_core.serving.shipped_form`) has it from the very first start on a
machine, put into the serving cache in about half a second. Without one the
Keras models load (TensorFlow import, building the members, tracing) and, when
the server was started with app.py, the serving form is built in a background
process afterwards, for the next start (:func:`start_serving_build`; a build
stopped with the server resumes at the next one). While the model is still getting
ready, a page that needs it shows the step and a progress bar that updates
(:func:`wait_until_ready`), never a frozen page.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import streamlit as st


def _leave_pages_folder_mode() -> None:
    """Make the very first script run of a fresh server go through streamlit_app.py.

    Streamlit treats an app with a ``pages/`` folder as an old-style multipage
    app until the entry point calls ``st.navigation``; so the first run of a
    fresh server (before streamlit_app.py ever ran) would run a page file on its own, with
    the folder's file list as navigation. Switch the server to ``st.navigation``
    mode at once and rerun, so streamlit_app.py's navigation and page config apply.
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    was = PagesManager.uses_pages_directory  # None until a session's PagesManager looks for the folder
    if was is not False:
        # Imported at server start (app.py) it is still None: set now, no session ever runs in folder mode, even
        # one whose first visit is a page's URL (the page file, not streamlit_app.py, would run, with the folder's
        # file list as navigation).
        PagesManager.uses_pages_directory = False
        if was and get_script_run_ctx(suppress_warning=True) is not None:
            st.rerun()


_leave_pages_folder_mode()

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ENV, DEMO_ENV, ROOTS_ENV, WARM_ENV = "CXR_ASSIST_BUNDLE", "CXR_ASSIST_DEMO", "CXR_ASSIST_DATA_ROOTS", "CXR_ASSIST_WARM"
COMPUTE_ENV, RUNTIME_ENV = "CXR_ASSIST_COMPUTE", "CXR_ASSIST_RUNTIME"

NO_BUNDLE_HELP = """No model bundle was found at `{path}`.

cxr-assist needs a trained model bundle (a folder with `bundle.json` and `model.keras`). To get one:

1. train and evaluate it (see `configs/shipped.toml`):
   `python -m training.train --config configs/shipped.toml --cache cache/nih192`, then
   `python -m training.evaluate --bundle runs/shipped/bundle --data ../shared/nih`;
2. copy the bundle folder to `models/default`, or start the app with
   `CXR_ASSIST_BUNDLE=/path/to/bundle streamlit run app.py`.

The Browse page works without a model (labels and expert boxes only)."""


def _resolve(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def bundle_dir() -> Path:
    return _resolve(os.environ.get(BUNDLE_ENV) or "models/default")


def demo_root() -> Path:
    return _resolve(os.environ.get(DEMO_ENV) or "data/demo")


def _stamp(path: Path) -> float:
    """Modification time of a bundle's bundle.json, so a replaced bundle is reloaded."""
    try:
        return (path / "bundle.json").stat().st_mtime
    except OSError:
        return 0.0


def bundle_present(path: Path | None = None) -> bool:
    path = path or bundle_dir()
    return (path / "bundle.json").is_file()


@st.cache_data(show_spinner=False)
def _read_json(path: str, stamp: float) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def bundle_metadata() -> dict | None:
    """``bundle.json`` of the configured bundle without loading the model; None if absent or unreadable."""
    path = bundle_dir()
    return _read_json(str(path / "bundle.json"), _stamp(path)) if bundle_present(path) else None


def bundle_metrics() -> dict | None:
    """The bundle's ``metrics.json`` (None until the bundle has been evaluated)."""
    path = bundle_dir()
    name = (bundle_metadata() or {}).get("metrics_file") or "metrics.json"
    file = path / name
    return _read_json(str(file), file.stat().st_mtime) if file.is_file() else None


# One predictor per (bundle, version, compute mode) per process, shared by all sessions. A plain
# lock-protected dict (not only st.cache_resource) so the warm-up thread, which has
# no Streamlit script context, fills the same store the pages read.
_PREDICTORS: dict[tuple[str, float, str], object] = {}
# Held while the model (and TensorFlow, the first time) loads: two threads importing TensorFlow at once get a
# half-initialised module, so every first import of it goes through this lock (the warm-up's and a page's).
_PREDICTOR_LOCK = threading.Lock()
_STATE_LOCK = threading.Lock()  # guards _WARM_STATE only, so the progress never waits for a load
_WARMING: set[str] = set()
#: Seconds the warm-up waits before it starts. 0: it starts with the first page's script run (the home page does not
#: need TensorFlow, and the model is the slowest thing to get ready).
WARM_UP_DELAY_S = 0.0
#: Seconds between the model answering and its tracing starting (see warm_up).
TRACE_DELAY_S = 1.0
#: What the warm-up is doing, for the "getting ready" progress: read by pages, written by the warm-up thread.
_WARM_STATE: dict = {"running": False, "stage": "", "step": 0, "steps": 2, "error": None, "started": 0.0}
_WARM_STEPS = ("starting TensorFlow", "loading the model")
#: Set by app.py's server start (warm_up_at_start): only a server builds the serving form in the background, never a
#: page script run by itself (a test's AppTest, ``streamlit run streamlit_app.py`` still gets the Keras path).
SERVER_STARTED = threading.Event()


# Every model call runs on this one long-lived thread (Streamlit starts a new
# thread for each script run), so TensorFlow's per-thread state is set up once
# and the warm-up's first call, which traces the compiled graphs, happens there.
_MODEL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-assist-model")


def on_model_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` on the model thread; its result (or exception) here."""
    return _MODEL_THREAD.submit(function, *args, **kwargs).result()


def _keep_keras_session() -> None:
    """Stop Streamlit from clearing the Keras session (and collecting garbage) after every script run.

    Streamlit calls ``keras.backend.clear_session()`` at the end of each run
    (``_clean_problem_modules`` in its script runner), for scripts that build a
    model on every run. This app builds its model once and shares it; clearing
    the session after each run drops TensorFlow's compiled kernels (the next
    analysis pays ~0.3 s to rebuild them) and forces a full garbage collection
    of the TensorFlow process (up to ~1 s of CPU per run on 2 cores). The call
    is skipped only when it comes from that Streamlit function; every other
    caller gets the real ``clear_session``.
    """
    import keras

    real = keras.backend.clear_session
    if getattr(real, "_cxr_assist_wrapper", False):
        return

    def clear_session(*args, **kwargs):
        if sys._getframe(1).f_code.co_name == "_clean_problem_modules":
            return None
        return real(*args, **kwargs)

    clear_session._cxr_assist_wrapper = True
    clear_session.__doc__ = real.__doc__
    keras.backend.clear_session = clear_session
    # Likewise Streamlit's full garbage collection after every run (runner.postScriptGC):
    # with TensorFlow loaded it costs ~0.5-1 s of CPU per run. Python's own collector
    # still runs. (Setting `[runner] postScriptGC = false` in .streamlit/config.toml
    # does the same from the configuration.)
    try:
        from streamlit import config

        config.set_option("runner.postScriptGC", False)
    except Exception:  # noqa: BLE001 - an option renamed in another Streamlit: keep its default
        pass


#: streamlit_app.py's pages, in its order (set on every script run, before the page runs; read by the home page).
_NAVIGATION: list = []


def remember_navigation(pages: dict[str, list]) -> None:
    """Keep the navigation's pages (``{section: [st.Page, ...]}``) for :func:`navigation_pages`."""
    global _NAVIGATION
    _NAVIGATION = [page for section in pages.values() for page in section]  # one swap: a reader never sees it half-built


def navigation_pages() -> list:
    """Every page of the app's navigation, in order (empty when a page script runs without streamlit_app.py)."""
    return list(_NAVIGATION)


def compute_mode() -> str:
    """How the model computes, from ``CXR_ASSIST_COMPUTE`` (default ``auto``; checked when the model loads)."""
    return os.environ.get(COMPUTE_ENV, "").strip() or "auto"


def runtime_mode() -> str:
    """How the model runs, from ``CXR_ASSIST_RUNTIME`` (default ``auto``: LiteRT where the serving form exists)."""
    return os.environ.get(RUNTIME_ENV, "").strip() or "auto"


def serving_form_ready(path: Path) -> bool:
    """Whether the bundle's LiteRT serving form is there and used (no TensorFlow to import): reads ~0.1 s of hashes,
    and puts the forms the bundle ships into the serving cache when they are not there yet (~0.5 s, once a machine)."""
    if runtime_mode() == "keras":
        return False
    from cxr_core.bundle.ensemble import load_bundle
    from cxr_core.serving.litert import ServingFormError, find_serving_form

    with _SERVING_FORM_LOCK:  # the server start's and the warm-up's calls: the shipped forms are put together once
        try:
            find_serving_form(load_bundle(path, load_model=False))
        except (ServingFormError, OSError, ValueError):  # BundleError is a ValueError: the page that loads it says why
            return False
    return True


_SERVING_FORM_LOCK = threading.Lock()


def _load_predictor(path: str, stamp: float, compute: str, runtime: str, *, compiled: bool = True):
    """The shared Predictor, loaded on first use: the bundle's LiteRT serving form unless ``runtime`` is ``keras`` or
    the form is missing (then the Keras models). ``compiled=False`` (the warm-up's load) answers op by op until its
    graphs are traced, so the first film need not wait for the tracing (Keras members only)."""
    with _PREDICTOR_LOCK:
        key = (path, stamp, compute, runtime)
        if key not in _PREDICTORS:
            from cxr_core.serving.predictor import RUNTIMES, Predictor

            if runtime not in RUNTIMES:
                raise ValueError(f"the runtime must be one of {', '.join(RUNTIMES)} ({RUNTIME_ENV}), got {runtime!r}")
            _PREDICTORS.clear()  # a replaced bundle frees the old model
            predictor = None
            if runtime != "keras":
                from cxr_core.serving.litert import ServingFormError

                try:
                    predictor = Predictor.from_bundle(path, compute=compute, runtime="litert")
                except ServingFormError as exc:
                    if runtime == "litert":
                        raise
                    print(f"cxr-assist: the Keras models serve: {exc}", file=sys.stderr, flush=True)
            if predictor is None:
                # Before the Keras models are built, not after: Streamlit clears the Keras session after every script
                # run (the progress notice reruns twice a second), which would tear the models down as they load.
                _keep_keras_session()
                predictor = Predictor.from_bundle(path, compute=compute, compiled=compiled, runtime="keras")
            _PREDICTORS[key] = predictor
        return _PREDICTORS[key]


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def load_predictor(path: str, stamp: float, compute: str, runtime: str):
    return _load_predictor(path, stamp, compute, runtime)


def warm_up() -> None:
    """Start loading the configured model in a background thread (once per process and bundle)."""
    if os.environ.get(WARM_ENV, "1") == "0":
        return
    path = bundle_dir()
    if not bundle_present(path):
        return
    key = f"{path}:{_stamp(path)}"
    with _PREDICTOR_LOCK:
        if key in _WARMING:
            return
        _WARMING.add(key)

    def stage(text: str) -> None:
        print(f"cxr-assist: {text} ({time.monotonic() - _WARM_STATE['started']:.1f} s into the warm-up)", file=sys.stderr,
              flush=True)
        with _STATE_LOCK:
            step = next((i for i, name in enumerate(_WARM_STEPS) if text.startswith(name)), _WARM_STATE["step"])
            _WARM_STATE.update(stage=text, step=step)

    def work():
        time.sleep(WARM_UP_DELAY_S)
        try:
            lite = serving_form_ready(path)
            if not lite and runtime_mode() != "litert":  # litert without a form fails below, with its reason
                stage("starting TensorFlow")
                with _PREDICTOR_LOCK:
                    import keras  # noqa: F401 - the slowest import (TensorFlow), timed as its own step

            stage("loading the model" + (" (LiteRT serving form)" if lite else ""))
            predictor = _load_predictor(*current_bundle(), compiled=False)  # keeps the Keras session first if Keras
        except Exception as exc:  # noqa: BLE001 - the page that needs the model reports the error
            with _STATE_LOCK:
                _WARM_STATE.update(error=f"{type(exc).__name__}: {exc}", running=False)
            return
        # Loaded: pages analyse from now on, op by op until each member's graphs are traced. The tracing goes one
        # member at a time through the model thread, after a short pause: a film that waited for the model (the first
        # of a demo) is analysed first, and a later one waits for at most one member's tracing, never for all.
        with _STATE_LOCK:
            _WARM_STATE["running"] = False
        stage(f"ready: analyses run ({'LiteRT serving form' if predictor.runtime == 'litert' else 'Keras models'})")
        if predictor.runtime == "litert":
            return  # nothing to trace
        try:
            time.sleep(TRACE_DELAY_S)
            for index in range(len(predictor.members)):
                stage(f"compiling member {index + 1} of {len(predictor.members)} for this CPU")
                on_model_thread(predictor.compile_member, index)
        except Exception as exc:  # noqa: BLE001 - the analyses still run op by op; say why in the log
            print(f"cxr-assist: compiling the model failed, analyses run uncompiled: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
        finally:
            stage("compiled")
        if SERVER_STARTED.is_set() and runtime_mode() == "auto":
            start_serving_build(path)

    with _STATE_LOCK:
        _WARM_STATE.update(running=True, stage="starting", step=0, error=None, started=time.monotonic())
    threading.Thread(target=work, name="cxr-assist-warm-up", daemon=True).start()


#: Set when a page's script first runs in this process (streamlit_app.py sets it before it renders anything).
PAGE_STARTED = threading.Event()
#: How long app.py's server start waits for a browser before it starts the warm-up itself (see warm_up_at_start).
BROWSER_GRACE_S = 2.0


def warm_up_at_start(grace_s: float | None = None) -> None:
    """At server start: start the warm-up unless a browser's first page comes within ``grace_s`` seconds.

    Measured on the 2 cores (benchmarks/APP_RESULTS.md), a warm-up running while the first page renders slows that
    page (home page 6.9 s instead of 3.2 s) and gains nothing overall: the first findings came 20.9 s after the
    launch against 20.5 s, the cores being the limit. So when a browser connects at once (Streamlit opens one at
    start), its first page runs first and starts the warm-up when done (streamlit_app.py); when none comes (a server
    started for readers who connect later), the model gets ready before anyone asks.

    What is cheap starts at once, though: on a machine's first start the forms the bundle ships are put into the
    serving cache (about 0.5 s of CPU, no TensorFlow) while the server and the browser start, so the first findings
    come as soon as on any later start (measured: benchmarks/APP_RESULTS.md).
    """
    wait = BROWSER_GRACE_S if grace_s is None else grace_s
    SERVER_STARTED.set()
    path = bundle_dir()
    if bundle_present(path) and os.environ.get(WARM_ENV, "1") != "0":
        threading.Thread(target=serving_form_ready, args=(path,), name="cxr-assist-serving-form", daemon=True).start()

    def start_unless_a_page_came() -> None:
        if not PAGE_STARTED.wait(wait):
            warm_up()

    threading.Thread(target=start_unless_a_page_came, name="cxr-assist-warm-up-timer", daemon=True).start()


def start_serving_build(path: Path):
    """Build the bundle's LiteRT serving form in a background process at low priority (``training.export_serving``),
    for the next start of the app; its lines go to the server's log. Returns the process (None when it cannot start).

    A separate process, not a thread: the conversion holds the interpreter lock for seconds at a time, and at
    ``nice`` 10 it takes the cores only when the readers' analyses leave them idle (about 30 s of CPU for the shipped
    ensemble). A form is written atomically, so stopping the server meanwhile leaves no half-built form.
    """
    import subprocess

    # --low-priority: the command lowers its own priority (a preexec_fn is unsafe in this many-threaded process).
    command = [sys.executable, "-m", "training.export_serving", "--bundle", str(path), "--low-priority"]
    print(f"cxr-assist: building the LiteRT serving form in the background for the next start: {' '.join(command)}",
          file=sys.stderr, flush=True)
    try:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"cxr-assist: could not start the serving-form build: {exc}", file=sys.stderr)
        return None


def warm_state() -> dict:
    """A copy of what the background warm-up is doing: ``running``, ``stage``, ``step`` of ``steps``, ``error``,
    ``seconds`` since it started."""
    with _STATE_LOCK:
        state = dict(_WARM_STATE)
    state["seconds"] = time.monotonic() - state["started"] if state["started"] else 0.0
    return state


def getting_ready_notice() -> bool:
    """While the background warm-up is still getting the model ready: its step and a progress bar that updates
    every second, and the whole page runs again when it is done. Returns whether it is still running (nothing shown
    otherwise); never blocks."""
    if not warm_state()["running"]:
        return False

    @st.fragment(run_every=0.5)  # how soon a page waiting for the model notices it is ready
    def progress() -> None:
        state = warm_state()
        if not state["running"]:
            st.rerun()  # ready (or failed: the page then says why): the whole page again
        st.progress(min(state["step"] + 0.5, state["steps"]) / state["steps"],
                    text=f"Getting the model ready: {state['stage']} … ({state['seconds']:.0f} s since the app started). "
                         "This happens once, when the app starts.")

    progress()
    return True


def wait_until_ready() -> None:
    """:func:`getting_ready_notice`, then ``st.stop()`` while the model is not ready (the notice reruns the page)."""
    if getting_ready_notice():
        st.stop()


def require_predictor():
    """The loaded Predictor, or a clear message and ``st.stop()`` when there is none.

    While the background warm-up is still loading it, a progress message
    instead of a page that waits (:func:`wait_until_ready`).
    """
    path = bundle_dir()
    if not bundle_present(path):
        st.error(NO_BUNDLE_HELP.format(path=path))
        st.stop()
    wait_until_ready()
    try:
        return load_predictor(*current_bundle())
    except Exception as exc:  # BundleError, a truncated model file ...: never a traceback
        st.error(f"The model bundle at `{path}` could not be loaded: {exc}")
        st.stop()


def compute_note(predictor) -> str:
    """The Analyze caption's " Computed with the trunk of <members> in bfloat16 ..." sentence; "" when all run in float32."""
    fast = [name for name, dtype in predictor.compute_dtypes.items() if dtype == "bfloat16"]
    if not fast:
        return ""
    return (f" Computed with the trunk of {', '.join(fast)} in bfloat16 on this CPU (probabilities within about 0.01 "
            f"of float32; set {COMPUTE_ENV}=float32 for the evaluated numerics).")


def optional_predictor():
    """The Predictor if a bundle is configured and loads, else None (no message)."""
    path = bundle_dir()
    if not bundle_present(path):
        return None
    try:
        return load_predictor(*current_bundle())
    except Exception:  # noqa: BLE001 - pages that only enrich with predictions carry on
        return None


@st.cache_resource(show_spinner="Reading the dataset…", max_entries=4)
def load_dataset(root: str):
    from cxr_core.data import NIHDataset

    return NIHDataset(root)


@st.cache_data(show_spinner=False, max_entries=4)
def _expert_labels(path: str, stamp: float):
    from cxr_core.data import read_expert_labels

    return read_expert_labels(path).set_index("image")


def expert_labels(root):
    """The radiologists' labels (Majkowska et al. 2019) under a dataset folder, indexed by image; None if absent or unreadable."""
    from cxr_core.data import find_expert_labels

    path = find_expert_labels(root)
    if path is None:
        return None
    try:
        return _expert_labels(str(path), path.stat().st_mtime)
    except (ValueError, OSError):  # a broken extra file must not break browsing
        return None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@st.cache_resource(show_spinner=False, max_entries=16, ttl=3600)
def analyze_bytes(bundle: str, stamp: float, compute: str, runtime: str, key: str, _data: bytes):
    """Analyse uploaded bytes once (by content hash); the Analysis is shared read-only."""
    return on_model_thread(load_predictor(bundle, stamp, compute, runtime).analyze, _data)


@st.cache_resource(show_spinner=False, max_entries=32, ttl=3600)
def analyze_path(bundle: str, stamp: float, compute: str, runtime: str, path: str, mtime: float):
    return on_model_thread(load_predictor(bundle, stamp, compute, runtime).analyze, path)


def current_bundle() -> tuple[str, float, str, str]:
    """``(bundle folder, its version stamp, compute mode, runtime mode)``: the key of the loaded model and its cached
    analyses."""
    path = bundle_dir()
    return str(path), _stamp(path), compute_mode(), runtime_mode()


def allowed_roots() -> list[Path]:
    """Folders the Browse page may open: the demo set and those of ``CXR_ASSIST_DATA_ROOTS``."""
    roots = [demo_root()]
    roots += [_resolve(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def check_dataset_root(text: str) -> Path:
    """The real folder a user named, if it is inside an allowed root.

    Symlinks and ``..`` are resolved before the check, so neither can lead out.

    Raises:
        ValueError: with a message for the page.
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("Enter a dataset folder.")
    if "\x00" in text:
        raise ValueError("That folder name contains a NUL character.")
    path = _resolve(text).resolve()
    allowed = allowed_roots()
    if not any(path == root or root in path.parents for root in allowed):
        listed = ", ".join(f"`{r}`" for r in allowed)
        raise ValueError(
            f"`{text}` is outside the folders this app may read ({listed}). "
            f"Ask the administrator to add it to {ROOTS_ENV}."
        )
    if not path.is_dir():
        raise ValueError(f"`{text}` is not a folder.")
    return path


@st.cache_resource(show_spinner=False)
def _reader_store(db_path: str):
    from cxr_core.reader_study import ReaderStudyStore

    return ReaderStudyStore(db_path or None)


def reader_store():
    """The reader-study store (one per database file, shared by all sessions); file from ``CXR_READER_STUDY_DB``."""
    return _reader_store(os.environ.get("CXR_READER_STUDY_DB", "").strip())
