"""The import graph: gridradio and gridsim never import gridedge (nor gridradio gridsim).

Two checks, because each misses what the other sees: the source of every module
(AST, so an import inside a function counts too), and what a fresh interpreter
actually loads when it imports every module of the package (transitive imports).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import gridradio
import gridsim
import pytest

# package -> the top-level packages it must never import
FORBIDDEN = {
    gridradio: {"gridedge", "gridsim", "gridcloud", "twisted"},
    gridsim: {"gridedge", "gridcloud"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in one source file."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", FORBIDDEN, ids=lambda p: p.__name__)
def test_sources_import_no_forbidden_package(package: ModuleType) -> None:
    """No module of the package names a forbidden package in any import statement."""
    folder = Path(package.__file__).parent
    paths = sorted(folder.glob("*.py"))
    assert paths
    for path in paths:
        assert not imported_roots(path) & FORBIDDEN[package], path.name


@pytest.mark.parametrize("package", FORBIDDEN, ids=lambda p: p.__name__)
def test_loading_every_module_loads_no_forbidden_package(package: ModuleType) -> None:
    """A fresh interpreter importing every module of the package has no forbidden one loaded."""
    name = package.__name__
    folder = Path(package.__file__).parent
    modules = [name] + [f"{name}.{p.stem}" for p in sorted(folder.glob("*.py"))]
    modules = [m for m in modules if not m.endswith(("__init__", "__main__"))]
    probe = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    assert name in loaded
    assert not loaded & FORBIDDEN[package]
