"""Batch inference over many files: calibrated probabilities, optional heatmaps.

Unreadable files never stop a run: each gets its reason in the ``error``
column (and in the errors file the command writes) and the run goes on.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr_core.data.dataset import index_images
from cxr_core.errors import DataFormatError, ImageReadError
from cxr_core.evaluation.triage import NOT_ASSESSED
from cxr_core.findings import FINDINGS

IMAGE_COLUMN = "Image Index"
ERROR_COLUMN = "error"
#: Why the image may not be a frontal chest X-ray (the Analyze page's warnings, joined by WARNING_SEPARATOR); empty when none.
WARNING_COLUMN = "warning"
WARNING_SEPARATOR = " | "
#: The calibrated probability of any of the 14 findings (the triage); empty when not assessed.
ABNORMAL_COLUMN = "abnormal"
#: "abnormal", "no finding likely" or "not assessed" (the input check warned, or the file could not be read).
TRIAGE_COLUMN = "triage"
#: The findings flagged at the operating point, most probable first, joined by FLAG_SEPARATOR; empty when none.
FLAGGED_COLUMN = "flagged"
FLAG_SEPARATOR = "|"
COLUMNS = (IMAGE_COLUMN, *FINDINGS, ABNORMAL_COLUMN, TRIAGE_COLUMN, FLAGGED_COLUMN, WARNING_COLUMN, ERROR_COLUMN)


def list_image_files(target: str | os.PathLike) -> list[Path]:
    """Image files named by ``target``: a folder, or a CSV listing them.

    A folder is read like a dataset root (``images/``, Kaggle's
    ``images_NNN/images/``, or the folder itself). A CSV needs a column
    ``Image Index`` (NIH file names, found under the CSV's folder) or ``path``
    (absolute, or relative to the CSV).

    Raises:
        FileNotFoundError: ``target`` does not exist.
        DataFormatError: a CSV without either column.
    """
    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist")
    if target.is_dir():
        index = index_images(target)
        return [index[name] for name in sorted(index)]
    try:
        table = pd.read_csv(target, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataFormatError(f"{target.name} could not be read as a CSV list of images: {exc}") from exc
    if "path" in table.columns:
        return [Path(p) if Path(p).is_absolute() else target.parent / p for p in table["path"]]
    if IMAGE_COLUMN in table.columns:
        index = index_images(target.parent)
        return [index.get(name, target.parent / name) for name in table[IMAGE_COLUMN]]
    raise DataFormatError(f"{target.name} needs a column '{IMAGE_COLUMN}' or 'path'")


def _prepare(predictor, path: str):
    """The file decoded once, resized for every member and screened without the model (its pixels not kept: the maps
    come at the largest member input size); or why it cannot be read."""
    try:
        return predictor.prepare(path, keep_image=False)
    except ImageReadError as exc:
        return str(exc)


def iter_predictions(
    predictor,
    files: Iterable[str | os.PathLike],
    *,
    batch_size: int = 16,
    heatmap_dir: str | os.PathLike | None = None,
    workers: int = 2,
    operating_point: str | None = None,
) -> Iterator[dict]:
    """One row per file, in input order, a batch at a time (only one batch of images is held).

    Rows are dicts with ``Image Index``, one key per finding (calibrated
    probability, NaN when unreadable), ``abnormal``, ``triage``, ``flagged``,
    ``warning`` and ``error``; see :func:`predict_files`.
    """
    policy = predictor.policy
    policy.cuts(operating_point)  # an unusable operating point fails before any image is read
    out_dir = Path(heatmap_dir) if heatmap_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for batch_files in _batches(files, batch_size):
            loaded = list(pool.map(lambda p: _prepare(predictor, p), batch_files))
            good = [i for i, film in enumerate(loaded) if not isinstance(film, str)]
            # One forward pass per member for the batch: the input check (the learned one too) and, when written,
            # the 14 maps come with it.
            films = [loaded[i] for i in good]
            analyses = dict(zip(good, predictor.analyze(films, explain=None if out_dir is not None else [])
                                if good else []))
            calibrated = np.array([list(analyses[i].probabilities.values()) for i in good]).reshape(-1, len(FINDINGS))
            reading_of = dict(zip(good, _readings(policy, calibrated, operating_point)))
            for i, path in enumerate(batch_files):
                name = os.path.basename(path)
                row = {IMAGE_COLUMN: name, ABNORMAL_COLUMN: np.nan, TRIAGE_COLUMN: NOT_ASSESSED, FLAGGED_COLUMN: ""}
                if i in analyses:
                    analysis = analyses[i]
                    row.update(analysis.probabilities)
                    if not analysis.withheld_because:  # where the input check warned, the film is not assessed (as on the Analyze page)
                        row[ABNORMAL_COLUMN], row[TRIAGE_COLUMN], row[FLAGGED_COLUMN] = reading_of[i]
                    row[WARNING_COLUMN] = WARNING_SEPARATOR.join(analysis.warnings)
                    row[ERROR_COLUMN] = ""
                    if out_dir is not None:
                        _write_heatmaps(loaded[i], analysis, out_dir / os.path.splitext(name)[0])
                else:
                    row.update({f: np.nan for f in FINDINGS})
                    row[WARNING_COLUMN] = ""
                    row[ERROR_COLUMN] = loaded[i]
                yield row


def _readings(policy, calibrated: np.ndarray, operating_point: str | None) -> list[tuple[float, str, str]]:
    """``(abnormal, triage, flagged)`` per assessed film at the operating point."""
    abnormal, verdicts, flagged = policy.read_batch(calibrated, operating_point=operating_point)
    return list(zip(abnormal.tolist(), verdicts, flagged))


def _batches(files: Iterable[str | os.PathLike], size: int) -> Iterator[list[str]]:
    # Plain strings, not Path objects: pathlib interns every path part, and over
    # 100k distinct names the interpreter's interned-string table grows by MBs.
    batch: list[str] = []
    for f in files:
        batch.append(os.fspath(f))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(
    predictor,
    files: Sequence[str | os.PathLike],
    *,
    batch_size: int = 16,
    heatmap_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: Callable[[Iterable], Iterable] | None = None,
    operating_point: str | None = None,
) -> pd.DataFrame:
    """Calibrated probabilities for each file, in input order, as one table (for many files use :func:`predict_to_csv`).

    Args:
        predictor: a :class:`cxr_core.serving.predictor.Predictor`.
        files: image paths.
        batch_size: images per forward pass.
        heatmap_dir: if given, write for each readable image ``<name>.npz``
            holding the 14 Grad-CAM++ maps at model resolution (the largest
            member's, for an ensemble; uint8, key per
            finding) and ``<name>_heatmap.png``, an overlay of its most
            probable finding.
        workers: decoding threads.
        progress: wraps the row iterator (e.g. ``tqdm``), for a progress bar.
        operating_point: the flags' operating point, ``"specificity"`` or
            ``"youden"`` (:mod:`cxr_core.evaluation.reading`); None: the bundle's default.

    Returns:
        DataFrame with ``Image Index`` (file name), one column per finding
        (Data_Entry spelling, calibrated probability; empty when unreadable),
        ``abnormal`` (the triage's calibrated probability of any finding;
        empty when not assessed), ``triage`` (``abnormal``, ``no finding
        likely``, or ``not assessed`` where the input check warned or the file
        could not be read), ``flagged`` (the findings flagged at the operating
        point, most probable first, joined by ``|``; empty when none or not assessed),
        ``warning`` (empty, or why the image may not be a frontal chest X-ray:
        the simple rules, the intensity check and the bundle's learned check,
        joined by " | "; never stops a prediction) and ``error`` (empty, or
        why the file could not be read).
    """
    rows = iter_predictions(predictor, files, batch_size=batch_size, heatmap_dir=heatmap_dir, workers=workers,
                            operating_point=operating_point)
    return pd.DataFrame(list(progress(rows) if progress is not None else rows), columns=COLUMNS)


def _write_heatmaps(film, analysis, stem: Path) -> None:
    # The analysis's maps come at the largest member input size (the film was prepared without its pixels).
    image_uint8 = film.resized[max(film.resized)]
    probabilities = analysis.probabilities
    maps = {f.replace(" ", "_"): np.rint(m * 255).astype(np.uint8) for f, m in analysis.heatmaps.items()}
    np.savez_compressed(stem.with_suffix(".npz"), **maps)
    top = max(probabilities, key=probabilities.get)
    heat = cv2.applyColorMap(maps[top.replace(" ", "_")], cv2.COLORMAP_JET)
    gray = cv2.cvtColor(image_uint8, cv2.COLOR_GRAY2BGR)
    overlay = cv2.addWeighted(gray, 0.6, heat, 0.4, 0)
    cv2.putText(overlay, f"{top} {probabilities[top]:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    cv2.imwrite(str(stem.parent / f"{stem.name}_heatmap.png"), overlay)


def write_worklist(predictions_csv: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write a prediction CSV's rows as a reading worklist: the films to read first at the top.

    Order: films the model did not assess (the input check warned, or the
    file could not be read) first, since nobody but a reader will look at
    them; then the assessed films, most abnormal first (the triage
    probability, highest first); ties keep the input order.

    Args:
        predictions_csv: a CSV written by :func:`predict_to_csv` or :func:`merge_shards`.
        out: the worklist CSV (same columns).

    Returns:
        the number of rows written.

    Raises:
        DataFormatError: the file lacks the prediction columns.
    """
    table = pd.read_csv(predictions_csv, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataFormatError(f"{Path(predictions_csv).name} is not a prediction CSV (no {', '.join(missing)} column)")
    abnormal = pd.to_numeric(table[ABNORMAL_COLUMN], errors="coerce")
    key = pd.DataFrame({"assessed": table[TRIAGE_COLUMN] != NOT_ASSESSED, "abnormal": -abnormal.fillna(0.0)})
    order = key.sort_values(["assessed", "abnormal"], kind="stable").index
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.loc[order].to_csv(out, index=False)
    return len(table)


# -- sharded runs over many files --------------------------------------------------


class ShardMergeError(ValueError):
    """Shard outputs that do not make up one whole run (missing, repeated or foreign images or shards)."""


def run_record_path(out: str | os.PathLike) -> Path:
    """The sidecar of a prediction CSV: ``preds.csv`` -> ``preds.run.json`` (shard, listing, images/s)."""
    return Path(out).with_suffix(".run.json")


def errors_path(out: str | os.PathLike) -> Path:
    """The list of unreadable files beside a prediction CSV: ``preds.csv`` -> ``preds.errors.csv``."""
    return Path(out).with_suffix(".errors.csv")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``.

    Raises:
        ValueError: anything else, with a plain message.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise ValueError(f"a shard is K/N with 0 <= K < N (e.g. 0/4 ... 3/4), got {text!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Listing:
    """The images of a run in their stable order (sorted relative paths), and what identifies that order."""

    files: list[str]
    source: str

    @property
    def total(self) -> int:
        return len(self.files)

    @property
    def fingerprint(self) -> str:
        """sha256 of the file names in order, one per line: what the merged output must reproduce."""
        return _names_digest(Path(f).name for f in self.files)

    def shard(self, k: int, n: int) -> list[str]:
        """Every ``n``-th file from offset ``k``."""
        return self.files[k::n]


def _names_digest(names: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8") + b"\n")
    return digest.hexdigest()


def stable_listing(target: str | os.PathLike) -> Listing:
    """The files :func:`list_image_files` names, sorted by their path relative to ``target``
    (the folder, or the CSV's folder), so every machine that lists the same data gets the same order.

    Paths are kept as strings (a 112k-image listing is a few MB).
    """
    target = Path(target)
    root = target if target.is_dir() else target.parent
    keyed = sorted((Path(os.path.relpath(p, root)).as_posix(), str(p)) for p in list_image_files(target))
    return Listing([path for _, path in keyed], source=str(target))


def _format_row(row: dict) -> list[str]:
    values = [row[IMAGE_COLUMN]]
    for column in (*FINDINGS, ABNORMAL_COLUMN):
        v = row.get(column)
        values.append("" if v is None or not np.isfinite(v) else f"{v:.6f}")
    values.append(row.get(TRIAGE_COLUMN, NOT_ASSESSED))
    values.append(row.get(FLAGGED_COLUMN, ""))
    values.append(row.get(WARNING_COLUMN, ""))
    values.append(row[ERROR_COLUMN])
    return values


def predict_to_csv(
    predictor,
    files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    batch_size: int = 16,
    heatmap_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: Callable[[Iterable], Iterable] | None = None,
    shard: tuple[int, int] = (0, 1),
    listing: Listing | None = None,
    log: Callable[[str], None] | None = None,
    operating_point: str | None = None,
) -> dict:
    """Predict ``files`` and stream the rows to ``out`` as they come (memory does not grow with the number of files).

    Writes ``out`` (the columns of :func:`predict_files`), ``<out>.errors.csv``
    (unreadable files and why; removed when there are none) and the sidecar
    ``<out>.run.json``: shard ``K``/``N``, the listing's total and fingerprint
    (when ``listing`` is given: what :func:`merge_shards` checks), rows,
    errors, seconds and images/s, and ``complete`` (false until the last row
    is written).

    Args:
        files: the images of this run (for a shard: ``listing.shard(K, N)``).
        shard: ``(K, N)``; ``(0, 1)`` for an unsharded run.
        listing: the whole run's :class:`Listing`, recorded for the merge.
        log: receives the one-line throughput summary (e.g. ``print`` to stderr).
        Other arguments: as :func:`predict_files`.

    Returns:
        The sidecar's contents.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    k, n = shard
    record = {
        "format": "cxr-assist predictions 1", "shard": k, "of": n, "images": len(files),
        "listing": None if listing is None else {"total": listing.total, "sha256": listing.fingerprint,
                                                 "source": Path(listing.source).name},
        "complete": False,
    }
    sidecar = run_record_path(out)
    sidecar.write_text(json.dumps(record, indent=2))
    errors_file = errors_path(out)
    errors_file.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    rows = iter_predictions(predictor, files, batch_size=batch_size, heatmap_dir=heatmap_dir, workers=workers,
                            operating_point=operating_point)
    written = unreadable = 0
    start = time.perf_counter()
    errors_handle = None
    try:
        with open(out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for row in progress(rows) if progress is not None else rows:
                writer.writerow(_format_row(row))
                written += 1
                if row[ERROR_COLUMN]:
                    if errors_handle is None:
                        errors_handle = open(errors_file, "w", newline="", encoding="utf-8")
                        errors_writer = csv.writer(errors_handle)
                        errors_writer.writerow([IMAGE_COLUMN, ERROR_COLUMN])
                    errors_writer.writerow([row[IMAGE_COLUMN], row[ERROR_COLUMN]])
                    unreadable += 1
    finally:
        if errors_handle is not None:
            errors_handle.close()
    seconds = time.perf_counter() - start
    record.update(rows=written, errors=unreadable, seconds=round(seconds, 3),
                  images_per_s=round(written / seconds, 2) if seconds > 0 else None, complete=True)
    sidecar.write_text(json.dumps(record, indent=2))
    if log is not None:
        where = f"shard {k}/{n}: " if n > 1 else ""
        log(f"{where}{written} images in {seconds:.1f} s ({record['images_per_s']} images/s)"
            + (f", {unreadable} unreadable" if unreadable else ""))
    return record


def _read_record(path: Path) -> dict:
    sidecar = run_record_path(path)
    if not path.is_file():
        raise ShardMergeError(f"{path} does not exist")
    if not sidecar.is_file():
        raise ShardMergeError(f"{path.name} has no {sidecar.name} beside it: it was not written by training.predict --shard")
    try:
        record = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise ShardMergeError(f"{sidecar.name} is not valid JSON: {exc}") from exc
    if not record.get("complete"):
        raise ShardMergeError(f"{path.name} (shard {record.get('shard')}/{record.get('of')}) is incomplete: "
                              "its run stopped before the last image; run that shard again")
    if not record.get("listing"):
        raise ShardMergeError(f"{sidecar.name} records no listing: it was not written by training.predict --shard")
    return record


def _names_of(listing_source: Path | None, k: int, n: int, limit: int = 10) -> str:
    """A few of the names shard ``k``/``n`` should hold, when the listing can be read again."""
    if listing_source is None or not listing_source.exists():
        return ""
    names = [Path(f).name for f in stable_listing(listing_source).shard(k, n)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ": " + ", ".join(names[:limit]) + more


def merge_shards(
    shard_csvs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Join the outputs of ``training.predict --shard K/N`` into one CSV in the listing's order, checking completeness.

    Every shard ``0 .. N-1`` must be there once, from the same listing (same
    total and fingerprint), complete, with the number of rows its offset
    gives; the merged file names, in order, must reproduce the listing's
    fingerprint, so every image is there exactly once. Rows are streamed: one
    row per shard is held at a time.

    Args:
        shard_csvs: the shard CSVs (any order).
        out: the merged CSV; ``<out>.errors.csv`` and ``<out>.run.json`` are written beside it.
        images: the folder or CSV the shards listed, if at hand: lets an error
            name the images of a missing shard.

    Raises:
        ShardMergeError: with a plain message naming the missing or repeated
            shards and images. Nothing is written then.
    """
    paths = [Path(p) for p in shard_csvs]
    if not paths:
        raise ShardMergeError("no shard outputs given")
    records = [_read_record(p) for p in paths]
    first = records[0]
    n, total, digest = first["of"], first["listing"]["total"], first["listing"]["sha256"]
    for path, record in zip(paths, records):
        if record["of"] != n or record["listing"]["total"] != total or record["listing"]["sha256"] != digest:
            raise ShardMergeError(
                f"{path.name} is shard {record['shard']}/{record['of']} of a listing of {record['listing']['total']} images, "
                f"but {paths[0].name} is shard {first['shard']}/{n} of {total}"
                + (" (same count, different images)" if record["listing"]["total"] == total else "")
                + ": they come from different runs")
    by_shard: dict[int, list[Path]] = {}
    for path, record in zip(paths, records):
        by_shard.setdefault(int(record["shard"]), []).append(path)
    repeated = {k: v for k, v in by_shard.items() if len(v) > 1}
    if repeated:
        raise ShardMergeError("; ".join(f"shard {k}/{n} given {len(v)} times ({', '.join(p.name for p in v)})"
                                        for k, v in sorted(repeated.items())) + ": its images would be counted twice")
    missing = [k for k in range(n) if k not in by_shard]
    source = Path(images) if images is not None else None
    if missing:
        raise ShardMergeError("; ".join(
            f"shard {k}/{n} is missing: its {len(range(k, total, n))} images are in no output{_names_of(source, k, n)}"
            for k in missing) + f". Run python -m training.predict --shard K/{n} for it and merge again")
    for k, [path] in by_shard.items():
        record = records[paths.index(path)]
        if record["rows"] != len(range(k, total, n)):
            raise ShardMergeError(f"{path.name} (shard {k}/{n}) holds {record['rows']} rows but should hold "
                                  f"{len(range(k, total, n))} of the {total} images")
    return _stream_merge([by_shard[k][0] for k in range(n)], Path(out), total, digest, records, log, source)


def _stream_merge(shards: list[Path], out: Path, total: int, digest: str, records: list[dict], log, source) -> dict:
    n = len(shards)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    errors_partial = errors_path(out).with_name(errors_path(out).name + ".partial")
    try:
        unreadable = _merge_rows(shards, partial, errors_partial, total, digest, source)
    except BaseException:
        partial.unlink(missing_ok=True)
        errors_partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    errors_file = errors_path(out)
    errors_file.unlink(missing_ok=True)
    if unreadable:
        errors_partial.replace(errors_file)
    seconds = max(r["seconds"] for r in records)
    record = {"format": "cxr-assist predictions 1", "shard": 0, "of": 1, "merged_from": n, "images": total, "rows": total,
              "errors": unreadable, "listing": records[0]["listing"], "complete": True,
              "seconds": seconds, "images_per_s": round(total / seconds, 2) if seconds > 0 else None,
              "shards": [{"file": p.name, "images_per_s": r["images_per_s"]}
                         for p, r in sorted(zip(shards, records), key=lambda pr: pr[1]["shard"])]}
    run_record_path(out).write_text(json.dumps(record, indent=2))
    if log is not None:
        log(f"{n} shards, {total} images, each once -> {out}" + (f"; {unreadable} unreadable -> {errors_file}" if unreadable else ""))
    return record


def _merge_rows(shards: list[Path], partial: Path, errors_partial: Path, total: int, digest: str, source: Path | None) -> int:
    """Write the shards' rows round-robin (listing order) to ``partial``; the number of unreadable rows."""
    n = len(shards)
    names = hashlib.sha256()
    unreadable = 0
    with contextlib.ExitStack() as stack:
        readers = []
        for path in shards:
            reader = csv.reader(stack.enter_context(open(path, newline="", encoding="utf-8")))
            if next(reader, None) != list(COLUMNS):
                raise ShardMergeError(f"{path.name} does not have the columns of a prediction CSV")
            readers.append(reader)
        handle = stack.enter_context(open(partial, "w", newline="", encoding="utf-8"))
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        errors_writer = None
        for position in range(total):
            row = next(readers[position % n], None)
            if row is None:
                raise ShardMergeError(f"{shards[position % n].name} ends early, at image {position // n + 1}")
            names.update(row[0].encode("utf-8") + b"\n")
            writer.writerow(row)
            if row[-1]:
                unreadable += 1
                if errors_writer is None:
                    errors_writer = csv.writer(stack.enter_context(open(errors_partial, "w", newline="", encoding="utf-8")))
                    errors_writer.writerow([IMAGE_COLUMN, ERROR_COLUMN])
                errors_writer.writerow([row[0], row[-1]])
        extra = [p.name for p, r in zip(shards, readers) if next(r, None) is not None]
        if extra:
            raise ShardMergeError(f"{', '.join(extra)} hold(s) more rows than their shard of {total} images")
    if names.hexdigest() != digest:
        raise ShardMergeError(_which_images_differ(shards, source))
    return unreadable


def _which_images_differ(shards: list[Path], source: Path | None) -> str:
    """After a fingerprint mismatch: the repeated (and, with the listing at hand, missing) names; only on this error path."""
    counts: Counter[str] = Counter()
    for path in shards:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            counts.update(row[0] for row in reader)
    expected: Counter[str] = Counter()
    if source is not None and source.exists():
        expected.update(Path(f).name for f in stable_listing(source).files)
    repeated = sorted(name for name, c in counts.items() if c > max(1, expected[name]))
    missing = sorted((expected - counts).elements())
    parts = []
    for what, names in (("appear more than once across the shards", repeated), ("are missing", missing)):
        if names:
            parts.append(f"{len(names)} image(s) {what}: {', '.join(names[:10])}" + (" ..." if len(names) > 10 else ""))
    if not parts:
        parts.append("the shards' images are not the listing they recorded" +
                     ("" if source is not None else " (give --images to name the missing ones)"))
    return "; ".join(parts) + ". A shard output was edited or replaced: run those shards again"
