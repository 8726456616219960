"""The serving form of a bundle: each member as a LiteRT flatbuffer, run without TensorFlow.

Why it exists: on the 2-core machine a fresh app process spent about 4.5 s
importing TensorFlow and 4.5 s building the five members' Keras models before
its first analysis (``benchmarks/APP_RESULTS.md``). The LiteRT runtime
(``ai-edge-litert``, Apache-2.0; TensorFlow Lite's interpreter with XNNPACK)
imports in about 0.1 s and opens a member in tens of milliseconds, and runs
the same float32 arithmetic: features and logits agree with the Keras model
to about 1e-5 (tested), and the Grad-CAM(++) maps are computed from those
features in closed form (:mod:`cxr_core.serving.maps`).

What it promises:

* It is derived, never authoritative: ``model.keras`` in the bundle stays the
  model that was evaluated; a serving form is found only under the SHA-256 of
  the exact ``model.keras`` it was converted from, so a retrained or replaced
  member is never served by a stale conversion.
* It is written atomically (a temporary folder renamed into place), so a
  build that is interrupted leaves no half-written form that could be used.
* Where anything is missing (the runtime not installed, a member not
  converted, a file unreadable, a head that is not pooling + one Dense layer),
  :func:`find_serving_form` says why and the caller runs the Keras models.

The forms live in a cache folder outside the bundle (the bundle may be
read-only, and a bundle is kept under 60 MB: the float32 forms of the shipped
ensemble take about 100 MB): ``CXR_ASSIST_SERVING_CACHE``, else
``$XDG_CACHE_HOME/cxr-assist/serving``, else ``~/.cache/cxr-assist/serving``.
They get there two ways:

* from the bundle itself, without TensorFlow: a bundle may ship each member's
  form as a recipe over its own ``model.keras`` weights (a few hundred KB;
  :mod:`cxr_core.serving.shipped_form`, written by ``python -m
  training.export_serving --ship``); :func:`find_serving_form` puts a missing
  one together in about a tenth of a second per member, so even the very first
  start on a machine runs LiteRT (the shipped model does this);
* converted with TensorFlow (about 30 s for the shipped ensemble) by
  ``python -m training.export_serving``, which the app runs in the background
  after a start that had to use the Keras models (:mod:`cxr_core.host.model_host`).

Either way each member's form is written whole or not at all, so a build that
is stopped (a server stopped, a power cut) is resumed at the next start: the
members already done are kept, only the others are built, and what a killed
build left half-written is removed. :class:`LiteModel` runs a form: the LiteRT
forward pass of :class:`cxr_core.serving.members.MemberRunner`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.serving.maps import linear_head_kernel
from cxr_core.serving.shipped_form import RecipeError, assemble, has_recipe, recipe_digest, write_recipe

__all__ = [
    "SERVING_FORMAT", "CACHE_ENV", "ServingFormError", "MemberServingForm", "cache_root", "litert_available",
    "member_digest", "find_serving_form", "build_serving_form", "ship_serving_form", "convert_member", "export_member",
    "LiteModel",
]

#: Version of the files written here; a form of another version is not used (it is rebuilt).
SERVING_FORMAT = 1
CACHE_ENV = "CXR_ASSIST_SERVING_CACHE"
MODEL_FILE = "model.tflite"
HEAD_FILE = "head.npz"
INFO_FILE = "serving.json"
#: A form being written: ``.building-<pid>-<random>`` in the cache, renamed into place when whole.
SCRATCH_PREFIX = ".building-"


class ServingFormError(ValueError):
    """A member cannot be served by LiteRT (not converted, unreadable, or a head this module does not map)."""


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """The folder of the serving forms: ``cache``, else ``CXR_ASSIST_SERVING_CACHE``, else the user's cache folder."""
    if cache is not None:
        return Path(cache)
    if os.environ.get(CACHE_ENV, "").strip():
        return Path(os.environ[CACHE_ENV].strip())
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "cxr-assist" / "serving"


