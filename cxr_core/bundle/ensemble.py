"""Ensemble bundles: several classifiers in one bundle folder, their logits averaged.

The folder layout and ``bundle.json`` keys are described in
:mod:`cxr_core.bundle.format` (format version 2). This module holds what only
ensembles need: the member record, :class:`EnsembleBundle` (load and check
every member), :func:`load_bundle` (either kind of bundle) and
:func:`assemble_ensemble`, which copies finished single-model runs into one
folder after checking that they were trained on the same patient split: an
ensemble whose members saw different splits would score test images one of
them trained on.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.bundle.format import (
    BUNDLE_FORMAT,
    COMBINE_LOGIT_MEAN,
    CORE_KEYS,
    ENSEMBLE_FORMAT_VERSION,
    MEMBER_DROPPED_KEYS,
    MEMBERS_DIR,
    METADATA_FILE,
    MODEL_FILE,
    SPLITS_FILE,
    Bundle,
    BundleError,
    _check_findings,
    _Records,
    _store_float16,
    _write_json_atomic,
    check_tta_views,
    code_version,
    describe_model,
    explanation_method,
    portable_path,
    read_metadata,
)
from cxr_core.findings import FINDINGS

_MEMBER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _check_member_name(name: str) -> str:
    name = str(name)
    if not name or name.startswith(".") or not set(name) <= _MEMBER_NAME_CHARS:
        raise BundleError(f"member name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return name


def _normalised_weights(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise BundleError(f"{len(values)} weights given for {count} members")
    if not all(np.isfinite(w) and w >= 0 for w in values) or sum(values) <= 0:
        raise BundleError(f"member weights must be finite, non-negative and not all zero, got {values}")
    total = sum(values)
    return [w / total for w in values]


@dataclass
class EnsembleMember:
    """One classifier of an ensemble.

    Attributes:
        name: the member's folder name under ``members/``.
        weight: its share of the averaged logits (the weights of a bundle sum to 1).
        map_weight: its share of the averaged heatmaps (None: same as ``weight``).
        bundle: the member as a single-model :class:`Bundle` (own model, input
            size, preprocessing, backbone and training provenance).
        tta_views: 1, or 6 when the member's scores average the image and
            five crops of it (:mod:`cxr_core.serving.tta`).
    """

    name: str
    weight: float
    bundle: Bundle
    map_weight: float | None = None
    tta_views: int = 1

    def summary(self) -> dict:
        """The member's entry in the ensemble's ``bundle.json``."""
        history = (self.bundle.training or {}).get("history") or {}
        pretraining = (self.bundle.training or {}).get("pretraining") or {}
        return {
            "name": self.name,
            "path": f"{MEMBERS_DIR}/{self.name}",
            "weight": float(self.weight),
            **({} if self.map_weight is None else {"map_weight": float(self.map_weight)}),
            **({} if self.tta_views == 1 else {"tta_views": int(self.tta_views)}),
            "backbone": self.bundle.backbone,
            "input_size": int(self.bundle.input_size),
            "preprocessing": self.bundle.preprocessing.to_dict(),
            "weights_init": (self.bundle.model_config or {}).get("weights_init"),
            "weights_dtype": self.bundle.extra.get("weights_dtype", "float32"),
            "explanation": {"method": explanation_method(self.bundle.extra)},
            "training_seconds": history.get("seconds"),
            **({"pretraining_seconds": pretraining.get("seconds")} if pretraining else {}),
            "best_val_mean_auroc": history.get("best_val_mean_auroc"),
        }


def _tta_views(value, where) -> int:
    """A member's test-time views, or BundleError naming ``where``."""
    try:
        return check_tta_views(value)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None


