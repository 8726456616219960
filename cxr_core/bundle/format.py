"""Model bundle: a folder holding a trained model and everything needed to use it honestly.

A single-model bundle (format version 1)::

    model.keras    the Keras 3 model (no optimizer), float32 or float16 weights
    bundle.json    findings order, input size, preprocessing, backbone, data
                   and split summary, code version, creation time, training
                   history; later steps add keys (thresholds, calibration,
                   metrics) with :meth:`Bundle.update_metadata`
    splits.csv     image, patient_id, split of every image of the training
                   run (plus ``used``: False for images a quick run left
                   out), so the app can say whether an image was seen in training

An ensemble bundle (format version 2, :class:`cxr_core.bundle.ensemble.EnsembleBundle`) holds several
full classifiers, each with its own input size, preprocessing and backbone::

    bundle.json    findings order, ``members`` (name, folder, weight, backbone,
                   input size, preprocessing of each; optional ``map_weight``
                   and ``tta_views``, 6 for test-time augmentation of that
                   member's scores), ``combine``
                   (``"logit_mean"``: the weighted mean of the members' logits,
                   then the sigmoid), the split they all share, and the keys
                   evaluation adds (calibration and thresholds fitted AFTER
                   averaging, so they belong to the ensemble, not to a member)
    splits.csv     the split every member was trained on (identical by construction)
    members/<name>/model.keras, members/<name>/bundle.json
                   each member as a single-model bundle with its own training
                   provenance (data, split, code, training history), as
                   :func:`cxr_core.bundle.ensemble.assemble_ensemble` copied it from the member's run

Single-model bundles stay at format version 1, so code that predates
ensembles keeps reading them; an ensemble is version 2, which such code
refuses with a clear message instead of misreading it. :func:`cxr_core.bundle.ensemble.load_bundle`
opens either kind.

Loading refuses a bundle whose findings order or input size differ from what
the caller expects, or whose model does not match its own ``bundle.json``:
a silently permuted output column would report one finding as another.

``bundle.json`` never records absolute paths of the machine that wrote it
(:func:`portable_path`): a bundle is copied between machines, and a path
such as ``/home/someone/cache/nih192`` would leak a user name and mean
nothing elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.bundle.versioned_json import read_versioned_json
from cxr_core.data.preprocessing import PreprocessConfig
from cxr_core.findings import FINDINGS

BUNDLE_FORMAT = "cxr-assist-bundle"
#: The format version of a single-model bundle (unchanged since the first bundles).
SINGLE_FORMAT_VERSION = 1
#: The format version of an ensemble bundle (``members``).
ENSEMBLE_FORMAT_VERSION = 2
#: The highest format version this code reads.
BUNDLE_FORMAT_VERSION = ENSEMBLE_FORMAT_VERSION
MODEL_FILE = "model.keras"
METADATA_FILE = "bundle.json"
SPLITS_FILE = "splits.csv"
MEMBERS_DIR = "members"
#: How an ensemble combines its members: weighted mean of the logits, then the sigmoid.
COMBINE_LOGIT_MEAN = "logit_mean"
#: Views a member may score (``tta_views``): 1 (the image alone) or 6 (the image and five
#: crops; test-time augmentation, applied by :mod:`cxr_core.serving.tta`).
TTA_CHOICES = (1, 6)


def check_tta_views(views) -> int:
    """``views`` as an int, or ValueError unless it is one of :data:`TTA_CHOICES`."""
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or int(views) not in TTA_CHOICES:
        raise ValueError(f"test-time views must be one of {TTA_CHOICES}, got {views!r}")
    return int(views)

#: Keys that describe the stored model itself; update_metadata refuses to change them.
CORE_KEYS = frozenset({"format", "format_version", "findings", "input_size", "preprocessing", "model_file", "weights_dtype",
                       "members", "combine"})
#: Keys a member's own evaluation added: the ensemble is calibrated and thresholded as a whole, after averaging.
MEMBER_DROPPED_KEYS = ("thresholds", "calibration", "operating_points", "test_summary", "intensity_reference", "metrics_file")
# Keys the Bundle dataclass holds as fields; every other key goes to ``extra``.
_FIELD_KEYS = ("backbone", "model", "data", "split", "code", "created", "training")
_FLOAT16_MAX = 65504.0


class BundleError(ValueError):
    """A bundle is missing, malformed, or does not fit the model or code using it."""


def code_version() -> dict:
    """cxr_core version and, when run from a git checkout, the commit and whether the tree was dirty."""
    from cxr_core import __version__

    info: dict = {"cxr_core": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=5)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _json_default(value):
    # NumPy scalars and arrays appear in summaries computed with NumPy.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _strict_json(value):
    """NaN and infinities become null: bundle.json stays standard JSON for any reader."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _strict_json(value.tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _is_absolute_path(value: str) -> bool:
    from pathlib import PurePosixPath, PureWindowsPath

    return PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or value.startswith("~/")


