"""Every module of the library and every tool imports, and the packages keep their layers."""

from __future__ import annotations

import importlib
import pkgutil
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import avbert

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(avbert.__path__, "avbert."))
TOOLS = sorted(p for p in (ROOT / "tools").glob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("path", TOOLS, ids=lambda p: p.name)
def test_tool_imports(path):
    runpy.run_path(str(path), run_name="avbert_import_check")


def test_packages_keep_their_layers():
    """setup.cfg's import-linter contract: config, then the run directory, then models,
    objectives and data, then train and the memory planner, then launch, results and the
    benchmarks; a package never imports from a layer above it (function-level imports
    included)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "KEPT" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