@dataclass
class EnsembleBundle(_Records):
    """Several classifiers whose logits are averaged (see the module docstring).

    Attributes:
        members: the members, in ``bundle.json`` order.
        findings: output column order, shared by every member.
        combine: how outputs combine; only ``"logit_mean"`` (weighted mean of
            logits, then sigmoid).

    and the shared provenance fields of ``_Records``: the members' shared
    ``data`` summary, ``split`` and ``splits`` (identical for all members),
    ``code`` and ``created`` of the assembly, ``training`` (how the ensemble
    was assembled; each member's own history is in its
    ``members/<name>/bundle.json``), ``extra``, ``path``.
    """

    members: list[EnsembleMember]
    findings: tuple[str, ...] = FINDINGS
    combine: str = COMBINE_LOGIT_MEAN

    @property
    def backbone(self) -> str:
        """What the ensemble is, e.g. ``"ensemble of 2: vgg16 224 px + mobilenetv2 160 px"``."""
        return describe_model({"members": [m.summary() for m in self.members]})

    @property
    def input_sizes(self) -> list[int]:
        return [int(m.bundle.input_size) for m in self.members]

    def metadata(self) -> dict:
        """The ``bundle.json`` content."""
        data = {
            "format": BUNDLE_FORMAT,
            "format_version": ENSEMBLE_FORMAT_VERSION,
            "findings": list(self.findings),
            "members": [m.summary() for m in self.members],
            "combine": self.combine,
            "backbone": self.backbone,
            **self._shared_metadata(),
        }
        return self._with_extra(data)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_findings=FINDINGS, load_model: bool = True) -> "EnsembleBundle":
        """Open an ensemble bundle folder and check every member.

        Args:
            directory: the bundle folder.
            expected_findings: the output order the caller relies on.
            load_model: also load each member's ``model.keras``.

        Raises:
            BundleError: not an ensemble bundle, a member missing or
                inconsistent with the ensemble's ``bundle.json``, an unknown
                ``combine`` rule.
        """
        directory = Path(directory)
        meta = read_metadata(directory)
        entries = meta.get("members")
        if not entries:
            raise BundleError(f"{directory} is a single-model bundle; open it with Bundle.load() or load_bundle()")
        findings = _check_findings(meta, expected_findings, directory)
        combine = meta.get("combine", COMBINE_LOGIT_MEAN)
        if combine != COMBINE_LOGIT_MEAN:
            raise BundleError(f"{directory}: unknown ensemble rule combine={combine!r} (this code knows {COMBINE_LOGIT_MEAN!r})")
        members = []
        for entry in entries:
            name = _check_member_name(entry.get("name", ""))
            folder = directory / entry.get("path", f"{MEMBERS_DIR}/{name}")
            member = Bundle.load(folder, expected_findings=findings, expected_input_size=entry.get("input_size"),
                                 load_model=load_model)
            map_weight = entry.get("map_weight")
            members.append(EnsembleMember(name=name, weight=float(entry.get("weight", 1.0)), bundle=member,
                                          map_weight=None if map_weight is None else float(map_weight),
                                          tta_views=_tta_views(entry.get("tta_views", 1), directory)))
        weights = _normalised_weights([m.weight for m in members], len(members))
        for member, weight in zip(members, weights):
            member.weight = weight
        known = CORE_KEYS | {"backbone", "data", "split", "code", "created", "training"}
        return cls(members=members, findings=findings, combine=combine, extra={k: v for k, v in meta.items() if k not in known},
                   **cls._records_from(meta, directory))


def load_bundle(directory: str | os.PathLike, *, expected_findings=FINDINGS, load_model: bool = True) -> Bundle | EnsembleBundle:
    """Open a bundle folder of either kind: a :class:`Bundle` or an :class:`EnsembleBundle`.

    Raises:
        BundleError: as :meth:`Bundle.load` and :meth:`EnsembleBundle.load`.
    """
    if read_metadata(directory).get("members"):
        return EnsembleBundle.load(directory, expected_findings=expected_findings, load_model=load_model)
    return Bundle.load(directory, expected_findings=expected_findings, load_model=load_model)


_SPLIT_COLUMNS = ["image", "patient_id", "split"]


def _split_key(splits: pd.DataFrame) -> pd.DataFrame:
    table = splits[_SPLIT_COLUMNS].astype(str)
    return table.sort_values("image").reset_index(drop=True)


def _check_same_splits(bundles: list[Bundle], sources: list[Path]) -> pd.DataFrame:
    """The members' shared split table (``used``: any member used the image), or a BundleError saying where they differ."""
    for bundle, source in zip(bundles, sources):
        if bundle.splits is None:
            raise BundleError(f"{source} has no {SPLITS_FILE}: its split cannot be checked against the other members")
    first = _split_key(bundles[0].splits)
    for bundle, source in zip(bundles[1:], sources[1:]):
        other = _split_key(bundle.splits)
        if other.equals(first):
            continue
        a, b = set(first["image"]), set(other["image"])
        if a != b:
            detail = f"{len(a - b)} images only in {sources[0]}, {len(b - a)} only in {source}"
        else:
            merged = first.merge(other, on="image", suffixes=("_a", "_b"))
            moved = merged[(merged["split_a"] != merged["split_b"]) | (merged["patient_id_a"] != merged["patient_id_b"])]
            example = moved.iloc[0]
            detail = (f"{len(moved)} images are in another split or patient, e.g. {example['image']} is "
                      f"{example['split_a']} in {sources[0]} but {example['split_b']} in {source}")
        raise BundleError(
            f"the members were trained on different splits ({detail}); an ensemble's members must share one split, "
            "or its validation-fitted calibration and its test numbers would mix images some member trained on"
        )
    table = bundles[0].splits[_SPLIT_COLUMNS].copy()
    if all("used" in b.splits.columns for b in bundles):
        used = np.zeros(len(table), dtype=bool)
        for bundle in bundles:
            flags = bundle.splits.set_index("image")["used"].astype(str).str.lower().isin({"true", "1"})
            used |= table["image"].map(flags).fillna(False).to_numpy(dtype=bool)
        table["used"] = used
    return table


