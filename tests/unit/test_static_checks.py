"""Static checks, run by the test suite so that scripts/test (and so CI) covers them.

Each runs the tool from this venv, as ``python -m``, at the repository root, with the settings in
pyproject.toml: [tool.ruff] for the whole tree, [tool.mypy] for the pure layers it lists,
[tool.importlinter] for the direction of imports.
"""

from __future__ import annotations

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


def test_imports_flow_one_way() -> None:
    """The [tool.importlinter] contracts: the layers of damselfly, and tests > benchmarks > testkit."""
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"lint-imports exited {done.returncode}:\n{done.stdout}{done.stderr}"
