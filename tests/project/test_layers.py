"""cxr_core's layers, checked on the source (ast), imports inside functions included.

    findings, errors (the shared vocabulary) <- data <- bundle (the format) <- learn <- evaluation
    data, bundle <- screening (the input check)
    learn, evaluation, screening <- serving (the model runtime) <- reporting (output for people) <- jobs (offline)
    jobs <- experiments, adaptation; reporting <- pacs
    data, bundle, serving <- host (the app's model: loading, warm-up, model thread; no Streamlit)
    reader_study uses data and evaluation only

An import may point down or sideways, never up; nothing in cxr_core imports
streamlit, argparse or the project's programs (training/, pages/, app.py ...).
A new subpackage must be given its place in LAYERS before this test passes.

Nor may imports go round in a circle, inside a subpackage or across: the
graph of cxr_core's modules (an edge for every import, at the top, inside a
function or under TYPE_CHECKING; a name taken from a package counts as an
import of the module its lazy exports name) has no cycle.
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
    # The bundle format: what learn writes and serving reads, with the layer-name contract.
    "bundle": frozenset({"core", "data", "bundle"}),
    "learn": frozenset({"core", "data", "bundle", "learn"}),
    "evaluation": frozenset({"core", "data", "bundle", "learn", "evaluation"}),
    # The input check: rules, intensity, the learned check on a member's features.
    "screening": frozenset({"core", "data", "bundle", "screening"}),
    # The model runtime: a bundle's members run on an image, screened, read.
    "serving": frozenset({"core", "data", "bundle", "learn", "evaluation", "screening", "serving"}),
    # The app's host: which model serves (the environment), loading it, the warm-up, the model thread.
    "host": frozenset({"core", "data", "bundle", "serving", "host"}),
    # Output for people: words, overlays, reports, the tour's file and handout.
    "reporting": frozenset({"core", "data", "bundle", "evaluation", "serving", "reporting"}),
    # Offline jobs that run a bundle over many films (predict, evaluate, tour, fit the input check).
    "jobs": frozenset({"core", "data", "bundle", "learn", "evaluation", "screening", "serving", "reporting", "jobs"}),
    "experiments": frozenset({"core", "data", "bundle", "learn", "evaluation", "screening", "serving", "jobs",
                              "experiments"}),
    # A site's own films: local validation, refitted operating points, fine-tuning (python -m training.adapt).
    "adaptation": frozenset({"core", "data", "bundle", "learn", "evaluation", "screening", "serving", "reporting",
                             "jobs", "adaptation"}),
    # The DICOM node: films from a PACS in, standard results (SR, Secondary Capture) back (python -m training.node).
    "pacs": frozenset({"core", "data", "bundle", "learn", "evaluation", "screening", "serving", "reporting", "pacs"}),
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


def _lazy_names(source: str) -> dict[str, str]:
    """``{name: submodule}`` of a package's ``lazy_exports(__name__, {...})`` call (empty when it has none)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" and len(node.args) == 2:
            exports = ast.literal_eval(node.args[1])
            return {name: module for module, names in exports.items() for name in names}
    return {}


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """``{module: the cxr_core modules it imports}`` from ``{module: (source, is_package)}``.

    ``from P import a`` points at ``P.a`` when that is a module, else at the
    module P's lazy exports take ``a`` from, else at P itself.
    """
    lazy = {module: _lazy_names(source) for module, (source, is_package) in sources.items() if is_package}
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        edges = graph.setdefault(module, set())
        for _, name in _imported(ast.parse(source), module, is_package):
            if name.split(".")[0] != "cxr_core":
                continue
            if name not in sources:
                parent, _, attribute = name.rpartition(".")
                if parent in sources:
                    exported = lazy.get(parent, {}).get(attribute)
                    name = f"{parent}.{exported}" if exported else parent
                elif parent.rpartition(".")[0] in sources:  # import cxr_core.x.y.z of a missing module: its package
                    name = parent.rpartition(".")[0]
                else:
                    continue
            if name != module:
                edges.add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def _core_sources() -> dict[str, tuple[str, bool]]:
    return {_module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py") for path in _sources()}


def test_every_part_of_cxr_core_has_a_layer():
    folders = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(SUBPACKAGES), "place a new subpackage in tests/project/test_layers.py's LAYERS"
    assert not [p for p in CORE.rglob("*.py") if len(p.relative_to(CORE).parts) > 2], "one level of subpackages"


def test_imports_never_run_up_the_layers():
    problems = []
    for path in _sources():
        problems += violations(path.read_text(encoding="utf-8"), _module_name(path), is_package=path.name == "__init__.py")
    assert problems == []


#: Import circles not cut yet, each as the one import (module, what it imports) that closes it, with what cuts it.
#: The test fails on any other circle, and on an entry here whose circle is gone (then delete the entry).
KNOWN_CIRCLES: dict[tuple[str, str], str] = {}


def test_no_import_circles():
    graph = import_graph(_core_sources())
    assert "cxr_core.serving.maps" in graph["cxr_core.serving.predictor"], "the graph misses plain imports"
    for module, imported in KNOWN_CIRCLES:
        assert imported in graph.get(module, set()), f"{module} no longer imports {imported}: delete it from KNOWN_CIRCLES"
        graph[module].discard(imported)
        seen, todo = set(), [imported]
        while todo:  # is there a way back from what it imports?
            node = todo.pop()
            seen.add(node)
            todo += [n for n in graph.get(node, ()) if n not in seen]
        assert module in seen, f"{module} -> {imported} closes no circle now: delete it from KNOWN_CIRCLES"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("modules, circle", [
    # a function-level import closes the circle
    ({"cxr_core.serving.a": "from cxr_core.serving.b import x", "cxr_core.serving.b": "def f():\n    from . import a"},
     ["cxr_core.serving.a", "cxr_core.serving.b", "cxr_core.serving.a"]),
    # so does a TYPE_CHECKING import, and one through three modules
    ({"cxr_core.learn.a": "import cxr_core.learn.b", "cxr_core.learn.b": "from .c import y",
      "cxr_core.learn.c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cxr_core.learn.a import A"},
     ["cxr_core.learn.a", "cxr_core.learn.b", "cxr_core.learn.c", "cxr_core.learn.a"]),
    # a name taken from the package is an import of the module that defines it
    ({"cxr_core.data": ("from cxr_core._lazy import lazy_exports\n__all__, __getattr__, __dir__ = "
                        "lazy_exports(__name__, {'a': ('A',), 'b': ('B',)})", True),
      "cxr_core.data.a": "from cxr_core.data import B", "cxr_core.data.b": "def f():\n    from cxr_core.data import A"},
     ["cxr_core.data.a", "cxr_core.data.b", "cxr_core.data.a"]),
    # one way only: no circle; outside imports and a module's own name are ignored
    ({"cxr_core.data.a": "import numpy\nfrom cxr_core.findings import FINDINGS", "cxr_core.data.b": "from .a import x",
      "cxr_core.findings": "import cxr_core.findings"}, None),
])
def test_the_circle_check_catches_what_it_should(modules, circle):
    sources = {m: v if isinstance(v, tuple) else (v, False) for m, v in modules.items()}
    assert find_cycle(import_graph(sources)) == circle


@pytest.mark.parametrize("module, source, bad", [
    ("cxr_core.data.dataset", "from cxr_core.learn.models import build_model", True),
    ("cxr_core.data.dataset", "def f():\n    from cxr_core.serving import Predictor", True),
    ("cxr_core.learn.engine", "import cxr_core.evaluation.metrics", True),
    ("cxr_core.evaluation.metrics", "from ..serving.predictor import Predictor", True),
    ("cxr_core.reader_study.store", "from cxr_core.learn import Bundle", True),
    ("cxr_core.reader_study.store", "from cxr_core import serving", True),
    ("cxr_core.jobs.batch", "def f():\n    from cxr_core.experiments.harness import run_grid", True),
    ("cxr_core.experiments.harness", "from cxr_core.serving.predictor import Predictor\nfrom cxr_core.learn.engine import train", False),
    ("cxr_core.findings", "from cxr_core.data import NIHDataset", True),
    ("cxr_core.reporting.report", "import streamlit as st", True),
    ("cxr_core.learn.config", "def f():\n    import argparse", True),
    ("cxr_core.data.imageio", "from training.predict import main", True),
    ("cxr_core.serving.predictor", "from cxr_core.bundle.format import Bundle\nfrom cxr_core.evaluation import Calibration", False),
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
