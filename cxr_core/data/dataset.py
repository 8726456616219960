"""Reading the NIH ChestX-ray14 release: labels, boxes, split lists, images.

Layouts read as users download them:

* official release: ``ROOT/Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``
  / ``.csv.gz``), ``ROOT/BBox_List_2017.csv``, ``ROOT/train_val_list.txt``,
  ``ROOT/test_list.txt`` and ``ROOT/images/*.png``;
* Kaggle copy: the same files with images under ``ROOT/images_001/images/`` …
  ``ROOT/images_012/images/``;
* any resized copy: images may be stored at any size (the boxes are scaled).

:class:`NIHDataset` exposes the contract as row-aligned attributes, in the
manner of torchxrayvision: ``pathologies``, ``csv``, ``labels``, ``boxes``.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.errors import DataFormatError
from cxr_core.findings import FINDINGS, canonical_finding, parse_finding_labels

#: Side of the PNGs NIH released. BBox_List coordinates are in this space; the
#: ``OriginalImage[Width,Height]`` columns give the detector size *before* NIH
#: resized to 1024, so boxes scale by ``stored_side / 1024``.
NIH_RELEASE_SIDE = 1024

DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz")
BBOX_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
_IMAGE_NAME = re.compile(r"^\d{8}_\d{3}\.png$")

#: Columns of the cleaned table (``NIHDataset.csv``), in order.
ENTRY_COLUMNS = (
    "image", "finding_labels", "follow_up", "patient_id", "age", "sex", "view",
    "original_width", "original_height", "spacing_x", "spacing_y",
)
# Oldest recorded human age is 122; anything above is a data-entry error
# (the 2017 file has ages up to 414).
MAX_PLAUSIBLE_AGE = 120


def _open_table(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataFormatError(f"{path.name} could not be read as a CSV table: {exc}") from exc


def _parse_age_years(raw: pd.Series) -> pd.Series:
    """Ages as float years; the 2017 file writes '058Y', '011M' or '007D'."""
    text = raw.astype("string").str.strip().str.upper()
    match = text.str.extract(r"^(\d+(?:\.\d+)?)([YMWD]?)$")
    number = pd.to_numeric(match[0], errors="coerce")
    unit = match[1].fillna("").replace("", "Y")
    per_year = unit.map({"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25})
    years = (number / per_year).to_numpy(dtype=float, na_value=np.nan)
    return pd.Series(years, index=raw.index, name="age")


def read_data_entry(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``Data_Entry_2017.csv`` in its 2017 or 2020 format into one schema.

    The 2017 file has ages like ``058Y``, zero-padded ids and a trailing comma
    in its header (an empty 12th column); the 2020 file has integer ages and
    ids. Both become the columns :data:`ENTRY_COLUMNS` with ``age`` in float
    years, ``patient_id`` as int, and ``.attrs["source_format"]`` set to
    ``"2017"`` or ``"2020"``. No row is dropped here; see :func:`clean_entries`.

    Args:
        path: the CSV, plain or ``.gz``.

    Raises:
        DataFormatError: the file is not a Data_Entry table.
    """
    path = Path(path)
    header = _open_table(path, nrows=0)
    columns = [c.strip() for c in header.columns]
    if len(columns) < 11 or columns[0] != "Image Index" or columns[1] != "Finding Labels":
        raise DataFormatError(
            f"{path.name} is not a NIH Data_Entry table: expected 11 columns starting with "
            f"'Image Index, Finding Labels', found {columns[:4]}"
        )
    table = _open_table(path, header=0, usecols=range(11), names=list(ENTRY_COLUMNS), dtype=str, keep_default_na=False)
    raw_age = table["age"]
    source_format = "2017" if raw_age.str.contains(r"[A-Za-z]", regex=True).any() else "2020"
    out = pd.DataFrame(
        {
            "image": table["image"].str.strip(),
            "finding_labels": table["finding_labels"].str.strip(),
            "follow_up": pd.to_numeric(table["follow_up"], errors="coerce").astype("Int64"),
            "patient_id": pd.to_numeric(table["patient_id"], errors="coerce").astype("Int64"),
            "age": _parse_age_years(raw_age),
            "sex": table["sex"].str.strip().str.upper(),
            "view": table["view"].str.strip().str.upper(),
            "original_width": pd.to_numeric(table["original_width"], errors="coerce"),
            "original_height": pd.to_numeric(table["original_height"], errors="coerce"),
            "spacing_x": pd.to_numeric(table["spacing_x"], errors="coerce"),
            "spacing_y": pd.to_numeric(table["spacing_y"], errors="coerce"),
        }
    )
    out.attrs["source_format"] = source_format
    out.attrs["source_file"] = path.name
    return out