def portable_path(value) -> str:
    """A path as a bundle may record it: relative paths unchanged, absolute ones shortened.

    An absolute path inside the current working folder becomes relative to it
    (``/work/main/cache/nih192`` -> ``cache/nih192`` when run from
    ``/work/main``, as the commands are); any other absolute path keeps only
    its last component (the dataset or cache folder name). A bundle moves
    between machines, so the writer's folders mean nothing to a reader, and
    they may carry a user name.
    """
    from pathlib import PurePosixPath, PureWindowsPath

    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if not _is_absolute_path(text):
        return text
    if not PurePosixPath(text).is_absolute() and not text.startswith("~/"):
        return PureWindowsPath(text).name or "."  # written on Windows: no folder here to be relative to
    path = Path(text).expanduser()
    try:
        relative = path.resolve().relative_to(Path.cwd().resolve())
        if relative.parts:
            return relative.as_posix()
    except (ValueError, OSError):
        pass
    return path.name or "."


def _portable(value):
    """Every string of a ``bundle.json`` value that is an absolute path, made portable (:func:`portable_path`)."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if isinstance(value, Path):
        return portable_path(value)
    if isinstance(value, str) and value and _is_absolute_path(value):
        return portable_path(value)
    return value


def _write_json_atomic(path: Path, data: dict) -> None:
    text = json.dumps(_portable(_strict_json(data)), indent=2, default=_json_default, allow_nan=False)
    # Write then rename, so a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bundle-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.write("\n")
    # mkstemp makes the file private (0600); a bundle is meant to be read by others.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _store_float16(model_file: Path) -> int:
    """Rewrite the float32 weights inside a .keras file as float16; returns arrays converted.

    Keras casts stored values to each variable's dtype when loading, so the
    model loads as float32 (rounded to float16 precision). Arrays with values
    outside the float16 range stay float32.
    """
    import h5py

    converted = 0
    with tempfile.TemporaryDirectory() as tmp:
        source, weights = Path(tmp) / "float32.h5", Path(tmp) / "model.weights.h5"
        with zipfile.ZipFile(model_file) as archive:
            source.write_bytes(archive.read("model.weights.h5"))
            others = {info.filename: archive.read(info.filename) for info in archive.infolist() if info.filename != "model.weights.h5"}
        # Copy into a fresh file: HDF5 does not give back the space of deleted datasets.
        with h5py.File(source, "r") as src, h5py.File(weights, "w") as dst:
            dst.attrs.update(src.attrs)

            def copy(name, obj):
                nonlocal converted
                if isinstance(obj, h5py.Group):
                    dst.require_group(name).attrs.update(obj.attrs)
                    return
                data = obj[()]
                if (isinstance(data, np.ndarray) and data.dtype == np.float32 and data.size
                        and np.all(np.isfinite(data)) and np.abs(data).max() <= _FLOAT16_MAX):
                    data = data.astype(np.float16)
                    converted += 1
                dst.create_dataset(name, data=data).attrs.update(obj.attrs)

            src.visititems(copy)
        rebuilt = Path(tmp) / "model.keras"
        with zipfile.ZipFile(rebuilt, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in others.items():
                archive.writestr(name, data)
            archive.write(weights, "model.weights.h5")
        shutil.move(str(rebuilt), model_file)
    return converted


def bundle_sha256(bundle_dir: str | os.PathLike) -> str:
    """SHA-256 over a bundle's ``bundle.json`` and model files (every member's), in path order: what it predicts with."""
    root = Path(bundle_dir)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name in (METADATA_FILE, MODEL_FILE))
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\n")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_metadata(directory: str | os.PathLike) -> dict:
    """The ``bundle.json`` of a bundle folder of either kind, after checking its format and version.

    Raises:
        BundleError: no bundle there, not a cxr-assist bundle, or a newer format version.
    """
    meta_file = Path(directory) / METADATA_FILE
    if not meta_file.is_file():
        raise BundleError(f"{directory} is not a model bundle (no {METADATA_FILE})")
    # A bundle.json written before versions were numbered counts as version 0.
    return read_versioned_json(meta_file, format=BUNDLE_FORMAT, versions=range(0, BUNDLE_FORMAT_VERSION + 1),
                               error=BundleError, missing_version=0)


def _check_findings(meta: dict, expected_findings, directory) -> tuple[str, ...]:
    findings = tuple(meta.get("findings", ()))
    if expected_findings is not None and findings != tuple(expected_findings):
        diff = [f"{i}: bundle {a!r} vs expected {b!r}" for i, (a, b) in enumerate(zip(findings, expected_findings)) if a != b]
        raise BundleError(
            f"{directory}: the bundle's findings order differs from the expected order "
            f"({len(findings)} vs {len(tuple(expected_findings))} findings; {'; '.join(diff[:3]) or 'lengths differ'})"
        )
    return findings


def _check_model(model, findings, input_size: int, where: str) -> None:
    from cxr_core.bundle.layer_names import model_input_size, model_num_outputs

    try:
        size = model_input_size(model)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from exc
    if size != input_size:
        raise BundleError(f"{where}: the model takes {size} px images but the bundle says {input_size} px")
    outputs = model_num_outputs(model)
    if outputs != len(findings):
        raise BundleError(f"{where}: the model has {outputs} outputs but the bundle lists {len(findings)} findings")


@dataclass(kw_only=True)
class _Records:
    """What both kinds of bundle share: provenance fields, extra keys, lookups.

    Attributes (keyword-only, after each kind's own fields):
        data: training data summary (source, counts per split and finding).
        split: split strategy, seed and fractions.
        splits: table ``image, patient_id, split`` (``splits.csv``) or ``None``.
        code: :func:`code_version` when the bundle was made.
        created: ISO time the bundle was first saved.
        training: how it was trained (or assembled).
        extra: any other ``bundle.json`` keys (thresholds, calibration,
            metrics ...), kept as they are.
        path: folder the bundle was loaded from or saved to.
    """

    data: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    splits: pd.DataFrame | None = None
    code: dict = field(default_factory=dict)
    created: str = ""
    training: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: Path | None = None

    @staticmethod
    def _records_from(meta: dict, directory: Path) -> dict:
        """The shared fields of a bundle folder, but ``extra`` (each kind knows its own keys)."""
        splits = None
        if (directory / SPLITS_FILE).is_file():
            splits = pd.read_csv(directory / SPLITS_FILE, dtype={"image": str, "split": str})
        return {"data": meta.get("data", {}), "split": meta.get("split", {}), "splits": splits, "code": meta.get("code", {}),
                "created": meta.get("created", ""), "training": meta.get("training", {}), "path": directory}

    def _shared_metadata(self) -> dict:
        return {
            "data": self.data,
            "split": {**self.split, "file": SPLITS_FILE} if self.splits is not None else self.split,
            "code": self.code or code_version(),
            "created": self.created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "training": self.training,
        }

    def _with_extra(self, data: dict) -> dict:
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    def get(self, key: str, default=None):
        """A ``bundle.json`` value by key (fields and extra keys alike)."""
        return self.metadata().get(key, default)

    def split_of(self, image_name: str) -> str | None:
        """``"train"``, ``"val"`` or ``"test"`` if the image was in this model's data, else ``None``."""
        if self.splits is None:
            return None
        rows = self.splits.loc[self.splits["image"] == Path(str(image_name)).name, "split"]
        return None if rows.empty else str(rows.iloc[0])


@dataclass
class Bundle(_Records):
    """A trained model with its metadata (see the module docstring).

    Attributes:
        model: the Keras model (``None`` when loaded with ``load_model=False``).
        input_size: side of the square model input.
        preprocessing: how images become inputs (its size equals ``input_size``).
        backbone: backbone name (``"densenet121"`` ...).
        findings: output column order; always :data:`FINDINGS` for new bundles.
        model_config: arguments of :func:`cxr_core.learn.models.build_model` that rebuild the architecture.

    and the shared provenance fields of ``_Records`` (``data``, ``split``,
    ``splits``, ``code``, ``created``, ``training``: its configuration and
    history summary, ``extra``, ``path``).
    """

    model: object | None
    input_size: int
    preprocessing: PreprocessConfig
    backbone: str
    findings: tuple[str, ...] = FINDINGS
    model_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.findings = tuple(self.findings)
        if int(self.preprocessing.size) != int(self.input_size):
            raise BundleError(f"preprocessing size {self.preprocessing.size} differs from input size {self.input_size}")

    def metadata(self) -> dict:
        """The ``bundle.json`` content."""
        data = {
            "format": BUNDLE_FORMAT,
            "format_version": SINGLE_FORMAT_VERSION,
            "findings": list(self.findings),
            "input_size": int(self.input_size),
            "preprocessing": self.preprocessing.to_dict(),
            "model_file": MODEL_FILE,
            "weights_dtype": self.extra.get("weights_dtype", "float32"),
            "backbone": self.backbone,
            "model": self.model_config,
            **self._shared_metadata(),
        }
        return self._with_extra(data)

    def save(self, directory: str | os.PathLike, *, float16: bool = False, overwrite: bool = False) -> Path:
        """Write ``model.keras``, ``splits.csv`` and ``bundle.json`` (last) into ``directory``.

        Args:
            directory: the bundle folder (created).
            float16: store weights as float16 (about half the size; the model
                still loads and runs in float32).
            overwrite: replace an existing bundle there.

        Returns:
            the folder.
        """
        import keras

        if self.model is None:
            raise BundleError("this Bundle has no model to save")
        directory = Path(directory)
        if (directory / METADATA_FILE).exists() and not overwrite:
            raise BundleError(f"{directory} already holds a bundle; pass overwrite=True")
        _check_model(self.model, self.findings, self.input_size, "save")
        directory.mkdir(parents=True, exist_ok=True)
        model = self.model
        if getattr(model, "optimizer", None) is not None:
            # A bundle is for inference: drop optimizer state and compile settings.
            model = keras.models.clone_model(self.model)
            model.set_weights(self.model.get_weights())
        model.save(directory / MODEL_FILE)
        self.extra["weights_dtype"] = "float32"
        if float16:
            _store_float16(directory / MODEL_FILE)
            self.extra["weights_dtype"] = "float16"
        if self.splits is not None:
            missing = {"image", "patient_id", "split"} - set(self.splits.columns)
            if missing:
                raise BundleError(f"the splits table needs the columns image, patient_id, split (missing {sorted(missing)})")
            # image, patient_id, split first; further columns (e.g. ``used``) kept after them.
            first = ["image", "patient_id", "split"]
            self.splits[first + [c for c in self.splits.columns if c not in first]].to_csv(directory / SPLITS_FILE, index=False)
        self.code = self.code or code_version()
        self.created = self.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_json_atomic(directory / METADATA_FILE, self.metadata())
        self.path = directory
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        expected_findings=FINDINGS,
        expected_input_size: int | None = None,
        load_model: bool = True,
    ) -> "Bundle":
        """Open a bundle folder and check it.

        Args:
            directory: the bundle folder.
            expected_findings: the output order the caller relies on
                (default: this code's :data:`FINDINGS`).
            expected_input_size: refuse a bundle for another input size.
            load_model: also load ``model.keras`` (False reads metadata only).

        Raises:
            BundleError: no bundle there; findings order or input size differ
                from the expected ones or from the stored model.
            ValueError: the preprocessing version is not this code's.
        """
        directory = Path(directory)
        meta = read_metadata(directory)
        if "members" in meta:
            raise BundleError(
                f"{directory} is an ensemble bundle of {len(meta['members'])} members; open it with load_bundle() "
                "or EnsembleBundle.load()"
            )
        findings = _check_findings(meta, expected_findings, directory)
        input_size = int(meta["input_size"])
        if expected_input_size is not None and input_size != int(expected_input_size):
            raise BundleError(f"{directory}: the bundle's input size is {input_size} px, expected {expected_input_size} px")
        preprocessing = PreprocessConfig.from_dict(meta["preprocessing"])
        if preprocessing.size != input_size:
            raise BundleError(f"{directory}: preprocessing size {preprocessing.size} differs from input size {input_size}")
        model = None
        if load_model:
            import keras

            model = keras.models.load_model(directory / meta.get("model_file", MODEL_FILE), compile=False)
            _check_model(model, findings, input_size, str(directory))
        extra = {k: v for k, v in meta.items() if k not in CORE_KEYS and k not in _FIELD_KEYS}
        extra["weights_dtype"] = meta.get("weights_dtype", "float32")
        return cls(
            model=model, input_size=input_size, preprocessing=preprocessing, backbone=str(meta.get("backbone", "")),
            findings=findings, model_config=meta.get("model", {}), extra=extra, **cls._records_from(meta, directory),
        )

    @staticmethod
    def update_metadata(directory: str | os.PathLike, **keys) -> dict:
        """Add or replace top-level ``bundle.json`` keys, keeping all others.

        For results computed after training (``thresholds=...``,
        ``calibration=...``, ``metrics=...``). Keys that describe the stored
        model (:data:`CORE_KEYS`) cannot be changed this way.

        Returns:
            the new ``bundle.json`` content.
        """
        meta = read_metadata(directory)
        refused = sorted(set(keys) & CORE_KEYS)
        if refused:
            raise BundleError(f"update_metadata cannot change {', '.join(refused)}: they describe the stored model")
        meta.update(keys)
        _write_json_atomic(Path(directory) / METADATA_FILE, meta)  # serialises before touching the file
        return meta

    def predict(self, images, *, batch_size: int = 32) -> np.ndarray:
        """Probabilities (n, 14) for normalised images (n, size, size, 1)."""
        if self.model is None:
            raise BundleError("this Bundle was loaded without its model")
        return np.asarray(self.model.predict(np.asarray(images, dtype=np.float32), batch_size=batch_size, verbose=0))