def litert_available() -> bool:
    """Whether the LiteRT runtime (``ai-edge-litert``) is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def member_digest(model_file: str | os.PathLike) -> str:
    """SHA-256 of a member's ``model.keras``: the name of its serving form (about 0.1 s for the shipped 54 MB).

    Remembered per process for the file's (path, size, modification time): the app asks twice as it starts (is the
    form there, then load it), and a replaced file changes its modification time.
    """
    path = Path(model_file).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _form_dir(root: Path, digest: str) -> Path:
    return root / f"{digest[:32]}-v{SERVING_FORMAT}"


@dataclass(frozen=True)
class MemberServingForm:
    """One member's converted files: ``model.tflite`` (image -> features, logits) and the head's Dense kernel.

    Attributes:
        directory: the form's folder in the cache.
        input_size: the square input size in pixels.
        kernel: float32 (d, 14), the logits layer's Dense kernel (for the maps).
        features_shape: ``(h, w, d)`` of the features at ``input_size``.
    """

    directory: Path
    input_size: int
    kernel: np.ndarray
    features_shape: tuple[int, int, int]

    @property
    def model_file(self) -> Path:
        return self.directory / MODEL_FILE

    @classmethod
    def open(cls, directory: Path, *, expected_size: int, outputs: int) -> "MemberServingForm":
        """Read a form's small files (the flatbuffer is opened by :class:`LiteModel`).

        Raises:
            ServingFormError: a file is missing, damaged, or does not match the member.
        """
        try:
            info = json.loads((directory / INFO_FILE).read_text())
            with np.load(directory / HEAD_FILE) as head:
                kernel = np.asarray(head["kernel"], dtype=np.float32)
            form_format, size = info["format"], int(info["input_size"])
            features_shape = tuple(int(v) for v in info["features_shape"])
        except Exception as exc:  # noqa: BLE001 - a truncated npz (BadZipFile, EOFError), odd JSON ...: all "damaged"
            raise ServingFormError(f"the serving form in {directory} is damaged ({type(exc).__name__}: {exc})") from exc
        if not (directory / MODEL_FILE).is_file():
            raise ServingFormError(f"the serving form in {directory} has no {MODEL_FILE}")
        if form_format != SERVING_FORMAT or size != int(expected_size):
            raise ServingFormError(f"the serving form in {directory} is for another format or input size")
        if kernel.ndim != 2 or kernel.shape[1] != outputs or len(features_shape) != 3 or kernel.shape[0] != features_shape[2]:
            raise ServingFormError(f"the serving form in {directory} has a head of shape {kernel.shape}")
        return cls(directory=directory, input_size=size, kernel=kernel, features_shape=features_shape)

    def check(self) -> None:
        """Open the flatbuffer once: ServingFormError when LiteRT cannot use it."""
        LiteModel(self, threads=1)


def find_serving_form(bundle, *, cache: str | os.PathLike | None = None, install: bool = True) -> dict[str, MemberServingForm]:
    """Each member's serving form, for a bundle loaded without its models.

    Args:
        bundle: a :class:`cxr_core.bundle.format.Bundle` or ``EnsembleBundle``
            (``load_bundle(path, load_model=False)`` is enough).
        cache: the cache folder (default :func:`cache_root`).
        install: put a member's form that the bundle ships (:mod:`cxr_core.serving.shipped_form`) into the cache
            when it is not there yet (no TensorFlow; about 0.1 s per member).

    Returns:
        ``{member name: form}`` in member order (a one-model bundle's member is named ``"model"``).

    Raises:
        ServingFormError: the runtime is not installed, or a member has no usable form (the message says which).
    """
    if not litert_available():
        raise ServingFormError("the LiteRT runtime (ai-edge-litert) is not installed")
    root = cache_root(cache)
    forms = {}
    for name, folder, meta in _members(bundle):
        model_file = _model_file(folder, meta)
        if not model_file.is_file():
            raise ServingFormError(f"member {name}: {model_file} is missing")
        directory = _form_dir(root, member_digest(model_file))
        if not directory.is_dir() and install and _ships_form(folder, model_file):
            _install_shipped(folder, model_file, directory)
        if not directory.is_dir():
            raise ServingFormError(f"member {name} has no serving form yet (python -m training.export_serving builds it)")
        forms[name] = MemberServingForm.open(directory, expected_size=int(meta["input_size"]),
                                             outputs=len(bundle.findings))
    return forms


def _ships_form(folder: Path, model_file: Path) -> bool:
    """Whether the member's folder ships a form cut from this very model.keras (a replaced member's is stale; an
    unreadable recipe counts, so that putting it together says it is damaged)."""
    return has_recipe(folder) and recipe_digest(folder) in (None, member_digest(model_file))


def _install_shipped(folder: Path, model_file: Path, directory: Path) -> None:
    """Put the member's shipped form together (no TensorFlow) and into the cache at ``directory``.

    Raises:
        ServingFormError: the shipped form is damaged, or the cache cannot be written.
    """
    try:
        assembled = assemble(folder, model_file)
    except RecipeError as exc:
        raise ServingFormError(str(exc)) from exc
    info = {"format": SERVING_FORMAT, "input_size": assembled.input_size,
            "features_shape": list(assembled.features_shape), "from": "the form shipped in the bundle"}
    try:
        _write_into_place(directory, assembled.flatbuffer, assembled.kernel, info)
    except OSError as exc:
        raise ServingFormError(f"the serving cache {directory.parent} cannot be written ({exc})") from exc


def _write_into_place(directory: Path, flatbuffer: bytes | memoryview, kernel: np.ndarray, info: dict) -> None:
    """Write a form in a scratch folder of the cache, then rename it to ``directory``: whole or not at all."""
    root = directory.parent
    root.mkdir(parents=True, exist_ok=True)
    _sweep_scratch(root)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=root))
    try:
        _write_form(scratch / "form", flatbuffer, kernel, info)
        try:
            os.replace(scratch / "form", directory)  # atomic: the form appears whole or not at all
        except OSError:
            if not directory.is_dir():  # another process may have built it meanwhile
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _sweep_scratch(root: Path) -> None:
    """Remove what a build killed outright (no ``finally`` ran) left half-written: scratch folders of dead processes."""
    for scratch in root.glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid = int(scratch.name[len(SCRATCH_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ValueError:  # not a name this module writes: another version's; left alone
            continue
        except ProcessLookupError:
            shutil.rmtree(scratch, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def _model_file(folder: Path, meta: dict) -> Path:
    """A member's Keras file, as :meth:`cxr_core.bundle.format.Bundle.load` finds it."""
    from cxr_core.bundle.format import MODEL_FILE as KERAS_FILE

    return folder / meta.get("model_file", KERAS_FILE)


