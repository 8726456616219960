"""A site's films and labels: a folder of images in any layout and one labels CSV, checked and split patient-wise.

The labels CSV has ``Image Index`` (a file name, or a path relative to the
site folder) and ``Patient ID``, and either

* ``Finding Labels``, Data_Entry style: findings joined by ``|``, or ``No
  Finding``; every film is then labelled for all 14 findings; or
* one column per finding (any subset of the 14, spelled as in Data_Entry or a
  known alias) holding 1, 0 or nothing. Nothing means unknown: the film is
  left out of that finding (its metrics, its refitted cut), never counted
  as a negative.

Other columns of the Data_Entry table (age, sex, view ...) may be there and
are ignored; a patient in two rows with different ages is fine. Anything
else is refused with a :class:`SiteDataError` that names the rows or columns
(unknown finding names, values other than 1/0/empty, duplicate rows, rows
without a patient, images missing from the folder). Few positives of a finding
are reported (:attr:`SiteFilms.notes`), never fatal: that finding keeps the
shipped bundle's cuts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data.splits import assert_patient_disjoint, patient_split
from cxr_core.errors import DataFormatError
from cxr_core.findings import FINDINGS, NO_FINDING, canonical_finding, parse_finding_labels

IMAGE_COLUMN = "Image Index"
PATIENT_COLUMN = "Patient ID"
LABELS_COLUMN = "Finding Labels"
#: Columns of NIH's Data_Entry table that a site file may carry and that adaptation ignores.
IGNORED_COLUMNS = frozenset({
    "Follow-up #", "Patient Age", "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
    "OriginalImagePixelSpacing[x", "y]", "Unnamed: 11",
})
#: Fewer positives (or negatives) of a finding in the fit part than this: its shipped calibration and cuts are kept
#: (the flags' rule for validation, :data:`cxr_core.evaluation.flags.MIN_VAL_POSITIVES`).
MIN_SITE_POSITIVES = 10
#: Names listed in one error message before "and N more".
_SHOWN = 8
FIT, CHECK = "fit", "check"


class SiteDataError(DataFormatError):
    """The site's labels CSV or image folder cannot be used as they are; the message names the rows."""


@dataclass(frozen=True)
class SiteFilms:
    """A site's films with their labels, row-aligned.

    Attributes:
        name: the site's name (recorded in the adapted bundle).
        table: one row per film: ``image`` (the CSV's ``Image Index``),
            ``patient_id`` (str), ``path`` (the file), ``row`` (the CSV line).
        labels: float (n, 14) in FINDINGS order: 1, 0, or NaN where unknown.
        label_format: ``"Finding Labels"`` or ``"finding columns"``.
        notes: what the reader should know (findings with few positives ...).
    """

    name: str
    table: pd.DataFrame
    labels: np.ndarray
    label_format: str
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.table)

    @property
    def patient_ids(self) -> np.ndarray:
        return self.table["patient_id"].to_numpy()

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    @property
    def findings(self) -> tuple[str, ...]:
        """The findings with at least one known label, in FINDINGS order."""
        return tuple(f for j, f in enumerate(FINDINGS) if np.isfinite(self.labels[:, j]).any())

    @property
    def complete(self) -> np.ndarray:
        """bool (n,): the film is labelled for all 14 findings (so "no finding" is known)."""
        return np.isfinite(self.labels).all(axis=1)

    def subset(self, rows: np.ndarray) -> SiteFilms:
        rows = np.asarray(rows)
        return SiteFilms(name=self.name, table=self.table.iloc[rows].reset_index(drop=True), labels=self.labels[rows],
                         label_format=self.label_format, notes=self.notes)


def _rows_text(lines: Sequence, what: str = "row") -> str:
    """``"rows 3, 7, 9"`` (CSV line numbers), shortened after :data:`_SHOWN`."""
    lines = [str(v) for v in lines]
    more = f" and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return f"{what}{'s' * (len(lines) > 1)} {', '.join(lines[:_SHOWN])}{more}"


