"""Batch inference over many files: calibrated probabilities, optional heatmaps.

Unreadable files never stop a run: each gets its reason in the ``error``
column (and in the errors file the command writes) and the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr_core.data.dataset import index_images
from cxr_core.errors import DataFormatError, ImageReadError
from cxr_core.findings import FINDINGS

IMAGE_COLUMN = "Image Index"
ERROR_COLUMN = "error"


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


def _load(predictor, path: Path) -> tuple[dict[int, np.ndarray] | None, str]:
    """The file decoded once and resized for every member (``{size: uint8}``), or None and the reason."""
    try:
        return predictor.load_inputs(path), ""
    except ImageReadError as exc:
        return None, str(exc)


def predict_files(
    predictor,
    files: Sequence[str | os.PathLike],
    *,
    batch_size: int = 16,
    heatmap_dir: str | os.PathLike | None = None,
    workers: int = 2,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> pd.DataFrame:
    """Calibrated probabilities for each file, in input order.

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
        progress: wraps the batch iterator (e.g. ``tqdm``), for a progress bar.

    Returns:
        DataFrame with ``Image Index`` (file name), one column per finding
        (Data_Entry spelling, calibrated probability; empty when unreadable),
        and ``error`` (empty, or why the file could not be read).
    """
    files = [Path(f) for f in files]
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    rows: list[dict] = []
    out_dir = Path(heatmap_dir) if heatmap_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    iterator = progress(batches) if progress is not None else batches
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for batch_files in iterator:
            loaded = list(pool.map(lambda p: _load(predictor, p), batch_files))
            good = [i for i, (img, _) in enumerate(loaded) if img is not None]
            calibrated = np.empty((0, len(FINDINGS)))
            if good:
                # One stack per member input size: each member gets its own resize and normalisation.
                inputs = {size: np.stack([loaded[i][0][size] for i in good]) for size in predictor.input_sizes}
                _, calibrated = predictor.predict_uint8(inputs)
            by_position = dict(zip(good, calibrated))
            for i, path in enumerate(batch_files):
                row = {IMAGE_COLUMN: path.name}
                if i in by_position:
                    row.update(dict(zip(FINDINGS, map(float, by_position[i]))))
                    row[ERROR_COLUMN] = ""
                    if out_dir is not None:
                        _write_heatmaps(predictor, loaded[i][0], by_position[i], out_dir / path.stem)
                else:
                    row.update({f: np.nan for f in FINDINGS})
                    row[ERROR_COLUMN] = loaded[i][1]
                rows.append(row)
    return pd.DataFrame(rows, columns=[IMAGE_COLUMN, *FINDINGS, ERROR_COLUMN])


def _write_heatmaps(predictor, inputs: dict[int, np.ndarray], probabilities: np.ndarray, stem: Path) -> None:
    # Maps at the largest member input size, from the inputs the probabilities came from.
    image_uint8 = inputs[max(inputs)]
    analysis = predictor.analyze(image_uint8.astype(np.float32) / 255.0, inputs=inputs)
    maps = {f.replace(" ", "_"): np.rint(m * 255).astype(np.uint8) for f, m in analysis.heatmaps.items()}
    np.savez_compressed(stem.with_suffix(".npz"), **maps)
    top = FINDINGS[int(np.argmax(probabilities))]
    heat = cv2.applyColorMap(maps[top], cv2.COLORMAP_JET)
    gray = cv2.cvtColor(image_uint8, cv2.COLOR_GRAY2BGR)
    overlay = cv2.addWeighted(gray, 0.6, heat, 0.4, 0)
    cv2.putText(overlay, f"{top} {probabilities[FINDINGS.index(top)]:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    cv2.imwrite(str(stem.parent / f"{stem.name}_heatmap.png"), overlay)
