"""What every page shares for display: the bundle's files, the model through the host, cached loaders, guards.

Not a page (streamlit_app.py lists the pages). The model itself is the host's (:mod:`cxr_core.host`, no Streamlit):
which bundle serves and how (its environment variables: :mod:`cxr_core.host.settings`), loading it through the one
runtime choice, the background warm-up, the model thread. This module shows it: a page that needs the model while
the warm-up is still getting it ready shows the step and a progress bar that updates (:func:`wait_until_ready`),
never a frozen page; a page with no bundle or a broken one says why (:func:`require_predictor`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import streamlit as st

from cxr_core.evaluation.metrics_file import Metrics, metrics_path, read_metrics
from cxr_core.host import HOST, ModelKey
from cxr_core.host.settings import (
    COMPUTE_ENV,
    bundle_dir,
    bundle_present,
    bundle_stamp,
    current_bundle,
)

NO_BUNDLE_HELP = """No model bundle was found at `{path}`.

cxr-assist needs a trained model bundle (a folder with `bundle.json` and `model.keras`). To get one:

1. train and evaluate it (see `configs/shipped.toml`):
   `python -m training.train --config configs/shipped.toml --cache cache/nih192`, then
   `python -m training.evaluate --bundle runs/shipped/bundle --data ../shared/nih`;
2. copy the bundle folder to `models/default`, or start the app with
   `CXR_ASSIST_BUNDLE=/path/to/bundle streamlit run app.py`.

The Browse page works without a model (labels and expert boxes only)."""


@st.cache_data(show_spinner=False)
def _read_json(path: str, stamp: float) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def bundle_metadata() -> dict | None:
    """``bundle.json`` of the configured bundle without loading the model; None if absent or unreadable."""
    path = bundle_dir()
    return _read_json(str(path / "bundle.json"), bundle_stamp(path)) if bundle_present(path) else None


@st.cache_data(show_spinner=False, max_entries=4)
def _read_metrics(path: str, mtime: float) -> Metrics:
    return read_metrics(path)


def bundle_metrics() -> Metrics | None:
    """The bundle's evaluation (its ``metrics.json``) as typed records; None until the bundle has been evaluated.

    Raises:
        ValueError: the file is there but is not an evaluation this cxr-assist reads.
    """
    file = metrics_path(bundle_dir(), bundle_metadata())
    return _read_metrics(str(file), file.stat().st_mtime) if file.is_file() else None


#: streamlit_app.py's pages, in its order (set on every script run, before the page runs; read by the home page).
_NAVIGATION: list = []


def remember_navigation(pages: dict[str, list]) -> None:
    """Keep the navigation's pages (``{section: [st.Page, ...]}``) for :func:`navigation_pages`."""
    global _NAVIGATION
    _NAVIGATION = [page for section in pages.values() for page in section]  # one swap: a reader never sees it half-built


def navigation_pages() -> list:
    """Every page of the app's navigation, in order (empty when a page script runs without streamlit_app.py)."""
    return list(_NAVIGATION)


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def load_predictor(path: str, stamp: float, compute: str, runtime: str):
    """The host's Predictor of that model key (:meth:`cxr_core.host.ModelHost.predictor`), with a spinner while it
    loads."""
    return HOST.predictor(ModelKey(path, stamp, compute, runtime))


def getting_ready_notice() -> bool:
    """While the background warm-up is still getting the model ready: its step and a progress bar that updates
    every second, and the whole page runs again when it is done. Returns whether it is still running (nothing shown
    otherwise); never blocks."""
    if not HOST.warm_state().running:
        return False

    @st.fragment(run_every=0.5)  # how soon a page waiting for the model notices it is ready
    def progress() -> None:
        state = HOST.warm_state()
        if not state.running:
            st.rerun()  # ready (or failed: the page then says why): the whole page again
        st.progress(min(state.step + 0.5, state.steps) / state.steps,
                    text=f"Getting the model ready: {state.stage} … ({state.seconds:.0f} s since the app started). "
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
    """Analyse uploaded bytes once (by content hash) on the model thread; the Analysis is shared read-only."""
    return HOST.on_model_thread(load_predictor(bundle, stamp, compute, runtime).analyze, _data)


@st.cache_resource(show_spinner=False, max_entries=32, ttl=3600)
def analyze_path(bundle: str, stamp: float, compute: str, runtime: str, path: str, mtime: float):
    return HOST.on_model_thread(load_predictor(bundle, stamp, compute, runtime).analyze, path)


@st.cache_resource(show_spinner=False)
def _reader_store(db_path: str):
    from cxr_core.reader_study import ReaderStudyStore

    return ReaderStudyStore(db_path or None)


def reader_store():
    """The reader-study store (one per database file, shared by all sessions); file from ``CXR_READER_STUDY_DB``."""
    return _reader_store(os.environ.get("CXR_READER_STUDY_DB", "").strip())