def labels_from_strings(finding_labels: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Multi-hot labels (n, 14) float32 and the unknown tokens of each row.

    Parses each distinct ``Finding Labels`` string once (the full release has
    about 800 distinct strings for 112k rows), which keeps this fast.
    """
    codes, uniques = pd.factorize(finding_labels.astype(str), sort=False)
    table = np.zeros((len(uniques), len(FINDINGS)), dtype=np.float32)
    unknown_of_unique: list[str] = []
    for i, text in enumerate(uniques):
        found, unknown = parse_finding_labels(text)
        for name in found:
            table[i, FINDINGS.index(name)] = 1.0
        unknown_of_unique.append("|".join(unknown))
    unknown = pd.Series(np.asarray(unknown_of_unique, dtype=object)[codes], index=finding_labels.index)
    return table[codes], unknown


def read_bbox_list(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``BBox_List_2017.csv``: one row per expert box.

    Returns:
        columns ``image, finding, x, y, w, h`` with the finding in canonical
        spelling ("Infiltrate" becomes "Infiltration") and coordinates in the
        1024 x 1024 space of the NIH release (see :data:`NIH_RELEASE_SIDE`).

    Raises:
        DataFormatError: missing columns, non-numeric or non-positive sizes,
            or an unknown finding.
    """
    path = Path(path)
    table = _open_table(path, header=0, dtype=str, keep_default_na=False)
    if table.shape[1] < 6 or table.columns[0].strip() != "Image Index":
        raise DataFormatError(f"{path.name} is not a NIH BBox_List table (expected Image Index, Finding Label, x, y, w, h)")
    table = table.iloc[:, :6]
    table.columns = ["image", "finding", "x", "y", "w", "h"]
    boxes = table.assign(image=table["image"].str.strip())
    for col in ("x", "y", "w", "h"):
        boxes[col] = pd.to_numeric(boxes[col], errors="coerce")
    bad = boxes[["x", "y", "w", "h"]].isna().any(axis=1) | (boxes["w"] <= 0) | (boxes["h"] <= 0)
    if bad.any():
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(bad.to_numpy())[:5])
        raise DataFormatError(f"{path.name}: {int(bad.sum())} box rows have missing or non-positive values (lines {rows})")
    try:
        boxes["finding"] = boxes["finding"].map(canonical_finding)
    except KeyError as exc:
        raise DataFormatError(f"{path.name}: {exc.args[0]}") from exc
    return boxes.reset_index(drop=True)


def scale_boxes(boxes: pd.DataFrame, stored_width: float, stored_height: float) -> pd.DataFrame:
    """Scale boxes from the 1024 px release space to an image stored or shown at another size.

    Args:
        boxes: rows with ``x, y, w, h`` in release space.
        stored_width, stored_height: size of the image the boxes are drawn on.
    """
    sx, sy = stored_width / NIH_RELEASE_SIDE, stored_height / NIH_RELEASE_SIDE
    out = boxes.copy()
    out["x"], out["w"] = boxes["x"] * sx, boxes["w"] * sx
    out["y"], out["h"] = boxes["y"] * sy, boxes["h"] * sy
    return out


def read_split_list(path: str | os.PathLike) -> list[str]:
    """Read ``train_val_list.txt`` or ``test_list.txt`` (one name a line)."""
    path = Path(path)
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n]
    bad = [n for n in names if not _IMAGE_NAME.match(n)]
    if bad:
        raise DataFormatError(f"{path.name} does not look like an NIH split list (e.g. {bad[0]!r})")
    return names


def index_images(root: str | os.PathLike) -> dict[str, Path]:
    """Map image file names to their paths under ``root``.

    Looks in ``root/images/``, Kaggle's ``root/images_NNN/images/``, and
    ``root`` itself, without descending further (a full tree walk of a
    112k-file release would be slow and could pick up unrelated files).
    """
    root = Path(root)
    folders = [root, root / "images"]
    if root.is_dir():
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_dir() and re.match(r"^images_\d+$", entry.name):
                folders += [Path(entry.path), Path(entry.path) / "images"]
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                index.setdefault(entry.name, Path(entry.path))
    return index


def stored_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a stored image, read from its header only."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    from PIL import Image  # other formats: Pillow reads the header lazily

    with Image.open(path) as image:
        return image.size