def _read_table(labels_csv: Path) -> pd.DataFrame:
    if not labels_csv.is_file():
        raise FileNotFoundError(f"the labels file {labels_csv} does not exist")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the file's, said plainly
        raise SiteDataError(f"{labels_csv.name} could not be read as a CSV table: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in (IMAGE_COLUMN, PATIENT_COLUMN) if c not in table.columns]
    if missing:
        raise SiteDataError(f"{labels_csv.name} needs the columns '{IMAGE_COLUMN}' and '{PATIENT_COLUMN}' "
                            f"(missing: {', '.join(missing)}; found: {', '.join(table.columns[:8])})")
    if table.empty:
        raise SiteDataError(f"{labels_csv.name} has no rows")
    return table


def _labels_from_strings(table: pd.DataFrame, name: str) -> np.ndarray:
    labels = np.zeros((len(table), len(FINDINGS)))
    bad = []
    for i, text in enumerate(table[LABELS_COLUMN]):
        found, unknown = parse_finding_labels(text)
        if unknown or not str(text).strip():
            bad.append((i + 2, "|".join(unknown) or "(empty)"))
        elif NO_FINDING in str(text) and found:
            bad.append((i + 2, f"{text} (No Finding with findings)"))
        labels[i, [FINDINGS.index(f) for f in found]] = 1.0
    if bad:
        raise SiteDataError(f"{name}: unknown finding names in '{LABELS_COLUMN}' at "
                            f"{_rows_text([f'{line} ({what})' for line, what in bad], 'row')}; the findings are "
                            f"{', '.join(FINDINGS)}, or '{NO_FINDING}'")
    return labels


def _labels_from_columns(table: pd.DataFrame, name: str) -> np.ndarray:
    columns = [c for c in table.columns if c not in (IMAGE_COLUMN, PATIENT_COLUMN) and c not in IGNORED_COLUMNS]
    finding_of, unknown = {}, []
    for column in columns:
        try:
            finding_of[column] = canonical_finding(column)
        except KeyError:
            unknown.append(column)
    if unknown:
        raise SiteDataError(f"{name}: columns that are not findings: {', '.join(unknown)}; a column per finding is "
                            f"named as one of {', '.join(FINDINGS)} (or give a '{LABELS_COLUMN}' column)")
    if not finding_of:
        raise SiteDataError(f"{name} has no labels: give '{LABELS_COLUMN}' or one column per finding (1, 0 or empty)")
    repeated = sorted({f for f in finding_of.values() if list(finding_of.values()).count(f) > 1})
    if repeated:
        raise SiteDataError(f"{name}: more than one column for {', '.join(repeated)}")
    labels = np.full((len(table), len(FINDINGS)), np.nan)
    for column, finding in finding_of.items():
        text = table[column].str.strip()
        values = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = np.flatnonzero((text != "").to_numpy() & ~values.isin([0, 1]).to_numpy())
        if len(bad):
            raise SiteDataError(f"{name}: column '{column}' holds values other than 1, 0 or empty at "
                                f"{_rows_text([f'{i + 2} ({table[column].iloc[i]!r})' for i in bad])}")
        labels[:, FINDINGS.index(finding)] = values.to_numpy(dtype=float)
    return labels


def _image_index(site_dir: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """``({relative posix path: file}, {file name: [files]})`` of every file under ``site_dir``, any depth."""
    by_relative, by_name = {}, {}
    for folder, _, files in os.walk(site_dir):
        for file in files:
            if file.startswith("."):
                continue
            path = Path(folder) / file
            by_relative[path.relative_to(site_dir).as_posix()] = path
            by_name.setdefault(file, []).append(path)
    return by_relative, by_name


def _match_images(names: pd.Series, site_dir: Path, csv_name: str) -> list[str]:
    by_relative, by_name = _image_index(site_dir)
    paths, missing, ambiguous = [], [], []
    for i, name in enumerate(names):
        key = Path(name).as_posix().lstrip("./") if name else ""
        if key in by_relative:
            paths.append(str(by_relative[key]))
        elif len(by_name.get(Path(key).name, [])) == 1:
            paths.append(str(by_name[Path(key).name][0]))
        else:
            (ambiguous if by_name.get(Path(key).name) else missing).append(f"{i + 2} ({name or 'empty'})")
            paths.append("")
    if missing:
        raise SiteDataError(f"{csv_name}: no image in {site_dir} for {_rows_text(missing)}")
    if ambiguous:
        raise SiteDataError(f"{csv_name}: more than one file of that name under {site_dir} for {_rows_text(ambiguous)}; "
                            f"write '{IMAGE_COLUMN}' as the path relative to the site folder")
    return paths


def _positive_notes(labels: np.ndarray) -> list[str]:
    few = []
    for j, finding in enumerate(FINDINGS):
        known = np.isfinite(labels[:, j])
        positives = int(np.nansum(labels[:, j]))
        if known.any() and positives < 2 * MIN_SITE_POSITIVES:
            few.append(f"{finding} {positives} of {int(known.sum())}")
    if not few:
        return []
    return [f"few positive films (positive of labelled): {', '.join(few)}; a finding with fewer than "
            f"{MIN_SITE_POSITIVES} positives in the fit part keeps the shipped cuts, and its check-part numbers are "
            "few-film numbers"]


def read_site(site_dir: str | os.PathLike, labels_csv: str | os.PathLike, *, name: str | None = None) -> SiteFilms:
    """Read and check a site's films and labels (see the module docstring).

    Args:
        site_dir: the folder holding the images (PNG, JPEG or DICOM, any layout).
        labels_csv: the labels CSV.
        name: the site's name; default the folder's name.

    Raises:
        FileNotFoundError: the folder or the CSV is not there.
        SiteDataError: a problem of the CSV or of its images, naming the rows.
    """
    site_dir, labels_csv = Path(site_dir), Path(labels_csv)
    if not site_dir.is_dir():
        raise FileNotFoundError(f"the site folder {site_dir} does not exist")
    table = _read_table(labels_csv)
    table[IMAGE_COLUMN] = table[IMAGE_COLUMN].str.strip()
    table[PATIENT_COLUMN] = table[PATIENT_COLUMN].str.strip()
    duplicated = table[IMAGE_COLUMN].duplicated(keep=False).to_numpy()
    if duplicated.any():
        raise SiteDataError(f"{labels_csv.name}: the same image in more than one row: "
                            f"{_rows_text([f'{i + 2} ({table[IMAGE_COLUMN].iloc[i]})' for i in np.flatnonzero(duplicated)])}")
    no_patient = np.flatnonzero((table[PATIENT_COLUMN] == "").to_numpy())
    if len(no_patient):
        raise SiteDataError(f"{labels_csv.name}: no '{PATIENT_COLUMN}' at {_rows_text(no_patient + 2)} (the split "
                            "keeps each patient's films together, so every film needs its patient)")
    if LABELS_COLUMN in table.columns:
        labels, label_format = _labels_from_strings(table, labels_csv.name), LABELS_COLUMN
    else:
        labels, label_format = _labels_from_columns(table, labels_csv.name), "finding columns"
    paths = _match_images(table[IMAGE_COLUMN], site_dir, labels_csv.name)
    films = pd.DataFrame({"image": table[IMAGE_COLUMN], "patient_id": table[PATIENT_COLUMN], "path": paths,
                          "row": np.arange(len(table)) + 2})
    return SiteFilms(name=name or site_dir.resolve().name, table=films, labels=labels, label_format=label_format,
                     notes=tuple(_positive_notes(labels)))


def split_site(site: SiteFilms, *, check_share: float = 0.5, seed: int = 0) -> np.ndarray:
    """Seeded patient-wise split of the site's films into ``"fit"`` and ``"check"`` (the labels play no part).

    Args:
        site: the films.
        check_share: the share of films in the check part, in (0, 1).
        seed: the split's seed (same films and seed, same split).

    Returns:
        str array (n,) of ``"fit"`` / ``"check"``; no patient is in both.

    Raises:
        SiteDataError: fewer than two patients, or a part left empty.
    """
    if not 0 < check_share < 1:
        raise ValueError(f"check_share must lie in (0, 1), got {check_share}")
    if len(np.unique(site.patient_ids)) < 2:
        raise SiteDataError("the site needs films of at least two patients to have a fit part and a check part")
    # Over patients only, not stratified over the labels: changing a label must never move a film between the parts.
    parts = patient_split(site.patient_ids, np.zeros((len(site), 1)), fractions=(1 - check_share, check_share),
                          names=(FIT, CHECK), seed=seed)
    assert_patient_disjoint(site.patient_ids, parts)
    if not (parts == FIT).any() or not (parts == CHECK).any():
        raise SiteDataError(f"a split of {len(site)} films left the {'fit' if not (parts == FIT).any() else 'check'} "
                            "part empty: the site needs more patients")
    return parts
