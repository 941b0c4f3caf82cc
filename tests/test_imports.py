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


def console_scripts() -> list[tuple[str, str]]:
    """(command, module:function) of every console script setup.cfg installs."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [tuple(part.strip() for part in line.split("=")) for line in lines]


@pytest.mark.parametrize("command,target", console_scripts(), ids=lambda v: str(v))
def test_console_scripts_are_installed_and_match_their_tools(command, target):
    """Each command runs the same ``main`` as its ``tools/`` wrapper, from the installed package."""
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function))
    script = Path(sys.executable).with_name(command)
    assert script.is_file(), f"{command} is not installed: pip install -e ."
    result = subprocess.run([str(script), "--help"], cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]
    wrappers = [p for p in TOOLS if f"from {module} import main" in p.read_text()]
    assert wrappers, f"no tools/ wrapper runs {module}.main"