@dataclass
class CleaningReport:
    """What cleaning did to a Data_Entry table, in counts and reasons."""

    source_file: str
    rows_in: int
    rows_out: int = 0
    steps: list[tuple[str, int, str]] = field(default_factory=list)  # (reason, rows, action)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, mask: pd.Series | np.ndarray, action: str, names: pd.Series) -> None:
        mask = np.asarray(mask, dtype=bool)
        count = int(mask.sum())
        self.steps.append((reason, count, action))
        if count:
            self.examples[reason] = names[mask].head(5).tolist()

    def count(self, reason: str) -> int:
        """Rows affected by ``reason`` (0 when the step did not run)."""
        return sum(n for r, n, _ in self.steps if r == reason)

    def to_markdown(self) -> str:
        lines = [
            f"Cleaning report for {self.source_file}: {self.rows_in:,} rows in, {self.rows_out:,} rows kept.",
            "",
            "| check | rows | action | examples |",
            "|---|---:|---|---|",
        ]
        for reason, count, action in self.steps:
            examples = ", ".join(self.examples.get(reason, []))
            lines.append(f"| {reason} | {count:,} | {action} | {examples} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def clean_entries(
    entries: pd.DataFrame,
    *,
    available_images: set[str] | None = None,
    views: tuple[str, ...] | None = None,
    sexes: tuple[str, ...] | None = None,
    age_range: tuple[float, float] | None = None,
) -> tuple[pd.DataFrame, np.ndarray, CleaningReport]:
    """Clean a Data_Entry table and report each change.

    Rows are dropped for: a duplicated image name (first kept), a malformed
    image name or patient id, an unknown label token, a missing image file
    (when ``available_images`` is given), and the optional filters. An
    impossible age (over 120 years or negative) keeps its row, since the image
    and labels are fine, but the age becomes missing.

    Args:
        entries: output of :func:`read_data_entry`.
        available_images: names of image files present; ``None`` skips the check.
        views: keep only these view positions (e.g. ``("PA",)``).
        sexes: keep only these sexes (``"M"``, ``"F"``).
        age_range: keep only ages in ``[low, high]`` years (rows with a missing age are dropped).

    Returns:
        ``(table, labels, report)``: the cleaned table (index reset), its
        multi-hot labels (n, 14) float32, and the :class:`CleaningReport`.
    """
    names = entries["image"]
    report = CleaningReport(source_file=entries.attrs.get("source_file", "Data_Entry"), rows_in=len(entries))
    table = entries.copy()
    table.attrs = dict(entries.attrs)

    bad_age = (table["age"] > MAX_PLAUSIBLE_AGE) | (table["age"] < 0)
    report.add("impossible age (over 120 or negative)", bad_age, "age set to missing", names)
    table.loc[bad_age, "age"] = np.nan
    bad_sex = ~table["sex"].isin(["M", "F"])
    report.add("unknown sex", bad_sex, "sex set to missing", names)
    table.loc[bad_sex, "sex"] = pd.NA
    bad_view = ~table["view"].isin(["PA", "AP"])
    report.add("view position not PA/AP", bad_view, "kept; view set to missing", names)
    table.loc[bad_view, "view"] = pd.NA

    labels, unknown = labels_from_strings(table["finding_labels"])
    keep = np.ones(len(table), dtype=bool)

    def drop(reason: str, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool) & keep
        report.add(reason, mask, "row dropped", names)
        keep[mask] = False

    drop("duplicate image name", table["image"].duplicated(keep="first").to_numpy())
    drop(
        "malformed image name or patient id",
        (~table["image"].str.match(_IMAGE_NAME)).to_numpy() | table["patient_id"].isna().to_numpy(),
    )
    drop("unknown label", (unknown != "").to_numpy())
    if available_images is not None:
        drop("image file missing", (~table["image"].isin(available_images)).to_numpy())
    if views is not None:
        wanted = {v.upper() for v in views}
        drop(f"view not in {sorted(wanted)}", (~table["view"].isin(wanted)).fillna(True).to_numpy(dtype=bool))
    if sexes is not None:
        wanted = {s.upper() for s in sexes}
        drop(f"sex not in {sorted(wanted)}", (~table["sex"].isin(wanted)).fillna(True).to_numpy(dtype=bool))
    if age_range is not None:
        low, high = age_range
        inside = table["age"].between(low, high).fillna(False).to_numpy(dtype=bool)
        drop(f"age outside {low:g}-{high:g} years or missing", ~inside)

    table = table.loc[keep].reset_index(drop=True)
    table["patient_id"] = table["patient_id"].astype(np.int64)
    report.rows_out = len(table)
    return table, labels[keep], report