def _members(bundle) -> list[tuple[str, Path, dict]]:
    """``(name, folder, metadata)`` of each member of a one-model or ensemble bundle."""
    members = getattr(bundle, "members", None)
    if members is None:
        return [("model", Path(bundle.path), bundle.metadata())]
    return [(m.name, Path(m.bundle.path), m.bundle.metadata()) for m in members]


def export_member(model, directory: str | os.PathLike) -> None:
    """Convert one member's Keras model to its serving form in ``directory`` (created; must not exist yet).

    Args:
        model: as :func:`convert_member` takes it.

    Raises:
        ServingFormError: as :func:`convert_member`.
    """
    _write_form(Path(directory), *convert_member(model))


def convert_member(model) -> tuple[bytes, np.ndarray, dict]:
    """One member's Keras model as ``(LiteRT flatbuffer, logits kernel float32 (d, 14), form info)``.

    The flatbuffer keeps float32 weights (the bundle's float16 weights as the
    Keras model loads them), so it computes what the Keras model computes in
    float32; its input takes any batch size.

    Args:
        model: a classifier with the cxr-assist layer names, its head pooling, dropout, ``"logits"`` (Dense) and
            ``"probabilities"`` (sigmoid).

    Raises:
        ServingFormError: the head is not that chain (its maps would need automatic differentiation;
            :func:`cxr_core.serving.maps.linear_head_kernel`).
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from cxr_core.serving.keras_forward import features_and_logits

    try:
        kernel = linear_head_kernel(model)
    except ValueError as exc:
        raise ServingFormError(str(exc)) from exc
    size = int(model.inputs[0].shape[1])
    both = features_and_logits(model)
    function = tf.function(lambda x: both(x, training=False),
                           input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)])
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
    return flatbuffer, kernel, {"format": SERVING_FORMAT, "input_size": size,
                                "features_shape": [int(v) for v in both.outputs[0].shape[1:]],
                                "tensorflow": tf.__version__, "keras": keras.__version__}


def _write_form(directory: Path, flatbuffer: bytes | memoryview, kernel: np.ndarray, info: dict) -> None:
    """A form's three files in ``directory`` (created; must not exist yet)."""
    directory.mkdir(parents=True)
    _write_synced(directory / MODEL_FILE, flatbuffer)
    buffer = io.BytesIO()
    np.savez(buffer, kernel=kernel)
    _write_synced(directory / HEAD_FILE, buffer.getvalue())
    info = {**info, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_synced(directory / INFO_FILE, json.dumps(info, indent=2).encode())


def _write_synced(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync: the folder is renamed into place afterwards, and must not hold empty files after a power cut."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def build_serving_form(bundle_path: str | os.PathLike, *, cache: str | os.PathLike | None = None,
                       progress=None) -> dict[str, Path]:
    """Give every member of a bundle that has no serving form yet its form: the one the bundle ships where it ships
    one for this model.keras (no TensorFlow), else converted (imports TensorFlow).

    Members already done are kept: a build that was stopped resumes where it was.

    Args:
        bundle_path: the bundle folder.
        cache: the cache folder (default :func:`cache_root`).
        progress: receives one line per member.

    Returns:
        ``{member name: its form's folder}``, those already there included.

    Raises:
        BundleError: not a bundle.
        ServingFormError: a member cannot be converted.
    """
    from cxr_core.bundle.ensemble import load_bundle
    from cxr_core.bundle.format import Bundle

    bundle = load_bundle(bundle_path, load_model=False)
    root = cache_root(cache)
    root.mkdir(parents=True, exist_ok=True)
    done = {}
    for name, folder, meta in _members(bundle):
        model_file = _model_file(folder, meta)
        directory = _form_dir(root, member_digest(model_file))
        if directory.is_dir() and not _usable(directory, int(meta["input_size"]), len(bundle.findings)):
            # Damaged (a disk full, a file edited): set aside, not deleted, and built again.
            aside = root / f".damaged-{directory.name}-{int(time.time())}"
            os.replace(directory, aside)
            if progress:
                progress(f"{name}: its serving form was damaged, moved to {aside}; building it again")
        if directory.is_dir():
            if progress:
                progress(f"{name}: already built ({directory})")
            done[name] = directory
            continue
        started = time.monotonic()
        how = "converted"
        if _ships_form(folder, model_file):
            try:
                _install_shipped(folder, model_file, directory)
                how = "put together from the form the bundle ships"
            except ServingFormError as exc:
                if progress:
                    progress(f"{name}: the form the bundle ships is not usable ({exc}); converting instead")
        if not directory.is_dir():
            _write_into_place(directory, *convert_member(Bundle.load(folder, expected_findings=bundle.findings).model))
        if progress:
            progress(f"{name}: {how} in {time.monotonic() - started:.1f} s -> {directory}")
        done[name] = directory
    return done


def ship_serving_form(bundle_path: str | os.PathLike, *, progress=None) -> dict[str, dict]:
    """Convert each member (imports TensorFlow) and write the recipe of its form into the bundle
    (``<member>/serving/``, :mod:`cxr_core.serving.shipped_form`): what lets a first start skip the conversion.

    Returns:
        ``{member name: {"skeleton_bytes", "patched_bytes", "kept_bytes"}}``.

    Raises:
        BundleError: not a bundle.
        ServingFormError: a member cannot be converted, or its recipe does not rebuild its flatbuffer exactly.
    """
    from cxr_core.bundle.ensemble import load_bundle
    from cxr_core.bundle.format import Bundle

    bundle = load_bundle(bundle_path, load_model=False)
    sizes = {}
    for name, folder, meta in _members(bundle):
        model_file = _model_file(folder, meta)
        flatbuffer, kernel, info = convert_member(Bundle.load(folder, expected_findings=bundle.findings).model)
        try:
            sizes[name] = write_recipe(flatbuffer, kernel, model_file, folder, input_size=info["input_size"],
                                       features_shape=info["features_shape"], model_sha256=member_digest(model_file),
                                       progress=progress)
        except RecipeError as exc:
            raise ServingFormError(f"member {name}: {exc}") from exc
        if progress:
            progress(f"{name}: shipped form written ({sizes[name]['skeleton_bytes'] / 1e3:.0f} KB beside model.keras)")
    return sizes


def _usable(directory: Path, size: int, outputs: int) -> bool:
    """Whether a form's files read and its flatbuffer opens."""
    try:
        MemberServingForm.open(directory, expected_size=size, outputs=outputs).check()
    except ServingFormError:
        return False
    return True


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LiteModel:
    """One member's flatbuffer in a LiteRT interpreter: ``model(batch) -> (features, logits)``, the LiteRT backend of
    :class:`cxr_core.serving.members.MemberRunner` (as :class:`cxr_core.serving.keras_forward.KerasForward` is the Keras one).

    Not thread-safe (one interpreter, resized when the batch size changes): the
    Predictor calls its members under its lock.

    Args:
        form: the member's serving form.
        threads: the interpreter's threads (default: the CPUs this process may use).

    Attributes:
        size: the square input size in pixels.
        kernel: float32 (d, n_findings), the logits layer's Dense kernel (for the maps).
        compiled: always True: nothing to trace.
    """

    compiled = True

    def __init__(self, form: MemberServingForm, *, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=str(form.model_file), num_threads=threads or _threads())
            self._interpreter.allocate_tensors()  # a damaged file fails here, not at the first analysis
        except (ValueError, RuntimeError) as exc:
            raise ServingFormError(f"{form.model_file} cannot be opened by LiteRT ({exc})") from exc
        details = self._interpreter.get_input_details()[0]
        self._input = details["index"]
        outputs = self._interpreter.get_output_details()
        by_rank = {len(detail["shape_signature"]): detail["index"] for detail in outputs}
        if sorted(by_rank) != [2, 4]:
            raise ServingFormError(f"{form.model_file} does not give features and logits")
        self._features, self._logits = by_rank[4], by_rank[2]
        self._batch = int(details["shape"][0])
        self.size = int(form.input_size)
        self.kernel = form.kernel

    def compile(self, batch: np.ndarray) -> None:
        """Nothing to trace: runs ``batch`` once so that its size is allocated."""
        self(batch)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features (n, h, w, d), logits (n, 14))`` float32 for normalised inputs (n, size, size, 1)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, list(batch.shape))
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._features), self._interpreter.get_tensor(self._logits)
