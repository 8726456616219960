"""What the app's pages import before the model is ready must not import TensorFlow.

The app loads the model (and TensorFlow) in a background thread as soon as
the first page has run. A page that imported TensorFlow at the same time, on
its own thread, would get a half-initialised module (two threads importing
TensorFlow at once fail with "module 'tensorflow...' has no attribute ...").
So every module a page imports at its top stays free of TensorFlow; the model
itself comes through pages.common, under its load lock.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _page_imports() -> set[str]:
    modules = set()
    for page in sorted((REPO_ROOT / "pages").glob("*.py")):
        tree = ast.parse(page.read_text(encoding="utf-8"))
        for node in tree.body:  # top level only: imports inside functions run after the model is ready
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxr_core"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    modules.add(candidate if (REPO_ROOT / (candidate.replace(".", "/") + ".py")).is_file() else node.module)
            elif isinstance(node, ast.Import):
                modules.update(a.name for a in node.names if a.name.startswith("cxr_core"))
    return modules


def test_pages_import_nothing_that_imports_tensorflow():
    modules = _page_imports()
    assert "cxr_core.serving.report" in modules and "cxr_core.serving.reading" in modules
    code = ("import importlib, sys\n"
            f"for name in {sorted(modules)!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", f"a page's imports load {result.stdout.strip()}"