def find_metadata_file(root: Path, candidates: tuple[str, ...]) -> Path | None:
    """First of ``candidates`` present in ``root`` (or its parent folder)."""
    for folder in (root, root.parent):
        for name in candidates:
            if (folder / name).is_file():
                return folder / name
    return None


class NIHDataset:
    """The NIH ChestX-ray14 images present under a folder, with labels and boxes.

    Attributes (row-aligned):
        pathologies: the 14 findings, the column order of ``labels``.
        csv: cleaned Data_Entry rows (columns :data:`ENTRY_COLUMNS` plus ``path``).
        labels: float32 (n, 14) multi-hot; all zeros means "No Finding".
        boxes: expert boxes for images present (release-space coordinates).
        report: the :class:`CleaningReport`.
        official_split: ``{image name: "train_val" | "test"}`` when the lists exist.

    Args:
        root: dataset folder in the official, Kaggle or a resized layout.
        csv_path: a Data_Entry file; defaults to the newest one found in ``root``
            (the 2020 update, which corrects 181 labels, is preferred).
        bbox_path: a BBox_List file; defaults to the one in ``root`` if any.
        require_images: drop rows whose image file is not present.
        views, sexes, age_range: optional filters (see :func:`clean_entries`).
    """

    pathologies: tuple[str, ...] = FINDINGS

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        csv_path: str | os.PathLike | None = None,
        bbox_path: str | os.PathLike | None = None,
        require_images: bool = True,
        views: tuple[str, ...] | None = None,
        sexes: tuple[str, ...] | None = None,
        age_range: tuple[float, float] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist")
        csv_file = Path(csv_path) if csv_path else find_metadata_file(self.root, DATA_ENTRY_NAMES)
        if csv_file is None:
            raise DataFormatError(f"no Data_Entry_2017 CSV found in {self.root}; expected one of {', '.join(DATA_ENTRY_NAMES)}")
        self.csv_file = csv_file
        image_index = index_images(self.root) if require_images else {}
        entries = read_data_entry(csv_file)
        self.csv, self.labels, self.report = clean_entries(
            entries,
            available_images=set(image_index) if require_images else None,
            views=views,
            sexes=sexes,
            age_range=age_range,
        )
        self.csv["path"] = [str(image_index.get(name, "")) for name in self.csv["image"]] if require_images else ""
        self.source_format = entries.attrs["source_format"]

        box_file = Path(bbox_path) if bbox_path else find_metadata_file(self.root, BBOX_NAMES)
        if box_file is not None:
            boxes = read_bbox_list(box_file)
            self.boxes = boxes[boxes["image"].isin(set(self.csv["image"]))].reset_index(drop=True)
        else:
            self.boxes = pd.DataFrame(columns=["image", "finding", "x", "y", "w", "h"])

        self.official_split: dict[str, str] = {}
        train_val = find_metadata_file(self.root, ("train_val_list.txt",))
        test = find_metadata_file(self.root, ("test_list.txt",))
        if train_val is not None and test is not None:
            self.official_split = {n: "train_val" for n in read_split_list(train_val)}
            self.official_split.update({n: "test" for n in read_split_list(test)})

    def __len__(self) -> int:
        return len(self.csv)

    def __repr__(self) -> str:
        return f"NIHDataset(root={str(self.root)!r}, images={len(self)}, patients={self.csv['patient_id'].nunique()})"

    @property
    def patient_ids(self) -> np.ndarray:
        return self.csv["patient_id"].to_numpy()

    @property
    def image_names(self) -> list[str]:
        return self.csv["image"].tolist()

    @property
    def is_full_release(self) -> bool:
        """True when (nearly) every image of the official split lists is present."""
        if not self.official_split:
            return False
        present = set(self.csv["image"])
        return sum(name in present for name in self.official_split) >= 0.99 * len(self.official_split)

    def boxes_for(self, image: str, *, width: float | None = None, height: float | None = None) -> pd.DataFrame:
        """Expert boxes of one image, scaled to ``width x height`` (default: the stored file's size)."""
        rows = self.boxes[self.boxes["image"] == image]
        if width is None or height is None:
            path = self.csv.loc[self.csv["image"] == image, "path"]
            if path.empty or not path.iloc[0]:
                raise KeyError(f"image {image!r} is not in this dataset")
            width, height = stored_image_size(path.iloc[0])
        return scale_boxes(rows, width, height).reset_index(drop=True)

    def finding_counts(self) -> pd.Series:
        """Images per finding, plus "No Finding" (all-zero rows)."""
        counts = pd.Series(self.labels.sum(axis=0).astype(int), index=list(FINDINGS))
        counts["No Finding"] = int((self.labels.sum(axis=1) == 0).sum())
        return counts