def load_weights_into(model, bundle: "Bundle | str | os.PathLike", *, expected_findings=FINDINGS) -> None:
    """Copy a bundle's weights into ``model`` after checking they mean the same thing.

    Args:
        model: a model built with :func:`cxr_core.learn.models.build_model`.
        bundle: a :class:`Bundle` or its folder.
        expected_findings: the output order ``model``'s users rely on.

    Raises:
        BundleError: the findings order, input size or number of outputs
            differ, or the architectures do not match.
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle, expected_findings=expected_findings)
    elif tuple(bundle.findings) != tuple(expected_findings):
        raise BundleError("the bundle's findings order differs from the expected order")
    if bundle.model is None:
        raise BundleError("the bundle was loaded without its model")
    _check_model(model, bundle.findings, bundle.input_size, "load_weights_into")
    source = bundle.model.get_weights()
    target = model.get_weights()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source, target)):
        raise BundleError(
            f"the bundle's {bundle.backbone or 'model'} architecture does not match this model "
            f"({len(source)} vs {len(target)} weight arrays)"
        )
    model.set_weights(source)


# -- ensembles ------------------------------------------------------------------

#: The heatmap method of bundles that record none (made before the key existed).
DEFAULT_EXPLANATION = "gradcam++"


def explanation_method(meta: dict | None) -> str:
    """The heatmap method a (member) bundle's metadata records: ``"gradcam++"`` or ``"gradcam"``."""
    return str(((meta or {}).get("explanation") or {}).get("method", DEFAULT_EXPLANATION))


def describe_model(meta: dict | None) -> str:
    """One line that is true of a bundle's network, from its ``bundle.json`` content.

    ``"mobilenetv2, 160 px"`` for one model; ``"ensemble of 2: vgg16 224 px +
    mobilenetv2 160 px"`` for an ensemble (shown by the app, the reports and
    the model card, so none of them claims one backbone and one input size
    for an ensemble). A member with test-time augmentation reads
    ``"vgg16 224 px x 6 views"``.
    """
    meta = meta or {}
    members = meta.get("members")
    if members:
        parts = " + ".join(f"{m.get('backbone', '?')} {m.get('input_size', '?')} px"
                           + (f" x {m['tta_views']} views" if m.get("tta_views", 1) != 1 else "") for m in members)
        return f"ensemble of {len(members)}: {parts}"
    return f"{meta.get('backbone') or '?'}, {meta.get('input_size', '?')} px"


def input_sizes(meta: dict | None) -> list[int]:
    """The input size of each member (one entry for a single-model bundle; empty when unknown)."""
    meta = meta or {}
    if meta.get("members"):
        return [int(m["input_size"]) for m in meta["members"] if m.get("input_size") is not None]
    return [int(meta["input_size"])] if meta.get("input_size") is not None else []
