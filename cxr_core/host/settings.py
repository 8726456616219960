"""What the app serves, from its environment: the model bundle, how it runs, the folders it may read.

* ``CXR_ASSIST_BUNDLE``: the model bundle folder (default ``models/default``);
* ``CXR_ASSIST_DEMO``: the demo data set (default ``data/demo``);
* ``CXR_ASSIST_DATA_ROOTS``: further dataset folders the Browse page may open, separated by ``os.pathsep``;
* ``CXR_ASSIST_WARM=0``: do not get the model ready in the background (:mod:`cxr_core.host.model_host`);
* ``CXR_ASSIST_RUNTIME``: ``auto`` (default: each member's LiteRT serving form where the bundle has one, without
  TensorFlow; else the Keras models), ``litert`` or ``keras`` (``Predictor.from_bundle``'s ``runtime``);
* ``CXR_ASSIST_COMPUTE``: for Keras members, ``auto`` (default: bfloat16 trunks where the CPU computes them natively
  and the backbone gains, see :mod:`cxr_core.serving.precision`), ``float32`` or ``bfloat16``.

A relative folder is taken from the repository's root, whatever the server's working folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_ENV, DEMO_ENV, ROOTS_ENV, WARM_ENV = "CXR_ASSIST_BUNDLE", "CXR_ASSIST_DEMO", "CXR_ASSIST_DATA_ROOTS", "CXR_ASSIST_WARM"
COMPUTE_ENV, RUNTIME_ENV = "CXR_ASSIST_COMPUTE", "CXR_ASSIST_RUNTIME"


class ModelKey(NamedTuple):
    """Which model serves: the key of the loaded Predictor and of the analyses cached with it."""

    bundle: str  #: the bundle folder
    stamp: float  #: its version (bundle.json's modification time): a replaced bundle is loaded again
    compute: str  #: ``CXR_ASSIST_COMPUTE``
    runtime: str  #: ``CXR_ASSIST_RUNTIME``


def resolve(value: str) -> Path:
    """A folder named in the environment or by a user: relative ones from the repository's root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def bundle_dir() -> Path:
    return resolve(os.environ.get(BUNDLE_ENV) or "models/default")


def demo_root() -> Path:
    return resolve(os.environ.get(DEMO_ENV) or "data/demo")


def bundle_stamp(path: Path) -> float:
    """Modification time of a bundle's bundle.json (0.0 when there is none), so a replaced bundle is reloaded."""
    try:
        return (path / "bundle.json").stat().st_mtime
    except OSError:
        return 0.0


def bundle_present(path: Path | None = None) -> bool:
    return ((path or bundle_dir()) / "bundle.json").is_file()


def compute_mode() -> str:
    """How the model computes, from ``CXR_ASSIST_COMPUTE`` (default ``auto``; checked when the model loads)."""
    return os.environ.get(COMPUTE_ENV, "").strip() or "auto"


def runtime_mode() -> str:
    """How the model runs, from ``CXR_ASSIST_RUNTIME`` (default ``auto``: LiteRT where the serving form exists)."""
    return os.environ.get(RUNTIME_ENV, "").strip() or "auto"


def warm_up_wanted() -> bool:
    """False when ``CXR_ASSIST_WARM=0``: the model then loads only when a page needs it."""
    return os.environ.get(WARM_ENV, "1") != "0"


def current_bundle() -> ModelKey:
    """The configured model's key: its bundle folder, version stamp, compute and runtime modes."""
    path = bundle_dir()
    return ModelKey(str(path), bundle_stamp(path), compute_mode(), runtime_mode())


def allowed_roots() -> list[Path]:
    """Folders the Browse page may open: the demo set and those of ``CXR_ASSIST_DATA_ROOTS``."""
    roots = [demo_root()]
    roots += [resolve(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
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
    path = resolve(text).resolve()
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
