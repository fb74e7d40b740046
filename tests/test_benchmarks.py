"""The benchmarks (and tools/) are not run by the tests (they measure, and take minutes), but what they import from distillctl must
still exist: a renamed function would otherwise surface only when someone next measures, on a lent GPU say."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("tools/*.py")])
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.sh"), *ROOT.glob("tools/*.sh")])


def distillctl_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from distillctl... import name` in the file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distillctl":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "distillctl"]
    return found


def test_there_are_benchmarks_to_check():
    assert len(BENCHMARKS) >= 10 and sum(bool(distillctl_imports(p)) for p in BENCHMARKS) >= 8


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_what_a_benchmark_imports_from_distillctl_exists(path):
    for module_name, name in distillctl_imports(path):
        module = importlib.import_module(module_name)
        if name and not hasattr(module, name):  # a submodule imported by name is a module of its own
            importlib.import_module(f"{module_name}.{name}")


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_shell_script_parses(path):
    import subprocess

    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
