"""cxr_core's layers, checked on the source (ast), imports inside functions included.

    findings, errors (the shared vocabulary) <- data <- learn <- evaluation <- serving <- experiments
    reader_study uses data and evaluation only

An import may point down or sideways, never up; nothing in cxr_core imports
streamlit, argparse or the project's programs (training/, pages/, app.py ...).
A new subpackage must be given its place in LAYERS before this test passes.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CORE = REPO_ROOT / "cxr_core"

#: What each part of cxr_core may import ("core": the modules at the top of cxr_core).
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "data": frozenset({"core", "data"}),
    "learn": frozenset({"core", "data", "learn"}),
    "evaluation": frozenset({"core", "data", "learn", "evaluation"}),
    "serving": frozenset({"core", "data", "learn", "evaluation", "serving"}),
    "experiments": frozenset({"core", "data", "learn", "evaluation", "serving", "experiments"}),
    "reader_study": frozenset({"core", "data", "evaluation", "reader_study"}),
}
SUBPACKAGES = frozenset(LAYERS) - {"core"}
FORBIDDEN = frozenset({"streamlit", "argparse", "training", "pages", "app", "tools", "benchmarks", "tests"})


def _part(module: str) -> str | None:
    """The part of cxr_core that ``module`` (dotted, absolute) belongs to; None outside cxr_core."""
    names = module.split(".")
    if names[0] != "cxr_core":
        return None
    return names[1] if len(names) > 1 and names[1] in SUBPACKAGES else "core"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the tree; ``from X import a`` gives ``X.a``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What is wrong with the imports of one cxr_core module, one line each."""
    part = _part(module)
    problems = []
    for line, name in _imported(ast.parse(source), module, is_package):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"{module}:{line} imports {top}")
            continue
        target = _part(name)
        if target is not None and target not in LAYERS[part]:
            problems.append(f"{module}:{line} ({part}) imports {name} ({target}), which sits above it or beside it")
    return problems


def _sources() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_every_part_of_cxr_core_has_a_layer():
    folders = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(SUBPACKAGES), "place a new subpackage in tests/test_layers.py's LAYERS"
    assert not [p for p in CORE.rglob("*.py") if len(p.relative_to(CORE).parts) > 2], "one level of subpackages"


def test_imports_never_run_up_the_layers():
    problems = []
    for path in _sources():
        problems += violations(path.read_text(encoding="utf-8"), _module_name(path), is_package=path.name == "__init__.py")
    assert problems == []


@pytest.mark.parametrize("module, source, bad", [
    ("cxr_core.data.dataset", "from cxr_core.learn.models import build_model", True),
    ("cxr_core.data.dataset", "def f():\n    from cxr_core.serving import Predictor", True),
    ("cxr_core.learn.engine", "import cxr_core.evaluation.metrics", True),
    ("cxr_core.evaluation.metrics", "from ..serving.predictor import Predictor", True),
    ("cxr_core.reader_study.store", "from cxr_core.learn import Bundle", True),
    ("cxr_core.reader_study.store", "from cxr_core import serving", True),
    ("cxr_core.serving.batch", "def f():\n    from cxr_core.experiments.harness import run_grid", True),
    ("cxr_core.experiments.harness", "from cxr_core.serving.predictor import Predictor\nfrom cxr_core.learn.engine import train", False),
    ("cxr_core.findings", "from cxr_core.data import NIHDataset", True),
    ("cxr_core.serving.report", "import streamlit as st", True),
    ("cxr_core.learn.config", "def f():\n    import argparse", True),
    ("cxr_core.data.imageio", "from training.predict import main", True),
    ("cxr_core.serving.predictor", "from cxr_core.learn.bundle import Bundle\nfrom cxr_core.evaluation import Calibration", False),
    ("cxr_core.reader_study.analysis", "from cxr_core.evaluation.metrics import auroc\nfrom .records import PHASES", False),
    ("cxr_core.learn.engine", "from cxr_core import __version__\nfrom cxr_core.findings import FINDINGS", False),
])
def test_the_check_catches_what_it_should(module, source, bad):
    assert bool(violations(source, module)) == bad


@pytest.mark.parametrize("name", sorted(SUBPACKAGES))
def test_subpackages_say_what_they_hold_and_export_it(name):
    package = importlib.import_module(f"cxr_core.{name}")
    assert package.__doc__ and package.__doc__.strip(), f"cxr_core/{name}/__init__.py needs a docstring"
    assert package.__all__
    for public in package.__all__:
        assert getattr(package, public) is not None, public
    assert set(package.__all__) <= set(dir(package))
