"""Keeping the app's model ready, without Streamlit: load it, warm it up, run it on one thread.

One :class:`ModelHost` per process (:data:`HOST`) holds the loaded Predictor, shared by every page and session. It
loads the model through the one runtime choice, ``Predictor.from_bundle(runtime=...)`` (``auto``: each member's LiteRT
serving form where the bundle has one, no TensorFlow; else the Keras models). Its warm-up gets the model ready in a
background thread and says what it is doing (:meth:`ModelHost.warm_state`), so a page can show the step and a
progress bar instead of a frozen page. With the serving form loading takes about a second and imports no TensorFlow;
a bundle that ships its form (``models/default`` does: :mod:`cxr_core.serving.shipped_form`) has it from the very
first start on a machine, put into the serving cache in about half a second. Without one the Keras models load
(TensorFlow import, building the members, tracing) and, on a server (:meth:`ModelHost.warm_up_at_start`), the
serving form is built in a background process afterwards, for the next start (:func:`start_serving_build`; a build
stopped with the server resumes at the next one).

Every model call runs on one long-lived thread (:meth:`ModelHost.on_model_thread`; a web server starts a new thread
for each request), so TensorFlow's per-thread state is set up once and the warm-up's tracing happens there.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_core.host.settings import (
    REPO_ROOT,
    RUNTIME_ENV,
    ModelKey,
    bundle_present,
    current_bundle,
    warm_up_wanted,
)

if TYPE_CHECKING:
    from cxr_core.serving.predictor import Predictor

#: The warm-up's steps before the model answers, for the progress bar (a LiteRT load has only the second).
WARM_STEPS = ("starting TensorFlow", "loading the model")
# Held while a model (and TensorFlow, the first time) loads, in every host of the process: two threads importing
# TensorFlow at once get a half-initialised module, so every first import of it goes through this lock.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class WarmState:
    """What the background warm-up is doing: ``stage`` (its words), ``step`` of ``steps`` (the progress bar),
    ``error`` (why it failed, None if not), ``started`` (``time.monotonic()``; 0.0 before it ever ran)."""

    running: bool = False
    stage: str = ""
    step: int = 0
    steps: int = len(WARM_STEPS)
    error: str | None = None
    started: float = 0.0

    @property
    def seconds(self) -> float:
        """Seconds since the warm-up started (0.0 before it ever ran)."""
        return time.monotonic() - self.started if self.started else 0.0


class ModelHost:
    """The process's model: loaded once per bundle version, compute and runtime mode, shared by every caller.

    Args:
        trace_delay_s: seconds between the model answering and its tracing starting (Keras members), so a film that
            waited for the model (the first of a demo) is analysed first.
        browser_grace_s: how long :meth:`warm_up_at_start` waits for a first page before it starts the warm-up itself.
    """

    def __init__(self, *, trace_delay_s: float = 1.0, browser_grace_s: float = 2.0):
        self.trace_delay_s = trace_delay_s
        self.browser_grace_s = browser_grace_s
        #: Set by :meth:`warm_up_at_start`: only a server builds the serving form in the background, never a page
        #: script run by itself (a test's AppTest; ``streamlit run streamlit_app.py`` still gets the Keras path).
        self.server_started = threading.Event()
        #: Set when a page's script first runs in this process (the app's entry script, before it renders anything).
        self.page_started = threading.Event()
        self._predictors: dict[ModelKey, Predictor] = {}
        self._state = WarmState()
        self._state_lock = threading.Lock()  # guards _state and _warming only, so the progress never waits for a load
        self._warming: set[tuple[str, float]] = set()
        self._form_lock = threading.Lock()  # the server start's and the warm-up's checks: shipped forms put in once
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-assist-model")

    # -- the model --------------------------------------------------------------------------------------------------

    def on_model_thread(self, function, *args, **kwargs):
        """``function(*args, **kwargs)`` on the model thread; its result (or exception) here."""
        return self._model_thread.submit(function, *args, **kwargs).result()

    def loaded(self) -> list[Predictor]:
        """The Predictors loaded now (at most one: a new model key frees the old one)."""
        return list(self._predictors.values())

    def predictor(self, model: ModelKey | None = None) -> Predictor:
        """The shared Predictor of ``model`` (default: the configured one), loaded on first use.

        Raises:
            ValueError: an unknown runtime mode; BundleError (a ValueError) for a bundle that is not one.
            ServingFormError: runtime ``litert`` and a member has no usable serving form.
        """
        model = model or current_bundle()
        if model not in self._predictors and self._keras_will_load(model):
            # Before the Keras models are built, not after: a Streamlit server clears the Keras session after every
            # script run (a progress notice reruns twice a second), which would tear the models down as they load.
            with _LOAD_LOCK:
                keep_keras_session()
        return self._load(model, compiled=True)

    def serving_form_ready(self, model: ModelKey | None = None) -> bool:
        """Whether the bundle's LiteRT serving form is there and would serve (runtime not ``keras``): reads ~0.1 s of
        hashes, and puts the forms the bundle ships into the serving cache when they are not there yet (~0.5 s, once
        a machine). Only tells what to prepare (TensorFlow or not); ``Predictor.from_bundle`` makes the choice."""
        model = model or current_bundle()
        if model.runtime == "keras":
            return False
        from cxr_core.bundle.ensemble import load_bundle
        from cxr_core.serving.litert import ServingFormError, find_serving_form

        with self._form_lock:
            try:
                find_serving_form(load_bundle(model.bundle, load_model=False))
            except (ServingFormError, OSError, ValueError):  # BundleError is a ValueError: the page that loads says why
                return False
        return True

    def _keras_will_load(self, model: ModelKey) -> bool:
        return model.runtime == "keras" or (model.runtime == "auto" and not self.serving_form_ready(model))

    def _load(self, model: ModelKey, *, compiled: bool) -> Predictor:
        """The Predictor of ``model`` from the store, or loaded through ``Predictor.from_bundle``'s runtime choice.
        ``compiled=False`` (the warm-up's load) answers op by op until its graphs are traced (Keras members)."""
        with _LOAD_LOCK:
            if model not in self._predictors:
                from cxr_core.serving.predictor import RUNTIMES, Predictor

                if model.runtime not in RUNTIMES:
                    raise ValueError(f"the runtime must be one of {', '.join(RUNTIMES)} ({RUNTIME_ENV}), "
                                     f"got {model.runtime!r}")
                self._predictors.clear()  # a replaced bundle frees the old model
                predictor = Predictor.from_bundle(model.bundle, compute=model.compute, compiled=compiled,
                                                  runtime=model.runtime)
                if predictor.runtime == "keras":
                    keep_keras_session()  # already kept when prepared for; a form gone stale meanwhile: from now on
                    if model.runtime == "auto":
                        print("cxr-assist: the Keras models serve (no usable LiteRT serving form)", file=sys.stderr,
                              flush=True)
                self._predictors[model] = predictor
            return self._predictors[model]

    # -- the warm-up ------------------------------------------------------------------------------------------------

    def warm_state(self) -> WarmState:
        """What the background warm-up is doing now."""
        with self._state_lock:
            return self._state

    def warm_up(self, model: ModelKey | None = None) -> None:
        """Start getting ``model`` (default: the configured one) ready in a background thread, once per bundle version;
        nothing when ``CXR_ASSIST_WARM=0`` or there is no bundle."""
        if not warm_up_wanted():
            return
        model = model or current_bundle()
        if not bundle_present(Path(model.bundle)):
            return
        with self._state_lock:
            if (model.bundle, model.stamp) in self._warming:
                return
            self._warming.add((model.bundle, model.stamp))
            self._state = WarmState(running=True, stage="starting", started=time.monotonic())
        threading.Thread(target=self._warm, args=(model,), name="cxr-assist-warm-up", daemon=True).start()

    def _stage(self, text: str, **changes) -> None:
        with self._state_lock:
            step = next((i for i, name in enumerate(WARM_STEPS) if text.startswith(name)), self._state.step)
            self._state = replace(self._state, stage=text, step=step, **changes)
            seconds = self._state.seconds
        print(f"cxr-assist: {text} ({seconds:.1f} s into the warm-up)", file=sys.stderr, flush=True)

    def _warm(self, model: ModelKey) -> None:
        try:
            lite = self.serving_form_ready(model)
            if not lite and model.runtime != "litert":  # litert without a form fails below, with its reason
                self._stage("starting TensorFlow")
                with _LOAD_LOCK:
                    keep_keras_session()  # imports Keras (TensorFlow): the slowest import, timed as its own step
            self._stage("loading the model" + (" (LiteRT serving form)" if lite else ""))
            predictor = self._load(model, compiled=False)
        except Exception as exc:  # noqa: BLE001 - the page that needs the model reports the error
            with self._state_lock:
                self._state = replace(self._state, running=False, error=f"{type(exc).__name__}: {exc}")
            return
        # Loaded: analyses run from now on, op by op until each member's graphs are traced. The tracing goes one
        # member at a time through the model thread, after a short pause: a film that waited for the model (the first
        # of a demo) is analysed first, and a later one waits for at most one member's tracing, never for all.
        kind = "LiteRT serving form" if predictor.runtime == "litert" else "Keras models"
        self._stage(f"ready: analyses run ({kind})", running=False)
        if predictor.runtime == "litert":
            return  # nothing to trace
        try:
            time.sleep(self.trace_delay_s)
            for index in range(len(predictor.members)):
                self._stage(f"compiling member {index + 1} of {len(predictor.members)} for this CPU")
                self.on_model_thread(predictor.compile_member, index)
        except Exception as exc:  # noqa: BLE001 - the analyses still run op by op; say why in the log
            print(f"cxr-assist: compiling the model failed, analyses run uncompiled: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
        finally:
            self._stage("compiled")
        if self.server_started.is_set() and model.runtime == "auto":
            start_serving_build(Path(model.bundle))

    def warm_up_at_start(self, grace_s: float | None = None) -> None:
        """At a server's start: start the warm-up unless a first page comes within ``grace_s`` seconds (default
        ``browser_grace_s``); returns at once.

        Measured on the 2 cores (benchmarks/APP_RESULTS.md), a warm-up running while the first page renders slows that
        page (home page 6.9 s instead of 3.2 s) and gains nothing overall: the first findings came 20.9 s after the
        launch against 20.5 s, the cores being the limit. So when a browser connects at once (Streamlit opens one at
        start), its first page runs first and starts the warm-up when done (the app's entry script); when none comes
        (a server started for readers who connect later), the model gets ready before anyone asks.

        What is cheap starts at once, though: on a machine's first start the forms the bundle ships are put into the
        serving cache (about 0.5 s of CPU, no TensorFlow) while the server and the browser start, so the first
        findings come as soon as on any later start (measured: benchmarks/APP_RESULTS.md).
        """
        wait = self.browser_grace_s if grace_s is None else grace_s
        self.server_started.set()
        model = current_bundle()
        if bundle_present(Path(model.bundle)) and warm_up_wanted():
            threading.Thread(target=self.serving_form_ready, args=(model,), name="cxr-assist-serving-form",
                             daemon=True).start()

        def start_unless_a_page_came() -> None:
            if not self.page_started.wait(wait):
                self.warm_up()

        threading.Thread(target=start_unless_a_page_came, name="cxr-assist-warm-up-timer", daemon=True).start()


def keep_keras_session() -> None:
    """Stop a Streamlit server from clearing the Keras session after every script run (imports Keras).

    Streamlit calls ``keras.backend.clear_session()`` at the end of each run (from its script runner's
    ``_clean_problem_modules``), for scripts that build a model on every run. The app builds its model once and
    shares it; clearing the session after each run drops TensorFlow's compiled kernels (the next analysis pays ~0.3 s
    to rebuild them), and while the Keras models load in the warm-up thread it tears them down. The call is skipped
    only when it comes from that function; every other caller gets the real ``clear_session``. (Streamlit's full
    garbage collection after every run, ~0.5-1 s of CPU with TensorFlow loaded, is off in .streamlit/config.toml:
    ``[runner] postScriptGC = false``.)
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


def start_serving_build(path: Path) -> subprocess.Popen | None:
    """Build the bundle's LiteRT serving form in a background process at low priority (``training.export_serving``),
    for the next start of the app; its lines go to the server's log. Returns the process (None when it cannot start).

    A separate process, not a thread: the conversion holds the interpreter lock for seconds at a time, and at
    ``nice`` 10 it takes the cores only when the readers' analyses leave them idle (about 30 s of CPU for the shipped
    ensemble). A form is written atomically, so stopping the server meanwhile leaves no half-built form.
    """
    # --low-priority: the command lowers its own priority (a preexec_fn is unsafe in this many-threaded process).
    command = [sys.executable, "-m", "training.export_serving", "--bundle", str(path), "--low-priority"]
    print(f"cxr-assist: building the LiteRT serving form in the background for the next start: {' '.join(command)}",
          file=sys.stderr, flush=True)
    try:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"cxr-assist: could not start the serving-form build: {exc}", file=sys.stderr)
        return None


#: The app's host: the one ModelHost of the process, shared by the server start (app.py) and every page.
HOST = ModelHost()
