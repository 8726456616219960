"""Bundles record no absolute paths of the machine that made them (issue 12, item 6).

A bundle is copied to other machines: a path such as ``/home/someone/cache``
means nothing there and leaks the writer's folders. Training writes the data
or cache location and its configuration (data, cache, out folders) into
``bundle.json``; :func:`cxr_core.bundle.format.portable_path` keeps them
relative (to the working folder) or reduces them to the folder name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_core.bundle import Bundle, portable_path
from tests.conftest import REPO_ROOT


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def machine_folders(*extra: Path) -> list[str]:
    """Folders whose names must not appear in a bundle: home, the checkout, the working folder, and ``extra``."""
    folders = {Path.home(), REPO_ROOT, Path.cwd(), *extra}
    return sorted({str(f.resolve()) for f in folders if len(f.resolve().parts) > 1})


def assert_portable(meta: dict, *extra: Path) -> None:
    forbidden = machine_folders(*extra)
    for text in _strings(meta):
        assert not Path(text).is_absolute(), f"absolute path in bundle.json: {text!r}"
        assert not any(folder in text for folder in forbidden), f"machine folder in bundle.json: {text!r}"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("cache/nih192", "cache/nih192"),
        ("../shared/nih", "../shared/nih"),
        ("/somewhere/else/nih192", "nih192"),
        ("C:\\Users\\someone\\nih", "nih"),
        ("~/datasets/nih", "nih"),
    ],
)
def test_portable_path(value, expected):
    assert portable_path(value) == expected


def test_portable_path_inside_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "cache" / "nih192") == "cache/nih192"
    assert portable_path(str(tmp_path)) == tmp_path.name


def test_a_freshly_trained_bundle_records_no_machine_paths(demo_root, tmp_path):
    from cxr_core.learn import TrainConfig, train

    # Absolute data and output folders, as a user typing full paths would give them.
    config = TrainConfig(backbone="small_cnn", input_size=48, batch_size=8, epochs=1, steps_per_epoch=1, verbose=0,
                         tensorboard=False, data=str(demo_root.resolve()), out=str(tmp_path / "run"), limit_per_split=8)
    folder = train(config)
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["data"]["location"] in {"data/demo", "demo"}  # relative to the checkout, or the name
    assert_portable(meta, tmp_path)
    # Keys added later (update_metadata) are kept portable too.
    Bundle.update_metadata(folder, note={"evaluated_on": str(demo_root.resolve())})
    assert_portable(json.loads((folder / "bundle.json").read_text()), tmp_path)


def test_the_shipped_bundle_records_no_machine_paths():
    shipped = REPO_ROOT / "models" / "default" / "bundle.json"
    if not shipped.is_file():
        pytest.skip("no shipped bundle yet")
    assert_portable(json.loads(shipped.read_text()))
    for member in (REPO_ROOT / "models" / "default" / "members").glob("*/bundle.json"):
        assert_portable(json.loads(member.read_text()))