def assemble_ensemble(
    members: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    weights: list[float] | None = None,
    names: list[str] | None = None,
    float16: bool = False,
    overwrite: bool = False,
    expected_findings=FINDINGS,
    map_weights: list[float] | None = None,
    tta_views: list[int] | None = None,
) -> Path:
    """Build an ensemble bundle from trained single-model bundles.

    Each member's ``model.keras`` is copied (not re-saved, so its weights are
    bit-identical, or rounded to float16 with ``float16``) into
    ``out/members/<name>/`` with the member's ``bundle.json``: its data,
    split, code and training history stay with it. Keys a member's own
    evaluation added (thresholds, calibration, operating points, test summary)
    are dropped: the ensemble is calibrated and thresholded as a whole, after
    averaging, by ``python -m training.evaluate``.

    Args:
        members: the members' bundle folders (at least two; single-model bundles).
        out: the new ensemble bundle folder.
        weights: one non-negative weight per member (normalised to sum 1);
            default equal.
        names: one folder name per member; default ``m1_<backbone>_<size>`` ...
        float16: store float32 member weights as float16 (about half the size).
        overwrite: replace an existing bundle at ``out``.
        expected_findings: the output order every member must have.
        map_weights: one non-negative weight per member for the averaged
            heatmaps (normalised; default: ``weights``); 0 keeps a member's
            maps out, e.g. when they measured worse on the validation boxes.
        tta_views: one per member, 1 or 6 (test-time augmentation of its
            scores, :mod:`cxr_core.serving.tta`); default 1 for all.

    Returns:
        the ensemble folder.

    Raises:
        BundleError: fewer than two members, a member that is itself an
            ensemble or not a bundle, members trained on different splits,
            bad weights or names, or ``out`` already holds a bundle.
    """
    sources = [Path(m) for m in members]
    if len(sources) < 2:
        raise BundleError(f"an ensemble needs at least two members, got {len(sources)}")
    out = Path(out)
    if (out / METADATA_FILE).exists() and not overwrite:
        raise BundleError(f"{out} already holds a bundle; pass overwrite=True")
    if any(source.resolve() == out.resolve() for source in sources):
        raise BundleError(f"{out} is one of the members; write the ensemble to a new folder")
    bundles = [Bundle.load(source, expected_findings=expected_findings, load_model=False) for source in sources]
    shares = _normalised_weights(weights, len(bundles))
    map_shares = [None] * len(bundles) if map_weights is None else _normalised_weights(map_weights, len(bundles))
    views = [1] * len(bundles) if tta_views is None else [_tta_views(v, out) for v in tta_views]
    if len(views) != len(bundles):
        raise BundleError(f"need one tta_views per member ({len(bundles)}), got {len(views)}")
    if names is None:
        names = [f"m{i + 1}_{b.backbone or 'model'}_{b.input_size}" for i, b in enumerate(bundles)]
    names = [_check_member_name(n) for n in names]
    if len(names) != len(bundles) or len(set(names)) != len(names):
        raise BundleError(f"need {len(bundles)} distinct member names, got {names}")
    splits = _check_same_splits(bundles, sources)

    if out.exists() and overwrite:
        for stale in (out / MEMBERS_DIR, out / SPLITS_FILE, out / METADATA_FILE):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    ensemble_members = []
    for source, bundle, name, share, map_share, view in zip(sources, bundles, names, shares, map_shares, views):
        folder = out / MEMBERS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        meta = json.loads((source / METADATA_FILE).read_text(encoding="utf-8"))
        shutil.copyfile(source / meta.get("model_file", MODEL_FILE), folder / MODEL_FILE)
        meta["model_file"] = MODEL_FILE
        if float16 and meta.get("weights_dtype", "float32") != "float16":
            _store_float16(folder / MODEL_FILE)
            meta["weights_dtype"] = "float16"
        for key in MEMBER_DROPPED_KEYS:
            meta.pop(key, None)
        meta["split"] = {k: v for k, v in (meta.get("split") or {}).items() if k != "file"}  # splits.csv is the ensemble's
        meta["assembled_from"] = {"bundle": portable_path(source.resolve()), "weight": share}
        _write_json_atomic(folder / METADATA_FILE, meta)
        member_bundle = Bundle.load(folder, expected_findings=expected_findings, load_model=False)
        ensemble_members.append(EnsembleMember(name=name, weight=share, bundle=member_bundle, map_weight=map_share,
                                               tta_views=view))

    summaries = [b.data for b in bundles]
    comparable = [{k: v for k, v in d.items() if k != "location"} for d in summaries]
    data = dict(summaries[0])
    if any(c != comparable[0] for c in comparable[1:]):
        data["note"] = f"the members' data summaries differ (e.g. images per split); each is in {MEMBERS_DIR}/<name>/bundle.json"
    ensemble = EnsembleBundle(
        members=ensemble_members, findings=bundles[0].findings, data=data,
        split={k: v for k, v in bundles[0].split.items() if k != "file"}, splits=splits, code=code_version(),
        training={"assembled_by": "cxr_core.bundle.ensemble.assemble_ensemble",
                  "sources": {m.name: portable_path(s.resolve()) for m, s in zip(ensemble_members, sources)},
                  "history": f"each member's own, in {MEMBERS_DIR}/<name>/bundle.json"},
        path=out,
    )
    splits[_SPLIT_COLUMNS + [c for c in splits.columns if c not in _SPLIT_COLUMNS]].to_csv(out / SPLITS_FILE, index=False)
    _write_json_atomic(out / METADATA_FILE, ensemble.metadata())
    return out
