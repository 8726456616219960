"""The guided tour's file (``tour.json``) as pages and the handout read it: where a stop's image is on this machine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["resolve_image"]

_MODULES = {"scikit-learn": "sklearn"}


def resolve_image(source: Mapping, image: str, data_root: str | os.PathLike | None = None,
                  dataset_paths: Mapping[str, str] | None = None) -> Path | None:
    """The file of a stop or film on this machine, or None when it is not here.

    Args:
        source: the stop's ``source``.
        image: the image name.
        data_root: the dataset folder (for a dataset film).
        dataset_paths: {image: path} of the dataset, when already read (else ``data_root/images/<image>``).
    """
    if source.get("kind") == "package":
        import importlib.util

        spec = importlib.util.find_spec(_MODULES.get(source["package"], source["package"]))
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / source["path"]
        return path if path.is_file() else None
    if dataset_paths is not None and image in dataset_paths:
        return Path(dataset_paths[image])
    if data_root is None:
        return None
    path = Path(data_root) / "images" / image
    return path if path.is_file() else None
