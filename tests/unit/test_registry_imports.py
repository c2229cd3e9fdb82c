"""The registry client sits below the mirror, the P2P network, the scheduler and the nydus
commands: it imports none of them (they import it), and its pure rules and the domain
types in lib/oci.py import no I/O layer at all."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ABOVE_THE_REGISTRY_CLIENT = ("damselfly.p2p", "damselfly.proxy", "damselfly.nydus", "damselfly.scheduler")


def _imports(path: Path) -> set[str]:
    """The absolute module names ``path`` imports, lazily imported ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_registry_client_imports_nothing_above_it() -> None:
    wrong = [f"{path.relative_to(ROOT)} imports {name}"
             for path in sorted((ROOT / "damselfly" / "registry").glob("*.py"))
             for name in sorted(_imports(path)) if name.startswith(ABOVE_THE_REGISTRY_CLIENT)]
    assert not wrong, "\n".join(wrong)


def test_the_pure_rules_and_domain_types_import_no_io_layer() -> None:
    assert {name for name in _imports(ROOT / "damselfly" / "lib" / "oci.py") if name.startswith("damselfly")} == set()
    assert {name for name in _imports(ROOT / "damselfly" / "registry" / "rules.py")
            if name.startswith("damselfly") or name in ("aiohttp", "socket", "http.client")} == set()
