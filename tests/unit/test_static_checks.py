"""Static checks, run by the test suite so that scripts/test (and so CI) covers them.

Each runs the tool from this venv, as ``python -m``, at the repository root, with the settings in
pyproject.toml: [tool.ruff] for the whole tree, [tool.mypy] for the pure layers it lists.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, timeout: float = 300) -> None:
    """Run ``python -m module args`` at the repository root; fail with all it printed unless it exits 0."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{module} {' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stdout}{done.stderr}")


def test_ruff() -> None:
    _run("ruff", "check", "--no-cache", "--output-format", "concise", ".")


def test_mypy_on_the_pure_layers() -> None:
    _run("mypy", "--config-file", "pyproject.toml")


# --- Import contracts -------------------------------------------------------------------------------------------
# The place for the import-linter check (its [tool.importlinter] contracts in pyproject.toml, run here as
# _run("importlinter.cli", ...) or its lint-imports entry point). Until it lands, the one-way rule for the shared
# test kit is checked by the small test below; drop that test when a contract says the same.


def _imported_packages(package: str) -> dict[str, set[str]]:
    """For each .py file under ``package``: the top-level packages it imports (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_testkit_and_benchmarks_import_one_way() -> None:
    """testkit imports neither tests nor benchmarks; benchmarks import testkit, never tests."""
    forbidden = {"testkit": {"tests", "benchmarks"}, "benchmarks": {"tests"}}
    wrong = [f"{path} imports {', '.join(sorted(names & forbidden[package]))}"
             for package in forbidden
             for path, names in _imported_packages(package).items() if names & forbidden[package]]
    assert not wrong, "\n".join(wrong)
