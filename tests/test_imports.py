"""Every module of the library and every tool imports."""

from __future__ import annotations

import importlib
import pkgutil
import runpy
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
